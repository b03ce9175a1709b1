// Strided copy into a contiguous output of up to 4 dims: out[i0,i1,i2,i3] = x[off + sum ik*xk].
// A permute passes the input's strides in the output's dim order; a narrow adds an offset.

struct Params {
    n: u32, s1: u32, s2: u32, s3: u32,
    x0: u32, x1: u32, x2: u32, x3: u32,
    off: u32, _p0: u32, _p1: u32, _p2: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> y: array<T>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    if (i >= p.n) { return; }
    let i3 = i % p.s3;
    let t2 = i / p.s3;
    let i2 = t2 % p.s2;
    let t1 = t2 / p.s2;
    let i1 = t1 % p.s1;
    let i0 = t1 / p.s1;
    y[i] = x[p.off + i0 * p.x0 + i1 * p.x1 + i2 * p.x2 + i3 * p.x3];
}
