//! Command batching: ops record their dispatches into one open compute pass of one command
//! encoder, and the queue is submitted every `MAX_DISPATCHES` dispatches (or when results are
//! read back, or bytes written). Kernel parameters go into one uniform buffer per batch, a
//! 256-byte slot per dispatch, written with a single `write_buffer` just before the submit; the
//! slot is the bind group's dynamic offset, so bind groups depend only on the kernel and its
//! storage buffers and are cached (`BindGroups`): the same layer in the next step, with the
//! pool handing out the same buffers, finds its group built.
//!
//! Reusing that uniform buffer for the next batch is safe: a `write_buffer` is ordered after
//! every command buffer submitted before it, and before those submitted after it.

use std::collections::HashMap;

use super::kernel::Compiled;

/// Dispatches per submit. Large enough to amortise submit cost, small enough that the GPU starts
/// working while we are still recording.
pub const MAX_DISPATCHES: usize = 64;

/// Bind groups kept at most; past it the cache starts again (a model's step needs a few
/// hundred, a tiled VAE decode some more).
const MAX_BIND_GROUPS: usize = 4096;

/// What a batch has recorded and submitted since the last reset.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BatchStats {
    pub dispatches: u64,
    pub submits: u64,
    /// Compute passes begun: one per submit that holds dispatches.
    pub passes: u64,
    /// Bind groups created (the rest of the dispatches found theirs cached).
    pub bind_groups: u64,
    /// Bytes written through the queue: tensor uploads and the dispatches' parameters.
    pub bytes_written: u64,
    pub largest_binding: u64,
}

/// One dispatch's bind group identity: the kernel (its `Compiled`, which the pipeline cache
/// keeps for the device's life) and every storage binding.
#[derive(PartialEq, Eq, Hash)]
struct GroupKey {
    kernel: usize,
    binds: Vec<(wgpu::Buffer, u64, u64)>,
}

/// Bind groups by what they bind. A key holds its buffers' handles, so a buffer in the cache is
/// never reused under another identity; `clear` drops them (the pool's trim calls it, so
/// trimmed buffers are really freed).
#[derive(Default)]
pub(crate) struct BindGroups {
    map: HashMap<GroupKey, wgpu::BindGroup>,
}

impl BindGroups {
    pub fn clear(&mut self) {
        self.map.clear();
    }

    fn get(
        &mut self,
        device: &wgpu::Device,
        kernel: &Compiled,
        uniforms: &wgpu::Buffer,
        params_size: u64,
        binds: &[Bind<'_>],
        created: &mut u64,
    ) -> &wgpu::BindGroup {
        let key = GroupKey {
            kernel: kernel as *const Compiled as usize,
            binds: binds.iter().map(|b| (b.buffer.clone(), b.offset, b.size)).collect(),
        };
        if !self.map.contains_key(&key) && self.map.len() >= MAX_BIND_GROUPS {
            self.map.clear();
        }
        self.map.entry(key).or_insert_with(|| {
            *created += 1;
            let mut entries = Vec::with_capacity(binds.len() + 1);
            entries.push(wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: uniforms,
                    offset: 0,
                    size: wgpu::BufferSize::new(params_size),
                }),
            });
            for (i, b) in binds.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: b.buffer,
                        offset: b.offset,
                        size: wgpu::BufferSize::new(b.size),
                    }),
                });
            }
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.label.as_str()),
                layout: &kernel.layout,
                entries: &entries,
            })
        })
    }
}

/// The open command encoder and the uniform slots of its dispatches. Works over the device and
/// queue it is handed; knows nothing of pools or pipelines beyond the one it records.
pub(crate) struct Batch {
    encoder: Option<wgpu::CommandEncoder>,
    /// The open pass of `encoder` (ended before the encoder is finished).
    pass: Option<wgpu::ComputePass<'static>>,
    uniforms: wgpu::Buffer,
    staged: Vec<u8>,
    slot: u64,
    dispatches: usize,
    /// `queue.write_buffer` calls since the last submit; wgpu frees their staging memory only
    /// after a submit, so bulk uploads submit every few dozen writes.
    writes: usize,
    /// Accounting only (`GpuOptions::dry_run`): dispatches are counted, never encoded.
    dry_run: bool,
    /// Per-kernel `(dispatches, seconds)` when profiling: every dispatch is submitted and
    /// waited for on its own.
    profile: Option<HashMap<String, (u64, f64)>>,
    stats: BatchStats,
    groups: BindGroups,
}

