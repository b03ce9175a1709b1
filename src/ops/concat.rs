//! Concatenation along any dim of contiguous tensors (`shaders/concat.wgsl`).

use super::{elementwise_grid, float_dtype, u32_of};
use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::GpuTensor;

const SHADER: Shader = Shader { name: "concat", source: include_str!("../../shaders/concat.wgsl") };

uniform! {
    struct Params {
        n: u32,
        len: u32,
        dst_len: u32,
        offset: u32,
    }
}

pub fn concat(xs: &[&GpuTensor], dim: usize) -> Result<GpuTensor> {
    const OP: &str = "concat";
    let first = xs.first().ok_or_else(|| Error::shape(OP, "no inputs"))?;
    let dtype = float_dtype(OP, xs)?;
    let r = first.rank();
    if dim >= r {
        return Err(Error::shape(OP, format!("dim {dim} of rank {r}")));
    }
    for x in xs {
        let same = x.rank() == r && (0..r).all(|i| i == dim || x.dim(i) == first.dim(i));
        if !same {
            return Err(Error::shape(OP, format!("{:?} vs {:?} along dim {dim}", first.shape(), x.shape())));
        }
    }
    let mut shape = first.shape().to_vec();
    shape[dim] = xs.iter().map(|x| x.dim(dim)).sum();
    let out = GpuTensor::empty(first.gpu(), &shape, dtype)?;
    let outer: usize = shape[..dim].iter().product();
    let inner: usize = shape[dim + 1..].iter().product();
    let key = KernelKey::new(SHADER, dtype);
    let mut offset = 0;
    for x in xs {
        let len = x.dim(dim) * inner;
        let params = Params {
            n: u32_of(OP, outer * len)?,
            len: len as u32,
            dst_len: (shape[dim] * inner) as u32,
            offset: offset as u32,
        };
        let binds = [x.bind(OP)?, out.bind(OP)?];
        first.gpu().launch(&key, &params, &binds, elementwise_grid(outer * len))?;
        offset += len;
    }
    Ok(out)
}
