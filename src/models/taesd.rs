//! TAESD, diffusers' `AutoencoderTiny` (madebyollin/taesd): a 2.4 M-parameter stand-in for the
//! SD VAE, plain 3x3 convs and ReLUs, ~100x cheaper to run. Its decoder makes the page's live
//! previews and an optional fast final decode; its encoder an optional fast img2img start.
//! It works on the pipeline's latents as they are (its `scaling_factor` is 1.0: it was trained on
//! SD latents already multiplied by 0.18215), and in diffusers' [-1, 1] image convention at its
//! edges ([0, 1] inside, as TAESD was trained).
//!
//! Layout (`encoder.layers.N`, `decoder.layers.N` are `nn.Sequential` indices): encoder = conv,
//! then per level a stride-2 conv without bias (not for the first) and its blocks, then a conv
//! to the latent channels; decoder = soft clamp (3 tanh(x/3)), conv, ReLU, then per level its
//! blocks, a nearest 2x upsample and a conv without bias (the last level: no upsample, the conv to
//! RGB with a bias). A block is conv-ReLU-conv-ReLU-conv plus the input, then ReLU.

use serde::Deserialize;

use super::nn::Conv2d;
use super::weights::Weights;
use crate::error::{Error, Result};
use crate::gpu::GpuTensor;
use crate::ops::{self, Conv2dParams};

#[derive(Clone, Debug, Deserialize)]
pub struct TinyConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub decoder_block_out_channels: Vec<usize>,
    pub num_encoder_blocks: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "relu")]
    pub act_fn: String,
    #[serde(default = "nearest")]
    pub upsample_fn: String,
    #[serde(default = "two")]
    pub upsampling_scaling_factor: usize,
    #[serde(default = "one")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: f64,
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn two() -> usize {
    2
}
fn one() -> f64 {
    1.0
}
fn relu() -> String {
    "relu".into()
}
fn nearest() -> String {
    "nearest".into()
}

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::Config { component: "taesd".into(), msg: msg.to_string() }
}

impl TinyConfig {
    pub fn from_json(json: &str) -> Result<TinyConfig> {
        let c: TinyConfig = serde_json::from_str(json).map_err(bad)?;
        // What our layers implement; another choice would load and compute something else.
        if c.act_fn != "relu" || c.upsample_fn != "nearest" || c.upsampling_scaling_factor != 2 {
            return Err(bad(format!(
                "act_fn {}, upsample_fn {} x{}: only relu and nearest 2x are supported",
                c.act_fn, c.upsample_fn, c.upsampling_scaling_factor
            )));
        }
        if c.scaling_factor != 1.0 || c.shift_factor != 0.0 {
            return Err(bad(format!(
                "scaling_factor {} and shift_factor {}: a TAESD for SD 1.x/2.x latents has 1 and 0",
                c.scaling_factor, c.shift_factor
            )));
        }
        let levels = c.encoder_block_out_channels.len();
        let same = [c.decoder_block_out_channels.len(), c.num_encoder_blocks.len(), c.num_decoder_blocks.len()];
        if !(1..=8).contains(&levels) || same.iter().any(|&n| n != levels) {
            return Err(bad(format!("{levels} levels, with {same:?} entries in the other lists")));
        }
        let widths = c.encoder_block_out_channels.iter().chain(&c.decoder_block_out_channels);
        let counts = c.num_encoder_blocks.iter().chain(&c.num_decoder_blocks);
        let channels = [c.in_channels, c.out_channels, c.latent_channels];
        if widths.clone().any(|&w| !(1..=4096).contains(&w))
            || counts.clone().any(|&n| n > 64)
            || channels.iter().any(|&ch| !(1..=64).contains(&ch))
        {
            return Err(bad("a channel count or block count out of range"));
        }
        Ok(c)
    }

    /// How much smaller the latents are than the image.
    pub fn downscale(&self) -> usize {
        1 << (self.encoder_block_out_channels.len() - 1)
    }
}

const SAME: Conv2dParams = Conv2dParams { stride: 1, padding: 1, pad_end: 0 };
const DOWN: Conv2dParams = Conv2dParams { stride: 2, padding: 1, pad_end: 0 };

/// AutoencoderTinyBlock with equal in and out channels (every block TAESD has).
struct Block {
    convs: [Conv2d; 3],
}

impl Block {
    fn load(w: &Weights, ch: usize) -> Result<Block> {
        let conv = |i: usize| Conv2d::load(&w.pp(format!("conv.{i}")), ch, ch, 3, SAME);
        Ok(Block { convs: [conv(0)?, conv(2)?, conv(4)?] })
    }

