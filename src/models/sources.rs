//! The `TensorSource`s that are not files read by ranges: a safetensors file in memory, made-up
//! weights, and another source re-stored by a quantization policy on the way.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::weights::{encode, restore, Access, FileDType, Rounding, TensorInfo, TensorSource};
use crate::error::{Error, Result};
use crate::quant::{QuantPolicy, StoreType};

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

/// Random weights of whatever shapes a model asks for, deterministic in the seed and the
/// tensor's name, scaled like PyTorch's default init (uniform ±1/sqrt(fan_in) for matrices, norms
/// at 1). Lists no names: every name a model asks for exists.
pub struct Synthetic {
    seed: u64,
}

impl Synthetic {
    pub fn new(seed: u64) -> Synthetic {
        Synthetic { seed }
    }
}

impl TensorSource for Synthetic {
    fn info(&self, _: &str) -> Option<TensorInfo> {
        None
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        Err(Error::Tensor { name: name.into(), msg: "synthetic weights have a shape only when a model asks".into() })
    }
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
    fn has(&self, _: &str) -> bool {
        true
    }
    fn lookup(&self, _: &str, shape: &[usize]) -> Option<TensorInfo> {
        Some(TensorInfo { dtype: FileDType::F32, shape: shape.to_vec() })
    }
    fn stored(&self, name: &str, info: &TensorInfo, matrix: Option<[usize; 2]>) -> Result<(StoreType, Cow<'_, [u8]>)> {
        let values = synthesize(self.seed, name, &info.shape, matrix);
        Ok((StoreType::F32, Cow::Owned(encode(&values, StoreType::F32)?)))
    }
}

/// The values `Weights::synthetic(seed)` (`Synthetic`) gives the tensor of access `a` (for building the same
/// model in another framework).
pub fn synthetic_values(seed: u64, a: &Access) -> Vec<f32> {
    synthesize(seed, &a.name, &a.shape, a.matrix)
}

/// Deterministic stand-in weights (see `Synthetic`).
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
    crate::random::random_values(seed ^ h, n).into_iter().map(|v| v * scale).collect()
}

/// Quantize-on-load: the tensors of `inner` that are stored as floats get the storage `policy`
/// picks for them (under `component.`); quantized ones stay as they are. A model loaded from a
/// diffusers file this way gets bit-for-bit the weights of the package the converter writes.
pub struct Requantized<'a> {
    inner: Arc<dyn TensorSource + 'a>,
    component: String,
    policy: Arc<QuantPolicy>,
    rounding: Rounding,
}

impl<'a> Requantized<'a> {
    pub fn new(
        inner: Arc<dyn TensorSource + 'a>,
        component: &str,
        policy: Arc<QuantPolicy>,
        rounding: Rounding,
    ) -> Self {
        Requantized { inner, component: component.to_string(), policy, rounding }
    }
}

impl TensorSource for Requantized<'_> {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.inner.info(name)
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        self.inner.bytes(name)
    }
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn has(&self, name: &str) -> bool {
        self.inner.has(name)
    }
    fn lookup(&self, name: &str, shape: &[usize]) -> Option<TensorInfo> {
        self.inner.lookup(name, shape)
    }
    fn stored(&self, name: &str, info: &TensorInfo, matrix: Option<[usize; 2]>) -> Result<(StoreType, Cow<'_, [u8]>)> {
        let (stored, bytes) = self.inner.stored(name, info, matrix)?;
        let target = self.policy.decide(&format!("{}.{name}", self.component), matrix);
        restore(name, stored.into(), bytes, Some(target), self.rounding)
    }
}
