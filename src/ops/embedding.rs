//! Embedding gather (`shaders/embedding.wgsl`), walking a table split over several bindings.

use super::{elementwise_grid, u32_of, WeightStore};
use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::{DType, GpuTensor};
use crate::quant::QTensor;

const SHADER: Shader = Shader { name: "embedding", source: include_str!("../../shaders/embedding.wgsl") };

uniform! {
    struct Params {
        n: u32,
        d: u32,
        row0: u32,
        rows: u32,
        ldb: u32,
        pad: [u32; 3],
    }
}

/// `table` [V, D] gathered at `ids` (host values, checked against V here so a bad token id is an
/// error rather than silent zeros) -> [len(ids), D].
pub fn embedding(table: &GpuTensor, ids: &[u32]) -> Result<GpuTensor> {
    const OP: &str = "embedding";
    let &[vocab, d] = table.shape() else {
        return Err(Error::shape(OP, format!("table must be [V, D], got {:?}", table.shape())));
    };
    if table.dtype() == DType::U32 {
        return Err(Error::DType { op: OP, dtype: table.dtype().to_string() });
    }
    gather(table, WeightStore::Plain, vocab, d, 0, table.dtype(), ids)
}

/// `embedding` of a quantized table [V, D] (rows of D weights in 32-blocks), gathered into
/// `dtype` values.
pub fn embedding_quant(table: &QTensor, ids: &[u32], dtype: DType) -> Result<GpuTensor> {
    if dtype == DType::U32 {
        return Err(Error::DType { op: "embedding", dtype: dtype.to_string() });
    }
    let ldb = table.format.row_words(table.cols);
    gather(&table.data, WeightStore::Quant(table.format), table.rows, table.cols, ldb, dtype, ids)
}

fn gather(
    table: &GpuTensor,
    store: WeightStore,
    vocab: usize,
    d: usize,
    ldb: usize,
    dtype: DType,
    ids: &[u32],
) -> Result<GpuTensor> {
    const OP: &str = "embedding";
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::shape(OP, format!("id {bad} outside a vocabulary of {vocab}")));
    }
    let gpu = table.gpu();
    let ids_t = GpuTensor::from_u32(gpu, ids, &[ids.len()])?;
    let out = GpuTensor::empty(gpu, &[ids.len(), d], dtype)?;
    let n = u32_of(OP, out.numel())?;
    let key = store.define(KernelKey::new(SHADER, dtype));
    for chunk in 0..table.num_chunks() {
        let rows = table.chunk_rows(chunk);
        let params = Params {
            n,
            d: u32_of(OP, d)?,
            row0: u32_of(OP, rows.start)?,
            rows: u32_of(OP, rows.len())?,
            ldb: u32_of(OP, ldb)?,
            pad: [0; 3],
        };
        let binds = [ids_t.bind(OP)?, table.chunk_bind(chunk), out.bind(OP)?];
        gpu.launch(&key, &params, &binds, elementwise_grid(out.numel()))?;
    }
    Ok(out)
}
