//! Block quantization in GGML's layouts (so GGUF files of stable-diffusion.cpp read without
//! re-encoding): 32 weights per block with an f16 scale.
//! - `q8_0`: 34 bytes/block = f16 d + 32 x i8; x = d * q.
//! - `q4_0`: 18 bytes/block = f16 d + 16 bytes of nibbles (low nibble element j, high nibble
//!   element j + 16); x = d * (q - 8).
//! - `q3_0` (ours: GGML has no 3-bit format with 32-blocks, only the 256-blocks of q3_K):
//!   14 bytes/block = f16 d + 8 bytes of 2-bit low parts (element j at byte j / 4, bits
//!   2 * (j % 4)) + 4 bytes of high bits (element j at bit j of the little-endian word);
//!   x = d * (q - 4), q in 0..8. 3.5 bits per weight: what SDXL's U-Net needs to fit a 1.8 GB
//!   package (BENCHMARKS.md). Low parts and high bits are whole u32 words, so a GPU row keeps
//!   three words per block and four weights come from two word reads.
//!
//! On the GPU each weight row is repacked as [quant words of the row][f16 scales, two per u32], so
//! a weight split over bindings by rows stays addressable chunk by chunk and kernels read whole
//! u32 words (see `shaders/common/quant.wgsl`).

mod fit;
mod gpu;
mod half16;
mod policy;

pub use gpu::QTensor;
pub use half16::f16_bytes_to_f32;
pub use policy::{QuantPolicy, Rule, StoreType};

use half::f16;

use crate::error::{Error, Result};

pub const BLOCK: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    Q8_0,
    Q4_0,
    Q3_0,
}

impl QuantFormat {
    pub fn parse(s: &str) -> Result<QuantFormat> {
        match s {
            "q8_0" => Ok(QuantFormat::Q8_0),
            "q4_0" => Ok(QuantFormat::Q4_0),
            "q3_0" => Ok(QuantFormat::Q3_0),
            other => Err(Error::Request(format!("unknown quantization {other} (q8_0, q4_0 or q3_0)"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8_0 => "q8_0",
            QuantFormat::Q4_0 => "q4_0",
            QuantFormat::Q3_0 => "q3_0",
        }
    }

    /// GGML block size in bytes.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q3_0 => 14,
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
                let max = extreme(b);
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i8).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
            QuantFormat::Q3_0 => {
                // As q4_0 with half the levels: the extreme value maps to -4.
                let max = extreme(b);
                let d = max / -4.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                let mut q = [0u8; BLOCK];
                for (qj, &v) in q.iter_mut().zip(b) {
                    *qj = ((v * id + 4.5) as i8).clamp(0, 7) as u8;
                }
                out.extend(pack_q3(&q));
            }
        }
    }
    Ok(out)
}

