//! GroupNorm, optionally fused with SiLU (`shaders/group_norm.wgsl`).

use super::float_dtype;
use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::GpuTensor;

const SHADER: Shader = Shader { name: "group_norm", source: include_str!("../../shaders/group_norm.wgsl") };

uniform! {
    struct Params {
        c: u32,
        s: u32,
        groups: u32,
        eps: f32,
    }
}

/// `x` [N, C, ...] normalised over groups of C/`groups` channels, then `gamma`/`beta` per
/// channel, then SiLU if `silu`.
pub fn group_norm(
    x: &GpuTensor,
    groups: usize,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    eps: f32,
    silu: bool,
) -> Result<GpuTensor> {
    const OP: &str = "group_norm";
    let dtype = float_dtype(OP, &[x, gamma, beta])?;
    if x.rank() < 2 {
        return Err(Error::shape(OP, format!("needs [N, C, ...], got {:?}", x.shape())));
    }
    let (n, c) = (x.dim(0), x.dim(1));
    if groups == 0 || c % groups != 0 || gamma.numel() != c || beta.numel() != c {
        return Err(Error::shape(
            OP,
            format!("{c} channels, {groups} groups, gamma {:?}, beta {:?}", gamma.shape(), beta.shape()),
        ));
    }
    let s = x.numel() / (n * c).max(1);
    let out = GpuTensor::empty(x.gpu(), x.shape(), dtype)?;
    let params = Params { c: c as u32, s: s as u32, groups: groups as u32, eps };
    let key = super::reductions(KernelKey::new(SHADER, dtype).with("SILU", silu as u32), x);
    let binds = [x.bind(OP)?, gamma.bind(OP)?, beta.bind(OP)?, out.bind(OP)?];
    x.gpu().launch(&key, &params, &binds, [groups as u32, n as u32, 1])?;
    Ok(out)
}
