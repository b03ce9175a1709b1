//! Weights by name, the way diffusers names them. A `TensorSource` gives a tensor's dtype, shape
//! and bytes; `Weights` is the cursor model code walks with `pp("down_blocks.0")` (like candle's
//! VarBuilder), checking every shape and converting f32/f16/bf16 files to the compute dtype on
//! the way to the GPU. Shared code reads bytes, never paths.
//!
//! Each tensor passes through its *storage type* on the way: the file's own (f32/f16 or GGML
//! blocks from a package), or the one a `QuantPolicy` picks (quantize-on-load). A model loaded
//! from a diffusers file with a policy therefore gets bit-for-bit the weights of the package the
//! converter writes with that policy.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use half::{bf16, f16};

use super::nn::Weight;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, GpuTensor};
use crate::quant::{self, QTensor, QuantPolicy, StoreType};

/// Element types found in published checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileDType {
    F32,
    F16,
    BF16,
    /// GGML blocks of a matrix (packages, GGUF): the shape is the logical one.
    Q8_0,
    Q4_0,
    I64,
    Other,
}

impl FileDType {
    pub fn parse(s: &str) -> FileDType {
        match s {
            "F32" | "f32" => FileDType::F32,
            "F16" | "f16" => FileDType::F16,
            "BF16" | "bf16" => FileDType::BF16,
            "q8_0" => FileDType::Q8_0,
            "q4_0" => FileDType::Q4_0,
            "I64" => FileDType::I64,
            _ => FileDType::Other,
        }
    }

    /// The name `parse` reads back.
    pub fn name(self) -> &'static str {
        match self {
            FileDType::F32 => "F32",
            FileDType::F16 => "F16",
            FileDType::BF16 => "BF16",
            FileDType::Q8_0 => "q8_0",
            FileDType::Q4_0 => "q4_0",
            FileDType::I64 => "I64",
            FileDType::Other => "other",
        }
    }

    fn store(self) -> Option<StoreType> {
        match self {
            FileDType::F32 => Some(StoreType::F32),
            FileDType::F16 => Some(StoreType::F16),
            FileDType::Q8_0 => Some(StoreType::Q8_0),
            FileDType::Q4_0 => Some(StoreType::Q4_0),
            _ => None,
        }
    }
}

