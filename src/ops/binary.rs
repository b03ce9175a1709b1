//! Broadcasting add/mul (`shaders/binary.wgsl`), and the stride collapsing that lets any-rank
//! broadcasts and permutes run as a 4-D index walk.

use super::{elementwise_grid, float_dtype, u32_of};
use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::GpuTensor;

const SHADER: Shader = Shader { name: "binary", source: include_str!("../../shaders/binary.wgsl") };

uniform! {
    struct Params {
        n: u32,
        s1: u32,
        s2: u32,
        s3: u32,
        a: [u32; 4],
        b: [u32; 4],
    }
}

/// Row-major strides of `shape` aligned to the right of `out` (numpy broadcasting); a dim of
/// size 1 against a larger output dim gets stride 0.
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Option<Vec<usize>> {
    if shape.len() > out.len() {
        return None;
    }
    let lead = out.len() - shape.len();
    let mut strides = vec![0; out.len()];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        let (s, o) = (shape[i], out[lead + i]);
        if s == o {
            strides[lead + i] = acc;
        } else if s != 1 {
            return None;
        }
        acc *= s;
    }
    Some(strides)
}

/// Merges adjacent dims that every stride set walks contiguously and drops size-1 dims, then
/// left-pads to 4 dims. Fails if more than 4 dims remain.
pub(crate) fn collapse4(shape: &[usize], strides: &[Vec<usize>]) -> Option<([usize; 4], Vec<[usize; 4]>)> {
    let mut dims: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, &size) in shape.iter().enumerate() {
        if size == 1 {
            continue;
        }
        let st: Vec<usize> = strides.iter().map(|s| s[i]).collect();
        if let Some((psize, pst)) = dims.last_mut() {
            if pst.iter().zip(&st).all(|(&p, &c)| p == c * size) {
                *psize *= size;
                *pst = st;
                continue;
            }
        }
        dims.push((size, st));
    }
    if dims.len() > 4 {
        return None;
    }
    let mut s4 = [1usize; 4];
    let mut st4 = vec![[0usize; 4]; strides.len()];
    let off = 4 - dims.len();
    for (j, (size, st)) in dims.into_iter().enumerate() {
        s4[off + j] = size;
        for (k, v) in st.into_iter().enumerate() {
            st4[k][off + j] = v;
        }
    }
    Some((s4, st4))
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
            let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
            match (da, db) {
                (x, y) if x == y => Some(x),
                (1, y) => Some(y),
                (x, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}

fn binary(op: &'static str, define: &'static str, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
    let dtype = float_dtype(op, &[a, b])?;
    let bad = || Error::shape(op, format!("cannot broadcast {:?} with {:?}", a.shape(), b.shape()));
    let shape = broadcast_shape(a.shape(), b.shape()).ok_or_else(bad)?;
    let sa = broadcast_strides(a.shape(), &shape).ok_or_else(bad)?;
    let sb = broadcast_strides(b.shape(), &shape).ok_or_else(bad)?;
    let (s4, st) = collapse4(&shape, &[sa, sb]).ok_or_else(|| {
        Error::shape(op, format!("broadcast of {:?} with {:?} needs more than 4 dims", a.shape(), b.shape()))
    })?;
    let out = GpuTensor::empty(a.gpu(), &shape, dtype)?;
    let n = u32_of(op, out.numel())?;
    let params = Params {
        n,
        s1: s4[1] as u32,
        s2: s4[2] as u32,
        s3: s4[3] as u32,
        a: st[0].map(|v| v as u32),
        b: st[1].map(|v| v as u32),
    };
    let binds = [a.bind(op)?, b.bind(op)?, out.bind(op)?];
    a.gpu().launch(&KernelKey::new(SHADER, dtype).with(define, 1), &params, &binds, elementwise_grid(out.numel()))?;
    Ok(out)
}

pub fn add(a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
    binary("add", "OP_ADD", a, b)
}

pub fn mul(a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
    binary("mul", "OP_MUL", a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_and_collapse() {
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), Some(vec![0, 1, 0]));
        assert_eq!(broadcast_strides(&[3, 2], &[3, 4]), None);
        assert_eq!(broadcast_shape(&[2, 1, 4], &[3, 1]), Some(vec![2, 3, 4]));
        // A contiguous 5-D tensor added to itself collapses to one dim.
        let s = [2, 3, 4, 5, 6];
        let st = broadcast_strides(&s, &s).unwrap();
        let (s4, st4) = collapse4(&s, &[st.clone(), st]).unwrap();
        assert_eq!(s4, [1, 1, 1, 720]);
        assert_eq!(st4[0], [0, 0, 0, 1]);
        // Per-channel bias over [N, C, H, W]: C stays separate, H*W merge.
        let (s4, st4) = collapse4(&[2, 3, 4, 5], &[vec![60, 20, 5, 1], vec![0, 1, 0, 0]]).unwrap();
        assert_eq!(s4, [1, 2, 3, 20]);
        assert_eq!(st4[1], [0, 0, 1, 0]);
    }
}
