// Scaled dot-product attention, flash style: O = softmax(scale * Q K^T) V without ever storing
// the Nq x Nk score matrix. One thread per query row keeps its running max, running sum and an
// output accumulator; keys and values stream through workgroup memory BK rows at a time, and
// each tile rescales the accumulator once (online softmax).
//
// Q/K/V/O are addressed by (batch, head, row) strides, so the [B, N, heads*D] layout the
// projections produce is read in place, without permutes. HEAD_DIM, COLS and BK are compile-time
// so the per-thread arrays have static size; the K/V tiles (BK*(D4+DC4) vec4s) fit WebGPU's
// 16 KiB default. Rows are handled as vec4s; a head dim that is not a multiple of 4 is padded
// with zeros (PAD_D / PAD_C), so the loops never depend on it.
//
// Wide heads (the VAE's single 512-dim head) would need 2x512 floats per thread: more private
// memory than GPUs keep in registers. There each workgroup produces COLS of the D output columns
// (grid.y = heads * D/COLS), recomputing the scores, and q is read from memory instead of
// registers (QREG off).
//
// Loop budget: Mesa's llvmpipe/lavapipe gives an invocation 65535 loop iterations in total, over
// all its loops; past that every loop silently exits after one iteration (wrong results, no
// error). So the loops here do 4-16 multiply-adds per iteration, the per-tile bookkeeping is
// fused into them, and one dispatch handles the keys [k_begin, k_end) only: the host sizes that
// range from the same iteration count (src/ops/attention.rs, `loop_iterations_per_tile`; keep
// the two in step) and, when one range is not enough (CHUNKED), runs several dispatches that
// carry (acc, m, l) per row through `st` in f32.

struct Params {
    nq: u32, nk: u32, heads: u32, scale: f32,
    q_bs: u32, q_hs: u32, q_rs: u32, k_bs: u32,
    k_hs: u32, k_rs: u32, v_bs: u32, v_hs: u32,
    v_rs: u32, o_bs: u32, o_hs: u32, o_rs: u32,
    // Keys this dispatch handles, and whether it is the first / last of the key chunks.
    k_begin: u32, k_end: u32, first: u32, last: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<T>;
@group(0) @binding(2) var<storage, read> k: array<T>;
@group(0) @binding(3) var<storage, read> v: array<T>;
@group(0) @binding(4) var<storage, read_write> o: array<T>;
#if CHUNKED
// Per (batch, grid.y, row): DC4 vec4s of the unnormalised accumulator, then (m, l, 0, 0).
@group(0) @binding(5) var<storage, read_write> st: array<vec4<f32>>;
#endif

const D: u32 = {{HEAD_DIM}}u;
const DC: u32 = {{COLS}}u;
const D4: u32 = {{HEAD_DIM4}}u;
const DC4: u32 = {{COLS4}}u;
const BK: u32 = {{BK}}u;
const BK4: u32 = {{BK}}u / 4u;
const WG: u32 = 64u;
const MASKED: f32 = -3.0e38;

// Key j of the tile, columns 4c..4c+3, at j * D4 + c (values: j * DC4 + c).
var<workgroup> Ks: array<vec4<f32>, {{BK}} * {{HEAD_DIM4}}>;
var<workgroup> Vs: array<vec4<f32>, {{BK}} * {{COLS4}}>;

// Four consecutive values of a row from column c (a multiple of 4) at index a; zero past D.
fn load_q(a: u32, c: u32) -> vec4<f32> {
#if PAD_D
    var r = vec4(f32(q[a]), 0.0, 0.0, 0.0);
    if (c + 1u < D) { r.y = f32(q[a + 1u]); }
    if (c + 2u < D) { r.z = f32(q[a + 2u]); }
    if (c + 3u < D) { r.w = f32(q[a + 3u]); }
    return r;
#else
    return vec4(f32(q[a]), f32(q[a + 1u]), f32(q[a + 2u]), f32(q[a + 3u]));
#endif
}

fn load_k(a: u32, c: u32) -> vec4<f32> {
#if PAD_D
    var r = vec4(f32(k[a]), 0.0, 0.0, 0.0);
    if (c + 1u < D) { r.y = f32(k[a + 1u]); }
    if (c + 2u < D) { r.z = f32(k[a + 2u]); }
    if (c + 3u < D) { r.w = f32(k[a + 3u]); }
    return r;
#else
    return vec4(f32(k[a]), f32(k[a + 1u]), f32(k[a + 2u]), f32(k[a + 3u]));
#endif
}

// Zero past column DC of the slice.
fn load_v(a: u32, c: u32) -> vec4<f32> {
#if PAD_C
    var r = vec4(f32(v[a]), 0.0, 0.0, 0.0);
    if (c + 1u < DC) { r.y = f32(v[a + 1u]); }
    if (c + 2u < DC) { r.z = f32(v[a + 2u]); }
    if (c + 3u < DC) { r.w = f32(v[a + 3u]); }
    return r;
#else
    return vec4(f32(v[a]), f32(v[a + 1u]), f32(v[a + 2u]), f32(v[a + 3u]));
#endif
}

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = wg.x * WG + li;
    let h = wg.y / (D / DC);
    let c0 = (wg.y % (D / DC)) * DC;
    let b = wg.z;
    let live = i < p.nq;

