//! Flash-style scaled-dot-product attention (`shaders/attention.wgsl`): online softmax, the
//! Nq x Nk score matrix never exists in memory.

use bytemuck::{Pod, Zeroable};

use super::{float_dtype, u32_of};
use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::GpuTensor;

const SHADER: Shader = Shader { name: "attention", source: include_str!("../../shaders/attention.wgsl") };

/// Workgroup memory the K/V tiles may use: WebGPU's default limit, so every device runs it.
const TILE_BUDGET_BYTES: usize = 16 * 1024;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    nq: u32,
    nk: u32,
    heads: u32,
    scale: f32,
    q_bs: u32,
    q_hs: u32,
    q_rs: u32,
    k_bs: u32,
    k_hs: u32,
    k_rs: u32,
    v_bs: u32,
    v_hs: u32,
    v_rs: u32,
    o_bs: u32,
    o_hs: u32,
    o_rs: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionLayout {
    /// [B, N, heads * D]: what the q/k/v projections produce; read in place.
    Merged,
    /// [B, heads, N, D].
    Split,
}

/// softmax(scale * Q K^T [+ causal mask]) V per head. `scale` defaults to 1/sqrt(D).
/// The output has the layout of the inputs.
pub fn attention(
    q: &GpuTensor,
    k: &GpuTensor,
    v: &GpuTensor,
    heads: usize,
    layout: AttentionLayout,
    causal: bool,
    scale: Option<f32>,
) -> Result<GpuTensor> {
    const OP: &str = "attention";
    let dtype = float_dtype(OP, &[q, k, v])?;
    let dims = |t: &GpuTensor| -> Result<(usize, usize, usize)> {
        match (layout, t.shape()) {
            (AttentionLayout::Merged, &[b, n, hd]) if heads > 0 && hd % heads == 0 => Ok((b, n, hd / heads)),
            (AttentionLayout::Split, &[b, h, n, d]) if h == heads => Ok((b, n, d)),
            _ => Err(Error::shape(OP, format!("{:?} is not {layout:?} with {heads} heads", t.shape()))),
        }
    };
    let (b, nq, d) = dims(q)?;
    let (bk, nk, dk) = dims(k)?;
    if (bk, dk) != (b, d) || k.shape() != v.shape() || nk == 0 {
        return Err(Error::shape(OP, format!("q {:?}, k {:?}, v {:?}", q.shape(), k.shape(), v.shape())));
    }
    // Heads up to 160 wide (SD's U-Net, CLIP) keep whole rows per thread; wider ones (the VAE's
    // 512) are split into column slices of at most 128.
    let cols = if d <= 160 { d } else { (1..=128).rev().find(|c| d % c == 0).unwrap_or(1) };
    let block = (TILE_BUDGET_BYTES / (4 * (d + cols))).clamp(1, 32);
    if block < 4 {
        return Err(Error::shape(OP, format!("head dim {d} too large for the tiled kernel")));
    }
    // (batch, head, row) strides for a tensor with `n` rows.
    let strides = |n: usize| -> [u32; 3] {
        match layout {
            AttentionLayout::Merged => [(n * heads * d) as u32, d as u32, (heads * d) as u32],
            AttentionLayout::Split => [(heads * n * d) as u32, (n * d) as u32, d as u32],
        }
    };
    u32_of(OP, q.numel().max(k.numel()))?;
    let (sq, sk) = (strides(nq), strides(nk));
    let params = Params {
        nq: nq as u32,
        nk: nk as u32,
        heads: heads as u32,
        scale: scale.unwrap_or(1.0 / (d as f32).sqrt()),
        q_bs: sq[0],
        q_hs: sq[1],
        q_rs: sq[2],
        k_bs: sk[0],
        k_hs: sk[1],
        k_rs: sk[2],
        v_bs: sk[0],
        v_hs: sk[1],
        v_rs: sk[2],
        o_bs: sq[0],
        o_hs: sq[1],
        o_rs: sq[2],
    };
    let out = GpuTensor::empty(q.gpu(), q.shape(), dtype)?;
    let key = KernelKey::new(SHADER, dtype)
        .with("HEAD_DIM", d as u32)
        .with("COLS", cols as u32)
        .with("QREG", (cols == d) as u32)
        .with("BK", block as u32)
        .with("CAUSAL", causal as u32);
    let binds = [q.bind(OP)?, k.bind(OP)?, v.bind(OP)?, out.bind(OP)?];
    q.gpu().launch(&key, bytemuck::bytes_of(&params), &binds, [nq.div_ceil(64) as u32, (heads * d / cols) as u32, b as u32])?;
    Ok(out)
}
