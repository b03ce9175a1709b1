//! Flash-style scaled-dot-product attention (`shaders/attention.wgsl`): online softmax, the
//! Nq x Nk score matrix never exists in memory.

use super::{float_dtype, u32_of};
use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::{DType, GpuTensor};

const SHADER: Shader = Shader { name: "attention", source: include_str!("../../shaders/attention.wgsl") };

/// Workgroup memory the K/V tiles may use: WebGPU's default limit, so every device runs it.
const TILE_BUDGET_BYTES: usize = 16 * 1024;

/// Loop iterations one invocation may run. Mesa's llvmpipe (lavapipe, our CI device) counts every
/// loop iteration of an invocation, all loops together, against 65535 (its loop limiter,
/// `LP_MAX_TGSI_LOOP_ITERATIONS`) and past that leaves every loop after one more iteration,
/// silently: attention over 1024 keys came back mostly zeros. So each dispatch handles only as
/// many keys as fit this budget, with a margin for what the driver's compiler does to our
/// loops; every device runs the same chunks.
const LOOP_BUDGET: usize = 56_000;

uniform! {
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
        k_begin: u32,
        k_end: u32,
        first: u32,
        last: u32,
    }
}

/// The kernel's compile-time shape for head dim `d`: output columns per workgroup and keys per
/// tile (a multiple of 4).
#[derive(Clone, Copy, Debug)]
struct Tiling {
    d: usize,
    cols: usize,
    block: usize,
}

impl Tiling {
    fn new(d: usize) -> Tiling {
        // Heads up to 160 wide (SD's U-Net, CLIP) keep whole rows per thread; wider ones (the
        // VAE's 512) are split into column slices of at most 128.
        let cols = if d <= 160 { d } else { (1..=128).rev().find(|c| d % c == 0).unwrap_or(1) };
        let (d4, c4) = (d.div_ceil(4), cols.div_ceil(4));
        let block = (TILE_BUDGET_BYTES / (16 * (d4 + c4))).min(32) / 4 * 4;
        Tiling { d, cols, block }
    }

    /// Loop iterations per invocation (every loop's exit test counts as one more) for one tile
    /// of keys, and outside the tile loop. Mirrors `shaders/attention.wgsl` loop by loop: keep
    /// the two in step.
    fn loop_iterations(&self) -> (usize, usize) {
        let (d4, c4, bk) = (self.d.div_ceil(4), self.cols.div_ceil(4), self.block);
        let per_tile = 1 // the tile loop
            + (bk * d4).div_ceil(64) + 1 // K tile
            + (bk * c4).div_ceil(64) + 1 // V tile
            + bk / 4 * (d4 + 1) + 1 // scores
            + c4 + 1 // rescale
            + bk / 4 * (c4 + 1) + 1; // accumulate
        let fixed = (c4 + 1) + (d4 + 1) + (c4 + 1) + 1; // state in, q row, output or state out
        (per_tile, fixed)
    }

    /// Keys one dispatch handles: whole tiles within `LOOP_BUDGET`.
    fn keys_per_dispatch(&self) -> usize {
        let (per_tile, fixed) = self.loop_iterations();
        (LOOP_BUDGET - fixed) / per_tile * self.block
    }
}

/// Keys one attention dispatch handles at head dim `head_dim`; more keys are split over several
/// dispatches that carry the softmax state. Public so tests can cross that boundary.
pub fn attention_keys_per_dispatch(head_dim: usize) -> usize {
    Tiling::new(head_dim).keys_per_dispatch()
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
    let tiling = Tiling::new(d);
    let Tiling { cols, block, .. } = tiling;
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
    let mut params = Params {
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
        k_begin: 0,
        k_end: nk as u32,
        first: 1,
        last: 1,
    };
    let chunk = tiling.keys_per_dispatch();
    let chunks = nk.div_ceil(chunk);
    let grid = [nq.div_ceil(64) as u32, (heads * d / cols) as u32, b as u32];
    let out = GpuTensor::empty(q.gpu(), q.shape(), dtype)?;
    let key = KernelKey::new(SHADER, dtype)
        .with("HEAD_DIM", d as u32)
        .with("COLS", cols as u32)
        .with("HEAD_DIM4", d.div_ceil(4) as u32)
        .with("COLS4", cols.div_ceil(4) as u32)
        .with("PAD_D", (d % 4 != 0) as u32)
        .with("PAD_C", (cols % 4 != 0) as u32)
        .with("QREG", (cols == d) as u32)
        .with("BK", block as u32)
        .with("CAUSAL", causal as u32)
        .with("CHUNKED", (chunks > 1) as u32);
    let mut binds = vec![q.bind(OP)?, k.bind(OP)?, v.bind(OP)?, out.bind(OP)?];
    // QK^T and PV; a causal mask skips about half (not subtracted: an upper bound).
    q.gpu().count_flops(4.0 * (b * heads * nq * nk * d) as f64);
    if chunks == 1 {
        q.gpu().launch(&key, &params, &binds, grid)?;
        return Ok(out);
    }
    // Per (batch, grid row, query): the unnormalised accumulator and (m, l), carried in f32 from
    // one key chunk to the next.
    let state_len = b * grid[1] as usize * nq * (cols.div_ceil(4) + 1) * 4;
    u32_of(OP, state_len)?;
    let state = GpuTensor::empty(q.gpu(), &[state_len], DType::F32)?;
    binds.push(state.bind(OP)?);
    for c in 0..chunks {
        params.k_begin = (c * chunk) as u32;
        params.k_end = ((c + 1) * chunk).min(nk) as u32;
        params.first = (c == 0) as u32;
        params.last = (c + 1 == chunks) as u32;
        q.gpu().launch(&key, &params, &binds, grid)?;
    }
    Ok(out)
}
