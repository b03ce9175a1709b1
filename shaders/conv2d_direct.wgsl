// conv2d (NCHW, weights [Cout, Cin, KH, KW]) for CPU adapters (Mesa llvmpipe / lavapipe): no
// workgroup memory and no barriers (llvmpipe runs barriers as coroutine switches). On llvmpipe
// every storage load whose address varies per lane costs a scalar loop over the SIMD lanes, so
// what counts is loads per FMA: each invocation owns a block of COB output channels (4, 8, 16)
// x PXB output pixels (1, 2, 4) and per K step loads COB weights + PXB inputs for COB*PXB FMAs.
// Invocations are numbered over (channel block, pixel block) with pixels fastest and flattened
// over the batch, so small images and small Cout leave no lanes idle; an invocation's pixels are
// `s` apart. K = Cin*KH*KW is looped straight from global memory, taps (KH*KW) outermost so a
// tap's bounds are worked out once. Loop iterations per invocation: Cin*KH*KW + KH*KW, well
// under llvmpipe's 65535. Block sizes are picked in src/ops/conv2d.rs (`direct_block`).

struct Params {
    cin: u32, h: u32, w: u32, cout: u32,
    ho: u32, wo: u32, kh: u32, kw: u32,
    stride: u32, pad: u32, k: u32, p: u32,
    wpr: u32, n: u32, s: u32, inv: u32,
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

const WG: u32 = 64u;
const COB: u32 = {{COB}}u; // output channels per invocation: 4, 8 (G2) or 16 (G2, G4)
const PXB: u32 = {{PXB}}u; // output pixels per invocation: 1, 2 (P2) or 4 (P2, P4)

// One output pixel of the flattened batch: where its image starts in x and y, its position.
struct Pix { xb: u32, yb: u32, oy: u32, ox: u32, img: u32, ok: bool };

fn pixel(g: u32) -> Pix {
    let ok = g < p.n * p.p;
    let gc = select(0u, g, ok);
    let img = gc / p.p;
    let px = gc % p.p;
    return Pix(img * p.cin * p.h * p.w, img * p.cout * p.p + px, px / p.wo, px % p.wo, img, ok);
}

// Input index of channel 0 under tap (ky, kx), clamped in range, and whether it is inside.
struct Tap { idx: u32, ok: bool };

fn tap(q: Pix, ky: u32, kx: u32) -> Tap {
    let iy = i32(q.oy * p.stride + ky) - i32(p.pad);
    let ix = i32(q.ox * p.stride + kx) - i32(p.pad);
    let ok = q.ok && iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);
    let cy = u32(clamp(iy, 0, i32(p.h) - 1));
    let cx = u32(clamp(ix, 0, i32(p.w) - 1));
    return Tap(q.xb + cy * p.w + cx, ok);
}

// Weights of output channels c (already clamped below cout) at reduction index k.
fn wvec(c: vec4<u32>, k: u32) -> vec4<f32> {
#if QUANT
    let nb = p.k / 32u;
    return vec4<f32>(dequant(c.x * p.wpr, nb, k), dequant(c.y * p.wpr, nb, k),
                     dequant(c.z * p.wpr, nb, k), dequant(c.w * p.wpr, nb, k));
#else
    return vec4<f32>(f32(wt[c.x * p.k + k]), f32(wt[c.y * p.k + k]),
                     f32(wt[c.z * p.k + k]), f32(wt[c.w * p.k + k]));
#endif
}

