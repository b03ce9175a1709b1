// C = A (R x K) * W^T (W stored [N, K], nn.Linear's layout) (+ bias[N]) for CPU adapters (Mesa
// llvmpipe / lavapipe): no workgroup memory and no barriers, like conv2d_direct.wgsl. On llvmpipe
// every storage load whose address varies per lane costs a scalar loop over the SIMD lanes, so
// what counts is loads per FMA. Both operands are contiguous along K, so K is read 4 at a time
// (vec4 loads) and each invocation owns RB rows x CB columns: per 4-wide K step it loads RB + CB
// vec4s for 4 * RB * CB FMAs, done as vec4 * mat4x4 products. The column block comes from the
// workgroup id, so weight addresses are uniform across a workgroup — llvmpipe (Mesa 22.3) still
// pays a full load for each, so sharing each weight load among RB = 4 rows is what counts.
// Rows are the batch-flattened rows of A (the weight is shared); an invocation's rows are `s`
// apart so neighbouring lanes take neighbouring rows. QUANT reads a
// q8_0/q4_0/q3_0 weight (row = [quant words][f16 scales, two per u32], see src/quant/mod.rs): one
// quant word and one scale word per 4 weights. Loop iterations per invocation: K / 4.

struct Params {
    r: u32, n: u32, k4: u32, ldb: u32,
    ldc: u32, c_off: u32, bias_off: u32, s: u32,
    inv: u32, _p0: u32, _p1: u32, _p2: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<T>>;
#if QUANT
@group(0) @binding(2) var<storage, read> bq: array<u32>;
const QWORDS: u32 = {{QWORDS}}u;
#include "quant.wgsl"
#else
@group(0) @binding(2) var<storage, read> b: array<vec4<T>>;
#endif
@group(0) @binding(3) var<storage, read_write> c: array<T>;
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<T>;
#endif

const WG: u32 = 64u;
const RB: u32 = {{RB}}u; // 1, 2 (R2) or 4 (R2, R4)
const CB: u32 = {{CB}}u; // 4, 8 (C8) or 16 (C8, C16)

// Weights k4*4 .. k4*4+3 of weight row `n` (clamped in range by the caller).
fn wrow(n: u32, k4: u32) -> vec4<f32> {
#if QUANT
    return dequant4(n * p.ldb, p.k4 / 8u, 4u * k4);
#else
    return vec4<f32>(b[n * p.ldb + k4]);
#endif
}

fn wmat(n0: u32, k4: u32) -> mat4x4<f32> {
    let last = p.n - 1u;
    return mat4x4<f32>(wrow(min(n0, last), k4), wrow(min(n0 + 1u, last), k4),
                       wrow(min(n0 + 2u, last), k4), wrow(min(n0 + 3u, last), k4));
}

fn arow(r: u32, k4: u32) -> vec4<f32> {
    return vec4<f32>(a[min(r, p.r - 1u) * p.k4 + k4]);
}

fn store(r: u32, n0: u32, acc: vec4<f32>) {
    if (r >= p.r) { return; }
    for (var j = 0u; j < 4u; j++) {
        let n = n0 + j;
        if (n < p.n) {
            var v = acc[j];
#if BIAS
            v += f32(bias[p.bias_off + n]);
#endif
            c[r * p.ldc + p.c_off + n] = T(v);
        }
    }
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let t = wg.x * WG + li;
    if (t >= p.s) { return; }
    let n0 = wg.y * CB;
    let r0 = t;
    let r1 = t + p.s;
    let r2 = t + 2u * p.s;
    let r3 = t + 3u * p.s;
    var acc00 = vec4<f32>(0.0);
#if C8
    var acc01 = vec4<f32>(0.0);
#endif
#if C16
    var acc02 = vec4<f32>(0.0);
#endif
#if C16
    var acc03 = vec4<f32>(0.0);
#endif
#if R2
    var acc10 = vec4<f32>(0.0);
#endif
#if R2
#if C8
    var acc11 = vec4<f32>(0.0);
#endif
#endif
#if R2
#if C16
    var acc12 = vec4<f32>(0.0);
#endif
#endif
#if R2
#if C16
    var acc13 = vec4<f32>(0.0);
#endif
#endif
#if R4
    var acc20 = vec4<f32>(0.0);
#endif
#if R4
#if C8
    var acc21 = vec4<f32>(0.0);
#endif
#endif
#if R4
#if C16
    var acc22 = vec4<f32>(0.0);
#endif
#endif
#if R4
#if C16
    var acc23 = vec4<f32>(0.0);
#endif
#endif
#if R4
    var acc30 = vec4<f32>(0.0);
#endif
#if R4
#if C8
    var acc31 = vec4<f32>(0.0);
#endif
#endif
#if R4
#if C16
    var acc32 = vec4<f32>(0.0);
#endif
#endif
#if R4
#if C16
    var acc33 = vec4<f32>(0.0);
#endif
#endif
    for (var k4 = 0u; k4 < p.k4; k4++) {
        let a0 = arow(r0, k4);
#if R2
        let a1 = arow(r1, k4);
#endif
#if R4
        let a2 = arow(r2, k4);
#endif
#if R4
        let a3 = arow(r3, k4);
#endif
        let w0 = wmat(n0 + 0u, k4);
        acc00 += a0 * w0;
#if R2
        acc10 += a1 * w0;
#endif
#if R4
        acc20 += a2 * w0;
#endif
#if R4
        acc30 += a3 * w0;
#endif
#if C8
        let w1 = wmat(n0 + 4u, k4);
#endif
#if C8
        acc01 += a0 * w1;
#endif
#if R2
#if C8
        acc11 += a1 * w1;
#endif
#endif
#if R4
#if C8
        acc21 += a2 * w1;
#endif
#endif
#if R4
#if C8
        acc31 += a3 * w1;
#endif
#endif
#if C16
        let w2 = wmat(n0 + 8u, k4);
#endif
#if C16
        acc02 += a0 * w2;
#endif
#if R2
#if C16
        acc12 += a1 * w2;
#endif
#endif
#if R4
#if C16
        acc22 += a2 * w2;
#endif
#endif
#if R4
#if C16
        acc32 += a3 * w2;
#endif
#endif
#if C16
        let w3 = wmat(n0 + 12u, k4);
#endif
#if C16
        acc03 += a0 * w3;
#endif
#if R2
#if C16
        acc13 += a1 * w3;
#endif
#endif
#if R4
#if C16
        acc23 += a2 * w3;
#endif
#endif
#if R4
#if C16
        acc33 += a3 * w3;
#endif
#endif
    }
    store(r0, n0 + 0u, acc00);
#if C8
    store(r0, n0 + 4u, acc01);
#endif
#if C16
    store(r0, n0 + 8u, acc02);
#endif
#if C16
    store(r0, n0 + 12u, acc03);
#endif
#if R2
    store(r1, n0 + 0u, acc10);
#endif
#if R2
#if C8
    store(r1, n0 + 4u, acc11);
#endif
#endif
#if R2
#if C16
    store(r1, n0 + 8u, acc12);
#endif
#endif
#if R2
#if C16
    store(r1, n0 + 12u, acc13);
#endif
#endif
#if R4
    store(r2, n0 + 0u, acc20);
#endif
#if R4
#if C8
    store(r2, n0 + 4u, acc21);
#endif
#endif
#if R4
#if C16
    store(r2, n0 + 8u, acc22);
#endif
#endif
#if R4
#if C16
    store(r2, n0 + 12u, acc23);
#endif
#endif
#if R4
    store(r3, n0 + 0u, acc30);
#endif
#if R4
#if C8
    store(r3, n0 + 4u, acc31);
#endif
#endif
#if R4
#if C16
    store(r3, n0 + 8u, acc32);
#endif
#endif
#if R4
#if C16
    store(r3, n0 + 12u, acc33);
#endif
#endif
}
