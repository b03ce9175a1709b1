// conv2d (NCHW, weights [Cout, Cin, KH, KW]) as an implicit GEMM: M = Cout, N = Ho*Wo pixels,
// K = Cin*KH*KW. The im2col matrix is never built; each B tile is gathered from the input with
// zero padding. Same 64x64x16 tiling and 4x4 register blocks as matmul. One image per wg.z.

struct Params {
    cin: u32, h: u32, w: u32, cout: u32,
    ho: u32, wo: u32, kh: u32, kw: u32,
    stride: u32, pad: u32, k: u32, p: u32,
    wpr: u32, _p0: u32, _p1: u32, _p2: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
#if QUANT
// q8_0 / q4_0 weight, [Cout, K] rows repacked as u32 words (wpr per row).
@group(0) @binding(2) var<storage, read> bq: array<u32>;
const QWORDS: u32 = {{QWORDS}}u;
#include "quant.wgsl"
#else
@group(0) @binding(2) var<storage, read> wt: array<T>;
#endif
@group(0) @binding(3) var<storage, read_write> y: array<T>;
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<T>;
#endif
// The residual added in the epilogue (a ResNet block's skip): the output's shape, read at the
// output's index. Its binding follows the bias, when there is one.
#if RESIDUAL
#if BIAS
@group(0) @binding(5) var<storage, read> res: array<T>;
#else
@group(0) @binding(4) var<storage, read> res: array<T>;
#endif
#endif

#include "gemm_tile.wgsl"

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let co0 = wg.y * TM;
    let px0 = wg.x * TN;
    let x_base = wg.z * p.cin * p.h * p.w;
    let khw = p.kh * p.kw;

    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }

    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var i = 0u; i < 4u; i++) {
            let e = li + i * 256u;
            let r = e / TK;
            let kk = e % TK;
            let co = co0 + r;
            let gk = k0 + kk;
            var v = 0.0;
#if QUANT
            if (co < p.cout && gk < p.k) { v = dequant(co * p.wpr, p.k / 32u, gk); }
#else
            if (co < p.cout && gk < p.k) { v = f32(wt[co * p.k + gk]); }
#endif
            As[kk * TM + r] = v;
        }
        for (var i = 0u; i < 4u; i++) {
            let e = li + i * 256u;
            let kk = e / TN;
            let cn = e % TN;
            let px = px0 + cn;
            let gk = k0 + kk;
            var v = 0.0;
            if (px < p.p && gk < p.k) {
                let ci = gk / khw;
                let r = gk % khw;
                let iy = i32((px / p.wo) * p.stride + r / p.kw) - i32(p.pad);
                let ix = i32((px % p.wo) * p.stride + r % p.kw) - i32(p.pad);
                if (iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w)) {
                    v = f32(x[x_base + (ci * p.h + u32(iy)) * p.w + u32(ix)]);
                }
            }
            Bs[kk * TN + cn] = v;
        }
        workgroupBarrier();
        accumulate_tile(lid, &acc);
        workgroupBarrier();
    }

    let y_base = wg.z * p.cout * p.p;
    for (var i = 0u; i < 4u; i++) {
        let co = co0 + lid.y + 16u * i;
        if (co >= p.cout) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let px = px0 + lid.x + 16u * j;
            if (px >= p.p) { continue; }
            var v = acc[i * 4u + j];
#if BIAS
            v += f32(bias[co]);
#endif
#if RESIDUAL
            v += f32(res[y_base + co * p.p + px]);
#endif
            y[y_base + co * p.p + px] = T(v);
        }
    }
}
