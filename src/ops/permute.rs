//! Strided copies into a new contiguous tensor (`shaders/permute.wgsl`): dim permutations and
//! narrowing along a dim.

use super::binary::collapse4;
use super::{elementwise_grid, u32_of};
use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::{DType, GpuTensor};

const SHADER: Shader = Shader { name: "permute", source: include_str!("../../shaders/permute.wgsl") };

uniform! {
    struct Params {
        n: u32,
        s1: u32,
        s2: u32,
        s3: u32,
        x: [u32; 4],
        off: u32,
        pad: [u32; 3],
    }
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Output dim `i` is input dim `perm[i]` (as torch's `permute`).
pub fn permute(x: &GpuTensor, perm: &[usize]) -> Result<GpuTensor> {
    const OP: &str = "permute";
    let r = x.rank();
    let mut seen = vec![false; r];
    if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
        return Err(Error::shape(OP, format!("{perm:?} is not a permutation of {r} dims")));
    }
    let in_strides = contiguous_strides(x.shape());
    let shape: Vec<usize> = perm.iter().map(|&p| x.dim(p)).collect();
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    strided_copy(OP, x, &shape, &strides, 0)
}

/// `len` entries of dim `dim` from `start` (torch's `narrow`), as a new tensor.
pub fn narrow(x: &GpuTensor, dim: usize, start: usize, len: usize) -> Result<GpuTensor> {
    const OP: &str = "narrow";
    if dim >= x.rank() || start + len > x.dim(dim) {
        return Err(Error::shape(OP, format!("{start}..{} of dim {dim} in {:?}", start + len, x.shape())));
    }
    let strides = contiguous_strides(x.shape());
    let mut shape = x.shape().to_vec();
    shape[dim] = len;
    strided_copy(OP, x, &shape, &strides, start * strides[dim])
}

fn strided_copy(op: &'static str, x: &GpuTensor, shape: &[usize], strides: &[usize], off: usize) -> Result<GpuTensor> {
    let (s4, st) = collapse4(shape, &[strides.to_vec()])
        .ok_or_else(|| Error::shape(op, format!("copy of {:?} as {shape:?} needs more than 4 dims", x.shape())))?;
    let out = GpuTensor::empty(x.gpu(), shape, x.dtype())?;
    let params = Params {
        n: u32_of(op, out.numel())?,
        s1: s4[1] as u32,
        s2: s4[2] as u32,
        s3: s4[3] as u32,
        x: st[0].map(|v| v as u32),
        off: u32_of(op, off)?,
        pad: [0; 3],
    };
    // A pure copy: u32 storage moves f32 bits unchanged; f16 needs its own element size.
    let dtype = if x.dtype() == DType::F16 { DType::F16 } else { DType::F32 };
    let binds = [x.bind(op)?, out.bind(op)?];
    x.gpu().launch(&KernelKey::new(SHADER, dtype), &params, &binds, elementwise_grid(out.numel()))?;
    Ok(out)
}
