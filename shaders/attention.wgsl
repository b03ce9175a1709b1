// Scaled dot-product attention, flash style: O = softmax(scale * Q K^T) V without ever storing
// the Nq x Nk score matrix. One thread per query row keeps its running max, running sum and an
// output accumulator; keys and values stream through workgroup memory BK rows at a time, and
// each tile rescales the accumulator once (online softmax).
//
// Q/K/V/O are addressed by (batch, head, row) strides, so the [B, N, heads*D] layout the
// projections produce is read in place, without permutes. HEAD_DIM, COLS and BK are compile-time
// so the per-thread arrays have static size; BK*(HEAD_DIM+COLS) floats fit WebGPU's 16 KiB default.
//
// Wide heads (the VAE's single 512-dim head) would need 2x512 floats per thread: more private
// memory than GPUs keep in registers (and than lavapipe computes correctly). There each workgroup
// produces COLS of the D output columns (grid.y = heads * D/COLS), recomputing the scores, and q
// is read from memory instead of registers (QREG off).

struct Params {
    nq: u32, nk: u32, heads: u32, scale: f32,
    q_bs: u32, q_hs: u32, q_rs: u32, k_bs: u32,
    k_hs: u32, k_rs: u32, v_bs: u32, v_hs: u32,
    v_rs: u32, o_bs: u32, o_hs: u32, o_rs: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<T>;
@group(0) @binding(2) var<storage, read> k: array<T>;
@group(0) @binding(3) var<storage, read> v: array<T>;
@group(0) @binding(4) var<storage, read_write> o: array<T>;

const D: u32 = {{HEAD_DIM}}u;
const DC: u32 = {{COLS}}u;
const BK: u32 = {{BK}}u;
const WG: u32 = 64u;
const MASKED: f32 = -3.0e38;

var<workgroup> Ks: array<f32, {{BK}} * {{HEAD_DIM}}>;
var<workgroup> Vs: array<f32, {{BK}} * {{COLS}}>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wg.x * WG + li;
    let h = wg.y / (D / DC);
    let c0 = (wg.y % (D / DC)) * DC;
    let b = wg.z;
    let live = i < p.nq;

    var acc: array<f32, DC>;
    for (var c = 0u; c < DC; c++) { acc[c] = 0.0; }
    let q_base = b * p.q_bs + h * p.q_hs + min(i, p.nq - 1u) * p.q_rs;
#if QREG
    var qr: array<f32, D>;
    for (var c = 0u; c < D; c++) { qr[c] = f32(q[q_base + c]) * p.scale; }
#endif
    var m = MASKED;
    var l = 0.0;

    var kv_end = p.nk;
#if CAUSAL
    // Keys past the workgroup's last query are masked for every thread: skip those tiles.
    kv_end = min(p.nk, wg.x * WG + WG);
#endif
    let k_base = b * p.k_bs + h * p.k_hs;
    let v_base = b * p.v_bs + h * p.v_hs;
    for (var t0 = 0u; t0 < kv_end; t0 += BK) {
        for (var e = li; e < BK * D; e += WG) {
            let j = t0 + e / D;
            var kv = 0.0;
            if (j < p.nk) { kv = f32(k[k_base + j * p.k_rs + e % D]); }
            Ks[e] = kv;
        }
        for (var e = li; e < BK * DC; e += WG) {
            let j = t0 + e / DC;
            var vv = 0.0;
            if (j < p.nk) { vv = f32(v[v_base + j * p.v_rs + c0 + e % DC]); }
            Vs[e] = vv;
        }
        workgroupBarrier();

        if (live) {
            var s: array<f32, BK>;
            var tile_max = MASKED;
            for (var j = 0u; j < BK; j++) {
                let kj = t0 + j;
                var ok = kj < p.nk;
#if CAUSAL
                ok = ok && kj <= i;
#endif
                var dot = MASKED;
                if (ok) {
                    dot = 0.0;
#if QREG
                    for (var c = 0u; c < D; c++) { dot = fma(qr[c], Ks[j * D + c], dot); }
#else
                    for (var c = 0u; c < D; c++) { dot = fma(f32(q[q_base + c]), Ks[j * D + c], dot); }
                    dot *= p.scale;
#endif
                }
                s[j] = dot;
                tile_max = max(tile_max, dot);
            }
            if (tile_max > MASKED) {
                let m_new = max(m, tile_max);
                let corr = exp(m - m_new);
                l *= corr;
                for (var c = 0u; c < DC; c++) { acc[c] *= corr; }
                for (var j = 0u; j < BK; j++) {
                    if (s[j] > MASKED) {
                        let pj = exp(s[j] - m_new);
                        l += pj;
                        for (var c = 0u; c < DC; c++) { acc[c] = fma(pj, Vs[j * DC + c], acc[c]); }
                    }
                }
                m = m_new;
            }
        }
        workgroupBarrier();
    }

    if (live) {
        let inv = 1.0 / l;
        let o_base = b * p.o_bs + h * p.o_hs + i * p.o_rs + c0;
        for (var c = 0u; c < DC; c++) { o[o_base + c] = T(acc[c] * inv); }
    }
}
