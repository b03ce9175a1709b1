//! Batched matmul with optional transposed right operand and fused bias (`shaders/matmul.wgsl`).

use super::gemm::{self, TileShape};
use super::{float_dtype, u32_of, WeightStore};
use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::{DType, GpuTensor};
use crate::quant::QTensor;

const SHADER: Shader = Shader { name: "matmul", source: include_str!("../../shaders/matmul.wgsl") };
const DIRECT: Shader = Shader { name: "matmul_direct", source: include_str!("../../shaders/matmul_direct.wgsl") };

/// Which kernel runs a matmul whose weight is transposed, shared by the batch and whose K is a
/// multiple of 4 (every nn.Linear): the tiled one (64x64 tiles through workgroup memory, for
/// real GPUs) or the direct one (no workgroup memory or barriers, vec4 loads along K, weights
/// uniform per workgroup: for CPU adapters such as llvmpipe, where each per-lane load is a
/// scalar loop over the lanes). The device's `KernelPolicy::matmul` decides; `Some(block)` is the
/// direct kernel's (cols, rows), `None` the tiled one.
fn variant(a: &GpuTensor) -> Option<(usize, usize)> {
    a.gpu().kernel_policy().matmul.direct_block(super::cpu_adapter(a))
}

/// The matmul kernels, each variant naming what its shader is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MatmulKernel {
    /// Output tiles staged through workgroup memory (real GPUs); `vec`: A, B and C are read or
    /// written as vec4 along their contiguous axis.
    Tiled { trans_b: bool, bias: bool, weight: WeightStore, shape: TileShape, vec: [bool; 3] },
    /// No workgroup memory or barriers, `cols` x `rows` outputs per invocation (CPU adapters);
    /// only for a transposed weight shared by the batch.
    Direct { bias: bool, weight: WeightStore, cols: usize, rows: usize },
}

impl MatmulKernel {
    fn key(self, dtype: DType) -> KernelKey {
        match self {
            MatmulKernel::Tiled { trans_b, bias, weight, shape, vec: [va, vb, vc] } => shape.define(
                weight
                    .define(KernelKey::new(SHADER, dtype).with("TRANS_B", trans_b as u32).with("BIAS", bias as u32))
                    .with("VEC_A", va as u32)
                    .with("VEC_B", vb as u32)
                    .with("VEC_C", vc as u32),
            ),
            MatmulKernel::Direct { bias, weight, cols, rows } => weight
                .define(KernelKey::new(DIRECT, dtype).with("BIAS", bias as u32))
                .with("CB", cols as u32)
                .with("C8", (cols >= 8) as u32)
                .with("C16", (cols >= 16) as u32)
                .with("RB", rows as u32)
                .with("R2", (rows >= 2) as u32)
                .with("R4", (rows >= 4) as u32),
        }
    }
}

uniform! {
    struct DirectParams {
        r: u32,
        n: u32,
        k4: u32,
        ldb: u32,
        ldc: u32,
        c_off: u32,
        bias_off: u32,
        s: u32,
        inv: u32,
        pad: [u32; 3],
    }
}

/// Invocations per workgroup of the direct kernel (`WG` in the shader).
const DIRECT_WG: usize = 64;

/// Columns x rows per invocation of the direct kernel: the biggest block that still gives every
/// CPU thread work (at least two workgroups). Every weight load costs as much as a row load on
/// llvmpipe (uniform addresses are not exploited), so 4 rows sharing each weight load come
/// first. A non-zero `cols` / `rows` is kept as asked.
fn direct_block(rows: usize, cols: usize, want: (usize, usize)) -> (usize, usize) {
    // Measured on lavapipe (`bench-ops --linear`, BENCHMARKS.md): rows per invocation matter most.
    const BLOCKS: [(usize, usize); 9] = [(16, 4), (8, 4), (16, 2), (4, 4), (8, 2), (16, 1), (4, 2), (8, 1), (4, 1)];
    let groups = |c: usize, r: usize| rows.div_ceil(r).div_ceil(DIRECT_WG) * cols.div_ceil(c);
    let fits = |&&(c, r): &&(usize, usize)| (want.0 == 0 || c == want.0) && (want.1 == 0 || r == want.1);
    BLOCKS
        .iter()
        .filter(fits)
        .find(|&&(c, r)| groups(c, r) >= 2)
        .or_else(|| BLOCKS.iter().rev().find(fits))
        .copied()
        .unwrap_or((4, 1))
}

