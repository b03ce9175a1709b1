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
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use half::{bf16, f16};

use super::nn::Weight;
use super::sources::{Requantized, Synthetic};
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
    Q3_0,
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
            "q3_0" => FileDType::Q3_0,
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
            FileDType::Q3_0 => "q3_0",
            FileDType::I64 => "I64",
            FileDType::Other => "other",
        }
    }

    pub(crate) fn store(self) -> Option<StoreType> {
        match self {
            FileDType::F32 => Some(StoreType::F32),
            FileDType::F16 => Some(StoreType::F16),
            FileDType::Q8_0 => Some(StoreType::Q8_0),
            FileDType::Q4_0 => Some(StoreType::Q4_0),
            FileDType::Q3_0 => Some(StoreType::Q3_0),
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
            StoreType::Q3_0 => FileDType::Q3_0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: FileDType,
    pub shape: Vec<usize>,
}

/// Somewhere tensors can be read from by name: a file's bytes (`SafeTensorsBytes`, ranged
/// reads, packages), made-up values (`sources::Synthetic`) or another source's tensors
/// re-stored on the way (`sources::Requantized`). Model code sees only `Weights`.
pub trait TensorSource {
    fn info(&self, name: &str) -> Option<TensorInfo>;
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>>;
    fn names(&self) -> Vec<String>;

    /// Whether `name` can be had (a source that makes tensors up has them all).
    fn has(&self, name: &str) -> bool {
        self.info(name).is_some()
    }

    /// The tensor `name` when a model asks for `shape`: the file's info (a source that makes
    /// tensors up answers with the shape asked for).
    fn lookup(&self, name: &str, shape: &[usize]) -> Option<TensorInfo> {
        let _ = shape;
        self.info(name)
    }

    /// `name` (as `lookup` found it) in its storage type: f32/f16 and GGML blocks as stored,
    /// other floats as f32. `matrix`: its [rows, cols] when it is a matmul/conv weight.
    fn stored(&self, name: &str, info: &TensorInfo, matrix: Option<[usize; 2]>) -> Result<(StoreType, Cow<'_, [u8]>)> {
        let _ = matrix;
        let bytes = self.bytes(name)?;
        let want = info.dtype.store().map_or(0, |s| s.bytes(info.shape.iter().product()));
        if want != 0 && bytes.len() != want {
            return Err(Error::Tensor {
                name: name.into(),
                msg: format!("has {} bytes, expected {want}", bytes.len()),
            });
        }
        restore(name, info.dtype, bytes, None, Rounding::Fit)
    }
}

/// A borrowed source is a source (so `Weights` can hold borrowed and owned ones alike).
impl<T: TensorSource + ?Sized> TensorSource for &T {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        (**self).info(name)
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        (**self).bytes(name)
    }
    fn names(&self) -> Vec<String> {
        (**self).names()
    }
    fn has(&self, name: &str) -> bool {
        (**self).has(name)
    }
    fn lookup(&self, name: &str, shape: &[usize]) -> Option<TensorInfo> {
        (**self).lookup(name, shape)
    }
    fn stored(&self, name: &str, info: &TensorInfo, matrix: Option<[usize; 2]>) -> Result<(StoreType, Cow<'_, [u8]>)> {
        (**self).stored(name, info, matrix)
    }
}

/// How quantize-on-load picks block scales.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rounding {
    /// The least-squares fit the converter uses (what a package holds).
    #[default]
    Fit,
    /// Plain round-to-nearest: ~50x faster to build, same storage and kernels (benchmarks of
    /// synthetic real-size models, where building would otherwise take longer than running).
    Nearest,
}

/// `bytes` stored as `from`, re-stored as `storage(from, target)` says.
pub(crate) fn restore<'b>(
    name: &str,
    from: FileDType,
    bytes: Cow<'b, [u8]>,
    target: Option<StoreType>,
    rounding: Rounding,
) -> Result<(StoreType, Cow<'b, [u8]>)> {
    match storage(from, target) {
        Storage::Keep(s) => Ok((s, bytes)),
        Storage::Convert(t) => {
            let values = decode(&bytes, from, name)?;
            let out = match t.quant() {
                Some(format) if rounding == Rounding::Nearest => quant::quantize(format, &values)?,
                _ => encode(&values, t)?,
            };
            Ok((t, Cow::Owned(out)))
        }
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
        FileDType::Q3_0 => quant::dequantize(quant::QuantFormat::Q3_0, bytes)?,
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
        StoreType::Q3_0 => quant::quantize_fit(quant::QuantFormat::Q3_0, values)?,
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

/// What `Weights` does with the tensors a model asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Read, convert and upload them.
    Upload,
    /// Check names, shapes and dtypes only, and hand out shape-only placeholders (see `dry_run`).
    ShapesOnly,
}

/// A cursor into a `TensorSource` at a name prefix. Cloning is cheap.
#[derive(Clone)]
pub struct Weights<'a> {
    source: Arc<dyn TensorSource + 'a>,
    prefix: String,
    gpu: &'a Gpu,
    dtype: DType,
    log: Arc<Mutex<Log>>,
    mode: Mode,
}