    fn forward(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let h = ops::relu(&self.convs[0].forward(x)?)?;
        let h = ops::relu(&self.convs[1].forward(&h)?)?;
        let h = self.convs[2].forward(&h)?;
        ops::relu(&ops::add(&h, x)?)
    }
}

enum Layer {
    Conv(Conv2d),
    Relu,
    Block(Box<Block>),
    Upsample,
}

fn run(layers: &[Layer], x: &GpuTensor) -> Result<GpuTensor> {
    let mut x = x.clone();
    for l in layers {
        x = match l {
            Layer::Conv(c) => c.forward(&x)?,
            Layer::Relu => ops::relu(&x)?,
            Layer::Block(b) => b.forward(&x)?,
            Layer::Upsample => ops::upsample_nearest2x(&x)?,
        };
    }
    Ok(x)
}

/// Images in [-1, 1] → latents as the pipeline holds them.
pub struct TinyEncoder {
    layers: Vec<Layer>,
}

impl TinyEncoder {
    /// `w` at the model's root (`encoder.layers.*` under it).
    pub fn load(c: &TinyConfig, w: &Weights) -> Result<TinyEncoder> {
        let w = w.pp("encoder.layers");
        let mut layers = Vec::new();
        let mut cin = c.in_channels;
        for (i, (&ch, &blocks)) in c.encoder_block_out_channels.iter().zip(&c.num_encoder_blocks).enumerate() {
            if i > 0 && ch != cin {
                return Err(bad(format!("encoder level {i} is {ch} wide after {cin}: TAESD's levels are equal")));
            }
            let at = w.pp(layers.len());
            layers.push(Layer::Conv(if i == 0 {
                Conv2d::load(&at, cin, ch, 3, SAME)?
            } else {
                Conv2d::load_no_bias(&at, ch, ch, 3, DOWN)?
            }));
            for _ in 0..blocks {
                layers.push(Layer::Block(Box::new(Block::load(&w.pp(layers.len()), ch)?)));
            }
            cin = ch;
        }
        layers.push(Layer::Conv(Conv2d::load(&w.pp(layers.len()), cin, c.latent_channels, 3, SAME)?));
        Ok(TinyEncoder { layers })
    }

    pub fn forward(&self, image: &GpuTensor) -> Result<GpuTensor> {
        // [-1, 1] → [0, 1], TAESD's convention.
        run(&self.layers, &ops::affine(image, 0.5, 0.5)?)
    }
}

/// Latents as the pipeline holds them → images in [-1, 1].
pub struct TinyDecoder {
    layers: Vec<Layer>,
    pub latent_channels: usize,
    pub upscale: usize,
}

impl TinyDecoder {
    /// `w` at the model's root (`decoder.layers.*` under it).
    pub fn load(c: &TinyConfig, w: &Weights) -> Result<TinyDecoder> {
        let w = w.pp("decoder.layers");
        let widths = &c.decoder_block_out_channels;
        let mut layers = vec![Layer::Conv(Conv2d::load(&w.pp(0), c.latent_channels, widths[0], 3, SAME)?), Layer::Relu];
        let mut cin = widths[0];
        let levels = widths.len();
        for (i, (&ch, &blocks)) in widths.iter().zip(&c.num_decoder_blocks).enumerate() {
            if ch != cin {
                return Err(bad(format!("decoder level {i} is {ch} wide after {cin}: blocks do not change width")));
            }
            for _ in 0..blocks {
                layers.push(Layer::Block(Box::new(Block::load(&w.pp(layers.len()), ch)?)));
            }
            let last = i + 1 == levels;
            if !last {
                layers.push(Layer::Upsample);
            }
            let at = w.pp(layers.len());
            let out = if last { c.out_channels } else { ch };
            layers.push(Layer::Conv(if last {
                Conv2d::load(&at, ch, out, 3, SAME)?
            } else {
                Conv2d::load_no_bias(&at, ch, out, 3, SAME)?
            }));
            cin = out;
        }
        Ok(TinyDecoder { layers, latent_channels: c.latent_channels, upscale: c.downscale() })
    }

    pub fn forward(&self, latents: &GpuTensor) -> Result<GpuTensor> {
        let x = ops::soft_clamp(latents, 3.0)?;
        // [0, 1] → [-1, 1], diffusers' convention.
        ops::affine(&run(&self.layers, &x)?, 2.0, -1.0)
    }
}
