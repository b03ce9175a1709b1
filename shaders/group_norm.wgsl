// GroupNorm over [N, C, S] (S = H*W), one workgroup per (group, image), optionally followed by
// SiLU (the ResNet blocks always apply it right after the norm). Two passes for the statistics
// (mean, then centred variance) so large-mean activations keep their precision.

struct Params {
    c: u32, s: u32, groups: u32, eps: f32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> gamma: array<T>;
@group(0) @binding(3) var<storage, read> beta: array<T>;
@group(0) @binding(4) var<storage, read_write> y: array<T>;

#include "activation.wgsl"

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;

#include "reduce.wgsl"

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
#if SUBGROUPS
        lanes: Lanes,
#endif
) {
#if SUBGROUPS
    subgroups_begin(lanes);
#endif
    let cpg = p.c / p.groups;
    let len = cpg * p.s;
    let base = (wg.y * p.c + wg.x * cpg) * p.s;

    var sum = 0.0;
    for (var i = li; i < len; i += WG) { sum += f32(x[base + i]); }
    let mean = reduce_sum(li, sum) / f32(len);

    var sq = 0.0;
    for (var i = li; i < len; i += WG) {
        let d = f32(x[base + i]) - mean;
        sq += d * d;
    }
    let rstd = inverseSqrt(reduce_sum(li, sq) / f32(len) + p.eps);

    for (var i = li; i < len; i += WG) {
        let ch = wg.x * cpg + i / p.s;
        var v = (f32(x[base + i]) - mean) * rstd * f32(gamma[ch]) + f32(beta[ch]);
#if SILU
        v = silu(v);
#endif
        y[base + i] = T(v);
    }
}
