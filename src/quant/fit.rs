//! The q4_0 / q3_0 scale search behind `quantize_fit`: per block, 34 scale candidates and their
//! least-squares refinements, each rounded to f16 as stored, the one of least squared error kept.
//! `L` is half the number of levels (8 for q4_0's -8..=7, 4 for q3_0's -4..=3).
//!
//! It is written to run across candidates in vector lanes (8: AVX2's width, two SIMD128 vectors
//! in wasm) with no branches in the inner loops, and every lane's sums are taken in element
//! order, so the bytes equal the candidate-by-candidate form (`tests::fit_one_by_one`) whatever
//! the lane width. Levels are first computed from `v * (1/d)`, a multiply instead of a divide;
//! where that product lies so close to a rounding threshold that the quotient `v / d` might fall
//! on the other side, the vector is computed again with the division, so the result is always the
//! division's.

use super::half16::round_f16;
use super::{QuantFormat, BLOCK};

/// Fits every block of `x` into the q4_0 or q3_0 blocks `out` (q8_0 is not fitted), with the
/// widest vectors the CPU has (the same operations in every lane width, so the same bytes).
pub(super) fn fit_range(format: QuantFormat, x: &[f32], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe { fit_range_avx2(format, x, out) };
        return;
    }
    fit_range_plain(format, x, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fit_range_avx2(format: QuantFormat, x: &[f32], out: &mut [u8]) {
    fit_range_plain(format, x, out)
}

#[inline(always)]
fn fit_range_plain(format: QuantFormat, x: &[f32], out: &mut [u8]) {
    for (b, blk) in x.chunks_exact(BLOCK).zip(out.chunks_exact_mut(format.block_bytes())) {
        let b: &[f32; BLOCK] = b.try_into().expect("a whole block");
        if format == QuantFormat::Q3_0 {
            let (d, q) = fit_block::<4>(b);
            blk[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
            blk[2..].copy_from_slice(&super::pack_q3(&q.map(|l| (l + 4) as u8)));
        } else {
            let (d, q) = fit_block::<8>(b);
            blk[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
            for j in 0..16 {
                blk[2 + j] = (q[j] + 8) as u8 | (((q[j + 16] + 8) as u8) << 4);
            }
        }
    }
}

/// How many threads fit `blocks` blocks: one per core natively once a tensor is large enough
/// to pay for spawning them (a block costs about a microsecond); one in wasm.
pub(super) fn threads(blocks: usize) -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.min(blocks / 4096).max(1)
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = blocks;
        1
    }
}

/// Scale candidates per block: the reference (the extreme value at level -L, or at L - 1), then
/// L - 1 .. L + 0.5 in steps of 0.1 around both.
const CANDIDATES: usize = 34;
/// Lanes evaluated together (AVX2's width; two SIMD128 vectors in wasm).
const LANES: usize = 8;
const CAND_PAD: usize = CANDIDATES.div_ceil(LANES) * LANES;
const DS_PAD: usize = (2 * CANDIDATES).div_ceil(LANES) * LANES;

/// The level of `v` at scale `d` as a float: `round(clamp(v / d, -L, L - 1))` with `f32::round`'s
/// ties away from zero, 0 for NaN or `d == 0`, exactly as
/// `(v / d).round().clamp(-L, L - 1) as i32` (rounding is monotone and fixes the integer bounds,
/// so clamping first changes nothing), in float operations every SIMD width has: adding and
/// subtracting 1.5 * 2^23 rounds |c| <= L to the nearest integer (ties to even), and ties are
/// then moved away from zero.
#[inline(always)]
fn level<const L: i32>(v: f32, d: f32) -> f32 {
    level_of::<L>(v / d, d)
}

/// `y.max(lo).min(hi)` (NaN becomes `lo`) as comparisons and selects: `f32::max` keeps the
/// non-NaN operand, which wasm's `f32.max` does not, so in wasm it is a call to `fmaxf` per
/// value (see `clamp_bounds` for the bounds).
#[inline(always)]
fn clamp_levels(y: f32, [lo, hi]: [f32; 2]) -> f32 {
    let c = if y > lo { y } else { lo };
    if c < hi {
        c
    } else {
        hi
    }
}

/// `level` from `y = v / d`.
#[inline(always)]
fn level_of<const L: i32>(y: f32, d: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    // No branches (they keep the compiler from vectorizing): NaN is caught from `y` itself,
    // since `max` turns it into -L.
    #[allow(clippy::eq_op)]
    let number = y == y;
    let c = clamp_levels(y, [-L as f32, (L - 1) as f32]);
    let r = (c + MAGIC) - MAGIC;
    let e = c - r;
    let up = (e == 0.5) & (c > 0.0);
    let down = (e == -0.5) & (c < 0.0);
    let r = r + f32::from(u8::from(up)) - f32::from(u8::from(down));
    let keep = number & (d != 0.0);
    r * f32::from(u8::from(keep))
}

/// Below this distance from a rounding threshold (a half-integer) the level of `v * (1/d)` may
/// differ from the level of `v / d`. The product is within `|y| * 2^-23` of the quotient `y`
/// (two roundings of half an ulp each); beyond the clamp both give the same end, and near a
/// threshold `|y| <= 7.5`, so the product is within 2^-20 there. 2^-18 leaves a margin of 4x.
const DOUBT: f32 = 1.0 / 262_144.0;

/// Per lane of scales: `1/d` and the starting doubt: 1 (certain doubt) for a scale so small or
/// large that `1/d` loses precision (or is infinite), or 0, which always takes the division.
#[inline(always)]
fn lanes(ds: &[f32; LANES]) -> ([f32; LANES], [f32; LANES]) {
    const LO: f32 = 2.350_988_7e-38; // 2^-125
    const HI: f32 = 4.253_529_6e37; // 2^125
    (ds.map(|d| 1.0 / d), ds.map(|d| if d.abs() >= LO && d.abs() <= HI { 0.0 } else { 1.0 }))
}

/// The clamp of `fast_level`, -L and L - 1, as values the compiler cannot see: with constants, LLVM
/// reads `if y > -8 { y } else { -8 }` as a float maximum, which it will not vectorize for wasm
/// (no `f32x4` instruction keeps the non-NaN operand), and the loop runs a lane at a time; with
/// values, it is the compare-and-select that wasm's `f32x4.pmax` is. (Natively the constants
/// compile to `maxps`/`minps` and are faster.)
#[inline(always)]
fn clamp_bounds<const L: i32>() -> [f32; 2] {
    #[cfg(target_arch = "wasm32")]
    return std::hint::black_box([-L as f32, (L - 1) as f32]);
    #[cfg(not(target_arch = "wasm32"))]
    [-L as f32, (L - 1) as f32]
}

/// Whether a lane's largest distance from an integer (see `fast_level`) leaves it in doubt.
#[inline(always)]
fn in_doubt(worst: f32) -> bool {
    worst > 0.5 - DOUBT
}

/// `level(v, d)` from `inv = 1/d` for a scale not in doubt (so `d != 0`), and the distance of
/// the clamped product from the integer it rounds to: near 0.5 the quotient may round the other
/// way. (Lanes keep the largest distance as a float, so it stays in a vector register.)
#[inline(always)]
fn fast_level(v: f32, inv: f32, bounds: [f32; 2]) -> (f32, f32) {
    const MAGIC: f32 = 12_582_912.0;
    let y = v * inv;
    let c = clamp_levels(y, bounds);
    let r = (c + MAGIC) - MAGIC;
    #[allow(clippy::eq_op)]
    let q = if y == y { r } else { 0.0 };
    (q, (c - r).abs())
}

#[inline(always)]
fn raise(worst: f32, dist: f32) -> f32 {
    if dist > worst {
        dist
    } else {
        worst
    }
}

/// The least-squares sums of one vector of scale candidates `ds` over the block: for each lane
/// `sum v * q` and `sum q * q`, in element order, and the lane's doubt (see `redo_lsq`).
#[inline(always)]
fn lsq_sums<const L: i32>(b: &[f32; BLOCK], ds: &[f32; LANES]) -> ([f32; LANES], [f32; LANES], [f32; LANES]) {
    let (inv, mut worst) = lanes(ds);
    let bounds = clamp_bounds::<L>();
    let (mut x, mut q2) = ([0f32; LANES], [0f32; LANES]);
    for &v in b {
        for l in 0..LANES {
            let (q, dist) = fast_level(v, inv[l], bounds);
            worst[l] = raise(worst[l], dist);
            x[l] += v * q;
            q2[l] += q * q;
        }
    }
    (x, q2, worst)
}

/// A lane in doubt summed again, alone, dividing (f16 weights meet exact ties often: about one
/// lane in ten).
#[inline(never)]
fn redo_lsq<const L: i32>(b: &[f32; BLOCK], d: f32) -> (f32, f32) {
    let (mut x, mut q2) = (0f32, 0f32);
    for &v in b {
        let q = level::<L>(v, d);
        x += v * q;
        q2 += q * q;
    }
    (x, q2)
}

/// The squared errors of one vector of f16-exact scales `ds` over the block, in element order,
/// and each lane's doubt.
#[inline(always)]
fn sq_errors<const L: i32>(b: &[f32; BLOCK], ds: &[f32; LANES]) -> ([f32; LANES], [f32; LANES]) {
    let (inv, mut worst) = lanes(ds);
    let bounds = clamp_bounds::<L>();
    let mut acc = [0f32; LANES];
    for &v in b {
        for l in 0..LANES {
            let (q, dist) = fast_level(v, inv[l], bounds);
            worst[l] = raise(worst[l], dist);
            let e = v - ds[l] * q;
            acc[l] += e * e;
        }
    }
    (acc, worst)
}

#[inline(never)]
fn redo_sq_error<const L: i32>(b: &[f32; BLOCK], d: f32) -> f32 {
    let mut acc = 0f32;
    for &v in b {
        let e = v - d * level::<L>(v, d);
        acc += e * e;
    }
    acc
}

/// The scale (f16-exact) and levels in -L..L of least squared error for one block.
///
/// Every candidate scale is evaluated, each with its sums accumulated in element order, so the
/// result is the same as fitting candidate after candidate; the loops run across candidates
/// (independent lanes), which the compiler vectorizes. A unit test below checks it bit for bit
/// against the plain candidate-by-candidate form.
#[inline(always)]
fn fit_block<const L: i32>(b: &[f32; BLOCK]) -> (f32, [i32; BLOCK]) {
    let max = super::extreme(b);
    if max == 0.0 {
        return (0.0, [0; BLOCK]);
    }
    // Lanes are padded to whole vectors of `LANES` with copies of the last value: a copy never
    // wins, since only a strictly smaller error replaces an earlier one.
    let mut cand = [0f32; CAND_PAD];
    cand[0] = max / -L as f32;
    cand[1] = max / (L - 1) as f32;
    for i in 0..16 {
        let n = (L - 1) as f32 + 0.1 * i as f32;
        cand[2 + 2 * i] = max / -n;
        cand[3 + 2 * i] = max / n;
    }
    for k in CANDIDATES..CAND_PAD {
        cand[k] = cand[CANDIDATES - 1];
    }
    // Each candidate's levels, refined by the least-squares scale of those levels. One vector
    // of candidates at a time, over the block's values in order: each lane's sums are taken in
    // element order, as one candidate at a time would.
    let (mut sxq, mut sqq) = ([0f32; CAND_PAD], [0f32; CAND_PAD]);
    for ((cs, sx), sq) in cand.chunks_exact(LANES).zip(sxq.chunks_exact_mut(LANES)).zip(sqq.chunks_exact_mut(LANES)) {
        let cs: &[f32; LANES] = cs.try_into().expect("whole vectors");
        let (x, q2, worst) = lsq_sums::<L>(b, cs);
        sx.copy_from_slice(&x);
        sq.copy_from_slice(&q2);
        for l in 0..LANES {
            if in_doubt(worst[l]) {
                (sx[l], sq[l]) = redo_lsq::<L>(b, cs[l]);
            }
        }
    }
    // Both scales of every candidate, as f16 stores them, in the order they are tried.
    let mut ds = [0f32; DS_PAD];
    for k in 0..CANDIDATES {
        let refined = if sqq[k] > 0.0 { sxq[k] / sqq[k] } else { cand[k] };
        ds[2 * k] = round_f16(cand[k]);
        ds[2 * k + 1] = round_f16(refined);
    }
    for m in 2 * CANDIDATES..DS_PAD {
        ds[m] = ds[2 * CANDIDATES - 1];
    }
    let mut err = [0f32; DS_PAD];
    for (dv, ev) in ds.chunks_exact(LANES).zip(err.chunks_exact_mut(LANES)) {
        let dv: &[f32; LANES] = dv.try_into().expect("whole vectors");
        let (e, worst) = sq_errors::<L>(b, dv);
        ev.copy_from_slice(&e);
        for l in 0..LANES {
            if in_doubt(worst[l]) {
                ev[l] = redo_sq_error::<L>(b, dv[l]);
            }
        }
    }
    // The first strictly smallest error wins, as when trying them one by one.
    let (mut best, mut best_err) = (None, f32::INFINITY);
    for (m, &e) in err.iter().enumerate() {
        if e < best_err {
            best = Some(m);
            best_err = e;
        }
    }
    let Some(m) = best else { return (0.0, [0; BLOCK]) };
    let d = ds[m];
    (d, b.map(|v| level::<L>(v, d) as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fit as first written, candidate after candidate: the oracle `fit_block`'s
    /// vectorizable form must equal bit for bit.
    fn fit_one_by_one<const L: i32>(b: &[f32]) -> (f32, [i32; BLOCK]) {
        let (lo, hi) = (-L as f32, (L - 1) as f32);
        let max = crate::quant::extreme(b);
        let mut best = (0f32, [0i32; BLOCK], f32::INFINITY);
        if max == 0.0 {
            return (best.0, best.1);
        }
        let levels = |d: f32| -> ([i32; BLOCK], f32) {
            let mut q = [0i32; BLOCK];
            let mut err = 0f32;
            for (qi, &v) in q.iter_mut().zip(b) {
                *qi = if d == 0.0 { 0 } else { (v / d).round().clamp(lo, hi) as i32 };
                err += (v - d * *qi as f32).powi(2);
            }
            (q, err)
        };
        let mut candidates = vec![max / lo, max / hi];
        for i in 0..16 {
            let n = hi + 0.1 * i as f32;
            candidates.extend([max / -n, max / n]);
        }
        for d in candidates {
            let (q, _) = levels(d);
            let (sxq, sqq) =
                q.iter().zip(b).fold((0f32, 0f32), |(a, c), (&qi, &v)| (a + v * qi as f32, c + (qi * qi) as f32));
            for d in [d, if sqq > 0.0 { sxq / sqq } else { d }] {
                let d = half::f16::from_f32(d).to_f32();
                let (q, err) = levels(d);
                if err < best.2 {
                    best = (d, q, err);
                }
            }
        }
        (best.0, best.1)
    }

    #[test]
    fn vectorized_fit_equals_the_one_by_one_fit_bit_for_bit() {
        let n = 32 * 20_000;
        let u = crate::random::random_values(31, n);
        let mut blocks: Vec<Vec<f32>> = Vec::new();
        // Uniform, Gaussian-like with outliers, tiny (subnormal scales), huge (f16 overflow),
        // values on rounding ties, constant, one spike, and hostile non-finite values.
        blocks.extend(u.chunks(32).take(8000).map(|c| c.to_vec()));
        blocks.extend(u.chunks(128).take(4000).map(|c| {
            (0..32).map(|j| c[4 * j..4 * j + 4].iter().sum::<f32>() * if j == 5 { 4.0 } else { 1.0 }).collect()
        }));
        blocks.extend(u.chunks(32).take(500).map(|c| c.iter().map(|v| v * 1e-41).collect()));
        blocks.extend(u.chunks(32).take(500).map(|c| c.iter().map(|v| v * 1e6).collect()));
        blocks.extend(u.chunks(32).take(500).map(|c| c.iter().map(|v| ((v * 16.0).round() + 0.5) / 8.0).collect()));
        blocks.push(vec![0.25; 32]);
        blocks.push((0..32).map(|j| if j == 7 { -3.0 } else { 0.0 }).collect());
        blocks.push((0..32).map(|j| [f32::NAN, 1.0, -0.5, f32::INFINITY][j % 4]).collect());
        blocks.push((0..32).map(|j| if j == 0 { f32::NEG_INFINITY } else { 0.1 }).collect());
        blocks.push(vec![f32::NAN; 32]);
        blocks.push(vec![-0.0; 32]);
        for (i, b) in blocks.iter().enumerate() {
            let (d, q) = fit_block::<8>(b.as_slice().try_into().unwrap());
            let (rd, rq) = fit_one_by_one::<8>(b);
            assert!(d.to_bits() == rd.to_bits() && q == rq, "q4 block {i} {b:?}: {d} {q:?} vs {rd} {rq:?}");
            let (d, q) = fit_block::<4>(b.as_slice().try_into().unwrap());
            let (rd, rq) = fit_one_by_one::<4>(b);
            assert!(d.to_bits() == rd.to_bits() && q == rq, "q3 block {i} {b:?}: {d} {q:?} vs {rd} {rq:?}");
        }
        // Through the public, multi-threaded entry point as well.
        let flat: Vec<f32> = blocks.iter().flatten().copied().collect();
        let (mut want4, mut want3) = (Vec::new(), Vec::new());
        for b in &blocks {
            let (d, q) = fit_one_by_one::<8>(b);
            want4.extend(half::f16::from_f32(d).to_le_bytes());
            want4.extend((0..16).map(|j| (q[j] + 8) as u8 | (((q[j + 16] + 8) as u8) << 4)));
            let (d, q) = fit_one_by_one::<4>(b);
            want3.extend(half::f16::from_f32(d).to_le_bytes());
            want3.extend(crate::quant::pack_q3(&q.map(|l| (l + 4) as u8)));
        }
        assert_eq!(crate::quant::quantize_fit(QuantFormat::Q4_0, &flat).unwrap(), want4);
        assert_eq!(crate::quant::quantize_fit(QuantFormat::Q3_0, &flat).unwrap(), want3);
    }

    /// The multiply's level is the division's wherever it is not in doubt; near-ties (the
    /// quotient within a few ulps of a half-integer) are in doubt.
    #[test]
    fn levels_by_multiplying_equal_dividing_unless_in_doubt() {
        let u = crate::random::random_values(5, 200_000);
        let (mut doubted, mut checked) = (0, 0);
        for (i, w) in u.chunks_exact(2).enumerate() {
            let d = round_f16(w[0] * [1.0, 1e-3, 3e4, 1e-6][i % 4]);
            // Values at, and a few ulps around, every threshold, and random ones.
            let k = (i % 16) as f32 - 7.5;
            let tie = k * d;
            let vs = [
                tie,
                f32::from_bits(tie.to_bits() + 1),
                f32::from_bits(tie.to_bits().wrapping_sub(1)),
                w[1] * 9.0 * d.abs(),
            ];
            for v in vs {
                let (inv, worst) = lanes(&[d; LANES]);
                let (fast, dist) = fast_level(v, inv[0], [-8.0, 7.0]);
                if in_doubt(raise(worst[0], dist)) {
                    doubted += 1;
                } else {
                    checked += 1;
                    assert_eq!(fast.to_bits(), level::<8>(v, d).to_bits(), "v {v:e} d {d:e}");
                }
            }
        }
        assert!(checked > 110_000 && doubted > 250_000, "{checked} checked, {doubted} in doubt");
    }
}
