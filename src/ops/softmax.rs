//! Softmax over the last dimension, of `scale * x` (`shaders/softmax.wgsl`).

use super::{float_dtype, u32_of};
use crate::error::{Error, Result};
use crate::gpu::kernel::{grid_1d, KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::GpuTensor;

const SHADER: Shader = Shader { name: "softmax", source: include_str!("../../shaders/softmax.wgsl") };

uniform! {
    struct Params {
        rows: u32,
        d: u32,
        scale: f32,
        pad: u32,
    }
}

pub fn softmax(x: &GpuTensor, scale: f32) -> Result<GpuTensor> {
    const OP: &str = "softmax";
    let dtype = float_dtype(OP, &[x])?;
    let d = *x.shape().last().ok_or_else(|| Error::shape(OP, "scalar input"))?;
    let rows = x.numel() / d.max(1);
    let out = GpuTensor::empty(x.gpu(), x.shape(), dtype)?;
    let params = Params { rows: u32_of(OP, rows)?, d: d as u32, scale, pad: 0 };
    let binds = [x.bind(OP)?, out.bind(OP)?];
    x.gpu().launch(&super::reductions(KernelKey::new(SHADER, dtype), x), &params, &binds, grid_1d(rows as u32))?;
    Ok(out)
}
