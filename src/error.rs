//! The library's single error type. The CLI wraps it in `anyhow`; the wasm glue turns it into a
//! `JsError` whose message is this `Display`, so every message must make sense to a person.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "no GPU adapter found ({backends}). Native runs need a Vulkan, Metal or DX12 driver \
         (on Debian without a GPU: `apt-get install mesa-vulkan-drivers` for the lavapipe software \
         driver); browsers need WebGPU (Chrome/Edge 113+, Safari 26+, Firefox 141+ on Windows)"
    )]
    NoAdapter { backends: String },

    #[error("the GPU refused to create a device: {0}")]
    RequestDevice(String),

    #[error("the GPU device was lost ({0}); reload the model to start a new device")]
    DeviceLost(String),

    #[error("GPU validation error in {context}: {message}")]
    Validation { context: String, message: String },

    #[error("reading results back from the GPU failed: {0}")]
    Readback(String),

    #[error("shape mismatch in {op}: {msg}")]
    Shape { op: &'static str, msg: String },

    #[error("{op} does not support dtype {dtype}")]
    DType { op: &'static str, dtype: String },

    #[error(
        "{what} needs a {needed}-byte GPU binding but this device allows at most {limit} bytes; \
         it must be split or tiled"
    )]
    BindingTooLarge { what: String, needed: u64, limit: u64 },

    #[error("the device lacks the `{0}` feature")]
    MissingFeature(&'static str),

    #[error("shader preprocessing failed for {shader}: {msg}")]
    Preprocess { shader: String, msg: String },

    #[error("bad {component} config: {msg}")]
    Config { component: String, msg: String },

    #[error("weights: {0}")]
    Weights(String),

    /// A package shard that is missing, short or fails its checksum: fetch it again.
    #[error("package shard {file}: {msg}")]
    Shard { file: String, msg: String },

    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("generation cancelled")]
    Cancelled,

    /// A buffer sized by input that this machine cannot hold (or address, on wasm32).
    #[error("{what}: no memory for {bytes} bytes")]
    OutOfMemory { what: String, bytes: u64 },

    #[error("invalid request: {0}")]
    Request(String),

    /// A stage's output holds NaN or infinity: never turned into an image.
    #[error("{stage} produced non-finite values (NaN or infinity) computing in {dtype}: {hint}")]
    NonFinite { stage: String, dtype: String, hint: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
}

/// An empty vector with room for `n` elements, or `OutOfMemory` naming `what`, instead of the
/// abort `Vec::with_capacity` gives. For every buffer whose size comes from input (a header, a
/// manifest, an image), after the size was checked against the input's own rules: a size that
/// is allowed can still be more than the browser's heap has.
pub fn try_vec<T>(n: u64, what: impl FnOnce() -> String) -> Result<Vec<T>> {
    let bytes = n.saturating_mul(std::mem::size_of::<T>() as u64);
    let mut v = Vec::new();
    match usize::try_from(n).ok().map(|n| v.try_reserve_exact(n)) {
        Some(Ok(())) => Ok(v),
        _ => Err(Error::OutOfMemory { what: what(), bytes }),
    }
}

/// `n` zero bytes, as `try_vec` does.
pub fn try_zeroed(n: u64, what: impl FnOnce() -> String) -> Result<Vec<u8>> {
    let mut v = try_vec(n, what)?;
    v.resize(n as usize, 0); // try_vec checked that n fits in usize
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_sizes_are_errors_not_aborts() {
        let e = try_vec::<u32>(u64::MAX / 2, || "tensor `x`".into()).unwrap_err();
        assert_eq!(e.to_string(), format!("tensor `x`: no memory for {} bytes", u64::MAX));
        assert!(try_zeroed(1 << 62, || "a PNG".into()).is_err());
        let v = try_zeroed(1000, || unreachable!()).unwrap();
        assert_eq!((v.len(), v.iter().all(|&b| b == 0)), (1000, true));
        assert!(try_vec::<f32>(7, || unreachable!()).unwrap().capacity() >= 7);
    }
}