/// The value of largest magnitude in a block, the first of equals (0 for an all-zero block):
/// q4_0 and q3_0 map it to their lowest level.
#[inline(always)]
pub(crate) fn extreme(b: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in b {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// The 12 quant bytes of a q3_0 block from its levels `q` (0..8 each).
pub(crate) fn pack_q3(q: &[u8; BLOCK]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for (j, &v) in q.iter().enumerate() {
        out[j / 4] |= (v & 3) << (2 * (j % 4));
        out[8 + j / 8] |= (v >> 2) << (j % 8);
    }
    out
}

/// Level (0..8) of element `j` of a q3_0 block's quant bytes.
fn q3_level(qb: &[u8], j: usize) -> u8 {
    ((qb[j / 4] >> (2 * (j % 4))) & 3) | (((qb[8 + j / 8] >> (j % 8)) & 1) << 2)
}

/// Quantizes like `quantize`, but q4_0 and q3_0 blocks get the scale of least squared error
/// instead of the reference `max / -8` (`max / -4`): the same format (any GGML reader
/// dequantizes the q4_0), with less error energy (at least 10% less on the unit test's uniform
/// and Gaussian-like data). The reference scale is one of the candidates, so no block ever gets
/// worse. q8_0 is already within half a step of 255 levels and keeps the reference rounding.
///
/// Blocks are independent, so natively large tensors are split over the CPU's cores; the bytes
/// do not depend on how (each block is fitted by the same sequence of float operations).
pub fn quantize_fit(format: QuantFormat, x: &[f32]) -> Result<Vec<u8>> {
    if format == QuantFormat::Q8_0 {
        return quantize(format, x);
    }
    if x.len() % BLOCK != 0 {
        return Err(Error::Request(format!("{} values are not a whole number of {BLOCK}-blocks", x.len())));
    }
    let blocks = x.len() / BLOCK;
    // Every block is written by the fit.
    let mut out = vec![0u8; blocks * format.block_bytes()];
    let threads = fit::threads(blocks);
    if threads <= 1 {
        fit::fit_range(format, x, &mut out);
    } else {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let per = blocks.div_ceil(threads);
            std::thread::scope(|s| {
                for (xs, os) in x.chunks(per * BLOCK).zip(out.chunks_mut(per * format.block_bytes())) {
                    s.spawn(move || fit::fit_range(format, xs, os));
                }
            });
        }
    }
    Ok(out)
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
            QuantFormat::Q3_0 => out.extend((0..BLOCK).map(|j| d * (q3_level(&b[2..], j) as f32 - 4.0))),
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
        for f in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q3_0] {
            let q = quantize(f, &x).unwrap();
            assert_eq!(q.len(), 8 * f.block_bytes());
            let y = dequantize(f, &q).unwrap();
            for (b, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                // q8_0 rounds to the nearest of 255 levels; q4_0 (q3_0) maps the largest-magnitude
                // value to -8 (-4) and so clips the opposite sign at +7 (+3) steps: up to a whole
                // step off.
                let bound = match f {
                    QuantFormat::Q8_0 => 0.5 * amax / 127.0,
                    QuantFormat::Q4_0 => amax / 8.0,
                    QuantFormat::Q3_0 => amax / 4.0,
                };
                let err = xs.iter().zip(ys).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(err <= bound * 1.01 + 1e-3 * amax, "{f:?} block {b}: {err} vs bound {bound}");
            }
        }
        assert!(quantize(QuantFormat::Q8_0, &[0.0; 31]).is_err());
    }

    #[test]
    fn fitted_q4_scales_never_lose_to_the_reference() {
        let x: Vec<f32> = crate::random::random_values(9, 32 * 512);
        // Gaussian-like: sum of uniforms, with an outlier per block.
        let g: Vec<f32> = x
            .chunks(4)
            .flat_map(|c| {
                let s: f32 = c.iter().sum();
                [s, s * 0.5, -s, s * 0.25]
            })
            .collect();
        // The least error the fit must remove (measured: q4_0 18% / 14%, q3_0 16% / 6%: with
        // eight levels the heavy-tailed blocks' reference scale is already near the best).
        for (f, data, gain) in [
            (QuantFormat::Q4_0, &x, 0.1),
            (QuantFormat::Q4_0, &g, 0.1),
            (QuantFormat::Q3_0, &x, 0.1),
            (QuantFormat::Q3_0, &g, 0.04),
        ] {
            let sq = |blocks: &[u8]| -> Vec<f32> {
                let y = dequantize(f, blocks).unwrap();
                data.chunks(32)
                    .zip(y.chunks(32))
                    .map(|(a, b)| a.iter().zip(b).map(|(p, q)| (p - q).powi(2)).sum())
                    .collect()
            };
            let (reference, fit) = (sq(&quantize(f, data).unwrap()), sq(&quantize_fit(f, data).unwrap()));
            for (r, e) in reference.iter().zip(&fit) {
                assert!(e <= &(r * (1.0 + 1e-5) + 1e-12), "{f:?}: a fitted block is worse: {e} > {r}");
            }
            let (r, e): (f32, f32) = (reference.iter().sum(), fit.iter().sum());
            assert!(e < (1.0 - gain) * r, "{f:?}: fitting gained too little: {e} vs {r}");
        }
        assert_eq!(quantize_fit(QuantFormat::Q8_0, &x).unwrap(), quantize(QuantFormat::Q8_0, &x).unwrap());
        assert_eq!(
            dequantize(QuantFormat::Q4_0, &quantize_fit(QuantFormat::Q4_0, &[0.0; 32]).unwrap()).unwrap(),
            vec![0.0; 32]
        );
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
        for f in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q3_0] {
            let packed = pack_rows(f, &quantize(f, &x).unwrap(), rows, cols).unwrap();
            assert_eq!(packed.len(), rows * f.row_words(cols));
        }
        assert_eq!(QuantFormat::Q8_0.row_words(64), 16 + 1);
        assert_eq!(QuantFormat::Q4_0.row_words(96), 12 + 2);
        assert_eq!(QuantFormat::Q3_0.row_words(96), 9 + 2);
    }
}
