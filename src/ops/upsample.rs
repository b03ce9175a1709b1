//! Nearest 2x upsampling (`shaders/upsample_nearest.wgsl`).

use super::{elementwise_grid, float_dtype, u32_of};
use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::GpuTensor;

const SHADER: Shader = Shader { name: "upsample_nearest", source: include_str!("../../shaders/upsample_nearest.wgsl") };

uniform! {
    struct Params {
        n: u32,
        h: u32,
        w: u32,
        pad: u32,
    }
}

/// [N, C, H, W] -> [N, C, 2H, 2W].
pub fn upsample_nearest2x(x: &GpuTensor) -> Result<GpuTensor> {
    const OP: &str = "upsample_nearest2x";
    let dtype = float_dtype(OP, &[x])?;
    let &[n, c, h, w] = x.shape() else {
        return Err(Error::shape(OP, format!("needs NCHW, got {:?}", x.shape())));
    };
    let out = GpuTensor::empty(x.gpu(), &[n, c, 2 * h, 2 * w], dtype)?;
    let params = Params { n: u32_of(OP, out.numel())?, h: h as u32, w: w as u32, pad: 0 };
    let binds = [x.bind(OP)?, out.bind(OP)?];
    x.gpu().launch(&KernelKey::new(SHADER, dtype), &params, &binds, elementwise_grid(out.numel()))?;
    Ok(out)
}
