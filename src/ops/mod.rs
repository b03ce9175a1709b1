//! GPU ops: one file per kernel family, each with its `.wgsl` in `shaders/`. Every op takes and
//! returns `GpuTensor`s and only records work; nothing waits for the GPU here.

mod attention;
mod binary;
mod concat;
mod conv2d;
mod embedding;
mod geglu;
mod gemm;
mod group_norm;
mod layer_norm;
mod matmul;
mod permute;
mod softmax;
mod timestep;
mod unary;
mod upsample;

pub use attention::{attention, attention_keys_per_dispatch, AttentionLayout};
pub use binary::{add, broadcast_strides, mul};
pub use concat::concat;
pub use conv2d::{conv2d, conv2d_add, conv2d_quant, conv2d_quant_add, Conv2dParams};
pub use embedding::{embedding, embedding_quant};
pub use geglu::geglu;
pub use group_norm::group_norm;
pub use layer_norm::layer_norm;
pub use matmul::{linear, matmul, matmul_quant, MatmulSpec};
pub use permute::{narrow, permute};
pub use softmax::softmax;
pub use timestep::{timestep_embedding, timestep_frequencies};
pub use unary::{affine, clamp, gelu, gelu_quick, relu, silu, soft_clamp};
pub use upsample::upsample_nearest2x;

use crate::error::{Error, Result};
use crate::gpu::kernel::{grid_1d, KernelKey};
use crate::gpu::{DType, GpuTensor};
use crate::quant::QuantFormat;

/// Checks that all inputs share one float dtype and returns it.
fn float_dtype(op: &'static str, ts: &[&GpuTensor]) -> Result<DType> {
    let d = ts[0].dtype();
    if d == DType::U32 {
        return Err(Error::DType { op, dtype: d.to_string() });
    }
    if let Some(t) = ts.iter().find(|t| t.dtype() != d) {
        return Err(Error::shape(op, format!("mixed dtypes {d} and {}", t.dtype())));
    }
    Ok(d)
}

/// How a matmul's or conv's weight is stored, as its kernels see it: plain floats, or quantized
/// blocks dequantized while they are staged (`QUANT`, with the format's defines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WeightStore {
    Plain,
    Quant(QuantFormat),
}

impl WeightStore {
    fn define(self, key: KernelKey) -> KernelKey {
        match self {
            WeightStore::Plain => key,
            WeightStore::Quant(f) => key
                .with("QUANT", 1)
                .with("Q8", (f == QuantFormat::Q8_0) as u32)
                .with("Q3", (f == QuantFormat::Q3_0) as u32)
                .with("QWORDS", f.quant_words() as u32),
        }
    }
}

/// `key` with its workgroup reductions through subgroups where the device has them and the
/// kernel policy allows (`shaders/common/reduce.wgsl`).
fn reductions(key: KernelKey, t: &GpuTensor) -> KernelKey {
    let gpu = t.gpu();
    key.with("SUBGROUPS", (gpu.caps().subgroups && gpu.kernel_policy().subgroups) as u32)
}

/// Whether kernels should default to their direct (barrier-free) variants: CPU adapters.
fn cpu_adapter(t: &GpuTensor) -> bool {
    t.gpu().caps().device_type == "Cpu"
}

/// Workgroups for `n` elements at 256 per workgroup.
fn elementwise_grid(n: usize) -> [u32; 3] {
    grid_1d(n.div_ceil(256) as u32)
}

fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::shape(op, format!("{v} does not fit in u32 indexing")))
}

/// The four dims of an NCHW activation, or a shape error naming `op`.
pub fn nchw(x: &GpuTensor, op: &'static str) -> Result<[usize; 4]> {
    match *x.shape() {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(Error::shape(op, format!("expects NCHW, got {:?}", x.shape()))),
    }
}
