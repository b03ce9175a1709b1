//! Reuse of storage buffers. Activations come and go at every layer; asking the driver for a
//! fresh buffer each time costs far more than the kernels on small shapes, and in the browser
//! every allocation is an IPC round trip.
//!
//! Sizes are rounded up to a size class (1/8 steps between powers of two, at most 12.5% waste),
//! so that the many slightly different shapes of a U-Net share buffers.
//!
//! Within a class the oldest free buffer goes out first (buffers are numbered as they are
//! created), not the last one freed: a denoising step that frees everything it allocated then
//! hands the next step the same buffers in the same order, whatever order they were freed in,
//! so the next step's dispatches bind exactly the buffers the last one did and find their bind
//! groups cached (batch.rs).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use super::lock;

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

/// The pool's view of GPU memory: bytes of the buffers it created, on loan or free.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MemoryStats {
    pub bytes_live: u64,
    pub bytes_pooled: u64,
    pub peak_bytes: u64,
    /// The largest single buffer created or reused since the last `reset_peak`.
    pub largest_buffer: u64,
}

#[derive(Default)]
struct Shelves {
    /// Free buffers by size class, then by creation number.
    free: BTreeMap<u64, BTreeMap<u64, wgpu::Buffer>>,
    created: u64,
    stats: MemoryStats,
}

/// Free storage buffers by size class, and the memory counters. Shared (an `Arc`) with every
/// buffer on loan, which comes back on drop; knows nothing of the rest of the runtime.
#[derive(Default)]
pub(crate) struct BufferPool {
    shelves: Mutex<Shelves>,
}

impl BufferPool {
    /// A storage buffer of at least `bytes`, reused when possible. `exact`: of exactly `bytes`
    /// (rounded to 4), for tensors that live long (weights), where the size-class rounding
    /// would waste up to 12.5% for nothing.
    pub fn alloc(self: &Arc<Self>, device: &wgpu::Device, bytes: u64, exact: bool) -> PooledBuffer {
        let class = if exact { (bytes.max(4) + 3) & !3 } else { size_class(bytes) };
        let mut shelves = lock(&self.shelves);
        let reused = shelves.take(class, exact);
        let (buffer, class, serial) = match reused {
            Some((b, found, serial)) => {
                shelves.stats.bytes_pooled = shelves.stats.bytes_pooled.saturating_sub(found);
                (b, found, serial)
            }
            None => {
                let b = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("tensor"),
                    size: class,
                    usage: STORAGE_USAGE,
                    mapped_at_creation: false,
                });
                shelves.created += 1;
                (b, class, shelves.created)
            }
        };
        let s = &mut shelves.stats;
        s.bytes_live += class;
        s.peak_bytes = s.peak_bytes.max(s.bytes_live + s.bytes_pooled);
        s.largest_buffer = s.largest_buffer.max(class);
        PooledBuffer { buffer: Some(buffer), len: bytes, class, serial, home: Arc::downgrade(self) }
    }

    pub fn stats(&self) -> MemoryStats {
        lock(&self.shelves).stats
    }

    /// Starts a new peak (at what is allocated now) and a new largest buffer.
    pub fn reset_peak(&self) {
        let s = &mut lock(&self.shelves).stats;
        s.peak_bytes = s.bytes_live + s.bytes_pooled;
        s.largest_buffer = 0;
    }

    /// Drops every pooled buffer. Handles are dropped, never `destroy`ed: a pooled buffer may
    /// still be read by a recorded command that is not yet submitted (its tensor was freed after
    /// recording), and wgpu frees the memory once no command needs it. (Destroying here failed
    /// such submits with "buffer has been destroyed".)
    pub fn clear(&self) {
        let mut shelves = lock(&self.shelves);
        let mut freed = 0;
        for (class, bufs) in std::mem::take(&mut shelves.free) {
            freed += class * bufs.len() as u64;
        }
        shelves.stats.bytes_pooled = shelves.stats.bytes_pooled.saturating_sub(freed);
    }

    fn give_back(&self, buffer: wgpu::Buffer, class: u64, serial: u64) {
        let mut shelves = lock(&self.shelves);
        shelves.stats.bytes_live = shelves.stats.bytes_live.saturating_sub(class);
        shelves.stats.bytes_pooled += class;
        shelves.free.entry(class).or_default().insert(serial, buffer);
    }
}

impl Shelves {
    /// The smallest free buffer of at least `class` bytes and at most twice that (a binding
    /// may cover less than its buffer): freed buffers of one size serve the smaller tensors of
    /// the next layer instead of the pool growing a new size for each. Of those, the oldest
    /// (see the module's note: a step that finds every buffer of the last one free then picks
    /// what the last one picked, or made, at each point). Returns (buffer, its class, its
    /// creation number).
    fn take(&mut self, class: u64, exact: bool) -> Option<(wgpu::Buffer, u64, u64)> {
        let upper = if exact { class } else { class.saturating_mul(2) };
        let (found, serial) = self
            .free
            .range(class..=upper)
            .filter_map(|(&c, v)| v.first_key_value().map(|(&serial, _)| (c, serial)))
            .min_by_key(|&(_, serial)| serial)?;
        let list = self.free.get_mut(&found)?;
        list.remove(&serial).map(|b| (b, found, serial))
    }
}

/// A storage buffer on loan from the pool; goes back when dropped.
pub struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    /// Bytes the tensor asked for (the buffer may be larger).
    pub len: u64,
    class: u64,
    serial: u64,
    home: Weak<BufferPool>,
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
        if let (Some(buf), Some(pool)) = (self.buffer.take(), self.home.upgrade()) {
            pool.give_back(buf, self.class, self.serial);
        }
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
