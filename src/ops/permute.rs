//! Dim permutation into a new contiguous tensor (`shaders/permute.wgsl`).

use bytemuck::{Pod, Zeroable};

use super::binary::collapse4;
use super::{elementwise_grid, u32_of};
use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::{DType, GpuTensor};

const SHADER: Shader = Shader { name: "permute", source: include_str!("../../shaders/permute.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    s: [u32; 3],
    x: [u32; 4],
}

/// Output dim `i` is input dim `perm[i]` (as torch's `permute`).
pub fn permute(x: &GpuTensor, perm: &[usize]) -> Result<GpuTensor> {
    const OP: &str = "permute";
    let r = x.rank();
    let mut seen = vec![false; r];
    if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
        return Err(Error::shape(OP, format!("{perm:?} is not a permutation of {r} dims")));
    }
    let mut in_strides = vec![1; r];
    for i in (0..r.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * x.dim(i + 1);
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.dim(p)).collect();
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let (s4, st) = collapse4(&shape, &[strides])
        .ok_or_else(|| Error::shape(OP, format!("{perm:?} of {:?} needs more than 4 dims", x.shape())))?;
    let out = GpuTensor::empty(x.gpu(), &shape, x.dtype())?;
    let params =
        Params { n: u32_of(OP, x.numel())?, s: [s4[1] as u32, s4[2] as u32, s4[3] as u32], x: st[0].map(|v| v as u32) };
    // A pure copy: u32 storage moves f32 bits unchanged; f16 needs its own element size.
    let dtype = if x.dtype() == DType::F16 { DType::F16 } else { DType::F32 };
    let binds = [x.bind(OP)?, out.bind(OP)?];
    x.gpu().launch(&KernelKey::new(SHADER, dtype), bytemuck::bytes_of(&params), &binds, elementwise_grid(x.numel()))?;
    Ok(out)
}
