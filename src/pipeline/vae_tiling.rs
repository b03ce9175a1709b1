//! VAE decode and encode within a memory budget: diffusers' `AutoencoderKL.tiled_decode` and
//! `tiled_encode`, and the plans that decide when to use them.
//!
//! SD's decoder is the memory peak of a generation: at 512x512 its last stages hold 256- and
//! 128-channel tensors at full resolution (268 MB for one f32 tensor, over WebGPU's default
//! 256 MiB buffer and 128 MiB binding). Decoding overlapping latent tiles bounds the activations
//! by the tile size. Tiles are read back and blended on the CPU in diffusers' order, so the result
//! is diffusers' `tiled_decode` (tested against it); like diffusers', it is not the untiled decode
//! (group norm statistics are per tile), which is why tiling is only used when needed.

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, GpuTensor};
use crate::models::config::VaeConfig;
use crate::models::vae::{Decoder, Encoder};
use crate::ops;

/// diffusers' tiling parameters, in latent pixels.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct VaeTiling {
    /// `tile_latent_min_size`: the side of a latent tile.
    pub tile: usize,
    /// `tile_overlap_factor` (diffusers: 0.25).
    pub overlap: f64,
}

impl VaeTiling {
    pub fn new(tile: usize) -> VaeTiling {
        VaeTiling { tile, overlap: 0.25 }
    }
}

/// What the decoder's activations need for a `h` x `w` latent: (peak bytes, largest tensor
/// bytes). The largest tensor is the input of the first stage at a resolution (the upsampled
/// output of the stage before). The peak is bounded by seven of the largest: a resnet block holds
/// its input, the normalised input, the conv outputs and the shortcut, the upsampler its input
/// and output, and freed buffers are reused for tensors down to half their size, while the
/// earlier stages' smaller buffers wait in the pool (measured with `webdiffusion bench --dry`:
/// 5.1x for SD's decoder in f16 at a 48-pixel tile, 6.2x for SDXL's in f32 at 40 pixels).
pub fn decoder_activations(c: &VaeConfig, h: usize, w: usize, dtype: DType) -> (u64, u64) {
    let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
    let mut largest = 0u64;
    for (i, &ch) in rev.iter().enumerate() {
        let prev = if i == 0 { ch } else { rev[i - 1] };
        let side = (h << i) as u64 * (w << i) as u64;
        largest = largest.max(prev.max(ch) as u64 * side * dtype.size() as u64);
    }
    (7 * largest, largest)
}

/// What the encoder's activations need for an `h` x `w` image: (peak bytes, largest tensor
/// bytes). Its first stage is the largest (`block_out_channels[0]` at full resolution, 128 x 512
/// x 512 for SD: 134 MB in f32); the peak is bounded as the decoder's.
pub fn encoder_activations(c: &VaeConfig, h: usize, w: usize, dtype: DType) -> (u64, u64) {
    let mut largest = 0u64;
    for (i, &ch) in c.block_out_channels.iter().enumerate() {
        let side = (h >> i) as u64 * (w >> i) as u64;
        largest = largest.max(ch as u64 * side * dtype.size() as u64);
    }
    (6 * largest, largest)
}

/// The tiling an encode of an `h` x `w` image needs (in latent pixels, as diffusers'
/// `tile_latent_min_size`), as `plan` is for the decode.
pub fn plan_encode(
    c: &VaeConfig,
    h: usize,
    w: usize,
    dtype: DType,
    budget: u64,
    max_binding: u64,
) -> Result<Option<VaeTiling>> {
    let f = c.downscale();
    let fits = |th: usize, tw: usize| {
        let (peak, largest) = encoder_activations(c, th * f, tw * f, dtype);
        peak <= budget && largest <= max_binding
    };
    largest_fitting(h / f, w / f, fits).ok_or_else(|| {
        Error::Request(format!("the VAE cannot encode within {budget} bytes of activations, even in 8x8 latent tiles"))
    })
}

/// `None` when the whole `h` x `w` latent fits, else the largest tile (a multiple of 8 latent
/// pixels, at least 8) that does; `Err`-worthy (outer `None`) when not even 8 fits.
fn largest_fitting(h: usize, w: usize, fits: impl Fn(usize, usize) -> bool) -> Option<Option<VaeTiling>> {
    if fits(h, w) {
        return Some(None);
    }
    (1..=h.max(w) / 8).rev().map(|k| 8 * k).find(|&t| fits(t.min(h), t.min(w))).map(|t| Some(VaeTiling::new(t)))
}

