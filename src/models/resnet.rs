//! diffusers' ResnetBlock2D: GroupNorm+SiLU, 3x3 conv, (+ projected time embedding), GroupNorm+
//! SiLU, 3x3 conv, plus the input (through a 1x1 `conv_shortcut` when the width changes).

use super::nn::{Conv2d, GroupNorm, Linear};
use super::weights::Weights;
use crate::error::Result;
use crate::gpu::GpuTensor;
use crate::ops;

pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    /// `temb_channels` is None in the VAE, which has no time embedding.
    pub fn load(
        w: &Weights,
        cin: usize,
        cout: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        let conv1 = Conv2d::load3(&w.pp("conv1"), cin, cout)?;
        // conv1's bias joins the projection's, once: the projected embedding [B, C] is then
        // conv1's bias per image, added in its epilogue (diffusers: conv1(x) + proj(temb)).
        let time_emb_proj = match temb_channels {
            Some(t) => {
                let mut proj = Linear::load(&w.pp("time_emb_proj"), t, cout, true)?;
                if let (Some(pb), Some(cb)) = (&proj.bias, &conv1.bias) {
                    proj.bias = Some(ops::add(pb, cb)?);
                }
                Some(proj)
            }
            None => None,
        };
        Ok(ResnetBlock2D {
            norm1: GroupNorm::load(&w.pp("norm1"), cin, groups, eps)?,
            conv1,
            time_emb_proj,
            norm2: GroupNorm::load(&w.pp("norm2"), cout, groups, eps)?,
            conv2: Conv2d::load3(&w.pp("conv2"), cout, cout)?,
            conv_shortcut: if cin != cout { Some(Conv2d::load1(&w.pp("conv_shortcut"), cin, cout)?) } else { None },
        })
    }

    /// `x` [B, C, H, W]; `temb_act` = SiLU(time embedding) [B, T], computed once per step by
    /// the caller because every block applies the same activation to it.
    pub fn forward(&self, x: &GpuTensor, temb_act: Option<&GpuTensor>) -> Result<GpuTensor> {
        let normed = self.norm1.forward(x, true)?;
        let h = match (&self.time_emb_proj, temb_act) {
            // [B, C]: one embedding per image (the U-Net embeds the timestep for each).
            (Some(proj), Some(t)) => self.conv1.forward_biased(&normed, Some(&proj.forward(t)?), None)?,
            _ => self.conv1.forward(&normed)?,
        };
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        // skip + conv2(…), the add in conv2's epilogue (diffusers: input + hidden_states).
        self.conv2.forward_add(&self.norm2.forward(&h, true)?, Some(&skip))
    }
}