impl Batch {
    pub fn new(device: &wgpu::Device, align: u32, dry_run: bool, profile: bool) -> Batch {
        let slot = align.max(256) as u64;
        Batch {
            encoder: None,
            pass: None,
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
            dry_run,
            profile: (cfg!(not(target_arch = "wasm32")) && profile).then(HashMap::new),
            stats: BatchStats::default(),
            groups: BindGroups::default(),
        }
    }

    /// Turns accounting mode on or off (see `Gpu::record_only`); pending work is submitted
    /// first.
    pub fn set_dry_run(&mut self, queue: &wgpu::Queue, on: bool) {
        self.flush(queue);
        self.dry_run = on;
    }

    /// Forgets every cached bind group (and with them the buffers they hold).
    pub fn clear_bind_groups(&mut self) {
        self.groups.clear();
    }

    pub fn stats(&self) -> BatchStats {
        self.stats
    }

    pub fn reset_stats(&mut self) {
        self.stats = BatchStats::default();
    }

    /// Kernels by total time, `(label, dispatches, seconds)`, when profiling is on.
    pub fn profile(&self) -> Option<Vec<(String, u64, f64)>> {
        let mut rows: Vec<_> = self.profile.as_ref()?.iter().map(|(k, (n, t))| (k.clone(), *n, *t)).collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        Some(rows)
    }

    /// Records one compute dispatch: binding 0 is `params` in this dispatch's uniform slot,
    /// then `binds` in order.
    pub fn record(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        kernel: &Compiled,
        params: &[u8],
        binds: &[Bind<'_>],
        workgroups: [u32; 3],
    ) {
        if self.dispatches == MAX_DISPATCHES {
            self.submit(queue);
        }
        let offset = self.dispatches as u64 * self.slot;
        debug_assert!(params.len() as u64 <= self.slot, "kernel params over one uniform slot");
        self.staged.extend_from_slice(params);
        self.staged.resize((offset + self.slot) as usize, 0);
        self.dispatches += 1;
        self.stats.dispatches += 1;
        if self.dispatches == 1 {
            // The pass this dispatch begins (counted in accounting runs too).
            self.stats.passes += 1;
        }
        let largest = binds.iter().map(|b| b.size).max().unwrap_or(0);
        self.stats.largest_binding = self.stats.largest_binding.max(largest);
        // Built in accounting runs too: the group is validated there as in a real run, and the
        // counts are the real run's.
        let params_size = params.len().max(16) as u64;
        let group = self.groups.get(device, kernel, &self.uniforms, params_size, binds, &mut self.stats.bind_groups);
        if self.dry_run {
            return;
        }
        if self.pass.is_none() {
            let encoder = self.encoder.get_or_insert_with(|| {
                device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("batch") })
            });
            let pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("batch"), timestamp_writes: None });
            self.pass = Some(pass.forget_lifetime());
        }
        let pass = self.pass.as_mut().expect("a pass was just begun");
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, group, &[offset as u32]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        if self.profile.is_some() {
            let t0 = std::time::Instant::now();
            self.submit(queue);
            let _ = device.poll(wgpu::PollType::wait_indefinitely());
            let seconds = t0.elapsed().as_secs_f64();
            if let Some(p) = &mut self.profile {
                let e = p.entry(kernel.label.clone()).or_insert((0, 0.0));
                e.0 += 1;
                e.1 += seconds;
            }
        }
    }

    /// Submits whatever is recorded or written. Cheap when nothing is.
    pub fn flush(&mut self, queue: &wgpu::Queue) {
        if self.dispatches > 0 || self.encoder.is_some() || self.writes > 0 {
            self.submit(queue);
        }
    }

    fn submit(&mut self, queue: &wgpu::Queue) {
        if !self.staged.is_empty() {
            queue.write_buffer(&self.uniforms, 0, &self.staged);
            self.stats.bytes_written += self.staged.len() as u64;
        }
        // The pass ends before its encoder can finish.
        drop(self.pass.take());
        let buffers = self.encoder.take().map(|e| e.finish());
        queue.submit(buffers);
        self.staged.clear();
        self.dispatches = 0;
        self.writes = 0;
        self.stats.submits += 1;
    }

    /// Writes bytes into a buffer through the queue, keeping order with recorded work: pending
    /// dispatches are submitted first, because a queue write would otherwise overtake them (and
    /// the pool may hand a buffer they still read to a new tensor).
    pub fn write(&mut self, queue: &wgpu::Queue, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        if self.dispatches > 0 || self.writes >= 32 {
            self.submit(queue);
        }
        queue.write_buffer(buffer, offset, bytes);
        self.writes += 1;
        self.stats.bytes_written += bytes.len() as u64;
    }
}

/// One storage binding of a dispatch.
#[derive(Clone)]
pub(crate) struct Bind<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}
