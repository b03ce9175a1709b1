//! Reuse of storage buffers. Activations come and go at every layer; asking the driver for a
//! fresh buffer each time costs far more than the kernels on small shapes, and in the browser
//! every allocation is an IPC round trip.
//!
//! Sizes are rounded up to a size class (1/8 steps between powers of two, at most 12.5% waste),
//! so that the many slightly different shapes of a U-Net share buffers.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use super::context::{lock, Gpu, GpuInner};

pub(crate) const STORAGE_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// Rounds `bytes` up to its size class (always a multiple of 4, as bindings require).
pub fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(4);
    if bytes <= 256 {
        return (bytes + 3) & !3;
    }
    let pow = 63 - (bytes - 1).leading_zeros() as u64; // 2^pow < bytes <= 2^(pow+1)
    let step = 1u64 << (pow - 3);
    bytes.div_ceil(step) * step
}

#[derive(Default)]
pub(crate) struct BufferPool {
    free: BTreeMap<u64, Vec<wgpu::Buffer>>,
}

impl BufferPool {
    /// The smallest free buffer of at least `class` bytes and at most twice that (a binding
    /// may cover less than its buffer): freed buffers of one size serve the smaller tensors of
    /// the next layer instead of the pool growing a new size for each. Returns (buffer, its class).
    fn take(&mut self, class: u64, exact: bool) -> Option<(wgpu::Buffer, u64)> {
        let upper = if exact { class } else { class.saturating_mul(2) };
        let (&found, list) = self.free.range_mut(class..=upper).find(|(_, v)| !v.is_empty())?;
        list.pop().map(|b| (b, found))
    }

    /// Drops every pooled buffer; returns the bytes released. Handles are dropped, never
    /// `destroy`ed: a pooled buffer may still be read by a recorded command that is not yet
    /// submitted (its tensor was freed after recording), and wgpu frees the memory once no
    /// command needs it. (Destroying here failed such submits with "buffer has been destroyed".)
    pub fn clear(&mut self) -> u64 {
        let mut freed = 0;
        for (class, bufs) in std::mem::take(&mut self.free) {
            freed += class * bufs.len() as u64;
        }
        freed
    }
}

/// A storage buffer on loan from the pool; goes back when dropped.
pub struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    /// Bytes the tensor asked for (the buffer may be larger).
    pub len: u64,
    class: u64,
    home: Weak<GpuInner>,
}

impl PooledBuffer {
    pub fn buffer(&self) -> &wgpu::Buffer {
        // Only `drop` takes the buffer out.
        self.buffer.as_ref().expect("buffer present until drop")
    }

    /// The bytes a binding should cover: `len` rounded up to 4.
    pub fn binding_size(&self) -> u64 {
        (self.len.max(4) + 3) & !3
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let (Some(buf), Some(gpu)) = (self.buffer.take(), self.home.upgrade()) else {
            return;
        };
        let mut stats = lock(&gpu.stats);
        stats.bytes_live = stats.bytes_live.saturating_sub(self.class);
        stats.bytes_pooled += self.class;
        drop(stats);
        lock(&gpu.pool).free.entry(self.class).or_default().push(buf);
    }
}

impl Gpu {
    /// A storage buffer of at least `bytes`, reused when possible.
    pub(crate) fn alloc(&self, bytes: u64) -> PooledBuffer {
        self.alloc_class(bytes, size_class(bytes), false)
    }

    /// A buffer of exactly `bytes` (rounded to 4): for tensors that live long (weights), where
    /// the size-class rounding of `alloc` would waste up to 12.5% for nothing.
    pub(crate) fn alloc_exact(&self, bytes: u64) -> PooledBuffer {
        self.alloc_class(bytes, (bytes.max(4) + 3) & !3, true)
    }

    fn alloc_class(&self, bytes: u64, class: u64, exact: bool) -> PooledBuffer {
        let reused = lock(&self.inner.pool).take(class, exact);
        let (buffer, class) = match reused {
            Some((b, found)) => {
                let mut s = lock(&self.inner.stats);
                s.bytes_pooled = s.bytes_pooled.saturating_sub(found);
                (b, found)
            }
            None => (
                self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("tensor"),
                    size: class,
                    usage: STORAGE_USAGE,
                    mapped_at_creation: false,
                }),
                class,
            ),
        };
        let mut s = lock(&self.inner.stats);
        s.bytes_live += class;
        s.peak_bytes = s.peak_bytes.max(s.bytes_live + s.bytes_pooled);
        s.largest_buffer = s.largest_buffer.max(class);
        drop(s);
        PooledBuffer { buffer: Some(buffer), len: bytes, class, home: Arc::downgrade(&self.inner) }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_bound_waste() {
        assert_eq!(size_class(0), 4);
        assert_eq!(size_class(5), 8);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 288);
        assert_eq!(size_class(1 << 20), 1 << 20);
        for bytes in [300u64, 4097, 1_000_003, 123_456_789] {
            let c = size_class(bytes);
            assert!(c >= bytes && c % 4 == 0 && (c - bytes) * 8 <= bytes, "{bytes} -> {c}");
        }
    }
}
