//! The layers every model is built from, each a thin wrapper over one or two ops, loaded from
//! `Weights` under diffusers' names (`weight`, `bias`).

use super::weights::Weights;
use crate::error::Result;
use crate::gpu::GpuTensor;
use crate::ops;

/// nn.Linear: `weight` [out, in], optional `bias` [out].
pub struct Linear {
    pub weight: GpuTensor,
    pub bias: Option<GpuTensor>,
}

impl Linear {
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        Ok(Linear {
            weight: w.get("weight", &[out_dim, in_dim])?,
            bias: if bias { Some(w.get("bias", &[out_dim])?) } else { None },
        })
    }

    pub fn forward(&self, x: &GpuTensor) -> Result<GpuTensor> {
        ops::linear(x, &self.weight, self.bias.as_ref())
    }
}

/// nn.Conv2d with bias.
pub struct Conv2d {
    pub weight: GpuTensor,
    pub bias: GpuTensor,
    pub params: ops::Conv2dParams,
}

impl Conv2d {
    pub fn load(w: &Weights, cin: usize, cout: usize, k: usize, params: ops::Conv2dParams) -> Result<Conv2d> {
        Ok(Conv2d { weight: w.get("weight", &[cout, cin, k, k])?, bias: w.get("bias", &[cout])?, params })
    }

    /// 3x3, stride 1, padding 1: the shape-preserving conv of ResNet blocks.
    pub fn load3(w: &Weights, cin: usize, cout: usize) -> Result<Conv2d> {
        Self::load(w, cin, cout, 3, ops::Conv2dParams { stride: 1, padding: 1, ..Default::default() })
    }

    pub fn load1(w: &Weights, cin: usize, cout: usize) -> Result<Conv2d> {
        Self::load(w, cin, cout, 1, ops::Conv2dParams::default())
    }

    pub fn forward(&self, x: &GpuTensor) -> Result<GpuTensor> {
        ops::conv2d(x, &self.weight, Some(&self.bias), self.params)
    }
}

/// nn.GroupNorm with affine parameters, optionally fused with the SiLU that follows it.
pub struct GroupNorm {
    pub gamma: GpuTensor,
    pub beta: GpuTensor,
    pub groups: usize,
    pub eps: f32,
}

impl GroupNorm {
    pub fn load(w: &Weights, channels: usize, groups: usize, eps: f64) -> Result<GroupNorm> {
        Ok(GroupNorm {
            gamma: w.get("weight", &[channels])?,
            beta: w.get("bias", &[channels])?,
            groups,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &GpuTensor, silu: bool) -> Result<GpuTensor> {
        ops::group_norm(x, self.groups, &self.gamma, &self.beta, self.eps, silu)
    }
}

/// nn.LayerNorm over the last dimension.
pub struct LayerNorm {
    pub gamma: GpuTensor,
    pub beta: GpuTensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm { gamma: w.get("weight", &[dim])?, beta: w.get("bias", &[dim])?, eps: eps as f32 })
    }

    pub fn forward(&self, x: &GpuTensor) -> Result<GpuTensor> {
        ops::layer_norm(x, &self.gamma, &self.beta, self.eps)
    }
}
