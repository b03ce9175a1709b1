//! Our WebGPU compute runtime: device, tensors, buffer pool, pipeline cache, batching,
//! readback. Model code never sees wgpu; it calls `ops`, which call this.

pub mod batch;
pub mod context;
pub mod kernel;
pub mod policy;
pub mod pool;
pub mod preprocess;
mod readback;
pub mod tensor;

pub use context::{Capabilities, Gpu, GpuOptions, GpuStats, LimitsPolicy};
pub use kernel::{KernelKey, Shader};
pub use policy::{KernelChoice, KernelPolicy};
pub use tensor::{DType, GpuTensor};