/// The tiling a decode of an `h` x `w` latent needs to keep its activations within `budget`
/// bytes and every tensor within `max_binding`: `None` when the whole latent fits, else the
/// largest tile (a multiple of 8 latent pixels, at least 8) that does.
pub fn plan(
    c: &VaeConfig,
    h: usize,
    w: usize,
    dtype: DType,
    budget: u64,
    max_binding: u64,
) -> Result<Option<VaeTiling>> {
    let fits = |th: usize, tw: usize| {
        let (peak, largest) = decoder_activations(c, th, tw, dtype);
        peak <= budget && largest <= max_binding
    };
    if let Some(plan) = largest_fitting(h, w, fits) {
        return Ok(plan);
    }
    let (peak, largest) = decoder_activations(c, 8, 8, dtype);
    Err(Error::Request(format!(
        "the VAE cannot decode within {budget} bytes of activations (an 8x8 latent tile needs {peak}, one tensor of \
         {largest} against a {max_binding}-byte binding)"
    )))
}

/// A decoded image on the CPU, [channels, height, width].
pub struct Pixels {
    pub data: Vec<f32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// Decodes `z` ([channels, h, w] on the CPU, already divided by `scaling_factor`) whole, or in
/// tiles as diffusers' `tiled_decode` does when `tiling` is given and the latent is larger than
/// a tile.
pub async fn decode(
    decoder: &Decoder,
    gpu: &Gpu,
    dtype: DType,
    z: &[f32],
    [c, h, w]: [usize; 3],
    tiling: Option<VaeTiling>,
) -> Result<Pixels> {
    if z.len() != c * h * w {
        return Err(Error::shape("vae decode", format!("{} latent values for [{c}, {h}, {w}]", z.len())));
    }
    let run = |tile: &[f32], th: usize, tw: usize| -> Result<GpuTensor> {
        let t = GpuTensor::from_f32_as(gpu, tile, &[1, c, th, tw], dtype)?;
        decoder.forward(&t)
    };
    let Some(t) = tiling.filter(|t| h > t.tile || w > t.tile) else {
        return pixels(run(z, h, w)?).await;
    };
    let f = decoder.upscale();
    tiled(gpu, z, [c, h, w], t.tile, t.tile * f, t.overlap, &run).await
}

/// Encodes CHW pixels in [-1, 1] (`[3, h, w]`) into the posterior's (mean, clamped log-variance),
/// whole, or in tiles as diffusers' `tiled_encode` does (the moments blended before the
/// log-variance is clamped, as `DiagonalGaussianDistribution` does after it).
pub async fn encode(
    encoder: &Encoder,
    gpu: &Gpu,
    dtype: DType,
    factor: usize,
    px: &[f32],
    [c, h, w]: [usize; 3],
    tiling: Option<VaeTiling>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if px.len() != c * h * w {
        return Err(Error::shape("vae encode", format!("{} pixel values for [{c}, {h}, {w}]", px.len())));
    }
    let run = |tile: &[f32], th: usize, tw: usize| -> Result<GpuTensor> {
        let t = GpuTensor::from_f32_as(gpu, tile, &[1, c, th, tw], dtype)?;
        encoder.moments(&t)
    };
    let moments = match tiling.filter(|t| h > t.tile * factor || w > t.tile * factor) {
        None => pixels(run(px, h, w)?).await?,
        Some(t) => tiled(gpu, px, [c, h, w], t.tile * factor, t.tile, t.overlap, &run).await?,
    };
    let n = encoder.latent_channels() * moments.height * moments.width;
    if moments.data.len() != 2 * n {
        return Err(Error::shape("vae encode", format!("{} moment values, expected {}", moments.data.len(), 2 * n)));
    }
    let (mean, logvar) = moments.data.split_at(n);
    Ok((mean.to_vec(), logvar.iter().map(|v| v.clamp(-30.0, 20.0)).collect()))
}

/// diffusers' tiling loop: tiles of `tile` input pixels every `tile · (1 - overlap)`, each run
/// and read back before the next is recorded (one tile's activations alive), then blended in
/// diffusers' order over `out_tile · overlap` output pixels and cropped to `out_tile` minus that.
async fn tiled(
    gpu: &Gpu,
    input: &[f32],
    [c, h, w]: [usize; 3],
    tile: usize,
    out_tile: usize,
    overlap: f64,
    run: &dyn Fn(&[f32], usize, usize) -> Result<GpuTensor>,
) -> Result<Pixels> {
    let step = (tile as f64 * (1.0 - overlap)) as usize;
    if step == 0 {
        return Err(Error::Request(format!("VAE tile {tile} with overlap {overlap} does not advance")));
    }
    let mut rows: Vec<Vec<Pixels>> = Vec::new();
    for i in (0..h).step_by(step) {
        let mut row = Vec::new();
        for j in (0..w).step_by(step) {
            let (th, tw) = (tile.min(h - i), tile.min(w - j));
            let mut t = Vec::with_capacity(c * th * tw);
            for ch in 0..c {
                for y in i..i + th {
                    let start = ch * h * w + y * w + j;
                    t.extend_from_slice(&input[start..start + tw]);
                }
            }
            row.push(pixels(run(&t, th, tw)?).await?);
            // Tiling is for tight memory: the next tile (maybe a smaller, partial one) should
            // not find the pool holding this one's buffers in sizes it cannot use.
            gpu.trim_pool();
        }
        rows.push(row);
    }
    let blend = (out_tile as f64 * overlap) as usize;
    let limit = out_tile - blend;
    for i in 0..rows.len() {
        for j in 0..rows[i].len() {
            if i > 0 {
                let (above, below) = rows.split_at_mut(i);
                blend_v(&above[i - 1][j], &mut below[0][j], blend);
            }
            if j > 0 {
                let (left, right) = rows[i].split_at_mut(j);
                blend_h(&left[j - 1], &mut right[0], blend);
            }
        }
    }
    // Crop every tile to `limit` x `limit` and stitch.
    let channels = rows[0][0].channels;
    let height: usize = rows.iter().map(|r| r[0].height.min(limit)).sum();
    let width: usize = rows[0].iter().map(|p| p.width.min(limit)).sum();
    let mut data = vec![0f32; channels * height * width];
    let mut y0 = 0;
    for row in &rows {
        let mut x0 = 0;
        for p in row {
            let (ph, pw) = (p.height.min(limit), p.width.min(limit));
            for ch in 0..channels {
                for y in 0..ph {
                    let src = ch * p.height * p.width + y * p.width;
                    let dst = ch * height * width + (y0 + y) * width + x0;
                    data[dst..dst + pw].copy_from_slice(&p.data[src..src + pw]);
                }
            }
            x0 += pw;
        }
        y0 += row[0].height.min(limit);
    }
    Ok(Pixels { data, channels, height, width })
}

async fn pixels(t: GpuTensor) -> Result<Pixels> {
    let [_, channels, height, width] = ops::nchw(&t, "vae decode")?;
    Ok(Pixels { data: t.to_vec_f32().await?, channels, height, width })
}

/// diffusers' `blend_v`: the first rows of `b` fade in from the last rows of `a` (in place).
fn blend_v(a: &Pixels, b: &mut Pixels, extent: usize) {
    let e = extent.min(a.height).min(b.height);
    for ch in 0..b.channels {
        for y in 0..e {
            let wb = y as f64 / e as f64;
            let (wa, wb) = ((1.0 - wb) as f32, wb as f32);
            let ra = ch * a.height * a.width + (a.height - e + y) * a.width;
            let rb = ch * b.height * b.width + y * b.width;
            for x in 0..b.width.min(a.width) {
                b.data[rb + x] = a.data[ra + x] * wa + b.data[rb + x] * wb;
            }
        }
    }
}

/// diffusers' `blend_h`: the first columns of `b` fade in from the last columns of `a`.
fn blend_h(a: &Pixels, b: &mut Pixels, extent: usize) {
    let e = extent.min(a.width).min(b.width);
    for ch in 0..b.channels {
        for y in 0..b.height.min(a.height) {
            let ra = ch * a.height * a.width + y * a.width + a.width - e;
            let rb = ch * b.height * b.width + y * b.width;
            for x in 0..e {
                let wb = x as f64 / e as f64;
                b.data[rb + x] = a.data[ra + x] * (1.0 - wb) as f32 + b.data[rb + x] * wb as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd_vae() -> VaeConfig {
        VaeConfig::from_json(r#"{"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2}"#).unwrap()
    }

    #[test]
    fn sd_decoder_at_512_needs_tiling_under_default_limits() {
        let c = sd_vae();
        // 64x64 latent: the last stage's input is 256 channels at 512x512 = 268 MB in f32.
        let (_, largest) = decoder_activations(&c, 64, 64, DType::F32);
        assert_eq!(largest, 256 * 512 * 512 * 4);
        let t = plan(&c, 64, 64, DType::F32, 512 << 20, 128 << 20).unwrap().unwrap();
        let (peak, largest) = decoder_activations(&c, t.tile, t.tile, DType::F32);
        assert!(peak <= 512 << 20 && largest <= 128 << 20, "{t:?}");
        assert_eq!(plan(&c, 64, 64, DType::F32, 1 << 40, 1 << 40).unwrap(), None);
        assert!(plan(&c, 64, 64, DType::F32, 1 << 20, 128 << 20).is_err());
    }
}
