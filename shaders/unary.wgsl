// Elementwise activations and y = alpha * x + beta, chosen by OP:
// silu, gelu (erf), quick_gelu, relu, affine, clamp to [alpha, beta], or alpha * tanh(x / alpha).

struct Params {
    n: u32, alpha: f32, beta: f32, _pad: u32,
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
    let v = f32(x[i]);
#if OP_SILU
    y[i] = T(silu(v));
#endif
#if OP_GELU
    y[i] = T(gelu_erf(v));
#endif
#if OP_GELU_QUICK
    y[i] = T(gelu_quick(v));
#endif
#if OP_RELU
    y[i] = T(max(v, 0.0));
#endif
#if OP_SOFT_CLAMP
    // tanh from exp(-2|x|), which cannot overflow (a tanh built on exp(2x) gives inf/inf = NaN).
    let u = v / p.alpha;
    let e = exp(-2.0 * abs(u));
    y[i] = T(p.alpha * sign(u) * (1.0 - e) / (1.0 + e));
#endif
#if OP_AFFINE
    y[i] = T(p.alpha * v + p.beta);
#endif
#if OP_CLAMP
    y[i] = T(clamp(v, p.alpha, p.beta));
#endif
}
