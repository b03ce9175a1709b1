//! Reading buffers back. `map_async` completes through the event loop in the browser, so the
//! read is an `async fn` everywhere; natively we poll the device until the map callback runs.

use crate::error::{Error, Result};

/// Copies `size` bytes (a multiple of 4) of `src` into a mappable buffer and returns them.
/// Everything recorded must be submitted first. `check` runs once the GPU is done, before the
/// bytes are trusted: a device lost or a validation error on the way shows there.
pub(crate) async fn read_buffer(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    src: &wgpu::Buffer,
    size: u64,
    check: impl Fn() -> Result<()>,
) -> Result<Vec<u8>> {
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
    encoder.copy_buffer_to_buffer(src, 0, &staging, 0, size);
    queue.submit([encoder.finish()]);

    let (tx, rx) = futures_channel::oneshot::channel();
    staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    #[cfg(not(target_arch = "wasm32"))]
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Readback(format!("waiting for the GPU: {e}")))?;
    let mapped = rx.await.map_err(|_| Error::Readback("the map request was dropped".into()))?;
    check()?;
    mapped.map_err(|e| Error::Readback(e.to_string()))?;
    let bytes = {
        let view = staging.slice(..).get_mapped_range().map_err(|e| Error::Readback(e.to_string()))?;
        view.to_vec()
    };
    staging.unmap();
    staging.destroy();
    Ok(bytes)
}