fn store(q: Pix, c: vec4<u32>, acc: vec4<f32>) {
    if (!q.ok) { return; }
    for (var j = 0u; j < 4u; j++) {
        let co = c[j];
        if (co < p.cout) {
            var v = acc[j];
#if BIAS
#if BIAS_IMAGE
            v += f32(bias[q.img * p.cout + co]);
#else
            v += f32(bias[co]);
#endif
#endif
#if RESIDUAL
            v += f32(res[q.yb + co * p.p]);
#endif
            y[q.yb + co * p.p] = T(v);
        }
    }
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let hw = p.h * p.w;
    let khw = p.kh * p.kw;
    let t = (wg.x + wg.y * nwg.x) * WG + li;
    if (t >= p.inv) { return; }
    let co0 = (t / p.s) * COB;
    let g0 = t % p.s;
    let q0 = pixel(g0 + 0u * WG);
#if P2
    let q1 = pixel(g0 + 1u * p.s);
#endif
#if P4
    let q2 = pixel(g0 + 2u * p.s);
#endif
#if P4
    let q3 = pixel(g0 + 3u * p.s);
#endif
    let last = vec4<u32>(p.cout - 1u);
    let c0 = vec4<u32>(co0) + vec4<u32>(0u, 1u, 2u, 3u);
    let l0 = min(c0, last);
    var a00 = vec4<f32>(0.0);
#if P2
    var a01 = vec4<f32>(0.0);
#endif
#if P4
    var a02 = vec4<f32>(0.0);
#endif
#if P4
    var a03 = vec4<f32>(0.0);
#endif
#if G2
    let c1 = c0 + vec4<u32>(4u);
    let l1 = min(c1, last);
#endif
#if G2
    var a10 = vec4<f32>(0.0);
#endif
#if G2
#if P2
    var a11 = vec4<f32>(0.0);
#endif
#endif
#if G2
#if P4
    var a12 = vec4<f32>(0.0);
#endif
#endif
#if G2
#if P4
    var a13 = vec4<f32>(0.0);
#endif
#endif
#if G4
    let c2 = c0 + vec4<u32>(8u);
    let l2 = min(c2, last);
#endif
#if G4
    var a20 = vec4<f32>(0.0);
#endif
#if G4
#if P2
    var a21 = vec4<f32>(0.0);
#endif
#endif
#if G4
#if P4
    var a22 = vec4<f32>(0.0);
#endif
#endif
#if G4
#if P4
    var a23 = vec4<f32>(0.0);
#endif
#endif
#if G4
    let c3 = c0 + vec4<u32>(12u);
    let l3 = min(c3, last);
#endif
#if G4
    var a30 = vec4<f32>(0.0);
#endif
#if G4
#if P2
    var a31 = vec4<f32>(0.0);
#endif
#endif
#if G4
#if P4
    var a32 = vec4<f32>(0.0);
#endif
#endif
#if G4
#if P4
    var a33 = vec4<f32>(0.0);
#endif
#endif

    for (var r = 0u; r < khw; r++) {
        let ky = r / p.kw;
        let kx = r % p.kw;
        let t0 = tap(q0, ky, kx);
#if P2
        let t1 = tap(q1, ky, kx);
#endif
#if P4
        let t2 = tap(q2, ky, kx);
#endif
#if P4
        let t3 = tap(q3, ky, kx);
#endif
        for (var ci = 0u; ci < p.cin; ci++) {
            let k = ci * khw + r;
            let xo = ci * hw;
            let x0 = vec4<f32>(select(0.0, f32(x[t0.idx + xo]), t0.ok));
#if P2
            let x1 = vec4<f32>(select(0.0, f32(x[t1.idx + xo]), t1.ok));
#endif
#if P4
            let x2 = vec4<f32>(select(0.0, f32(x[t2.idx + xo]), t2.ok));
#endif
#if P4
            let x3 = vec4<f32>(select(0.0, f32(x[t3.idx + xo]), t3.ok));
#endif
            let w0 = wvec(l0, k);
            a00 = fma(x0, w0, a00);
#if P2
            a01 = fma(x1, w0, a01);
#endif
#if P4
            a02 = fma(x2, w0, a02);
#endif
#if P4
            a03 = fma(x3, w0, a03);
#endif
#if G2
            let w1 = wvec(l1, k);
#endif
#if G2
            a10 = fma(x0, w1, a10);
#endif
#if G2
#if P2
            a11 = fma(x1, w1, a11);
#endif
#endif
#if G2
#if P4
            a12 = fma(x2, w1, a12);
#endif
#endif
#if G2
#if P4
            a13 = fma(x3, w1, a13);
#endif
#endif
#if G4
            let w2 = wvec(l2, k);
#endif
#if G4
            a20 = fma(x0, w2, a20);
#endif
#if G4
#if P2
            a21 = fma(x1, w2, a21);
#endif
#endif
#if G4
#if P4
            a22 = fma(x2, w2, a22);
#endif
#endif
#if G4
#if P4
            a23 = fma(x3, w2, a23);
#endif
#endif
#if G4
            let w3 = wvec(l3, k);
#endif
#if G4
            a30 = fma(x0, w3, a30);
#endif
#if G4
#if P2
            a31 = fma(x1, w3, a31);
#endif
#endif
#if G4
#if P4
            a32 = fma(x2, w3, a32);
#endif
#endif
#if G4
#if P4
            a33 = fma(x3, w3, a33);
#endif
#endif
        }
    }

    store(q0, c0, a00);
#if P2
    store(q1, c0, a01);
#endif
#if P4
    store(q2, c0, a02);
#endif
#if P4
    store(q3, c0, a03);
#endif
#if G2
    store(q0, c1, a10);
#endif
#if G2
#if P2
    store(q1, c1, a11);
#endif
#endif
#if G2
#if P4
    store(q2, c1, a12);
#endif
#endif
#if G2
#if P4
    store(q3, c1, a13);
#endif
#endif
#if G4
    store(q0, c2, a20);
#endif
#if G4
#if P2
    store(q1, c2, a21);
#endif
#endif
#if G4
#if P4
    store(q2, c2, a22);
#endif
#endif
#if G4
#if P4
    store(q3, c2, a23);
#endif
#endif
#if G4
    store(q0, c3, a30);
#endif
#if G4
#if P2
    store(q1, c3, a31);
#endif
#endif
#if G4
#if P4
    store(q2, c3, a32);
#endif
#endif
#if G4
#if P4
    store(q3, c3, a33);
#endif
#endif
}
