//! GPU tensors: contiguous, row-major, with storage split along dimension 0 into chunks that
//! each fit one storage binding. Real browsers bind at most 128 MiB at a time and SD's token
//! embedding alone is 152 MB in f32, so splitting is part of the type from the start; kernels
//! that meet big weights (matmul, embedding) run once per chunk, others require one chunk.

use std::fmt;
use std::sync::Arc;

use super::batch::Bind;
use super::context::Gpu;
pub use super::dtype::DType;
use super::pool::PooledBuffer;
use crate::error::{Error, Result};

#[derive(Clone)]
pub struct GpuTensor {
    gpu: Gpu,
    chunks: Arc<Vec<PooledBuffer>>,
    /// Dim-0 rows held by every chunk but the last.
    rows_per_chunk: usize,
    shape: Vec<usize>,
    dtype: DType,
}

impl fmt::Debug for GpuTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GpuTensor({:?}, {}, {} chunk(s))", self.shape, self.dtype, self.chunks.len())
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl GpuTensor {
    /// Uninitialised storage (contents are whatever the pool held).
    pub fn empty(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        Self::alloc(gpu, shape, dtype, false)
    }

    /// `exact`: buffers of the exact size rather than a pooled size class (uploads: weights
    /// live for the whole session, so class rounding would only waste memory).
    fn alloc(gpu: &Gpu, shape: &[usize], dtype: DType, exact: bool) -> Result<GpuTensor> {
        let rows = shape.first().copied().unwrap_or(1).max(1);
        let row_bytes = (numel(shape) / rows * dtype.size()) as u64;
        let total = row_bytes * rows as u64;
        let max = gpu.caps().max_storage_binding;
        let rows_per_chunk = if total <= max {
            rows
        } else {
            let per = (max / row_bytes.max(1)) as usize;
            if per == 0 {
                return Err(Error::BindingTooLarge {
                    what: format!("one row of a {shape:?} {dtype} tensor"),
                    needed: row_bytes,
                    limit: max,
                });
            }
            per
        };
        let mut chunks = Vec::with_capacity(rows.div_ceil(rows_per_chunk));
        let mut start = 0;
        while start < rows {
            let n = rows_per_chunk.min(rows - start);
            let bytes = row_bytes * n as u64;
            chunks.push(if exact { gpu.alloc_exact(bytes) } else { gpu.alloc(bytes) });
            start += n;
        }
        Ok(GpuTensor { gpu: gpu.clone(), chunks: Arc::new(chunks), rows_per_chunk, shape: shape.to_vec(), dtype })
    }

    /// A tensor that claims `shape` over a 4-byte buffer: only for dry-run loading, where
    /// model constructors check names and shapes and nothing is ever computed.
    pub fn placeholder(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let chunks = Arc::new(vec![gpu.alloc(4)]);
        Ok(GpuTensor { gpu: gpu.clone(), chunks, rows_per_chunk: usize::MAX, shape: shape.to_vec(), dtype })
    }

    /// Uploads raw little-endian bytes.
    pub fn from_bytes(gpu: &Gpu, bytes: &[u8], shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let want = numel(shape) * dtype.size();
        if bytes.len() != want {
            return Err(Error::shape("upload", format!("{} bytes for {shape:?} {dtype} (needs {want})", bytes.len())));
        }
        let t = Self::alloc(gpu, shape, dtype, true)?;
        let row_bytes = if t.rows() == 0 { 0 } else { want / t.rows() };
        let mut start = 0;
        for (i, chunk) in t.chunks.iter().enumerate() {
            let rows = t.chunk_rows(i);
            let part = &bytes[start..start + rows.len() * row_bytes];
            start += part.len();
            if part.len() % 4 == 0 {
                gpu.write(chunk.buffer(), 0, part);
            } else {
                let mut padded = part.to_vec();
                padded.resize(part.len().next_multiple_of(4), 0);
                gpu.write(chunk.buffer(), 0, &padded);
            }
        }
        Ok(t)
    }

    /// Uploads a tensor whose bytes `rows_bytes(first_row, rows)` makes a few rows at a time, so
    /// a large weight converted on the way (f16 -> f32) is never whole in CPU memory.
    pub fn from_rows(
        gpu: &Gpu,
        shape: &[usize],
        dtype: DType,
        max_part: usize,
        rows_bytes: &mut dyn FnMut(usize, usize) -> Result<Vec<u8>>,
    ) -> Result<GpuTensor> {
        let want = numel(shape) * dtype.size();
        let t = Self::alloc(gpu, shape, dtype, true)?;
        let row_bytes = if t.rows() == 0 { 0 } else { want / t.rows() };
        if row_bytes % 4 != 0 || row_bytes == 0 {
            let all = rows_bytes(0, t.rows())?;
            drop(t);
            return Self::from_bytes(gpu, &all, shape, dtype);
        }
        let per = (max_part / row_bytes).max(1);
        for (i, chunk) in t.chunks.iter().enumerate() {
            let rows = t.chunk_rows(i);
            let mut r = rows.start;
            while r < rows.end {
                let n = per.min(rows.end - r);
                let part = rows_bytes(r, n)?;
                if part.len() != n * row_bytes {
                    return Err(Error::shape("upload", format!("{} bytes for {n} rows of {row_bytes}", part.len())));
                }
                gpu.write(chunk.buffer(), ((r - rows.start) * row_bytes) as u64, &part);
                r += n;
            }
        }
        Ok(t)
    }

    pub fn from_f32(gpu: &Gpu, data: &[f32], shape: &[usize]) -> Result<GpuTensor> {
        Self::from_bytes(gpu, bytemuck::cast_slice(data), shape, DType::F32)
    }

    pub fn from_f16(gpu: &Gpu, data: &[half::f16], shape: &[usize]) -> Result<GpuTensor> {
        Self::from_bytes(gpu, bytemuck::cast_slice(data), shape, DType::F16)
    }

    pub fn from_u32(gpu: &Gpu, data: &[u32], shape: &[usize]) -> Result<GpuTensor> {
        Self::from_bytes(gpu, bytemuck::cast_slice(data), shape, DType::U32)
    }

    /// Uploads f32 data stored as `dtype` (F32 or F16).
    pub fn from_f32_as(gpu: &Gpu, data: &[f32], shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        match dtype {
            DType::F32 => Self::from_f32(gpu, data, shape),
            DType::F16 => {
                let h: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
                Self::from_f16(gpu, &h, shape)
            }
            DType::U32 => Err(Error::DType { op: "from_f32_as", dtype: dtype.to_string() }),
        }
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }
    fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }
    pub fn num_chunks(&self) -> usize {
        self.chunks.len()
    }
    /// Dim-0 rows stored in chunk `i`.
    pub fn chunk_rows(&self, i: usize) -> std::ops::Range<usize> {
        let start = i * self.rows_per_chunk;
        start..(start + self.rows_per_chunk).min(self.rows().max(1))
    }

    /// Same storage, new shape. A split tensor keeps its dim 0 (chunks are runs of dim-0 rows).
    pub fn reshape(&self, shape: &[usize]) -> Result<GpuTensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape("reshape", format!("{:?} -> {shape:?}", self.shape)));
        }
        if self.chunks.len() > 1 && shape.first() != self.shape.first() {
            return Err(Error::shape("reshape", format!("split tensor {:?} must keep dim 0 in {shape:?}", self.shape)));
        }
        // One chunk holds every row of any shape: a gather over a reshaped activation (SDXL's
        // pooled EOS rows of [B × T, D]) must see all of its new dim-0 rows.
        let rows_per_chunk = if self.chunks.len() == 1 { usize::MAX } else { self.rows_per_chunk };
        Ok(GpuTensor { shape: shape.to_vec(), rows_per_chunk, ..self.clone() })
    }

    /// The binding of a single-chunk tensor; split tensors need a kernel that walks chunks.
    pub(crate) fn bind(&self, op: &'static str) -> Result<Bind<'_>> {
        if self.chunks.len() != 1 {
            return Err(Error::BindingTooLarge {
                what: format!("{op} input {:?} {}", self.shape, self.dtype),
                needed: (self.numel() * self.dtype.size()) as u64,
                limit: self.gpu.caps().max_storage_binding,
            });
        }
        Ok(self.chunk_bind(0))
    }

    pub(crate) fn chunk_bind(&self, i: usize) -> Bind<'_> {
        let c = &self.chunks[i];
        Bind { buffer: c.buffer(), offset: 0, size: c.binding_size() }
    }

    /// Reads the raw bytes back (async: no blocking wait in the browser).
    pub async fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.numel() * self.dtype.size());
        for c in self.chunks.iter() {
            let mut bytes = self.gpu.read_buffer(c.buffer(), c.binding_size()).await?;
            bytes.truncate(c.len as usize);
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    /// Reads back as f32, converting from f16 storage.
    pub async fn to_vec_f32(&self) -> Result<Vec<f32>> {
        let bytes = self.to_bytes().await?;
        Ok(match self.dtype {
            DType::F32 => bytemuck::pod_collect_to_vec(&bytes),
            DType::F16 => {
                let h: Vec<half::f16> = bytemuck::pod_collect_to_vec(&bytes);
                h.iter().map(|x| x.to_f32()).collect()
            }
            DType::U32 => {
                let u: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
                u.iter().map(|&x| x as f32).collect()
            }
        })
    }
}
