//! GEGLU gating (`shaders/geglu.wgsl`).

use super::{elementwise_grid, float_dtype, u32_of};
use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::GpuTensor;

const SHADER: Shader = Shader { name: "geglu", source: include_str!("../../shaders/geglu.wgsl") };

uniform! {
    struct Params {
        n: u32,
        d: u32,
        pad: [u32; 2],
    }
}

/// `x` [.., 2D] = [hidden | gate] -> hidden * gelu(gate), [.., D].
pub fn geglu(x: &GpuTensor) -> Result<GpuTensor> {
    const OP: &str = "geglu";
    let dtype = float_dtype(OP, &[x])?;
    let d2 = *x.shape().last().ok_or_else(|| Error::shape(OP, "scalar input"))?;
    if d2 % 2 != 0 {
        return Err(Error::shape(OP, format!("last dim {d2} is odd")));
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap_or(&mut 0) = d2 / 2;
    let out = GpuTensor::empty(x.gpu(), &shape, dtype)?;
    let params = Params { n: u32_of(OP, out.numel())?, d: (d2 / 2) as u32, pad: [0; 2] };
    let binds = [x.bind(OP)?, out.bind(OP)?];
    x.gpu().launch(&KernelKey::new(SHADER, dtype), &params, &binds, elementwise_grid(out.numel()))?;
    Ok(out)
}
