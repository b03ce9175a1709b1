//! LayerNorm over the last dimension (`shaders/layer_norm.wgsl`).

use super::{float_dtype, u32_of};
use crate::error::{Error, Result};
use crate::gpu::kernel::{grid_1d, KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::GpuTensor;

const SHADER: Shader = Shader { name: "layer_norm", source: include_str!("../../shaders/layer_norm.wgsl") };

/// Rows up to this wide take one invocation each (the tiny models' 32-128 channels: the demo
/// model's layer norms ran 138 ms a dispatch on lavapipe with a workgroup per row); wider ones a
/// workgroup, which reads the row coalesced and reduces it in parallel.
const ROW_THREAD_MAX_D: usize = 128;

uniform! {
    struct Params {
        rows: u32,
        d: u32,
        eps: f32,
        pad: u32,
    }
}

pub fn layer_norm(x: &GpuTensor, gamma: &GpuTensor, beta: &GpuTensor, eps: f32) -> Result<GpuTensor> {
    const OP: &str = "layer_norm";
    let dtype = float_dtype(OP, &[x, gamma, beta])?;
    let d = *x.shape().last().ok_or_else(|| Error::shape(OP, "scalar input"))?;
    if gamma.numel() != d || beta.numel() != d {
        return Err(Error::shape(OP, format!("last dim {d}, gamma {:?}, beta {:?}", gamma.shape(), beta.shape())));
    }
    let rows = x.numel() / d.max(1);
    let out = GpuTensor::empty(x.gpu(), x.shape(), dtype)?;
    let params = Params { rows: u32_of(OP, rows)?, d: d as u32, eps, pad: 0 };
    let binds = [x.bind(OP)?, gamma.bind(OP)?, beta.bind(OP)?, out.bind(OP)?];
    if d <= ROW_THREAD_MAX_D {
        let key = KernelKey::new(SHADER, dtype).with("ROW_THREAD", 1);
        x.gpu().launch(&key, &params, &binds, grid_1d(rows.div_ceil(64) as u32))?;
    } else {
        let key = super::reductions(KernelKey::new(SHADER, dtype), x).with("ROW_THREAD", 0);
        x.gpu().launch(&key, &params, &binds, grid_1d(rows as u32))?;
    }
    Ok(out)
}
