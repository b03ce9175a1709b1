// The register-blocked core shared by matmul and conv2d. A TM x TN output tile per workgroup of
// 16x16 threads; each thread owns RM x RN outputs: row groups of 4 (rows 4 (ty + 16 h) + r) by
// column groups of 4 (columns 4 (tx + 16 g) + q), so its outputs go out as vec4 stores along N.
//
// K is staged TK at a time through two workgroup buffers (double buffering): while the tile in
// one is multiplied, the next tile's global loads are already in registers and are stored into
// the other, so each K step costs one barrier and the loads' latency hides behind the FMAs.
// The staging is k-major with 4 rows (or 4 columns) per vec4, so the inner loop reads RM/4 + RN/4
// vec4s per k (neighbouring threads read neighbouring vec4s: no bank conflicts) for RM x RN FMAs.
//
// F16STAGE stages the tiles in f16, which is exact for plain f16 tensors and halves the workgroup
// memory (so bigger tiles keep K 16 deep); dequantized weights stage in f32 (d * q needs more
// than f16's 11 bits) unless F16MATH rounds them anyway. F16MATH also multiplies in f16 and sums 4 k-steps in
// f16 before adding them to the f32 accumulators, so f16 ALUs (2x packed on most GPUs) do the
// work; the products' rounding makes it ~4x less accurate than f32 math on the same f16 inputs
// (measured: tests/ops.rs), so it is a policy choice, off by default.
//
// The including shader defines TM, TN, TK, RM, RN (RM, RN in {4, 8}; TM = 64 RM / 4, TN = 64 RN / 4)
// and F16MATH.

const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const TK: u32 = {{TK}}u;
const RM: u32 = {{RM}}u;
const RN: u32 = {{RN}}u;
const TM4: u32 = TM / 4u;
const TK4: u32 = TK / 4u;
const TN4: u32 = TN / 4u;
const RM4: u32 = RM / 4u;
const RN4: u32 = RN / 4u;
const THREADS: u32 = 256u;

#if F16STAGE
alias S = f16;
#else
alias S = f32;
#endif

var<workgroup> As: array<vec4<S>, 2u * TK * TM4>; // [buf][k][row / 4], 4 rows per vec4
var<workgroup> Bs: array<vec4<S>, 2u * TK * TN4>; // [buf][k][col / 4], 4 columns per vec4

// Adds the product of the tiles staged in buffer `buf` to this thread's accumulators
// (acc[(h * 4 + r) * RN4 + g] holds rows 4 (ty + 16 h) + r, columns 4 (tx + 16 g) + 0..3).
fn accumulate_tile(buf: u32, tx: u32, ty: u32, acc: ptr<function, array<vec4<f32>, RM * RN4>>) {
#if F16MATH
    for (var k0 = 0u; k0 < TK; k0 += 4u) {
        var part: array<vec4<f16>, RM * RN4>;
        for (var kk = k0; kk < k0 + 4u; kk++) {
            let ab = (buf * TK + kk) * TM4 + ty;
            let bb = (buf * TK + kk) * TN4 + tx;
            for (var g = 0u; g < RN4; g++) {
                let b = Bs[bb + 16u * g];
                for (var h = 0u; h < RM4; h++) {
                    let a = As[ab + 16u * h];
                    for (var r = 0u; r < 4u; r++) {
                        let i = (h * 4u + r) * RN4 + g;
                        part[i] = fma(vec4<f16>(a[r]), b, part[i]);
                    }
                }
            }
        }
        for (var i = 0u; i < RM * RN4; i++) { (*acc)[i] += vec4<f32>(part[i]); }
    }
#else
    for (var kk = 0u; kk < TK; kk++) {
        let ab = (buf * TK + kk) * TM4 + ty;
        let bb = (buf * TK + kk) * TN4 + tx;
        var b: array<vec4<f32>, RN4>;
        for (var g = 0u; g < RN4; g++) { b[g] = vec4<f32>(Bs[bb + 16u * g]); }
        for (var h = 0u; h < RM4; h++) {
            let a = vec4<f32>(As[ab + 16u * h]);
            for (var r = 0u; r < 4u; r++) {
                for (var g = 0u; g < RN4; g++) {
                    let i = (h * 4u + r) * RN4 + g;
                    (*acc)[i] = fma(vec4<f32>(a[r]), b[g], (*acc)[i]);
                }
            }
        }
    }
#endif
}

// Stages one vec4 of A (4 consecutive k of row e / TK4) k-major, as accumulate_tile reads it.
fn store_a(buf: u32, e: u32, v: vec4<f32>) {
    if (e >= TM * TK4) { return; }
    let r = e / TK4;
    let kk = 4u * (e % TK4);
    for (var q = 0u; q < 4u; q++) { As[(buf * TK + kk + q) * TM4 + r / 4u][r % 4u] = S(v[q]); }
}
