//! Weights by name, the way diffusers names them. A `TensorSource` gives a tensor's dtype, shape
//! and bytes; `Weights` is the cursor model code walks with `pp("down_blocks.0")` (like candle's
//! VarBuilder), checking every shape and converting f32/f16/bf16 files to the compute dtype on
//! the way to the GPU. Shared code reads bytes, never paths.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, GpuTensor};

/// Element types found in published checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileDType {
    F32,
    F16,
    BF16,
    I64,
    Other,
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: FileDType,
    pub shape: Vec<usize>,
}

/// Somewhere tensors can be read from by name.
pub trait TensorSource {
    fn info(&self, name: &str) -> Option<TensorInfo>;
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>>;
    fn names(&self) -> Vec<String>;
}

/// One safetensors file held in memory.
pub struct SafeTensorsBytes {
    bytes: Vec<u8>,
    data_start: usize,
    entries: BTreeMap<String, (TensorInfo, std::ops::Range<usize>)>,
}

impl SafeTensorsBytes {
    /// Parses the header; `what` names the file in errors.
    pub fn new(bytes: Vec<u8>, what: &str) -> Result<SafeTensorsBytes> {
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::Weights(format!("{what} is not a valid safetensors file: {e}")))?;
        let data_start = 8 + header_len;
        let mut entries = BTreeMap::new();
        for (name, info) in meta.tensors() {
            use safetensors::Dtype as D;
            let dtype = match info.dtype {
                D::F32 => FileDType::F32,
                D::F16 => FileDType::F16,
                D::BF16 => FileDType::BF16,
                D::I64 => FileDType::I64,
                _ => FileDType::Other,
            };
            let (a, b) = info.data_offsets;
            if data_start + b > bytes.len() {
                return Err(Error::Weights(format!("{what} is truncated: tensor {name} ends past the file")));
            }
            entries.insert(name, (TensorInfo { dtype, shape: info.shape.clone() }, data_start + a..data_start + b));
        }
        Ok(SafeTensorsBytes { bytes, data_start, entries })
    }

    pub fn header_len(&self) -> usize {
        self.data_start
    }
}

impl TensorSource for SafeTensorsBytes {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.entries.get(name).map(|(i, _)| i.clone())
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let (_, range) = self
            .entries
            .get(name)
            .ok_or_else(|| Error::Tensor { name: name.into(), msg: "missing from the weights".into() })?;
        Ok(Cow::Borrowed(&self.bytes[range.clone()]))
    }
    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
}

/// Converts little-endian `bytes` of `from` into the bytes of `to` (F32 or F16).
fn convert(bytes: &[u8], from: FileDType, to: DType, name: &str) -> Result<Vec<u8>> {
    let f32s: Vec<f32> = match from {
        FileDType::F32 if to == DType::F32 => return Ok(bytes.to_vec()),
        FileDType::F16 if to == DType::F16 => return Ok(bytes.to_vec()),
        FileDType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        FileDType::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        FileDType::BF16 => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => return Err(Error::Tensor { name: name.into(), msg: format!("{from:?} is not a float weight") }),
    };
    Ok(match to {
        DType::F32 => bytemuck::cast_slice(&f32s).to_vec(),
        DType::F16 => f32s.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
        DType::U32 => return Err(Error::Tensor { name: name.into(), msg: "cannot load as u32".into() }),
    })
}

/// A cursor into a `TensorSource` at a name prefix. Cloning is cheap.
#[derive(Clone)]
pub struct Weights<'a> {
    source: &'a dyn TensorSource,
    prefix: String,
    gpu: &'a Gpu,
    dtype: DType,
    used: Arc<Mutex<BTreeSet<String>>>,
    /// Check names and shapes only; hand out shape-only placeholders (see `dry_run`).
    dry: bool,
}

impl<'a> Weights<'a> {
    pub fn new(source: &'a dyn TensorSource, gpu: &'a Gpu, dtype: DType) -> Self {
        Weights { source, prefix: String::new(), gpu, dtype, used: Arc::default(), dry: false }
    }

    /// A cursor that checks every tensor a model asks for (name, shape, float dtype) without
    /// reading or uploading data: model constructors then validate a published tensor list
    /// (from its header alone) in milliseconds. The tensors it returns are placeholders that
    /// must never be computed with.
    pub fn dry_run(source: &'a dyn TensorSource, gpu: &'a Gpu, dtype: DType) -> Self {
        Weights { dry: true, ..Self::new(source, gpu, dtype) }
    }

    /// The same source under `prefix.name`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Weights<'a> {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Weights { prefix, ..self.clone() }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn gpu(&self) -> &'a Gpu {
        self.gpu
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.source.info(&self.full(name)).is_some()
    }

    /// Loads `name` with exactly `shape` (trailing 1-dims are tolerated either way, as in 1x1
    /// conv vs linear weights of old checkpoints) in the compute dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<GpuTensor> {
        self.get_as(name, shape, self.dtype)
    }

    pub fn get_as(&self, name: &str, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let full = self.full(name);
        let info = self.source.info(&full).ok_or_else(|| Error::Tensor {
            name: full.clone(),
            msg: "missing from the weights (wrong model type or an incomplete file?)".into(),
        })?;
        let squeeze = |s: &[usize]| -> Vec<usize> {
            let mut v = s.to_vec();
            while v.len() > 1 && v.last() == Some(&1) {
                v.pop();
            }
            v
        };
        if squeeze(&info.shape) != squeeze(shape) {
            return Err(Error::Tensor {
                name: full,
                msg: format!("has shape {:?}, the config implies {shape:?}", info.shape),
            });
        }
        if self.dry {
            if !matches!(info.dtype, FileDType::F32 | FileDType::F16 | FileDType::BF16) {
                return Err(Error::Tensor { name: full, msg: format!("{:?} is not a float weight", info.dtype) });
            }
            self.used.lock().unwrap_or_else(|p| p.into_inner()).insert(full);
            return GpuTensor::placeholder(self.gpu, shape, dtype);
        }
        let bytes = self.source.bytes(&full)?;
        let data = convert(&bytes, info.dtype, dtype, &full)?;
        self.used.lock().unwrap_or_else(|p| p.into_inner()).insert(full);
        GpuTensor::from_bytes(self.gpu, &data, shape, dtype)
    }

    /// The first of `names` present (for renamed tensors, e.g. the VAE's old attention names).
    pub fn get_any(&self, names: &[&str], shape: &[usize]) -> Result<GpuTensor> {
        let name = names.iter().find(|n| self.contains(n)).unwrap_or(&names[0]);
        self.get(name, shape)
    }

    /// Tensors of the source never loaded so far (to check a loader reads the whole file).
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        self.source.names().into_iter().filter(|n| !used.contains(n)).collect()
    }
}
