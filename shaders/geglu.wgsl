// GEGLU as diffusers computes it after the projection: [hidden | gate] along the last dim,
// out = hidden * gelu(gate). Input [R, 2D], output [R, D].

struct Params {
    n: u32, d: u32, _p0: u32, _p1: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> y: array<T>;

#include "activation.wgsl"

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    if (i >= p.n) { return; }
    let r = i / p.d;
    let c = i % p.d;
    let h = f32(x[r * 2u * p.d + c]);
    let g = f32(x[r * 2u * p.d + p.d + c]);
    y[i] = T(h * gelu_erf(g));
}
