//! AutoencoderKL: the decoder (latents -> pixels) and the encoder (pixels -> posterior mean and
//! log-variance, for img2img), with their mid-block attention and `scaling_factor`.

use super::attention::Attention;
use super::config::VaeConfig;
use super::nn::{Conv2d, GroupNorm};
use super::resnet::ResnetBlock2D;
use super::weights::Weights;
use crate::error::Result;
use crate::gpu::GpuTensor;
use crate::ops;

/// diffusers' Encoder and Decoder use eps 1e-6 in all their norms.
const EPS: f64 = 1e-6;

/// UNetMidBlock2D without a time embedding: resnet, single-head attention, resnet.
struct VaeMid {
    resnet0: ResnetBlock2D,
    norm: GroupNorm,
    attn: Attention,
    resnet1: ResnetBlock2D,
}

impl VaeMid {
    fn load(w: &Weights, ch: usize, groups: usize) -> Result<VaeMid> {
        let a = w.pp("attentions.0");
        Ok(VaeMid {
            resnet0: ResnetBlock2D::load(&w.pp("resnets.0"), ch, ch, None, groups, EPS)?,
            norm: GroupNorm::load(&a.pp("group_norm"), ch, groups, EPS)?,
            attn: Attention::load_vae(&a, ch)?,
            resnet1: ResnetBlock2D::load(&w.pp("resnets.1"), ch, ch, None, groups, EPS)?,
        })
    }

    fn forward(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let x = self.resnet0.forward(x, None)?;
        let [b, c, h, w] = ops::nchw(&x, "vae attention")?;
        let t = self.norm.forward(&x, false)?.reshape(&[b, c, h * w])?;
        let t = self.attn.forward(&ops::permute(&t, &[0, 2, 1])?, None)?;
        let t = ops::permute(&t, &[0, 2, 1])?.reshape(&[b, c, h, w])?;
        self.resnet1.forward(&ops::add(&t, &x)?, None)
    }
}

/// One encoder/decoder level: resnets, then an optional resampling conv.
struct Stage {
    resnets: Vec<ResnetBlock2D>,
    resample: Option<Conv2d>,
}

impl Stage {
    /// `layers` resnets under `w.resnets.*`, the first taking `cin` channels.
    fn load_resnets(w: &Weights, layers: usize, cin: usize, cout: usize, groups: usize) -> Result<Vec<ResnetBlock2D>> {
        (0..layers)
            .map(|j| {
                ResnetBlock2D::load(
                    &w.pp(format!("resnets.{j}")),
                    if j == 0 { cin } else { cout },
                    cout,
                    None,
                    groups,
                    EPS,
                )
            })
            .collect()
    }

    /// Runs the resnets; `upsample` doubles the size before the resampling conv (decoder).
    fn forward(&self, mut x: GpuTensor, upsample: bool) -> Result<GpuTensor> {
        for r in &self.resnets {
            x = r.forward(&x, None)?;
        }
        match &self.resample {
            Some(conv) if upsample => conv.forward(&ops::upsample_nearest2x(&x)?),
            Some(conv) => conv.forward(&x),
            None => Ok(x),
        }
    }
}

pub struct Decoder {
    post_quant_conv: Conv2d,
    conv_in: Conv2d,
    mid: VaeMid,
    up: Vec<Stage>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    /// How much larger the image is than the latents (2 per upsampling stage).
    pub fn upscale(&self) -> usize {
        1 << self.up.iter().filter(|s| s.resample.is_some()).count()
    }

    /// `w` at the AutoencoderKL root (it reads `post_quant_conv` and `decoder.*`).
    pub fn load(c: &VaeConfig, w: &Weights) -> Result<Decoder> {
        let ch = &c.block_out_channels;
        let g = c.norm_num_groups;
        let d = w.pp("decoder");
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::new();
        for (i, &cout) in rev.iter().enumerate() {
            let prev = if i == 0 { rev[0] } else { rev[i - 1] };
            let b = d.pp(format!("up_blocks.{i}"));
            let resnets = Stage::load_resnets(&b, c.layers_per_block + 1, prev, cout, g)?;
            let resample =
                if i + 1 < rev.len() { Some(Conv2d::load3(&b.pp("upsamplers.0.conv"), cout, cout)?) } else { None };
            up.push(Stage { resnets, resample });
        }
        Ok(Decoder {
            post_quant_conv: Conv2d::load1(&w.pp("post_quant_conv"), c.latent_channels, c.latent_channels)?,
            conv_in: Conv2d::load3(&d.pp("conv_in"), c.latent_channels, rev[0])?,
            mid: VaeMid::load(&d.pp("mid_block"), rev[0], g)?,
            up,
            norm_out: GroupNorm::load(&d.pp("conv_norm_out"), ch[0], g, EPS)?,
            conv_out: Conv2d::load3(&d.pp("conv_out"), ch[0], c.out_channels)?,
        })
    }

