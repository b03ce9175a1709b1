//! webdiffusion: Stable Diffusion on WebGPU, in the browser and natively.
//!
//! Data path, top to bottom: (wasm glue | CLI) → pipeline → models → [`ops`] → [`gpu`] runtime →
//! `shaders/*.wgsl`. See ARCHITECTURE.md.

pub mod bench;
pub mod error;
pub mod gpu;
pub mod models;
pub mod ops;
pub mod pipeline;
pub mod quant;
pub mod random;
pub mod selftest;

#[cfg(target_arch = "wasm32")]
mod wasm;

pub use error::{Error, Result};
pub use gpu::{DType, Gpu, GpuOptions, GpuTensor};
