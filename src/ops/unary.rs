//! Elementwise activations and affine maps (`shaders/unary.wgsl`).

use super::{elementwise_grid, float_dtype, u32_of};
use crate::error::Result;
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::GpuTensor;

const SHADER: Shader = Shader { name: "unary", source: include_str!("../../shaders/unary.wgsl") };

uniform! {
    struct Params {
        n: u32,
        alpha: f32,
        beta: f32,
        pad: u32,
    }
}

fn unary(op: &'static str, define: &'static str, x: &GpuTensor, alpha: f32, beta: f32) -> Result<GpuTensor> {
    let dtype = float_dtype(op, &[x])?;
    let out = GpuTensor::empty(x.gpu(), x.shape(), dtype)?;
    let params = Params { n: u32_of(op, x.numel())?, alpha, beta, pad: 0 };
    let binds = [x.bind(op)?, out.bind(op)?];
    x.gpu().launch(&KernelKey::new(SHADER, dtype).with(define, 1), &params, &binds, elementwise_grid(x.numel()))?;
    Ok(out)
}

pub fn silu(x: &GpuTensor) -> Result<GpuTensor> {
    unary("silu", "OP_SILU", x, 0.0, 0.0)
}

/// Exact (erf) GELU.
pub fn gelu(x: &GpuTensor) -> Result<GpuTensor> {
    unary("gelu", "OP_GELU", x, 0.0, 0.0)
}

/// CLIP's quick_gelu.
pub fn gelu_quick(x: &GpuTensor) -> Result<GpuTensor> {
    unary("gelu_quick", "OP_GELU_QUICK", x, 0.0, 0.0)
}

pub fn relu(x: &GpuTensor) -> Result<GpuTensor> {
    unary("relu", "OP_RELU", x, 0.0, 0.0)
}

/// `limit * tanh(x / limit)`: TAESD's soft clamp of its decoder's input.
pub fn soft_clamp(x: &GpuTensor, limit: f32) -> Result<GpuTensor> {
    unary("soft_clamp", "OP_SOFT_CLAMP", x, limit, 0.0)
}

/// `alpha * x + beta`.
pub fn affine(x: &GpuTensor, alpha: f32, beta: f32) -> Result<GpuTensor> {
    unary("affine", "OP_AFFINE", x, alpha, beta)
}

/// `x` clamped to [`lo`, `hi`].
pub fn clamp(x: &GpuTensor, lo: f32, hi: f32) -> Result<GpuTensor> {
    unary("clamp", "OP_CLAMP", x, lo, hi)
}
