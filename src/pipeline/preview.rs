//! A cheap per-step preview: latents projected to RGB by one affine map per pixel, instead of a
//! VAE decode. The map is not a published table: it is fitted by least squares for each model
//! from pairs of (latent pixel, mean colour of the image patch it decodes to) — first from one
//! small decode of random latents at load, then refined with every finished generation, whose
//! latents are the realistic ones.

use crate::pipeline::generate::{NoiseSource, StableDiffusion};
use crate::pipeline::rng::NormalRng;
use crate::Result;

/// Accumulated normal equations for `rgb = W · [latent, 1]`.
#[derive(Clone, Debug)]
pub struct PreviewFit {
    channels: usize,
    /// (C+1)×(C+1) sum of x·xᵀ and (C+1)×3 sum of x·yᵀ; y in [-1, 1].
    xtx: Vec<f64>,
    xty: Vec<f64>,
    samples: usize,
}

impl PreviewFit {
    pub fn new(channels: usize) -> PreviewFit {
        let k = channels + 1;
        PreviewFit { channels, xtx: vec![0.0; k * k], xty: vec![0.0; k * 3], samples: 0 }
    }

    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Adds the pairs of one decoded image. `latents`: [1, C, h, w] (scaled, as the U-Net sees
    /// them); `rgb`: HWC bytes of the image, `f` times larger on each side.
    pub fn add(&mut self, latents: &[f32], shape: [usize; 4], rgb: &[u8], f: usize) {
        let [_, c, h, w] = shape;
        let k = c + 1;
        if c != self.channels || latents.len() < c * h * w || rgb.len() < h * f * w * f * 3 {
            return;
        }
        let mut x = vec![0f64; k];
        for yy in 0..h {
            for xx in 0..w {
                for (ch, v) in x.iter_mut().take(c).enumerate() {
                    *v = latents[(ch * h + yy) * w + xx] as f64;
                }
                x[c] = 1.0;
                let mut mean = [0f64; 3];
                for py in yy * f..(yy + 1) * f {
                    for px in xx * f..(xx + 1) * f {
                        for (m, &b) in mean.iter_mut().zip(&rgb[(py * w * f + px) * 3..][..3]) {
                            *m += b as f64;
                        }
                    }
                }
                let y = mean.map(|m| m / (f * f) as f64 / 127.5 - 1.0);
                for i in 0..k {
                    for j in 0..k {
                        self.xtx[i * k + j] += x[i] * x[j];
                    }
                    for (j, &yj) in y.iter().enumerate() {
                        self.xty[i * 3 + j] += x[i] * yj;
                    }
                }
                self.samples += 1;
            }
        }
    }

    /// The fitted map (ridge-regularized so that few samples still give a stable answer).
    pub fn solve(&self) -> Projection {
        let k = self.channels + 1;
        let mut a = self.xtx.clone();
        let ridge = 1e-3 * (self.samples.max(1) as f64);
        for i in 0..self.channels {
            a[i * k + i] += ridge;
        }
        a[k * k - 1] += 1e-9;
        let mut weights = vec![[0f32; 3]; k];
        for col in 0..3 {
            let b: Vec<f64> = (0..k).map(|i| self.xty[i * 3 + col]).collect();
            if let Some(sol) = solve(a.clone(), b, k) {
                for (w, s) in weights.iter_mut().zip(sol) {
                    w[col] = s as f32;
                }
            }
        }
        Projection { weights }
    }
}

/// Gaussian elimination with partial pivoting; `None` if singular.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))?;
        if a[pivot * n + col].abs() < 1e-12 {
            return None;
        }
        for j in 0..n {
            a.swap(col * n + j, pivot * n + j);
        }
        b.swap(col, pivot);
        for row in col + 1..n {
            let f = a[row * n + col] / a[col * n + col];
            for j in col..n {
                a[row * n + j] -= f * a[col * n + j];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0f64; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|j| a[row * n + j] * x[j]).sum();
        x[row] = (b[row] - s) / a[row * n + row];
    }
    Some(x)
}

/// `rgb = Σ_c weights[c] · latent[c] + weights[C]`, in [-1, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    pub weights: Vec<[f32; 3]>,
}

impl Projection {
    /// RGBA bytes at latent resolution.
    pub fn rgba(&self, latents: &[f32], shape: [usize; 4]) -> Vec<u8> {
        let [_, c, h, w] = shape;
        let plane = h * w;
        let mut out = vec![255u8; plane * 4];
        if c + 1 != self.weights.len() || latents.len() < c * plane {
            return out;
        }
        for p in 0..plane {
            let mut rgb = self.weights[c];
            for ch in 0..c {
                let v = latents[ch * plane + p];
                for (o, wt) in rgb.iter_mut().zip(self.weights[ch]) {
                    *o += wt * v;
                }
            }
            for (o, v) in out[p * 4..p * 4 + 3].iter_mut().zip(rgb) {
                *o = ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
            }
        }
        out
    }
}

/// A first fit for `sd`: decodes one `side`×`side` latent of standard normal noise (seeded, so a
/// model always gets the same map) and fits on it.
pub async fn initial_fit(sd: &StableDiffusion, side: usize) -> Result<PreviewFit> {
    let c = sd.vae_config.latent_channels;
    let shape = [1, c, side, side];
    let latents = NormalRng::new(0x5eed).draw(c * side * side)?;
    let (rgb, _, _) = sd.decode(&latents, shape).await?;
    let mut fit = PreviewFit::new(c);
    fit.add(&latents, shape, &rgb, sd.vae_config.downscale());
    Ok(fit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A known affine map is recovered from images that follow it exactly.
    #[test]
    fn recovers_an_affine_map() {
        let truth = Projection {
            weights: vec![[0.3, -0.2, 0.1], [0.0, 0.25, -0.1], [0.1, 0.05, 0.2], [-0.15, 0.0, 0.3], [0.05, -0.1, 0.0]],
        };
        let (h, w, f) = (6, 5, 2);
        let shape = [1, 4, h, w];
        let latents: Vec<f32> = (0..4 * h * w).map(|i| ((i * 37 % 17) as f32 / 8.0) - 1.0).collect();
        let small = truth.rgba(&latents, shape);
        // Upsample each latent pixel to an f×f patch of its colour.
        let mut rgb = vec![0u8; h * f * w * f * 3];
        for y in 0..h * f {
            for x in 0..w * f {
                let p = (y / f) * w + x / f;
                rgb[(y * w * f + x) * 3..][..3].copy_from_slice(&small[p * 4..p * 4 + 3]);
            }
        }
        let mut fit = PreviewFit::new(4);
        fit.add(&latents, shape, &rgb, f);
        assert_eq!(fit.samples(), h * w);
        let got = fit.solve().rgba(&latents, shape);
        let worst = got.iter().zip(&small).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap_or(0);
        // Rounding to bytes and the small ridge term: within 3/255.
        assert!(worst <= 3, "worst channel error {worst}/255");
    }

    #[test]
    fn mismatched_inputs_are_ignored() {
        let mut fit = PreviewFit::new(4);
        fit.add(&[0.0; 3], [1, 4, 1, 1], &[0; 3], 1);
        assert_eq!(fit.samples(), 0);
        // An empty fit still gives a usable (all mid-grey) map, never NaN.
        let rgba = fit.solve().rgba(&[0.5; 4], [1, 4, 1, 1]);
        assert_eq!(rgba.len(), 4);
    }
}
