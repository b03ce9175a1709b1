// LayerNorm over the last dimension of [R, D], one workgroup per row (rows spread over x and y
// so more than 65535 rows still dispatch). ROW_THREAD: one invocation per row, for narrow rows
// (src/ops/layer_norm.rs): a 128-wide workgroup on a row of 32 values leaves most lanes idle, and
// on CPU adapters its barriers cost more than the row's arithmetic.

struct Params {
    rows: u32, d: u32, eps: f32, _pad: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> gamma: array<T>;
@group(0) @binding(3) var<storage, read> beta: array<T>;
@group(0) @binding(4) var<storage, read_write> y: array<T>;

#if ROW_THREAD
@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = (wg.x + wg.y * nwg.x) * 64u + li;
    if (row >= p.rows) { return; }
    let base = row * p.d;
    var sum = 0.0;
    for (var i = 0u; i < p.d; i++) { sum += f32(x[base + i]); }
    let mean = sum / f32(p.d);
    var sq = 0.0;
    for (var i = 0u; i < p.d; i++) {
        let d = f32(x[base + i]) - mean;
        sq += d * d;
    }
    let rstd = inverseSqrt(sq / f32(p.d) + p.eps);
    for (var i = 0u; i < p.d; i++) {
        y[base + i] = T((f32(x[base + i]) - mean) * rstd * f32(gamma[i]) + f32(beta[i]));
    }
}
#else
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

    var sum = 0.0;
    for (var i = li; i < p.d; i += WG) { sum += f32(x[base + i]); }
    let mean = reduce_sum(li, sum) / f32(p.d);
    var sq = 0.0;
    for (var i = li; i < p.d; i += WG) {
        let d = f32(x[base + i]) - mean;
        sq += d * d;
    }
    let rstd = inverseSqrt(reduce_sum(li, sq) / f32(p.d) + p.eps);
    for (var i = li; i < p.d; i += WG) {
        y[base + i] = T((f32(x[base + i]) - mean) * rstd * f32(gamma[i]) + f32(beta[i]));
    }
}
#endif