    var acc: array<vec4<f32>, DC4>;
    var m = MASKED;
    var l = 0.0;
#if CHUNKED
    let st_base = ((b * nwg.y + wg.y) * p.nq + min(i, p.nq - 1u)) * (DC4 + 1u);
    if (p.first == 0u) {
        for (var c = 0u; c < DC4; c++) { acc[c] = st[st_base + c]; }
        let ml = st[st_base + DC4];
        m = ml.x;
        l = ml.y;
    } else {
        for (var c = 0u; c < DC4; c++) { acc[c] = vec4(0.0); }
    }
#else
    for (var c = 0u; c < DC4; c++) { acc[c] = vec4(0.0); }
#endif
    let q_base = b * p.q_bs + h * p.q_hs + min(i, p.nq - 1u) * p.q_rs;
#if QREG
    var qr: array<vec4<f32>, D4>;
    for (var c = 0u; c < D4; c++) { qr[c] = load_q(q_base + 4u * c, 4u * c) * p.scale; }
#endif

    var kv_end = min(p.k_end, p.nk);
#if CAUSAL
    // Keys past the workgroup's last query are masked for every thread: skip those tiles.
    kv_end = min(kv_end, wg.x * WG + WG);
#endif
    let k_base = b * p.k_bs + h * p.k_hs;
    let v_base = b * p.v_bs + h * p.v_hs + c0;
    for (var t0 = p.k_begin; t0 < kv_end; t0 += BK) {
        for (var e = li; e < BK * D4; e += WG) {
            let j = t0 + e / D4;
            let c = 4u * (e % D4);
            var kv = vec4(0.0);
            if (j < kv_end) { kv = load_k(k_base + j * p.k_rs + c, c); }
            Ks[e] = kv;
        }
        for (var e = li; e < BK * DC4; e += WG) {
            let j = t0 + e / DC4;
            let c = 4u * (e % DC4);
            var vv = vec4(0.0);
            if (j < kv_end) { vv = load_v(v_base + j * p.v_rs + c, c); }
            Vs[e] = vv;
        }
        workgroupBarrier();

        if (live) {
            // Scores of keys t0 + 4*j4 .. +3, masked.
            var s: array<vec4<f32>, BK4>;
            var tile_max = MASKED;
            for (var j4 = 0u; j4 < BK4; j4++) {
                let r = 4u * j4 * D4;
                var dot4 = vec4(0.0);
                for (var c = 0u; c < D4; c++) {
#if QREG
                    let qv = qr[c];
#else
                    let qv = load_q(q_base + 4u * c, 4u * c);
#endif
                    dot4 += vec4(
                        dot(qv, Ks[r + c]),
                        dot(qv, Ks[r + D4 + c]),
                        dot(qv, Ks[r + 2u * D4 + c]),
                        dot(qv, Ks[r + 3u * D4 + c]),
                    );
                }
#if QREG
                var sv = dot4;
#else
                var sv = dot4 * p.scale;
#endif
                let kj = vec4(t0 + 4u * j4) + vec4(0u, 1u, 2u, 3u);
#if CAUSAL
                let ok = (kj < vec4(kv_end)) & (kj <= vec4(i));
#else
                let ok = kj < vec4(kv_end);
#endif
                sv = select(vec4(MASKED), sv, ok);
                s[j4] = sv;
                tile_max = max(tile_max, max(max(sv.x, sv.y), max(sv.z, sv.w)));
            }
            if (tile_max > MASKED) {
                let m_new = max(m, tile_max);
                let corr = exp(m - m_new);
                l *= corr;
                for (var c = 0u; c < DC4; c++) { acc[c] *= corr; }
                for (var j4 = 0u; j4 < BK4; j4++) {
                    let sv = s[j4];
                    let pj = select(vec4(0.0), exp(sv - vec4(m_new)), sv > vec4(MASKED));
                    l += pj.x + pj.y + pj.z + pj.w;
                    let r = 4u * j4 * DC4;
                    for (var c = 0u; c < DC4; c++) {
                        acc[c] += pj.x * Vs[r + c] + pj.y * Vs[r + DC4 + c] + pj.z * Vs[r + 2u * DC4 + c]
                            + pj.w * Vs[r + 3u * DC4 + c];
                    }
                }
                m = m_new;
            }
        }
        workgroupBarrier();
    }

    if (!live) {
        return;
    }
#if CHUNKED
    if (p.last == 0u) {
        for (var c = 0u; c < DC4; c++) { st[st_base + c] = acc[c]; }
        st[st_base + DC4] = vec4(m, l, 0.0, 0.0);
        return;
    }
#endif
    let inv = 1.0 / l;
    let o_base = b * p.o_bs + h * p.o_hs + i * p.o_rs + c0;
    for (var c = 0u; c < DC4; c++) {
        let r = acc[c] * inv;
        let a = o_base + 4u * c;
#if PAD_C
        o[a] = T(r.x);
        if (4u * c + 1u < DC) { o[a + 1u] = T(r.y); }
        if (4u * c + 2u < DC) { o[a + 2u] = T(r.z); }
        if (4u * c + 3u < DC) { o[a + 3u] = T(r.w); }
#else
        o[a] = T(r.x);
        o[a + 1u] = T(r.y);
        o[a + 2u] = T(r.z);
        o[a + 3u] = T(r.w);
#endif
    }
}
