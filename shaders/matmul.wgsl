// Batched matmul C[b] = A[b] (M x K) * B[b] (K x N) (+ bias[N]), or with B stored transposed
// (N x K, the layout of nn.Linear weights), on the tiled core of gemm_tile.wgsl (TM x TN tiles,
// RM x RN outputs per thread, double-buffered K staging). Accumulates in f32.
//
// VEC_A / VEC_B / VEC_C: the operand is read (written) as vec4 along its contiguous axis; the
// host sets them only where that axis, its strides and offsets are multiples of 4. Batch strides
// may be 0 (one weight shared by all batches). QUANT reads a q8_0/q4_0 weight (transposed layout)
// and dequantizes four weights per word as they are staged, never expanding the matrix.
// `c_off`/`bias_off` place the output columns when a split weight is processed one chunk of rows
// at a time.

struct Params {
    m: u32, n: u32, k: u32, batch: u32,
    lda: u32, ldb: u32, ldc: u32, c_off: u32,
    a_bs: u32, b_bs: u32, c_bs: u32, bias_off: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
#if VEC_A
@group(0) @binding(1) var<storage, read> a: array<vec4<T>>;
#else
@group(0) @binding(1) var<storage, read> a: array<T>;
#endif
#if QUANT
// q8_0 / q4_0 weight, [N, K] rows repacked as u32 words; ldb = words per row.
@group(0) @binding(2) var<storage, read> bq: array<u32>;
const QWORDS: u32 = {{QWORDS}}u;
#include "quant.wgsl"
#else
#if VEC_B
@group(0) @binding(2) var<storage, read> b: array<vec4<T>>;
#else
@group(0) @binding(2) var<storage, read> b: array<T>;
#endif
#endif
#if VEC_C
@group(0) @binding(3) var<storage, read_write> c: array<vec4<T>>;
#else
@group(0) @binding(3) var<storage, read_write> c: array<T>;
#endif
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<T>;
#endif

#include "gemm_tile.wgsl"

const LA: u32 = {{LA}}u;
const LB: u32 = {{LB}}u;

// Four consecutive K values of A's row `gr` from `gk` (zeros past the edges).
fn load_a(gr: u32, gk: u32, base: u32) -> vec4<f32> {
    if (gr >= p.m || gk >= p.k) { return vec4<f32>(0.0); }
#if VEC_A
    return vec4<f32>(a[(base + gr * p.lda + gk) / 4u]);
#else
    var v = vec4<f32>(0.0);
    for (var q = 0u; q < 4u; q++) {
        if (gk + q < p.k) { v[q] = f32(a[base + gr * p.lda + gk + q]); }
    }
    return v;
#endif
}

// B's slot `e` of the tile at (col0, k0): four K values of one column (transposed and quantized
// weights) or four columns of one K row (plain B).
fn load_b(e: u32, col0: u32, k0: u32, base: u32) -> vec4<f32> {
#if TRANS_B
    let gn = col0 + e / TK4;
    let gk = k0 + 4u * (e % TK4);
    if (e >= TN * TK4 || gn >= p.n || gk >= p.k) { return vec4<f32>(0.0); }
#if QUANT
    return dequant4(gn * p.ldb, p.k / 32u, gk);
#else
#if VEC_B
    return vec4<f32>(b[(base + gn * p.ldb + gk) / 4u]);
#else
    var v = vec4<f32>(0.0);
    for (var q = 0u; q < 4u; q++) {
        if (gk + q < p.k) { v[q] = f32(b[base + gn * p.ldb + gk + q]); }
    }
    return v;
#endif
#endif
#else
    let gk = k0 + e / TN4;
    let gn = col0 + 4u * (e % TN4);
    if (e >= TK * TN4 || gn >= p.n || gk >= p.k) { return vec4<f32>(0.0); }
#if VEC_B
    return vec4<f32>(b[(base + gk * p.ldb + gn) / 4u]);
#else
    var v = vec4<f32>(0.0);
    for (var q = 0u; q < 4u; q++) {
        if (gn + q < p.n) { v[q] = f32(b[base + gk * p.ldb + gn + q]); }
    }
    return v;
#endif
#endif
}

fn store_b(buf: u32, e: u32, v: vec4<f32>) {
#if TRANS_B
    if (e >= TN * TK4) { return; }
    let cn = e / TK4;
    let kk = 4u * (e % TK4);
    for (var q = 0u; q < 4u; q++) { Bs[(buf * TK + kk + q) * TN4 + cn / 4u][cn % 4u] = S(v[q]); }
#else
    if (e >= TK * TN4) { return; }
    Bs[buf * TK * TN4 + e] = vec4<S>(v);
#endif
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row0 = wg.y * TM;
    let col0 = wg.x * TN;
    let a_base = wg.z * p.a_bs;
    let b_base = wg.z * p.b_bs;

    var acc: array<vec4<f32>, RM * RN4>;
    var ra: array<vec4<f32>, LA>;
    var rb: array<vec4<f32>, LB>;
    for (var s = 0u; s < LA; s++) {
        let e = li + s * THREADS;
        store_a(0u, e, load_a(row0 + e / TK4, 4u * (e % TK4), a_base));
    }
    for (var s = 0u; s < LB; s++) {
        let e = li + s * THREADS;
        store_b(0u, e, load_b(e, col0, 0u, b_base));
    }
    workgroupBarrier();

    let tiles = (p.k + TK - 1u) / TK;
    for (var t = 0u; t < tiles; t++) {
        let buf = t % 2u;
        let more = t + 1u < tiles;
        let k0 = (t + 1u) * TK;
        if (more) {
            for (var s = 0u; s < LA; s++) {
                let e = li + s * THREADS;
                ra[s] = load_a(row0 + e / TK4, k0 + 4u * (e % TK4), a_base);
            }
            for (var s = 0u; s < LB; s++) { rb[s] = load_b(li + s * THREADS, col0, k0, b_base); }
        }
        accumulate_tile(buf, lid.x, lid.y, &acc);
        if (more) {
            for (var s = 0u; s < LA; s++) { store_a(buf ^ 1u, li + s * THREADS, ra[s]); }
            for (var s = 0u; s < LB; s++) { store_b(buf ^ 1u, li + s * THREADS, rb[s]); }
        }
        workgroupBarrier();
    }

    let c_base = wg.z * p.c_bs;
    for (var h = 0u; h < RM4; h++) {
        for (var r = 0u; r < 4u; r++) {
            let gr = row0 + 4u * (lid.y + 16u * h) + r;
            if (gr >= p.m) { continue; }
            for (var g = 0u; g < RN4; g++) {
                let gn = col0 + 4u * (lid.x + 16u * g);
                if (gn >= p.n) { continue; }
                var v = acc[(h * 4u + r) * RN4 + g];
#if BIAS
                for (var q = 0u; q < 4u; q++) {
                    if (gn + q < p.n) { v[q] += f32(bias[p.bias_off + gn + q]); }
                }
#endif
#if VEC_C
                c[(c_base + gr * p.ldc + p.c_off + gn) / 4u] = vec4<T>(v);
#else
                for (var q = 0u; q < 4u; q++) {
                    if (gn + q < p.n) { c[c_base + gr * p.ldc + p.c_off + gn + q] = T(v[q]); }
                }
#endif
            }
        }
    }
}
