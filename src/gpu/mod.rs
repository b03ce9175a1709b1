//! Our WebGPU compute runtime: device, tensors, buffer pool, pipeline cache, batching,
//! readback. Model code never sees wgpu; it calls `ops`, which call this.
//!
//! Dependencies point one way: `tensor` → `context` (`Gpu`) → `kernel`, `batch`, `pool`,
//! `readback`, `policy`, each of which works over the `wgpu::Device` it is handed and imports
//! none of the others (`batch` knows `kernel::Compiled`, the thing it records).

pub mod batch;
pub mod context;
mod dtype;
pub mod kernel;
pub mod layout;
pub mod policy;
pub mod pool;
pub mod preprocess;
mod readback;
pub mod tensor;

pub use context::{Capabilities, Gpu, GpuOptions, GpuStats, LimitsPolicy};
pub use kernel::{KernelKey, Shader};
pub use policy::{GemmTile, KernelChoice, KernelPolicy};
pub use tensor::{DType, GpuTensor};

/// Locks one of the runtime's mutexes. A panic while holding one leaves plain data behind,
/// still consistent enough to keep going (counters, free lists), so poisoning is not propagated.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
