//! Attention blocks of the U-Net and VAE: diffusers' `Attention` (to_q/to_k/to_v/to_out.0),
//! `BasicTransformerBlock` (self-attn, cross-attn, GEGLU feed-forward) and `Transformer2DModel`
//! (group norm, projection in, blocks, projection out, residual).

use super::nn::{Conv2d, GroupNorm, LayerNorm, Linear};
use super::weights::Weights;
use crate::error::Result;
use crate::gpu::GpuTensor;
use crate::ops::{self, AttentionLayout};

/// Multi-head attention on [B, N, C] tokens; keys/values from `context` when given.
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    /// `bias_qkv`: the U-Net's projections have no bias, the VAE's do.
    pub fn load(w: &Weights, dim: usize, context_dim: usize, heads: usize, bias_qkv: bool) -> Result<Attention> {
        Ok(Attention {
            to_q: Linear::load(&w.pp("to_q"), dim, dim, bias_qkv)?,
            to_k: Linear::load(&w.pp("to_k"), context_dim, dim, bias_qkv)?,
            to_v: Linear::load(&w.pp("to_v"), context_dim, dim, bias_qkv)?,
            to_out: Linear::load(&w.pp("to_out.0"), dim, dim, true)?,
            heads,
        })
    }

    /// The VAE mid-block attention: one head, biased projections, under either the current
    /// names or the `query/key/value/proj_attn` of older checkpoints (SD 1.x/2.x fp32 VAE files).
    pub fn load_vae(w: &Weights, dim: usize) -> Result<Attention> {
        let lin = |names: [&str; 2]| -> Result<Linear> {
            let name = if w.contains(&format!("{}.weight", names[0])) { names[0] } else { names[1] };
            Linear::load(&w.pp(name), dim, dim, true)
        };
        Ok(Attention {
            to_q: lin(["to_q", "query"])?,
            to_k: lin(["to_k", "key"])?,
            to_v: lin(["to_v", "value"])?,
            to_out: lin(["to_out.0", "proj_attn"])?,
            heads: 1,
        })
    }

    pub fn forward(&self, x: &GpuTensor, context: Option<&GpuTensor>) -> Result<GpuTensor> {
        let ctx = context.unwrap_or(x);
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(ctx)?;
        let v = self.to_v.forward(ctx)?;
        let o = ops::attention(&q, &k, &v, self.heads, AttentionLayout::Merged, false, None)?;
        self.to_out.forward(&o)
    }
}

/// diffusers' GEGLU feed-forward: `net.0.proj` (dim -> 2*inner), gate, `net.2` (inner -> dim).
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn load(w: &Weights, dim: usize) -> Result<FeedForward> {
        let inner = 4 * dim;
        Ok(FeedForward {
            proj: Linear::load(&w.pp("net.0.proj"), dim, 2 * inner, true)?,
            out: Linear::load(&w.pp("net.2"), inner, dim, true)?,
        })
    }

    pub fn forward(&self, x: &GpuTensor) -> Result<GpuTensor> {
        self.out.forward(&ops::geglu(&self.proj.forward(x)?)?)
    }
}

pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn load(w: &Weights, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::load(&w.pp("norm1"), dim, 1e-5)?,
            attn1: Attention::load(&w.pp("attn1"), dim, dim, heads, false)?,
            norm2: LayerNorm::load(&w.pp("norm2"), dim, 1e-5)?,
            attn2: Attention::load(&w.pp("attn2"), dim, context_dim, heads, false)?,
            norm3: LayerNorm::load(&w.pp("norm3"), dim, 1e-5)?,
            ff: FeedForward::load(&w.pp("ff"), dim)?,
        })
    }

    pub fn forward(&self, x: &GpuTensor, context: &GpuTensor) -> Result<GpuTensor> {
        let x = ops::add(&self.attn1.forward(&self.norm1.forward(x)?, None)?, x)?;
        let x = ops::add(&self.attn2.forward(&self.norm2.forward(&x)?, Some(context))?, &x)?;
        ops::add(&self.ff.forward(&self.norm3.forward(&x)?)?, &x)
    }
}

enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// Transformer2DModel as the SD U-Net uses it: `depth` transformer blocks (1 in SD 1.x/2.x,
/// SDXL's `transformer_layers_per_block` up to 10).
pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    pub fn load(
        w: &Weights,
        channels: usize,
        context_dim: usize,
        heads: usize,
        groups: usize,
        linear: bool,
        depth: usize,
    ) -> Result<Self> {
        let proj = |name: &str| -> Result<Projection> {
            Ok(if linear {
                Projection::Linear(Linear::load(&w.pp(name), channels, channels, true)?)
            } else {
                Projection::Conv(Conv2d::load1(&w.pp(name), channels, channels)?)
            })
        };
        Ok(Transformer2D {
            norm: GroupNorm::load(&w.pp("norm"), channels, groups, 1e-6)?,
            proj_in: proj("proj_in")?,
            blocks: (0..depth)
                .map(|j| {
                    BasicTransformerBlock::load(&w.pp(format!("transformer_blocks.{j}")), channels, context_dim, heads)
                })
                .collect::<Result<_>>()?,
            proj_out: proj("proj_out")?,
        })
    }

    /// `x` [B, C, H, W], `context` [B, T, context_dim].
    pub fn forward(&self, x: &GpuTensor, context: &GpuTensor) -> Result<GpuTensor> {
        let [b, c, h, wd] = ops::nchw(x, "transformer2d")?;
        let mut t = self.norm.forward(x, false)?;
        // To tokens [B, HW, C]; the 1x1 conv (SD 1) runs before, the linear (SD 2) after.
        if let Projection::Conv(conv) = &self.proj_in {
            t = conv.forward(&t)?;
        }
        t = ops::permute(&t.reshape(&[b, c, h * wd])?, &[0, 2, 1])?;
        if let Projection::Linear(lin) = &self.proj_in {
            t = lin.forward(&t)?;
        }
        for block in &self.blocks {
            t = block.forward(&t, context)?;
        }
        if let Projection::Linear(lin) = &self.proj_out {
            t = lin.forward(&t)?;
        }
        t = ops::permute(&t, &[0, 2, 1])?.reshape(&[b, c, h, wd])?;
        if let Projection::Conv(conv) = &self.proj_out {
            t = conv.forward(&t)?;
        }
        ops::add(&t, x)
    }
}