impl From<StoreType> for FileDType {
    fn from(s: StoreType) -> FileDType {
        match s {
            StoreType::F32 => FileDType::F32,
            StoreType::F16 => FileDType::F16,
            StoreType::Q8_0 => FileDType::Q8_0,
            StoreType::Q4_0 => FileDType::Q4_0,
        }
    }
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
            let dtype = FileDType::parse(&info.dtype.to_string());
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

/// Values of little-endian float `bytes`.
fn decode(bytes: &[u8], from: FileDType, name: &str) -> Result<Vec<f32>> {
    Ok(match from {
        FileDType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        FileDType::F16 => quant::f16_bytes_to_f32(bytes),
        FileDType::BF16 => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        FileDType::Q8_0 => quant::dequantize(quant::QuantFormat::Q8_0, bytes)?,
        FileDType::Q4_0 => quant::dequantize(quant::QuantFormat::Q4_0, bytes)?,
        _ => return Err(Error::Tensor { name: name.into(), msg: format!("{from:?} is not a float weight") }),
    })
}

/// Values in storage type `to`: the bytes a package holds.
pub fn encode(values: &[f32], to: StoreType) -> Result<Vec<u8>> {
    Ok(match to {
        StoreType::F32 => bytemuck::cast_slice(values).to_vec(),
        StoreType::F16 => values.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
        StoreType::Q8_0 => quant::quantize_fit(quant::QuantFormat::Q8_0, values)?,
        StoreType::Q4_0 => quant::quantize_fit(quant::QuantFormat::Q4_0, values)?,
    })
}

/// Stored float bytes as the compute dtype's bytes.
fn to_compute(bytes: &[u8], from: FileDType, to: DType, name: &str) -> Result<Vec<u8>> {
    match (from, to) {
        (FileDType::F16, DType::F32) => Ok(bytemuck::cast_slice(&quant::f16_bytes_to_f32(bytes)).to_vec()),
        (_, DType::F32) => Ok(decode(bytes, from, name)?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        (_, DType::F16) => encode(&decode(bytes, from, name)?, StoreType::F16),
        (_, DType::U32) => Err(Error::Tensor { name: name.into(), msg: "cannot load as u32".into() }),
    }
}

/// Bytes of a tensor held above this are converted and uploaded a few rows at a time.
const UPLOAD_PART: usize = 16 << 20;

/// Uploads stored float `bytes` as the compute dtype: as they are when the types agree, else
/// converted in row slices (the token embedding of SD 2 is 101 MB in f16, 202 MB in f32).
fn upload(gpu: &Gpu, bytes: &[u8], from: FileDType, shape: &[usize], to: DType, name: &str) -> Result<GpuTensor> {
    if (from == FileDType::F32 && to == DType::F32) || (from == FileDType::F16 && to == DType::F16) {
        return GpuTensor::from_bytes(gpu, bytes, shape, to);
    }
    let rows = shape.first().copied().unwrap_or(1).max(1);
    let row_in = bytes.len() / rows;
    if bytes.len() <= UPLOAD_PART || row_in * rows != bytes.len() || from.element_bytes().is_none() {
        return GpuTensor::from_bytes(gpu, &to_compute(bytes, from, to, name)?, shape, to);
    }
    GpuTensor::from_rows(gpu, shape, to, UPLOAD_PART, &mut |r, n| {
        to_compute(&bytes[r * row_in..(r + n) * row_in], from, to, name)
    })
}

/// A tensor a model asked for: what the converter packages, in the order models load them.
#[derive(Clone, Debug, PartialEq)]
pub struct Access {
    pub name: String,
    pub shape: Vec<usize>,
    /// `[rows, cols]` when used as a matmul/conv weight (cols = the reduction dimension).
    pub matrix: Option<[usize; 2]>,
}

#[derive(Default)]
struct Log {
    used: BTreeSet<String>,
    order: Vec<Access>,
}

/// No tensors at all (the source of synthetic weights).
struct NoTensors;

impl TensorSource for NoTensors {
    fn info(&self, _: &str) -> Option<TensorInfo> {
        None
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        Err(Error::Tensor { name: name.into(), msg: "no tensors in this source".into() })
    }
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A cursor into a `TensorSource` at a name prefix. Cloning is cheap.
#[derive(Clone)]
pub struct Weights<'a> {
    source: &'a dyn TensorSource,
    prefix: String,
    gpu: &'a Gpu,
    dtype: DType,
    log: Arc<Mutex<Log>>,
    /// Check names and shapes only; hand out shape-only placeholders (see `dry_run`).
    dry: bool,
    /// Quantize-on-load: the component's name in policy rules, and the policy.
    policy: Option<(Arc<str>, Arc<QuantPolicy>)>,
    /// Make up every tensor from this seed (see `synthetic`).
    synth: Option<u64>,
    /// Quantize-on-load with plain round-to-nearest scales instead of the least-squares fit
    /// (benchmarks: ~50x faster to build, same storage and kernels).
    fast_quant: bool,
}

impl<'a> Weights<'a> {
    pub fn new(source: &'a dyn TensorSource, gpu: &'a Gpu, dtype: DType) -> Self {
        Weights {
            source,
            prefix: String::new(),
            gpu,
            dtype,
            log: Arc::default(),
            dry: false,
            policy: None,
            synth: None,
            fast_quant: false,
        }
    }

    /// Quantize-on-load with round-to-nearest block scales rather than the least-squares fit: what
    /// benchmarks of synthetic real-size models use, where building the weights would otherwise
    /// take longer than running them.
    pub fn fast_quantization(self) -> Self {
        Weights { fast_quant: true, ..self }
    }

    /// A cursor that checks every tensor a model asks for (name, shape, float dtype) without
    /// reading or uploading data: model constructors then validate a published tensor list
    /// (from its header alone) in milliseconds, and the converter learns which tensors are
    /// matrices and in what order they load. The tensors it returns are placeholders that must
    /// never be computed with.
    pub fn dry_run(source: &'a dyn TensorSource, gpu: &'a Gpu, dtype: DType) -> Self {
        Weights { dry: true, ..Self::new(source, gpu, dtype) }
    }

    /// Random weights of whatever shapes the model asks for, deterministic in `seed` and the
    /// tensor's name, scaled like PyTorch's default init (uniform ±1/sqrt(fan_in) for matrices,
    /// norms at 1): real-size architectures for benchmarks and quantization studies without
    /// downloading anything. With `dry`, only the shapes (for package sizes).
    pub fn synthetic(gpu: &'a Gpu, dtype: DType, seed: u64, dry: bool) -> Self {
        Weights { synth: Some(seed), dry, ..Self::new(&NoTensors, gpu, dtype) }
    }

    /// Quantize-on-load: tensors stored as floats get the storage `policy` picks for
    /// `component.name`.
    pub fn with_policy(self, component: &str, policy: Arc<QuantPolicy>) -> Self {
        Weights { policy: Some((component.into(), policy)), ..self }
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
        self.synth.is_some() || self.source.info(&self.full(name)).is_some()
    }

    /// Loads `name` with exactly `shape` (trailing 1-dims are tolerated either way, as in 1x1
    /// conv vs linear weights of old checkpoints) in the compute dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<GpuTensor> {
        self.get_as(name, shape, self.dtype)
    }

    pub fn get_as(&self, name: &str, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let (full, info) = self.lookup(name, shape)?;
        self.record(&full, shape, None);
        if self.dry {
            return GpuTensor::placeholder(self.gpu, shape, dtype);
        }
        let (stored, bytes) = self.stored(&full, &info, None)?;
        upload(self.gpu, &bytes, stored.into(), shape, dtype, &full)
    }

    /// A matmul/conv weight `shape` = [rows, ...] whose trailing dims flatten into the reduction
    /// dimension: quantized when stored quantized (or when the policy says so), else dense.
    pub fn matrix(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        let (full, info) = self.lookup(name, shape)?;
        let rows = shape.first().copied().unwrap_or(1);
        // A conv weight [Cout, Cin, KH, KW] is row-major, so each output channel's weights are one
        // contiguous row of Cin*KH*KW: the reduction dimension the kernels dequantize along.
        let cols = shape.iter().skip(1).product::<usize>();
        self.record(&full, shape, Some([rows, cols]));
        if self.dry {
            return Ok(Weight::Dense(GpuTensor::placeholder(self.gpu, shape, self.dtype)?));
        }
        let (stored, bytes) = self.stored(&full, &info, Some([rows, cols]))?;
        if let Some(format) = stored.quant() {
            return Ok(Weight::Quant(QTensor::from_blocks(self.gpu, format, &bytes, rows, cols)?));
        }
        Ok(Weight::Dense(upload(self.gpu, &bytes, stored.into(), shape, self.dtype, &full)?))
    }

    /// The first of `names` present (for renamed tensors, e.g. the VAE's old attention names).
    pub fn get_any(&self, names: &[&str], shape: &[usize]) -> Result<GpuTensor> {
        let name = names.iter().find(|n| self.contains(n)).unwrap_or(&names[0]);
        self.get(name, shape)
    }

    /// Tensors of the source never loaded so far (to check a loader reads the whole file).
    pub fn unused(&self) -> Vec<String> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        self.source.names().into_iter().filter(|n| !log.used.contains(n)).collect()
    }

