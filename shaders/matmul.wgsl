// Batched matmul C[b] = A[b] (M x K) * B[b] (K x N) (+ bias[N]), or with B stored transposed
// (N x K, the layout of nn.Linear weights). 64x64 output tile per workgroup, 16x16 threads each
// computing a 4x4 block, K staged through workgroup memory 16 at a time. Accumulates in f32.
//
// Batch strides may be 0 (one weight shared by all batches). QUANT reads a q8_0/q4_0 weight
// (transposed layout) and dequantizes each element as it is staged, never expanding the matrix. `c_off`/`bias_off` place the output
// columns when a split weight is processed one chunk of rows at a time.

struct Params {
    m: u32, n: u32, k: u32, batch: u32,
    lda: u32, ldb: u32, ldc: u32, c_off: u32,
    a_bs: u32, b_bs: u32, c_bs: u32, bias_off: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<T>;
#if QUANT
// q8_0 / q4_0 weight, [N, K] rows repacked as u32 words; ldb = words per row.
@group(0) @binding(2) var<storage, read> bq: array<u32>;
const QWORDS: u32 = {{QWORDS}}u;
#include "quant.wgsl"
#else
@group(0) @binding(2) var<storage, read> b: array<T>;
#endif
@group(0) @binding(3) var<storage, read_write> c: array<T>;
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<T>;
#endif

#include "gemm_tile.wgsl"

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row0 = wg.y * TM;
    let col0 = wg.x * TN;
    let a_base = wg.z * p.a_bs;
    let b_base = wg.z * p.b_bs;

    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }

    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var i = 0u; i < 4u; i++) {
            let e = li + i * 256u;
            let r = e / TK;
            let kk = e % TK;
            let gr = row0 + r;
            let gk = k0 + kk;
            var v = 0.0;
            if (gr < p.m && gk < p.k) { v = f32(a[a_base + gr * p.lda + gk]); }
            As[kk * TM + r] = v;
        }
        for (var i = 0u; i < 4u; i++) {
            let e = li + i * 256u;
#if QUANT
            let cn = e / TK;
            let kk = e % TK;
            let gn = col0 + cn;
            let gk = k0 + kk;
            var v = 0.0;
            if (gn < p.n && gk < p.k) { v = dequant(gn * p.ldb, p.k / 32u, gk); }
#else
#if TRANS_B
            let cn = e / TK;
            let kk = e % TK;
            let gn = col0 + cn;
            let gk = k0 + kk;
            var v = 0.0;
            if (gn < p.n && gk < p.k) { v = f32(b[b_base + gn * p.ldb + gk]); }
#else
            let kk = e / TN;
            let cn = e % TN;
            let gn = col0 + cn;
            let gk = k0 + kk;
            var v = 0.0;
            if (gn < p.n && gk < p.k) { v = f32(b[b_base + gk * p.ldb + gn]); }
#endif
#endif
            Bs[kk * TN + cn] = v;
        }
        workgroupBarrier();
        accumulate_tile(lid, &acc);
        workgroupBarrier();
    }

    let c_base = wg.z * p.c_bs;
    for (var i = 0u; i < 4u; i++) {
        let gr = row0 + lid.y + 16u * i;
        if (gr >= p.m) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let gn = col0 + lid.x + 16u * j;
            if (gn >= p.n) { continue; }
            var v = acc[i * 4u + j];
#if BIAS
            v += f32(bias[p.bias_off + gn]);
#endif
            c[c_base + gr * p.ldc + p.c_off + gn] = T(v);
        }
    }
}
