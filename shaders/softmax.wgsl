// Softmax over the last dimension of [R, D] of (scale * x), one workgroup per row.

struct Params {
    rows: u32, d: u32, scale: f32, _pad: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> y: array<T>;

const WG: u32 = 128u;
var<workgroup> red: array<f32, WG>;

#include "reduce.wgsl"

@compute @workgroup_size(128, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32,
#if SUBGROUPS
        lanes: Lanes,
#endif
) {
#if SUBGROUPS
    subgroups_begin(lanes);
#endif
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.d;

    var m = -3.0e38;
    for (var i = li; i < p.d; i += WG) { m = max(m, p.scale * f32(x[base + i])); }
    let row_max = reduce_max(li, m);
    var s = 0.0;
    for (var i = li; i < p.d; i += WG) { s += exp(p.scale * f32(x[base + i]) - row_max); }
    let inv = 1.0 / reduce_sum(li, s);
    for (var i = li; i < p.d; i += WG) {
        y[base + i] = T(exp(p.scale * f32(x[base + i]) - row_max) * inv);
    }
}
