//! Reading buffers back. `map_async` completes through the event loop in the browser, so the
//! read is an `async fn` everywhere; natively we poll the device until the map callback runs.
//! The mappable staging buffers are kept for the next read (`StagingRing`): every denoising
//! step reads its latents (and a preview) back at the same sizes.

use std::sync::Mutex;

use super::lock;
use super::pool::size_class;
use crate::error::{Error, Result};

/// Staging buffers kept between reads; more are created when reads overlap.
const KEEP: usize = 4;

/// Free mappable buffers, reused by the next read of a size that fits.
#[derive(Default)]
pub(crate) struct StagingRing {
    free: Mutex<Vec<wgpu::Buffer>>,
}

impl StagingRing {
    /// The smallest free buffer of at least `size` bytes and at most twice that, or a new one
    /// (its size rounded to the pool's size classes, so near sizes share it).
    fn take(&self, device: &wgpu::Device, size: u64) -> wgpu::Buffer {
        let mut free = lock(&self.free);
        let fit = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.size() >= size && b.size() <= size.saturating_mul(2))
            .min_by_key(|(_, b)| b.size())
            .map(|(i, _)| i);
        if let Some(i) = fit {
            return free.swap_remove(i);
        }
        drop(free);
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: size_class(size),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    fn give_back(&self, buffer: wgpu::Buffer) {
        let mut free = lock(&self.free);
        if free.len() >= KEEP {
            free.remove(0).destroy();
        }
        free.push(buffer);
    }

    pub fn clear(&self) {
        for b in lock(&self.free).drain(..) {
            b.destroy();
        }
    }
}

/// Copies `size` bytes (a multiple of 4) of `src` into a mappable buffer and returns them.
/// Everything recorded must be submitted first. `check` runs once the GPU is done, before the
/// bytes are trusted: a device lost or a validation error on the way shows there.
pub(crate) async fn read_buffer(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    ring: &StagingRing,
    src: &wgpu::Buffer,
    size: u64,
    check: impl Fn() -> Result<()>,
) -> Result<Vec<u8>> {
    let staging = ring.take(device, size);
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
    encoder.copy_buffer_to_buffer(src, 0, &staging, 0, size);
    queue.submit([encoder.finish()]);

    let (tx, rx) = futures_channel::oneshot::channel();
    staging.slice(..size).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    #[cfg(not(target_arch = "wasm32"))]
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Readback(format!("waiting for the GPU: {e}")))?;
    let mapped = rx.await.map_err(|_| Error::Readback("the map request was dropped".into()))?;
    // On any failure below the buffer is dropped, not kept: its map state is unknown.
    check()?;
    mapped.map_err(|e| Error::Readback(e.to_string()))?;
    let bytes = {
        let view = staging.slice(..size).get_mapped_range().map_err(|e| Error::Readback(e.to_string()))?;
        view.to_vec()
    };
    staging.unmap();
    ring.give_back(staging);
    Ok(bytes)
}