    /// Every tensor loaded so far, in order, once each.
    pub fn accesses(&self) -> Vec<Access> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).order.clone()
    }

    /// A tensor the model loaded (`accesses`) in its storage type: the bytes a package holds.
    pub fn stored_access(&self, a: &Access) -> Result<(StoreType, Cow<'a, [u8]>)> {
        let info = if self.synth.is_some() {
            TensorInfo { dtype: FileDType::F32, shape: a.shape.clone() }
        } else {
            self.source.info(&a.name).ok_or_else(|| Error::Tensor { name: a.name.clone(), msg: "missing".into() })?
        };
        self.stored(&a.name, &info, a.matrix)
    }

    fn record(&self, full: &str, shape: &[usize], matrix: Option<[usize; 2]>) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.used.insert(full.to_string()) {
            log.order.push(Access { name: full.to_string(), shape: shape.to_vec(), matrix });
        }
    }

    /// The full name and file info of `name`, checked against the `shape` the config implies.
    fn lookup(&self, name: &str, shape: &[usize]) -> Result<(String, TensorInfo)> {
        let full = self.full(name);
        if self.synth.is_some() {
            return Ok((full, TensorInfo { dtype: FileDType::F32, shape: shape.to_vec() }));
        }
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
        if !matches!(info.dtype, FileDType::F32 | FileDType::F16 | FileDType::BF16 | FileDType::Q8_0 | FileDType::Q4_0)
        {
            return Err(Error::Tensor { name: full, msg: format!("{:?} is not a float weight", info.dtype) });
        }
        Ok((full, info))
    }

    /// The tensor in its storage type: as the file has it, or as the policy wants it.
    fn stored(&self, full: &str, info: &TensorInfo, matrix: Option<[usize; 2]>) -> Result<(StoreType, Cow<'a, [u8]>)> {
        let bytes: Cow<'a, [u8]> = match self.synth {
            Some(seed) => Cow::Owned(encode(&synthesize(seed, full, &info.shape, matrix), StoreType::F32)?),
            None => self.source.bytes(full)?,
        };
        let want = info.dtype.store().map_or(0, |s| s.bytes(info.shape.iter().product()));
        if want != 0 && bytes.len() != want {
            return Err(Error::Tensor {
                name: full.into(),
                msg: format!("has {} bytes, expected {want}", bytes.len()),
            });
        }
        let target = self.policy.as_ref().map(|(component, p)| p.decide(&format!("{component}.{full}"), matrix));
        match storage(info.dtype, target) {
            Storage::Keep(s) => Ok((s, bytes)),
            Storage::Convert(t) => {
                let values = decode(&bytes, info.dtype, full)?;
                let bytes = match t.quant() {
                    Some(format) if self.fast_quant => quant::quantize(format, &values)?,
                    _ => encode(&values, t)?,
                };
                Ok((t, Cow::Owned(bytes)))
            }
        }
    }
}

