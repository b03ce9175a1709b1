//! Embedding gather (`shaders/embedding.wgsl`), walking a table split over several bindings.

use super::{elementwise_grid, u32_of};
use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::{DType, GpuTensor};

const SHADER: Shader = Shader { name: "embedding", source: include_str!("../../shaders/embedding.wgsl") };

uniform! {
    struct Params {
        n: u32,
        d: u32,
        row0: u32,
        rows: u32,
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
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::shape(OP, format!("id {bad} outside a vocabulary of {vocab}")));
    }
    let gpu = table.gpu();
    let ids_t = GpuTensor::from_u32(gpu, ids, &[ids.len()])?;
    let out = GpuTensor::empty(gpu, &[ids.len(), d], table.dtype())?;
    let n = u32_of(OP, out.numel())?;
    let key = KernelKey::new(SHADER, table.dtype());
    for chunk in 0..table.num_chunks() {
        let rows = table.chunk_rows(chunk);
        let params = Params { n, d: d as u32, row0: rows.start as u32, rows: rows.len() as u32 };
        let binds = [ids_t.bind(OP)?, table.chunk_bind(chunk), out.bind(OP)?];
        gpu.launch(&key, &params, &binds, elementwise_grid(out.numel()))?;
    }
    Ok(out)
}
