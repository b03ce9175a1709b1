//! The U-Net's down, mid and up blocks (CrossAttnDownBlock2D / DownBlock2D,
//! UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D / UpBlock2D), wired as diffusers wires them.

use super::attention::Transformer2D;
use super::nn::Conv2d;
use super::resnet::ResnetBlock2D;
use super::weights::Weights;
use crate::error::Result;
use crate::gpu::GpuTensor;
use crate::ops;

/// What every block needs to know about the model.
#[derive(Clone, Copy)]
pub struct BlockCfg {
    pub temb: usize,
    pub groups: usize,
    pub eps: f64,
    pub context_dim: usize,
    pub linear_projection: bool,
    /// Transformer blocks per attention at this block's level.
    pub depth: usize,
}

fn load_attn(
    w: &Weights,
    cross: bool,
    i: usize,
    ch: usize,
    heads: usize,
    c: BlockCfg,
) -> Result<Option<Transformer2D>> {
    if !cross {
        return Ok(None);
    }
    Transformer2D::load(
        &w.pp(format!("attentions.{i}")),
        ch,
        c.context_dim,
        heads,
        c.groups,
        c.linear_projection,
        c.depth,
    )
    .map(Some)
}

pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Option<Transformer2D>>,
    downsample: Option<Conv2d>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &Weights,
        cross: bool,
        layers: usize,
        cin: usize,
        cout: usize,
        heads: usize,
        downsample_padding: Option<usize>,
        c: BlockCfg,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let rin = if i == 0 { cin } else { cout };
            resnets.push(ResnetBlock2D::load(&w.pp(format!("resnets.{i}")), rin, cout, Some(c.temb), c.groups, c.eps)?);
            attentions.push(load_attn(w, cross, i, cout, heads, c)?);
        }
        let downsample = downsample_padding
            .map(|padding| {
                let p = ops::Conv2dParams { stride: 2, padding, pad_end: 0 };
                Conv2d::load(&w.pp("downsamplers.0.conv"), cout, cout, 3, p)
            })
            .transpose()?;
        Ok(DownBlock { resnets, attentions, downsample })
    }

    /// Runs the block, pushing every output the up path will concatenate back onto `skips`.
    pub fn forward(
        &self,
        mut x: GpuTensor,
        temb: &GpuTensor,
        ctx: &GpuTensor,
        skips: &mut Vec<GpuTensor>,
    ) -> Result<GpuTensor> {
        for (resnet, attn) in self.resnets.iter().zip(&self.attentions) {
            x = resnet.forward(&x, Some(temb))?;
            if let Some(attn) = attn {
                x = attn.forward(&x, ctx)?;
            }
            skips.push(x.clone());
        }
        if let Some(down) = &self.downsample {
            x = down.forward(&x)?;
            skips.push(x.clone());
        }
        Ok(x)
    }
}

pub struct MidBlock {
    resnet0: ResnetBlock2D,
    attention: Transformer2D,
    resnet1: ResnetBlock2D,
}

impl MidBlock {
    pub fn load(w: &Weights, ch: usize, heads: usize, c: BlockCfg) -> Result<Self> {
        Ok(MidBlock {
            resnet0: ResnetBlock2D::load(&w.pp("resnets.0"), ch, ch, Some(c.temb), c.groups, c.eps)?,
            attention: Transformer2D::load(
                &w.pp("attentions.0"),
                ch,
                c.context_dim,
                heads,
                c.groups,
                c.linear_projection,
                c.depth,
            )?,
            resnet1: ResnetBlock2D::load(&w.pp("resnets.1"), ch, ch, Some(c.temb), c.groups, c.eps)?,
        })
    }

    pub fn forward(&self, x: &GpuTensor, temb: &GpuTensor, ctx: &GpuTensor) -> Result<GpuTensor> {
        let x = self.resnet0.forward(x, Some(temb))?;
        let x = self.attention.forward(&x, ctx)?;
        self.resnet1.forward(&x, Some(temb))
    }
}

pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Option<Transformer2D>>,
    upsample: Option<Conv2d>,
}

/// Widths of one up block: `prev` from the block below, `cout` its own, `skip_last` the width of
/// the skip its last resnet receives (the input width of the matching down block).
pub struct UpWidths {
    pub prev: usize,
    pub cout: usize,
    pub skip_last: usize,
}

impl UpBlock {
    pub fn load(
        w: &Weights,
        cross: bool,
        layers: usize,
        widths: UpWidths,
        heads: usize,
        upsample: bool,
        c: BlockCfg,
    ) -> Result<Self> {
        let UpWidths { prev, cout, skip_last } = widths;
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let skip = if i == layers - 1 { skip_last } else { cout };
            let rin = if i == 0 { prev } else { cout };
            resnets.push(ResnetBlock2D::load(
                &w.pp(format!("resnets.{i}")),
                rin + skip,
                cout,
                Some(c.temb),
                c.groups,
                c.eps,
            )?);
            attentions.push(load_attn(w, cross, i, cout, heads, c)?);
        }
        let upsample = if upsample { Some(Conv2d::load3(&w.pp("upsamplers.0.conv"), cout, cout)?) } else { None };
        Ok(UpBlock { resnets, attentions, upsample })
    }

    pub fn forward(
        &self,
        mut x: GpuTensor,
        temb: &GpuTensor,
        ctx: &GpuTensor,
        skips: &mut Vec<GpuTensor>,
    ) -> Result<GpuTensor> {
        for (resnet, attn) in self.resnets.iter().zip(&self.attentions) {
            let skip = skips.pop().ok_or_else(|| crate::Error::shape("unet", "ran out of skip connections"))?;
            x = resnet.forward(&ops::concat(&[&x, &skip], 1)?, Some(temb))?;
            if let Some(attn) = attn {
                x = attn.forward(&x, ctx)?;
            }
        }
        if let Some(up) = &self.upsample {
            x = up.forward(&ops::upsample_nearest2x(&x)?)?;
        }
        Ok(x)
    }
}