/// What becomes of a tensor stored as `from` when a policy wants `target` (`None`: no policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// The bytes as stored.
    Keep(StoreType),
    /// Decoded and encoded again as this.
    Convert(StoreType),
}

pub fn storage(from: FileDType, target: Option<StoreType>) -> Storage {
    match (from.store(), target) {
        // Already quantized (a package), or no policy: as stored.
        (Some(s), _) if s.quant().is_some() => Storage::Keep(s),
        (Some(s), None) => Storage::Keep(s),
        (Some(s), Some(t)) if s == t => Storage::Keep(s),
        (_, t) => Storage::Convert(t.unwrap_or(StoreType::F32)),
    }
}

/// `bytes` of `from` values encoded as `to`, exactly as `Weights` stores a whole tensor: slices
/// of a tensor cut at element boundaries (at 32-value block boundaries for a quantized `to`)
/// convert to the slices of the whole tensor's bytes.
pub fn convert_bytes(bytes: &[u8], from: FileDType, to: StoreType, name: &str) -> Result<Vec<u8>> {
    encode(&decode(bytes, from, name)?, to)
}

impl FileDType {
    /// Bytes of one element, for float dtypes stored element by element.
    pub fn element_bytes(self) -> Option<usize> {
        match self {
            FileDType::F32 => Some(4),
            FileDType::F16 | FileDType::BF16 => Some(2),
            _ => None,
        }
    }
}

/// The values `Weights::synthetic(seed)` gives the tensor of access `a` (for building the same
/// model in another framework).
pub fn synthetic_values(seed: u64, a: &Access) -> Vec<f32> {
    synthesize(seed, &a.name, &a.shape, a.matrix)
}

/// Deterministic stand-in weights (see `Weights::synthetic`).
fn synthesize(seed: u64, name: &str, shape: &[usize], matrix: Option<[usize; 2]>) -> Vec<f32> {
    let n: usize = shape.iter().product();
    // FNV-1a of the name, so a tensor's values do not depend on load order.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let scale = match matrix {
        Some([_, cols]) => 1.0 / (cols.max(1) as f32).sqrt(),
        None if shape.len() == 1 && name.ends_with("weight") => return vec![1.0; n], // norm gains
        None if shape.len() == 1 => 0.02,                                            // biases
        None => 0.03,                                                                // embeddings
    };
    crate::selftest::random_values(seed ^ h, n).into_iter().map(|v| v * scale).collect()
}
