//! The layers every model is built from, each a thin wrapper over one or two ops, loaded from
//! `Weights` under diffusers' names (`weight`, `bias`).

use super::weights::Weights;
use crate::error::Result;
use crate::gpu::GpuTensor;
use crate::ops;
use crate::quant::QTensor;

/// A matmul/conv weight, dense in the compute dtype or in q8_0/q4_0 blocks (dequantized inside
/// the kernels).
pub enum Weight {
    Dense(GpuTensor),
    Quant(QTensor),
}

/// nn.Linear: `weight` [out, in], optional `bias` [out].
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<GpuTensor>,
}

impl Linear {
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        Ok(Linear {
            weight: w.matrix("weight", &[out_dim, in_dim])?,
            bias: if bias { Some(w.get("bias", &[out_dim])?) } else { None },
        })
    }

    pub fn forward(&self, x: &GpuTensor) -> Result<GpuTensor> {
        match &self.weight {
            Weight::Dense(weight) => ops::linear(x, weight, self.bias.as_ref()),
            Weight::Quant(q) => ops::matmul_quant(x, q, self.bias.as_ref()),
        }
    }
}

/// nn.Conv2d with bias.
pub struct Conv2d {
    pub weight: Weight,
    pub bias: Option<GpuTensor>,
    pub kernel: usize,
    pub params: ops::Conv2dParams,
}

impl Conv2d {
    pub fn load(w: &Weights, cin: usize, cout: usize, k: usize, params: ops::Conv2dParams) -> Result<Conv2d> {
        let bias = Some(w.get("bias", &[cout])?);
        Ok(Conv2d { weight: w.matrix("weight", &[cout, cin, k, k])?, bias, kernel: k, params })
    }

    /// A conv built with `bias=False` (TAESD's resampling convs).
    pub fn load_no_bias(w: &Weights, cin: usize, cout: usize, k: usize, params: ops::Conv2dParams) -> Result<Conv2d> {
        Ok(Conv2d { weight: w.matrix("weight", &[cout, cin, k, k])?, bias: None, kernel: k, params })
    }

    /// 3x3, stride 1, padding 1: the shape-preserving conv of ResNet blocks.
    pub fn load3(w: &Weights, cin: usize, cout: usize) -> Result<Conv2d> {
        Self::load(w, cin, cout, 3, ops::Conv2dParams { stride: 1, padding: 1, ..Default::default() })
    }

    pub fn load1(w: &Weights, cin: usize, cout: usize) -> Result<Conv2d> {
        Self::load(w, cin, cout, 1, ops::Conv2dParams::default())
    }

    pub fn forward(&self, x: &GpuTensor) -> Result<GpuTensor> {
        self.forward_add(x, None)
    }

    /// The conv plus `residual` (its output's shape), added in the conv's epilogue.
    pub fn forward_add(&self, x: &GpuTensor, residual: Option<&GpuTensor>) -> Result<GpuTensor> {
        self.forward_biased(x, self.bias.as_ref(), residual)
    }

    /// The conv with `bias` ([Cout] or one per image, [N, Cout]) in place of its own, plus
    /// `residual`, both in the epilogue.
    pub fn forward_biased(
        &self,
        x: &GpuTensor,
        b: Option<&GpuTensor>,
        residual: Option<&GpuTensor>,
    ) -> Result<GpuTensor> {
        let (cp, k) = (self.params, self.kernel);
        match &self.weight {
            Weight::Dense(weight) => ops::conv2d_add(x, weight, b, cp, residual),
            Weight::Quant(q) => ops::conv2d_quant_add(x, q, k, k, b, cp, residual),
        }
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
