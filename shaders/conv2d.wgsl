// conv2d (NCHW, weights [Cout, Cin, KH, KW]) as an implicit GEMM on the tiled core of
// gemm_tile.wgsl: M = Cout, N = Ho*Wo pixels, K = Cin*KH*KW. The im2col matrix is never built;
// each B tile is gathered from the input with zero padding (POINTWISE: a 1x1, stride-1, unpadded
// conv reads its pixels as vec4). One image per wg.z.
//
// VEC_A: weights read as vec4 along K (K a multiple of 4); VEC_C: outputs (and the residual)
// written as vec4 along the pixels (Ho*Wo a multiple of 4).

struct Params {
    cin: u32, h: u32, w: u32, cout: u32,
    ho: u32, wo: u32, kh: u32, kw: u32,
    stride: u32, pad: u32, k: u32, p: u32,
    wpr: u32, _p0: u32, _p1: u32, _p2: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
#if POINTWISE
@group(0) @binding(1) var<storage, read> x: array<vec4<T>>;
#else
@group(0) @binding(1) var<storage, read> x: array<T>;
#endif
#if QUANT
// q8_0 / q4_0 weight, [Cout, K] rows repacked as u32 words (wpr per row).
@group(0) @binding(2) var<storage, read> bq: array<u32>;
const QWORDS: u32 = {{QWORDS}}u;
#include "quant.wgsl"
#else
#if VEC_A
@group(0) @binding(2) var<storage, read> wt: array<vec4<T>>;
#else
@group(0) @binding(2) var<storage, read> wt: array<T>;
#endif
#endif
#if VEC_C
@group(0) @binding(3) var<storage, read_write> y: array<vec4<T>>;
#else
@group(0) @binding(3) var<storage, read_write> y: array<T>;
#endif
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<T>;
#endif
// The residual added in the epilogue (a ResNet block's skip): the output's shape, read at the
// output's index. Its binding follows the bias, when there is one.
#if RESIDUAL
#if VEC_C
#if BIAS
@group(0) @binding(5) var<storage, read> res: array<vec4<T>>;
#else
@group(0) @binding(4) var<storage, read> res: array<vec4<T>>;
#endif
#else
#if BIAS
@group(0) @binding(5) var<storage, read> res: array<T>;
#else
@group(0) @binding(4) var<storage, read> res: array<T>;
#endif
#endif
#endif

#include "gemm_tile.wgsl"

const LA: u32 = {{LA}}u;
const LB: u32 = {{LB}}u;

// Weight slot `e` of the tile at (co0, k0): four consecutive K values of one output channel.
fn load_a(e: u32, co0: u32, k0: u32) -> vec4<f32> {
    let co = co0 + e / TK4;
    let gk = k0 + 4u * (e % TK4);
    if (e >= TM * TK4 || co >= p.cout || gk >= p.k) { return vec4<f32>(0.0); }
#if QUANT
    return dequant4(co * p.wpr, p.k / 32u, gk);
#else
#if VEC_A
    return vec4<f32>(wt[(co * p.k + gk) / 4u]);
#else
    var v = vec4<f32>(0.0);
    for (var q = 0u; q < 4u; q++) {
        if (gk + q < p.k) { v[q] = f32(wt[co * p.k + gk + q]); }
    }
    return v;
#endif
#endif
}

// Input slot `e` of the tile at (px0, k0): one K row (input channel and kernel tap) at four
// consecutive output pixels.
fn load_b(e: u32, px0: u32, k0: u32, x_base: u32) -> vec4<f32> {
    let gk = k0 + e / TN4;
    let px = px0 + 4u * (e % TN4);
    if (e >= TK * TN4 || gk >= p.k || px >= p.p) { return vec4<f32>(0.0); }
#if POINTWISE
    return vec4<f32>(x[(x_base + gk * p.p + px) / 4u]);
#else
    let khw = p.kh * p.kw;
    let ci = gk / khw;
    let r = gk % khw;
    var v = vec4<f32>(0.0);
    for (var q = 0u; q < 4u; q++) {
        let o = px + q;
        let iy = i32((o / p.wo) * p.stride + r / p.kw) - i32(p.pad);
        let ix = i32((o % p.wo) * p.stride + r % p.kw) - i32(p.pad);
        if (o < p.p && iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w)) {
            v[q] = f32(x[x_base + (ci * p.h + u32(iy)) * p.w + u32(ix)]);
        }
    }
    return v;
#endif
}

fn store_b(buf: u32, e: u32, v: vec4<f32>) {
    if (e >= TK * TN4) { return; }
    Bs[buf * TK * TN4 + e] = vec4<S>(v);
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let co0 = wg.y * TM;
    let px0 = wg.x * TN;
    let x_base = wg.z * p.cin * p.h * p.w;

    var acc: array<vec4<f32>, RM * RN4>;
    var ra: array<vec4<f32>, LA>;
    var rb: array<vec4<f32>, LB>;
    for (var s = 0u; s < LA; s++) { store_a(0u, li + s * THREADS, load_a(li + s * THREADS, co0, 0u)); }
    for (var s = 0u; s < LB; s++) { store_b(0u, li + s * THREADS, load_b(li + s * THREADS, px0, 0u, x_base)); }
    workgroupBarrier();

    let tiles = (p.k + TK - 1u) / TK;
    for (var t = 0u; t < tiles; t++) {
        let buf = t % 2u;
        let more = t + 1u < tiles;
        let k0 = (t + 1u) * TK;
        if (more) {
            for (var s = 0u; s < LA; s++) { ra[s] = load_a(li + s * THREADS, co0, k0); }
            for (var s = 0u; s < LB; s++) { rb[s] = load_b(li + s * THREADS, px0, k0, x_base); }
        }
        accumulate_tile(buf, lid.x, lid.y, &acc);
        if (more) {
            for (var s = 0u; s < LA; s++) { store_a(buf ^ 1u, li + s * THREADS, ra[s]); }
            for (var s = 0u; s < LB; s++) { store_b(buf ^ 1u, li + s * THREADS, rb[s]); }
        }
        workgroupBarrier();
    }

    let y_base = wg.z * p.cout * p.p;
    for (var h = 0u; h < RM4; h++) {
        for (var r = 0u; r < 4u; r++) {
            let co = co0 + 4u * (lid.y + 16u * h) + r;
            if (co >= p.cout) { continue; }
            for (var g = 0u; g < RN4; g++) {
                let px = px0 + 4u * (lid.x + 16u * g);
                if (px >= p.p) { continue; }
                var v = acc[(h * 4u + r) * RN4 + g];
#if BIAS
#if BIAS_IMAGE
                v += vec4<f32>(f32(bias[wg.z * p.cout + co]));
#else
                v += vec4<f32>(f32(bias[co]));
#endif
#endif
                let o = y_base + co * p.p + px;
#if VEC_C
#if RESIDUAL
                v += vec4<f32>(res[o / 4u]);
#endif
                y[o / 4u] = vec4<T>(v);
#else
                for (var q = 0u; q < 4u; q++) {
                    if (px + q < p.p) {
#if RESIDUAL
                        v[q] += f32(res[o + q]);
#endif
                        y[o + q] = T(v[q]);
                    }
                }
#endif
            }
        }
    }
}