uniform! {
    struct Params {
        m: u32,
        n: u32,
        k: u32,
        batch: u32,
        lda: u32,
        ldb: u32,
        ldc: u32,
        c_off: u32,
        a_bs: u32,
        b_bs: u32,
        c_bs: u32,
        bias_off: u32,
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct MatmulSpec {
    /// `b` is stored [.., N, K] (nn.Linear's weight layout) rather than [.., K, N].
    pub trans_b: bool,
}

/// `a` [.., M, K] x `b` [.., K, N] (or [.., N, K] with `trans_b`) (+ `bias` [N]).
/// `b` may have no batch dims (shared by all batches). A transposed `b` may be split over
/// several bindings: each chunk of its rows produces a slice of the output columns.
pub fn matmul(a: &GpuTensor, b: &GpuTensor, bias: Option<&GpuTensor>, spec: MatmulSpec) -> Result<GpuTensor> {
    const OP: &str = "matmul";
    let mut ts = vec![a, b];
    ts.extend(bias);
    let dtype = float_dtype(OP, &ts)?;
    if a.rank() < 2 || b.rank() < 2 {
        return Err(Error::shape(OP, format!("needs rank >= 2, got {:?} x {:?}", a.shape(), b.shape())));
    }
    let (m, k) = (a.dim(a.rank() - 2), a.dim(a.rank() - 1));
    let (kb, n) = if spec.trans_b {
        (b.dim(b.rank() - 1), b.dim(b.rank() - 2))
    } else {
        (b.dim(b.rank() - 2), b.dim(b.rank() - 1))
    };
    if k != kb {
        return Err(Error::shape(
            OP,
            format!("inner dims differ: {:?} x {:?} (trans_b={})", a.shape(), b.shape(), spec.trans_b),
        ));
    }
    let batch: usize = a.shape()[..a.rank() - 2].iter().product();
    let b_batch: usize = b.shape()[..b.rank() - 2].iter().product();
    if b_batch != 1 && b_batch != batch {
        return Err(Error::shape(OP, format!("batch dims differ: {:?} x {:?}", a.shape(), b.shape())));
    }
    if let Some(bias) = bias {
        if bias.numel() != n {
            return Err(Error::shape(OP, format!("bias {:?} for {n} output columns", bias.shape())));
        }
    }
    if b.num_chunks() > 1 && !(spec.trans_b && b.rank() == 2) {
        return Err(Error::shape(OP, "only a 2-D transposed weight may be split over bindings"));
    }
    let ldb = if spec.trans_b { k } else { n };
    let b_bs = if b_batch == 1 { 0 } else { k * n };
    dispatch(WeightStore::Plain, spec.trans_b, a, b, bias, Dims { dtype, m, n, k, batch, ldb, b_bs })
}

struct Dims {
    dtype: DType,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    ldb: usize,
    b_bs: usize,
}

/// One dispatch per chunk of `b`'s rows (a split transposed weight gives output column slices).
fn dispatch(
    weight: WeightStore,
    trans_b: bool,
    a: &GpuTensor,
    b: &GpuTensor,
    bias: Option<&GpuTensor>,
    d: Dims,
) -> Result<GpuTensor> {
    const OP: &str = "matmul";
    let Dims { dtype, m, n, k, batch, ldb, b_bs } = d;
    let mut out_shape = a.shape()[..a.rank() - 2].to_vec();
    out_shape.extend([m, n]);
    let out = GpuTensor::empty(a.gpu(), &out_shape, a.dtype())?;
    let a_bind = a.bind(OP)?;
    let c_bind = out.bind(OP)?;
    let bias_bind = bias.map(|t| t.bind(OP)).transpose()?;
    a.gpu().count_flops(2.0 * (batch * m * n * k) as f64);
    let direct = variant(a).filter(|_| trans_b && b_bs == 0 && k % 4 == 0);
    if let Some(want) = direct {
        let quant = weight != WeightStore::Plain;
        let rows_all = batch * m;
        let (cb, rb) = direct_block(rows_all, n, want);
        let key = MatmulKernel::Direct { bias: bias.is_some(), weight, cols: cb, rows: rb }.key(dtype);
        let s = rows_all.div_ceil(rb);
        for chunk in 0..b.num_chunks() {
            let rows = if b.num_chunks() > 1 { b.chunk_rows(chunk) } else { 0..n };
            let col_groups = u32_of(OP, rows.len().div_ceil(cb))?;
            let params = DirectParams {
                r: u32_of(OP, rows_all)?,
                n: u32_of(OP, rows.len())?,
                k4: u32_of(OP, k / 4)?,
                ldb: u32_of(OP, if quant { ldb } else { k / 4 })?,
                ldc: n as u32,
                c_off: rows.start as u32,
                bias_off: rows.start as u32,
                s: u32_of(OP, s)?,
                inv: 0,
                pad: [0; 3],
            };
            let mut binds = vec![a_bind.clone(), b.chunk_bind(chunk), c_bind.clone()];
            binds.extend(bias_bind.clone());
            let row_groups = u32_of(OP, s.div_ceil(DIRECT_WG))?;
            a.gpu().launch(&key, &params, &binds, [row_groups, col_groups, 1])?;
        }
        return Ok(out);
    }
    let choice = a.gpu().kernel_policy().matmul;
    let quant = weight != WeightStore::Plain;
    for chunk in 0..b.num_chunks() {
        let rows = if b.num_chunks() > 1 { b.chunk_rows(chunk) } else { 0..n };
        let shape = gemm::plan_for(a, choice, quant, m, rows.len(), batch);
        // vec4 along K for A and a transposed B, along N for a plain B and C: every stride and
        // offset along the way a multiple of 4 (a quantized B dequantizes 4 at a time anyway).
        let vec_a = k % 4 == 0;
        let vec_b = !quant && if trans_b { ldb % 4 == 0 } else { rows.len() % 4 == 0 && ldb % 4 == 0 } && b_bs % 4 == 0;
        let vec_c = rows.len() % 4 == 0 && n % 4 == 0 && rows.start % 4 == 0;
        let kernel = MatmulKernel::Tiled { trans_b, bias: bias.is_some(), weight, shape, vec: [vec_a, vec_b, vec_c] };
        let key = kernel.key(dtype);
        let params = Params {
            m: u32_of(OP, m)?,
            n: u32_of(OP, rows.len())?,
            k: u32_of(OP, k)?,
            batch: u32_of(OP, batch)?,
            lda: k as u32,
            ldb: u32_of(OP, ldb)?,
            ldc: n as u32,
            c_off: rows.start as u32,
            a_bs: u32_of(OP, m * k)?,
            b_bs: u32_of(OP, b_bs)?,
            c_bs: u32_of(OP, m * n)?,
            bias_off: rows.start as u32,
        };
        let mut binds = vec![a_bind.clone(), b.chunk_bind(chunk), c_bind.clone()];
        binds.extend(bias_bind.clone());
        a.gpu().launch(&key, &params, &binds, shape.groups(m, rows.len(), batch))?;
    }
    Ok(out)
}

/// `a` [.., M, K] x a quantized weight [N, K]^T (+ `bias` [N]): weights are dequantized as
/// they are staged into workgroup memory, never expanded in GPU memory.
pub fn matmul_quant(a: &GpuTensor, w: &QTensor, bias: Option<&GpuTensor>) -> Result<GpuTensor> {
    const OP: &str = "matmul_quant";
    let mut ts = vec![a];
    ts.extend(bias);
    let dtype = float_dtype(OP, &ts)?;
    let k = *a.shape().last().ok_or_else(|| Error::shape(OP, "scalar input"))?;
    if a.rank() < 2 || k != w.cols {
        return Err(Error::shape(OP, format!("{:?} x quantized [{}, {}]^T", a.shape(), w.rows, w.cols)));
    }
    if bias.is_some_and(|b| b.numel() != w.rows) {
        return Err(Error::shape(OP, format!("bias for {} output columns", w.rows)));
    }
    let (m, batch) = (a.dim(a.rank() - 2), a.numel() / (a.dim(a.rank() - 2) * k).max(1));
    let ldb = w.format.row_words(w.cols);
    let dims = Dims { dtype, m, n: w.rows, k, batch, ldb, b_bs: 0 };
    dispatch(WeightStore::Quant(w.format), true, a, &w.data, bias, dims)
}

/// nn.Linear: `x` [.., K] x `weight` [N, K]^T + `bias`.
pub fn linear(x: &GpuTensor, weight: &GpuTensor, bias: Option<&GpuTensor>) -> Result<GpuTensor> {
    let k = *x.shape().last().ok_or_else(|| Error::shape("linear", "scalar input"))?;
    let rows = x.numel() / k.max(1);
    let y = matmul(&x.reshape(&[rows, k])?, weight, bias, MatmulSpec { trans_b: true })?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap_or(&mut 0) = weight.dim(0);
    y.reshape(&shape)
}
