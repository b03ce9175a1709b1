//! Sinusoidal timestep embedding (`shaders/timestep_embedding.wgsl`), as diffusers'
//! `get_timestep_embedding` with scale 1 and max_period 10000.

use super::{elementwise_grid, u32_of};
use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::{DType, Gpu, GpuTensor};

const SHADER: Shader =
    Shader { name: "timestep_embedding", source: include_str!("../../shaders/timestep_embedding.wgsl") };

uniform! {
    struct Params {
        n: u32,
        dim: u32,
        half_dim: u32,
        pad: u32,
    }
}

/// exp(-ln(10000) * j / (half - shift)) for j < half, in f32 operation order as torch computes.
pub fn timestep_frequencies(dim: usize, downscale_freq_shift: f32) -> Vec<f32> {
    let half = dim / 2;
    let log_max = -(10000f64.ln() as f32); // torch turns the Python double into an f32 scalar
    (0..half).map(|j| (log_max * j as f32 / (half as f32 - downscale_freq_shift)).exp()).collect()
}

/// Embeds each timestep in `timesteps` into `dim` values -> [len, dim] in `dtype`.
pub fn timestep_embedding(
    gpu: &Gpu,
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
    dtype: DType,
) -> Result<GpuTensor> {
    const OP: &str = "timestep_embedding";
    if dim < 2 || dtype == DType::U32 {
        return Err(Error::shape(OP, format!("dim {dim} / dtype {dtype}")));
    }
    let t = GpuTensor::from_f32(gpu, timesteps, &[timesteps.len()])?;
    let freqs = timestep_frequencies(dim, downscale_freq_shift);
    let f = GpuTensor::from_f32(gpu, &freqs, &[freqs.len()])?;
    let out = GpuTensor::empty(gpu, &[timesteps.len(), dim], dtype)?;
    let params = Params { n: u32_of(OP, out.numel())?, dim: dim as u32, half_dim: (dim / 2) as u32, pad: 0 };
    let key = KernelKey::new(SHADER, dtype).with("FLIP", flip_sin_to_cos as u32);
    let binds = [t.bind(OP)?, f.bind(OP)?, out.bind(OP)?];
    gpu.launch(&key, &params, &binds, elementwise_grid(out.numel()))?;
    Ok(out)
}