impl<'a> Weights<'a> {
    pub fn new(source: &'a dyn TensorSource, gpu: &'a Gpu, dtype: DType) -> Self {
        Self::over(Arc::new(source), gpu, dtype)
    }

    fn over(source: Arc<dyn TensorSource + 'a>, gpu: &'a Gpu, dtype: DType) -> Self {
        Weights { source, prefix: String::new(), gpu, dtype, log: Arc::default(), mode: Mode::Upload }
    }

    /// A cursor that checks every tensor a model asks for (name, shape, float dtype) without
    /// reading or uploading data: model constructors then validate a published tensor list
    /// (from its header alone) in milliseconds, and the converter learns which tensors are
    /// matrices and in what order they load. The tensors it returns are placeholders that must
    /// never be computed with.
    pub fn dry_run(source: &'a dyn TensorSource, gpu: &'a Gpu, dtype: DType) -> Self {
        Self::new(source, gpu, dtype).shapes_only()
    }

    /// This cursor, checking shapes only (see `dry_run`).
    pub fn shapes_only(self) -> Self {
        Weights { mode: Mode::ShapesOnly, ..self }
    }

    /// Random weights of whatever shapes the model asks for (`sources::Synthetic`): real-size
    /// architectures for benchmarks and quantization studies without downloading anything.
    pub fn synthetic(gpu: &'a Gpu, dtype: DType, seed: u64) -> Self {
        Self::over(Arc::new(Synthetic::new(seed)), gpu, dtype)
    }

    /// Quantize-on-load (`sources::Requantized`): tensors stored as floats get the storage
    /// `policy` picks for `component.name`. Call before loading anything.
    pub fn with_policy(self, component: &str, policy: Arc<QuantPolicy>, rounding: Rounding) -> Self {
        let source = Arc::new(Requantized::new(self.source.clone(), component, policy, rounding));
        Weights { source, ..self }
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
        self.source.has(&self.full(name))
    }

    /// Loads `name` with exactly `shape` (trailing 1-dims are tolerated either way, as in 1x1
    /// conv vs linear weights of old checkpoints) in the compute dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<GpuTensor> {
        self.get_as(name, shape, self.dtype)
    }

    pub fn get_as(&self, name: &str, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let (full, info) = self.lookup(name, shape)?;
        self.record(&full, shape, None);
        if self.mode == Mode::ShapesOnly {
            return GpuTensor::placeholder(self.gpu, shape, dtype);
        }
        let (stored, bytes) = self.source.stored(&full, &info, None)?;
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
        if self.mode == Mode::ShapesOnly {
            return Ok(Weight::Dense(GpuTensor::placeholder(self.gpu, shape, self.dtype)?));
        }
        let (stored, bytes) = self.source.stored(&full, &info, Some([rows, cols]))?;
        if let Some(format) = stored.quant() {
            return Ok(Weight::Quant(QTensor::from_blocks(self.gpu, format, &bytes, rows, cols)?));
        }
        Ok(Weight::Dense(upload(self.gpu, &bytes, stored.into(), shape, self.dtype, &full)?))
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
    pub fn stored_access(&self, a: &Access) -> Result<(StoreType, Cow<'_, [u8]>)> {
        let info = self
            .source
            .lookup(&a.name, &a.shape)
            .ok_or_else(|| Error::Tensor { name: a.name.clone(), msg: "missing".into() })?;
        self.source.stored(&a.name, &info, a.matrix)
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
        let info = self.source.lookup(&full, shape).ok_or_else(|| Error::Tensor {
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
        if !matches!(
            info.dtype,
            FileDType::F32 | FileDType::F16 | FileDType::BF16 | FileDType::Q8_0 | FileDType::Q4_0 | FileDType::Q3_0
        ) {
            return Err(Error::Tensor { name: full, msg: format!("{:?} is not a float weight", info.dtype) });
        }
        Ok((full, info))
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
