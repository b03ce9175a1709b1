//! Block quantization in GGML's layouts (so GGUF files of stable-diffusion.cpp read without
//! re-encoding): 32 weights per block with an f16 scale.
//! - `q8_0`: 34 bytes/block = f16 d + 32 x i8; x = d * q.
//! - `q4_0`: 18 bytes/block = f16 d + 16 bytes of nibbles (low nibble element j, high nibble
//!   element j + 16); x = d * (q - 8).
//!
//! On the GPU each weight row is repacked as [quant words of the row][f16 scales, two per u32], so
//! a weight split over bindings by rows stays addressable chunk by chunk and kernels read whole
//! u32 words (see `shaders/common/quant.wgsl`).

mod gpu;
mod policy;

pub use gpu::QTensor;
pub use policy::{QuantPolicy, Rule, StoreType};

use half::f16;

use crate::error::{Error, Result};

pub const BLOCK: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    Q8_0,
    Q4_0,
}

impl QuantFormat {
    pub fn parse(s: &str) -> Result<QuantFormat> {
        match s {
            "q8_0" => Ok(QuantFormat::Q8_0),
            "q4_0" => Ok(QuantFormat::Q4_0),
            other => Err(Error::Request(format!("unknown quantization {other} (q8_0 or q4_0)"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8_0 => "q8_0",
            QuantFormat::Q4_0 => "q4_0",
        }
    }

    /// GGML block size in bytes.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4_0 => 18,
        }
    }

    /// Quant bytes of a block (without its scale).
    fn quant_bytes(self) -> usize {
        self.block_bytes() - 2
    }

    /// u32 words of a block's quants in the GPU layout.
    pub fn quant_words(self) -> usize {
        self.quant_bytes() / 4
    }

    /// u32 words of one repacked GPU row of `cols` weights.
    pub fn row_words(self, cols: usize) -> usize {
        let blocks = cols / BLOCK;
        blocks * self.quant_bytes() / 4 + blocks.div_ceil(2)
    }
}

/// Quantizes `x` (a multiple of 32 values) into GGML blocks, as ggml's reference code does.
pub fn quantize(format: QuantFormat, x: &[f32]) -> Result<Vec<u8>> {
    if x.len() % BLOCK != 0 {
        return Err(Error::Request(format!("{} values are not a whole number of {BLOCK}-blocks", x.len())));
    }
    let mut out = Vec::with_capacity(x.len() / BLOCK * format.block_bytes());
    for b in x.chunks_exact(BLOCK) {
        match format {
            QuantFormat::Q8_0 => {
                let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(b.iter().map(|&v| (v * id).round() as i8 as u8));
            }
            QuantFormat::Q4_0 => {
                // The signed value of largest magnitude maps to -8, keeping the full range.
                let (mut amax, mut max) = (0f32, 0f32);
                for &v in b {
                    if v.abs() > amax {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i8).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
    }
    Ok(out)
}

/// Quantizes like `quantize`, but q4_0 blocks get the scale of least squared error instead of
/// ggml's reference `max / -8`: the same format (any GGML reader dequantizes it), with less error
/// energy (at least 10% less on the unit test's uniform and Gaussian-like data). The reference
/// scale is one of the candidates, so no block ever gets worse. q8_0 is already within half a
/// step of 255 levels and keeps the reference rounding.
///
/// Blocks are independent, so natively large tensors are split over the CPU's cores; the bytes
/// do not depend on how (each block is fitted by the same sequence of float operations).
pub fn quantize_fit(format: QuantFormat, x: &[f32]) -> Result<Vec<u8>> {
    if format == QuantFormat::Q8_0 {
        return quantize(format, x);
    }
    let mut out = quantize(format, x)?;
    let blocks = x.len() / BLOCK;
    let threads = fit_threads(blocks);
    if threads <= 1 {
        fit_range(x, &mut out);
    } else {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let per = blocks.div_ceil(threads);
            std::thread::scope(|s| {
                for (xs, os) in x.chunks(per * BLOCK).zip(out.chunks_mut(per * format.block_bytes())) {
                    s.spawn(move || fit_range(xs, os));
                }
            });
        }
    }
    Ok(out)
}

/// Fits every block of `x` into the q4_0 blocks `out`, with the widest vectors the CPU has (the
/// same operations in every lane width, so the same bytes).
fn fit_range(x: &[f32], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe { fit_range_avx2(x, out) };
        return;
    }
    fit_range_plain(x, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fit_range_avx2(x: &[f32], out: &mut [u8]) {
    fit_range_plain(x, out)
}

#[inline(always)]
fn fit_range_plain(x: &[f32], out: &mut [u8]) {
    for (b, blk) in x.chunks_exact(BLOCK).zip(out.chunks_exact_mut(QuantFormat::Q4_0.block_bytes())) {
        let (d, q) = fit_q4_block(b.try_into().expect("a whole block"));
        blk[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for j in 0..16 {
            blk[2 + j] = (q[j] + 8) as u8 | (((q[j + 16] + 8) as u8) << 4);
        }
    }
}

/// How many threads fit `blocks` q4_0 blocks: one per core natively once a tensor is large enough
/// to pay for spawning them (a block costs about a microsecond); one in wasm.
fn fit_threads(blocks: usize) -> usize {
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

/// Scale candidates per block: the reference (the extreme value at level -8, or at +7), then
/// 7.0..8.5 steps of 0.1 around both.
const CANDIDATES: usize = 34;
/// Lanes evaluated together (AVX2's width; two SIMD128 vectors in wasm).
const LANES: usize = 8;
const CAND_PAD: usize = CANDIDATES.div_ceil(LANES) * LANES;
const DS_PAD: usize = (2 * CANDIDATES).div_ceil(LANES) * LANES;

/// The level of `v` at scale `d` as a float: `round(clamp(v / d, -8, 7))` with `f32::round`'s
/// ties away from zero, 0 for NaN or `d == 0`, exactly as
/// `(v / d).round().clamp(-8.0, 7.0) as i32` (rounding is monotone and fixes the integer bounds,
/// so clamping first changes nothing), in float operations every SIMD width has: adding and
/// subtracting 1.5 * 2^23 rounds |c| <= 8 to the nearest integer (ties to even), and ties are
/// then moved away from zero.
#[inline(always)]
fn level(v: f32, d: f32) -> f32 {
    level_of(v / d, d)
}

/// `level` from `y = v / d`.
#[inline(always)]
fn level_of(y: f32, d: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    // No branches (they keep the compiler from vectorizing): NaN is caught from `y` itself,
    // since `max` turns it into -8.
    #[allow(clippy::eq_op)]
    let number = y == y;
    let c = y.max(-8.0).min(7.0);
    let r = (c + MAGIC) - MAGIC;
    let e = c - r;
    let up = (e == 0.5) & (c > 0.0);
    let down = (e == -0.5) & (c < 0.0);
    let r = r + f32::from(u8::from(up)) - f32::from(u8::from(down));
    let keep = number & (d != 0.0);
    r * f32::from(u8::from(keep))
}

/// The least-squares sums of one vector of scale candidates `ds` over the block: for each lane
/// `sum v * q` and `sum q * q`, in element order.
#[inline(always)]
fn lsq_sums(b: &[f32; BLOCK], ds: &[f32; LANES]) -> ([f32; LANES], [f32; LANES]) {
    let (mut x, mut q2) = ([0f32; LANES], [0f32; LANES]);
    for &v in b {
        for l in 0..LANES {
            let q = level(v, ds[l]);
            x[l] += v * q;
            q2[l] += q * q;
        }
    }
    (x, q2)
}

/// The squared errors of one vector of f16-exact scales `ds` over the block, in element order.
#[inline(always)]
fn sq_errors(b: &[f32; BLOCK], ds: &[f32; LANES]) -> [f32; LANES] {
    let mut acc = [0f32; LANES];
    for &v in b {
        for l in 0..LANES {
            let e = v - ds[l] * level(v, ds[l]);
            acc[l] += e * e;
        }
    }
    acc
}

/// The q4_0 scale (f16-exact) and levels in -8..=7 of least squared error for one block.
///
/// Every candidate scale is evaluated, each with its sums accumulated in element order, so the
/// result is the same as fitting candidate after candidate; the loops run across candidates
/// (independent lanes), which the compiler vectorizes. A unit test below checks it bit for bit
/// against the plain candidate-by-candidate form.
#[inline(always)]
fn fit_q4_block(b: &[f32; BLOCK]) -> (f32, [i32; BLOCK]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in b {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        return (0.0, [0; BLOCK]);
    }
    // Lanes are padded to whole vectors of `LANES` with copies of the last value: a copy never
    // wins, since only a strictly smaller error replaces an earlier one.
    let mut cand = [0f32; CAND_PAD];
    cand[0] = max / -8.0;
    cand[1] = max / 7.0;
    for i in 0..16 {
        let n = 7.0 + 0.1 * i as f32;
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
        let (x, q2) = lsq_sums(b, cs);
        sx.copy_from_slice(&x);
        sq.copy_from_slice(&q2);
    }
    // Both scales of every candidate, as f16 stores them, in the order they are tried.
    let mut ds = [0f32; DS_PAD];
    for k in 0..CANDIDATES {
        let refined = if sqq[k] > 0.0 { sxq[k] / sqq[k] } else { cand[k] };
        ds[2 * k] = f16::from_f32(cand[k]).to_f32();
        ds[2 * k + 1] = f16::from_f32(refined).to_f32();
    }
    for m in 2 * CANDIDATES..DS_PAD {
        ds[m] = ds[2 * CANDIDATES - 1];
    }
    let mut err = [0f32; DS_PAD];
    for (dv, ev) in ds.chunks_exact(LANES).zip(err.chunks_exact_mut(LANES)) {
        let dv: &[f32; LANES] = dv.try_into().expect("whole vectors");
        ev.copy_from_slice(&sq_errors(b, dv));
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
    (d, b.map(|v| level(v, d) as i32))
}

/// Expands GGML blocks back to f32.
pub fn dequantize(format: QuantFormat, blocks: &[u8]) -> Result<Vec<f32>> {
    if blocks.len() % format.block_bytes() != 0 {
        return Err(Error::Request(format!("{} bytes are not whole {} blocks", blocks.len(), format.name())));
    }
    let mut out = Vec::with_capacity(blocks.len() / format.block_bytes() * BLOCK);
    for b in blocks.chunks_exact(format.block_bytes()) {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        match format {
            QuantFormat::Q8_0 => out.extend(b[2..].iter().map(|&q| d * q as i8 as f32)),
            QuantFormat::Q4_0 => {
                out.extend(b[2..].iter().map(|&q| d * ((q & 15) as f32 - 8.0)));
                out.extend(b[2..].iter().map(|&q| d * ((q >> 4) as f32 - 8.0)));
            }
        }
    }
    Ok(out)
}

/// Repacks GGML blocks of a `rows` x `cols` matrix into the GPU row layout, as u32 words.
pub fn pack_rows(format: QuantFormat, blocks: &[u8], rows: usize, cols: usize) -> Result<Vec<u32>> {
    let nb = cols / BLOCK;
    if cols % BLOCK != 0 || blocks.len() != rows * nb * format.block_bytes() {
        return Err(Error::Request(format!("{} bytes of {} for a {rows}x{cols} matrix", blocks.len(), format.name())));
    }
    let words = format.row_words(cols);
    let mut out = Vec::with_capacity(rows * words);
    let mut row = vec![0u8; words * 4];
    for r in blocks.chunks_exact(nb * format.block_bytes()) {
        row.iter_mut().for_each(|b| *b = 0);
        let qb = format.quant_bytes();
        for (i, blk) in r.chunks_exact(format.block_bytes()).enumerate() {
            row[i * qb..(i + 1) * qb].copy_from_slice(&blk[2..]);
            row[nb * qb + 2 * i..nb * qb + 2 * i + 2].copy_from_slice(&blk[..2]);
        }
        out.extend(row.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])));
    }
    Ok(out)
}

/// How close `got` is to `want`: cosine similarity, max |error|, and the PSNR of images in [0, 1]
/// (`peak` 1) or bytes (`peak` 255).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Closeness {
    pub cosine: f64,
    pub max_abs_err: f64,
    pub psnr_db: f64,
}

pub fn closeness(got: &[f32], want: &[f32], peak: f64) -> Closeness {
    let (mut dot, mut gg, mut ww, mut max, mut se) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        let (g, w) = (g as f64, w as f64);
        dot += g * w;
        gg += g * g;
        ww += w * w;
        max = max.max((g - w).abs());
        se += (g - w) * (g - w);
    }
    let mse = se / want.len().max(1) as f64;
    Closeness {
        cosine: if gg == 0.0 || ww == 0.0 { f64::from(u8::from(gg == ww)) } else { dot / (gg * ww).sqrt() },
        max_abs_err: max,
        psnr_db: if mse == 0.0 { f64::INFINITY } else { 10.0 * (peak * peak / mse).log10() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_stay_within_the_format_step() {
        let x: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        for f in [QuantFormat::Q8_0, QuantFormat::Q4_0] {
            let q = quantize(f, &x).unwrap();
            assert_eq!(q.len(), 8 * f.block_bytes());
            let y = dequantize(f, &q).unwrap();
            for (b, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                // q8_0 rounds to the nearest of 255 levels; q4_0 maps the largest-magnitude value
                // to -8 and so clips the opposite sign at +7 steps: up to a whole step off.
                let bound = if f == QuantFormat::Q8_0 { 0.5 * amax / 127.0 } else { amax / 8.0 };
                let err = xs.iter().zip(ys).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(err <= bound * 1.01 + 1e-3 * amax, "{f:?} block {b}: {err} vs bound {bound}");
            }
        }
        assert!(quantize(QuantFormat::Q8_0, &[0.0; 31]).is_err());
    }

    #[test]
    fn fitted_q4_scales_never_lose_to_the_reference() {
        let x: Vec<f32> = crate::selftest::random_values(9, 32 * 512);
        // Gaussian-like: sum of uniforms, with an outlier per block.
        let g: Vec<f32> = x
            .chunks(4)
            .flat_map(|c| {
                let s: f32 = c.iter().sum();
                [s, s * 0.5, -s, s * 0.25]
            })
            .collect();
        for data in [&x, &g] {
            let sq = |blocks: &[u8]| -> Vec<f32> {
                let y = dequantize(QuantFormat::Q4_0, blocks).unwrap();
                data.chunks(32)
                    .zip(y.chunks(32))
                    .map(|(a, b)| a.iter().zip(b).map(|(p, q)| (p - q).powi(2)).sum())
                    .collect()
            };
            let (reference, fit) =
                (sq(&quantize(QuantFormat::Q4_0, data).unwrap()), sq(&quantize_fit(QuantFormat::Q4_0, data).unwrap()));
            for (r, f) in reference.iter().zip(&fit) {
                assert!(f <= &(r * (1.0 + 1e-5) + 1e-12), "a fitted block is worse: {f} > {r}");
            }
            let (r, f): (f32, f32) = (reference.iter().sum(), fit.iter().sum());
            assert!(f < 0.9 * r, "fitting gained too little: {f} vs {r}");
        }
        assert_eq!(quantize_fit(QuantFormat::Q8_0, &x).unwrap(), quantize(QuantFormat::Q8_0, &x).unwrap());
        assert_eq!(
            dequantize(QuantFormat::Q4_0, &quantize_fit(QuantFormat::Q4_0, &[0.0; 32]).unwrap()).unwrap(),
            vec![0.0; 32]
        );
    }

    /// The fit as first written, candidate after candidate: the oracle `fit_q4_block`'s
    /// vectorizable form must equal bit for bit.
    fn fit_one_by_one(b: &[f32]) -> (f32, [i32; BLOCK]) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in b {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let mut best = (0f32, [0i32; BLOCK], f32::INFINITY);
        if amax == 0.0 {
            return (best.0, best.1);
        }
        let levels = |d: f32| -> ([i32; BLOCK], f32) {
            let mut q = [0i32; BLOCK];
            let mut err = 0f32;
            for (qi, &v) in q.iter_mut().zip(b) {
                *qi = if d == 0.0 { 0 } else { (v / d).round().clamp(-8.0, 7.0) as i32 };
                err += (v - d * *qi as f32).powi(2);
            }
            (q, err)
        };
        let mut candidates = vec![max / -8.0, max / 7.0];
        for i in 0..16 {
            let n = 7.0 + 0.1 * i as f32;
            candidates.extend([max / -n, max / n]);
        }
        for d in candidates {
            let (q, _) = levels(d);
            let (sxq, sqq) =
                q.iter().zip(b).fold((0f32, 0f32), |(a, c), (&qi, &v)| (a + v * qi as f32, c + (qi * qi) as f32));
            for d in [d, if sqq > 0.0 { sxq / sqq } else { d }] {
                let d = f16::from_f32(d).to_f32();
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
        let u = crate::selftest::random_values(31, n);
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
            let (d, q) = fit_q4_block(b.as_slice().try_into().unwrap());
            let (rd, rq) = fit_one_by_one(b);
            assert!(d.to_bits() == rd.to_bits() && q == rq, "block {i} {b:?}: {d} {q:?} vs {rd} {rq:?}");
        }
        // Through the public, multi-threaded entry point as well.
        let flat: Vec<f32> = blocks.iter().flatten().copied().collect();
        let mut want = Vec::new();
        for b in &blocks {
            let (d, q) = fit_one_by_one(b);
            want.extend(f16::from_f32(d).to_le_bytes());
            want.extend((0..16).map(|j| (q[j] + 8) as u8 | (((q[j + 16] + 8) as u8) << 4)));
        }
        assert_eq!(quantize_fit(QuantFormat::Q4_0, &flat).unwrap(), want);
    }

    #[test]
    fn closeness_measures() {
        let c = closeness(&[1.0, 0.0], &[1.0, 0.0], 1.0);
        assert_eq!((c.cosine, c.max_abs_err), (1.0, 0.0));
        assert!(c.psnr_db.is_infinite());
        let c = closeness(&[0.0, 1.0], &[1.0, 0.0], 1.0);
        assert_eq!((c.cosine, c.max_abs_err), (0.0, 1.0));
        assert!((c.psnr_db - 0.0).abs() < 1e-12);
        assert!((closeness(&[0.5], &[0.75], 1.0).psnr_db - 12.041_199_826_559_248).abs() < 1e-9);
    }

    #[test]
    fn packing_keeps_rows_separate() {
        let (rows, cols) = (3, 64);
        let x: Vec<f32> = (0..rows * cols).map(|i| i as f32 - 90.0).collect();
        for f in [QuantFormat::Q8_0, QuantFormat::Q4_0] {
            let packed = pack_rows(f, &quantize(f, &x).unwrap(), rows, cols).unwrap();
            assert_eq!(packed.len(), rows * f.row_words(cols));
        }
        assert_eq!(QuantFormat::Q8_0.row_words(64), 16 + 1);
        assert_eq!(QuantFormat::Q4_0.row_words(96), 12 + 2);
    }
}