    /// Raw VAE decode of `z` [B, latent, h, w] (already divided by `scaling_factor`) into
    /// pixels in about [-1, 1], [B, 3, 8h, 8w] for SD.
    pub fn forward(&self, z: &GpuTensor) -> Result<GpuTensor> {
        let mut x = self.conv_in.forward(&self.post_quant_conv.forward(z)?)?;
        x = self.mid.forward(&x)?;
        for stage in &self.up {
            x = stage.forward(x, true)?;
        }
        self.conv_out.forward(&self.norm_out.forward(&x, true)?)
    }
}

pub struct Encoder {
    conv_in: Conv2d,
    down: Vec<Stage>,
    mid: VaeMid,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Conv2d,
    latent: usize,
}

impl Encoder {
    pub fn load(c: &VaeConfig, w: &Weights) -> Result<Encoder> {
        let ch = &c.block_out_channels;
        let g = c.norm_num_groups;
        let e = w.pp("encoder");
        let mut down = Vec::new();
        for (i, &cout) in ch.iter().enumerate() {
            let cin = if i == 0 { ch[0] } else { ch[i - 1] };
            let b = e.pp(format!("down_blocks.{i}"));
            let resnets = Stage::load_resnets(&b, c.layers_per_block, cin, cout, g)?;
            // Downsample2D(padding=0) pads (0, 1, 0, 1) and convolves with stride 2.
            let p = ops::Conv2dParams { stride: 2, padding: 0, pad_end: 1 };
            let resample = if i + 1 < ch.len() {
                Some(Conv2d::load(&b.pp("downsamplers.0.conv"), cout, cout, 3, p)?)
            } else {
                None
            };
            down.push(Stage { resnets, resample });
        }
        let top = ch[ch.len() - 1];
        let l2 = 2 * c.latent_channels;
        Ok(Encoder {
            conv_in: Conv2d::load3(&e.pp("conv_in"), c.in_channels, ch[0])?,
            down,
            mid: VaeMid::load(&e.pp("mid_block"), top, g)?,
            norm_out: GroupNorm::load(&e.pp("conv_norm_out"), top, g, EPS)?,
            conv_out: Conv2d::load3(&e.pp("conv_out"), top, l2)?,
            quant_conv: Conv2d::load1(&w.pp("quant_conv"), l2, l2)?,
            latent: c.latent_channels,
        })
    }

    /// Encodes `x` [B, 3, H, W] in [-1, 1] into the posterior's (mean, logvar), each
    /// [B, latent, H/8, W/8]; logvar is clamped to [-30, 20] as diffusers does.
    /// The posterior's raw moments [B, 2 · latent, h, w] (mean, then log-variance, unclamped):
    /// what a tiled encode blends before `DiagonalGaussianDistribution` reads them.
    pub fn moments(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let mut h = self.conv_in.forward(x)?;
        for stage in &self.down {
            h = stage.forward(h, false)?;
        }
        h = self.mid.forward(&h)?;
        self.quant_conv.forward(&self.conv_out.forward(&self.norm_out.forward(&h, true)?)?)
    }

    pub fn latent_channels(&self) -> usize {
        self.latent
    }

    pub fn forward(&self, x: &GpuTensor) -> Result<(GpuTensor, GpuTensor)> {
        let moments = self.moments(x)?;
        let mean = ops::narrow(&moments, 1, 0, self.latent)?;
        let logvar = ops::clamp(&ops::narrow(&moments, 1, self.latent, self.latent)?, -30.0, 20.0)?;
        Ok((mean, logvar))
    }
}
