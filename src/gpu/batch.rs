//! Command batching: ops record compute passes into one open encoder and the queue is submitted
//! every `MAX_DISPATCHES` dispatches (or when results are read back). Kernel parameters go into
//! one uniform buffer per batch, a 256-byte slot per dispatch, written with a single
//! `write_buffer` just before the submit.
//!
//! Reusing that uniform buffer for the next batch is safe: a `write_buffer` is ordered after
//! every command buffer submitted before it, and before those submitted after it.

use super::context::{lock, Gpu};

/// Dispatches per submit. Large enough to amortise submit cost, small enough that the GPU starts
/// working while we are still recording.
pub const MAX_DISPATCHES: usize = 64;

pub(crate) struct Batch {
    encoder: Option<wgpu::CommandEncoder>,
    uniforms: wgpu::Buffer,
    staged: Vec<u8>,
    slot: u64,
    dispatches: usize,
    /// `queue.write_buffer` calls since the last submit; wgpu frees their staging memory only
    /// after a submit, so bulk uploads submit every few dozen writes.
    pub writes: usize,
}

impl Batch {
    pub fn new(device: &wgpu::Device, align: u32) -> Batch {
        let slot = align.max(256) as u64;
        Batch {
            encoder: None,
            uniforms: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kernel params"),
                size: slot * MAX_DISPATCHES as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            staged: Vec::with_capacity((slot as usize) * MAX_DISPATCHES),
            slot,
            dispatches: 0,
            writes: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.dispatches == 0 && self.encoder.is_none()
    }
}

/// One storage binding of a dispatch.
#[derive(Clone)]
pub(crate) struct Bind<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl Gpu {
    /// Records one compute dispatch into the open batch.
    pub(crate) fn record(
        &self,
        pipeline: &wgpu::ComputePipeline,
        layout: &wgpu::BindGroupLayout,
        label: &str,
        params: &[u8],
        binds: &[Bind<'_>],
        workgroups: [u32; 3],
    ) {
        let inner = &self.inner;
        let mut batch = lock(&inner.batch);
        if batch.dispatches == MAX_DISPATCHES {
            self.submit_locked(&mut batch);
        }
        let slot = batch.slot;
        let offset = batch.dispatches as u64 * slot;
        debug_assert!(params.len() as u64 <= slot, "kernel params over one uniform slot");
        batch.staged.extend_from_slice(params);
        batch.staged.resize((offset + slot) as usize, 0);
        if inner.dry_run {
            batch.dispatches += 1;
            drop(batch);
            let mut s = lock(&inner.stats);
            s.dispatches += 1;
            s.largest_binding = s.largest_binding.max(binds.iter().map(|b| b.size).max().unwrap_or(0));
            return;
        }

        let mut entries = Vec::with_capacity(binds.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &batch.uniforms,
                offset,
                size: wgpu::BufferSize::new(params.len().max(16) as u64),
            }),
        });
        let mut largest = 0;
        for (i, b) in binds.iter().enumerate() {
            largest = largest.max(b.size);
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: b.offset,
                    size: wgpu::BufferSize::new(b.size),
                }),
            });
        }
        let group = inner.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout,
            entries: &entries,
        });
        let device = &inner.device;
        let encoder = batch.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("batch") })
        });
        {
            let mut pass =
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes: None });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        }
        batch.dispatches += 1;
        if let Some(profile) = &inner.profile {
            let t0 = std::time::Instant::now();
            self.submit_locked(&mut batch);
            let _ = inner.device.poll(wgpu::PollType::wait_indefinitely());
            let mut p = lock(profile);
            let e = p.entry(label.to_string()).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += t0.elapsed().as_secs_f64();
        }
        drop(batch);
        let mut s = lock(&inner.stats);
        s.dispatches += 1;
        s.largest_binding = s.largest_binding.max(largest);
    }

    /// Submits whatever is recorded. Cheap when nothing is.
    pub fn flush(&self) {
        let mut batch = lock(&self.inner.batch);
        if !batch.is_empty() || batch.writes > 0 {
            self.submit_locked(&mut batch);
        }
    }

    fn submit_locked(&self, batch: &mut Batch) {
        let inner = &self.inner;
        if !batch.staged.is_empty() {
            inner.queue.write_buffer(&batch.uniforms, 0, &batch.staged);
        }
        let buffers = batch.encoder.take().map(|e| e.finish());
        inner.queue.submit(buffers);
        batch.staged.clear();
        batch.dispatches = 0;
        batch.writes = 0;
        lock(&inner.stats).submits += 1;
    }

    /// Writes bytes into a buffer through the queue, keeping order with recorded work: pending
    /// dispatches are submitted first, because a queue write would otherwise overtake them (and
    /// the pool may hand a buffer they still read to a new tensor).
    pub(crate) fn write(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        let mut batch = lock(&self.inner.batch);
        if batch.dispatches > 0 || batch.writes >= 32 {
            self.submit_locked(&mut batch);
        }
        self.inner.queue.write_buffer(buffer, offset, bytes);
        batch.writes += 1;
    }
}
