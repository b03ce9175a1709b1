//! Device set-up, and `Gpu`: the one handle (an `Arc`, cheap to clone, kept by every tensor) that
//! composes the runtime's parts over its device: the pipeline cache (`kernel.rs`), the buffer
//! pool (`pool.rs`) and the open command batch (`batch.rs`). Those know nothing of `Gpu` or of
//! each other; this file is the only one that holds them together.

use std::sync::{Arc, Mutex};

use super::batch::{Batch, Bind};
use super::kernel::{KernelKey, PipelineCache};
use super::layout::{LaunchLayout, Uniform};
use super::lock;
use super::policy::KernelPolicy;
use super::pool::{BufferPool, PooledBuffer};
use super::readback::StagingRing;
use crate::error::{Error, Result};

/// Which limits to ask the device for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LimitsPolicy {
    /// The adapter's own maxima for the limits we care about (storage binding, buffer size,
    /// workgroup storage). What a native run or a generous browser gives.
    #[default]
    Adapter,
    /// WebGPU's defaults (128 MiB storage binding, 256 MiB buffer, 16 KiB workgroup storage):
    /// what most browsers grant, so everything must work under them.
    WebDefault,
}

#[derive(Clone, Debug)]
pub struct GpuOptions {
    pub limits: LimitsPolicy,
    /// Use `shader-f16` when the adapter offers it. Off forces the f32 path.
    pub allow_f16: bool,
    /// Treat the largest storage binding as at most this many bytes: simulates a stingier
    /// device (and lets tests exercise split tensors with small data).
    pub binding_cap: Option<u64>,
    /// Accounting only: kernels are validated and counted (dispatches, submits, FLOPs, bindings)
    /// but never executed, while buffers are allocated as in a real run. Gives a run's memory
    /// and dispatch figures in the time it takes to build it; every result read back is garbage.
    pub dry_run: bool,
    /// Which variant of matmul and conv2d runs (`Auto`: by adapter). Changeable later with
    /// `Gpu::set_kernel_policy`, so one device can compare variants.
    pub kernels: KernelPolicy,
    /// Per-kernel wall time (native only): every dispatch is submitted and waited for on its
    /// own, so totals are exact but the run is slower. `Gpu::profile` reads them.
    pub profile: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            limits: LimitsPolicy::Adapter,
            allow_f16: true,
            binding_cap: None,
            dry_run: false,
            kernels: KernelPolicy::default(),
            profile: false,
        }
    }
}

/// What the device we got can do; ops consult this rather than wgpu directly.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Capabilities {
    pub adapter_name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub max_storage_binding: u64,
    pub max_buffer_size: u64,
    pub max_workgroup_storage: u32,
    pub max_invocations_per_workgroup: u32,
    pub max_workgroups_per_dimension: u32,
    pub max_storage_buffers_per_stage: u32,
    pub min_uniform_offset_alignment: u32,
}

/// Counters for benchmarks and the memory planner. Bytes are of GPU buffers we created.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuStats {
    pub dispatches: u64,
    pub submits: u64,
    /// Compute passes begun (one per submit that holds dispatches).
    pub passes: u64,
    /// Bind groups created; the other dispatches reused a cached one.
    pub bind_groups: u64,
    /// Bytes written through the queue (tensor uploads and kernel parameters).
    pub bytes_written: u64,
    /// Compute pipelines built over the device's life (not reset by `reset_stats`).
    pub pipelines: u64,
    pub bytes_live: u64,
    pub bytes_pooled: u64,
    pub peak_bytes: u64,
    pub largest_binding: u64,
    /// The largest single buffer created or reused since the last reset.
    pub largest_buffer: u64,
    /// Multiply-adds x 2 of the matmul, conv and attention kernels recorded, counted from
    /// their shapes as they are recorded (elementwise kernels are not counted).
    pub flops: f64,
}

struct GpuInner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    caps: Capabilities,
    pipelines: Mutex<PipelineCache>,
    pool: Arc<BufferPool>,
    batch: Mutex<Batch>,
    staging: StagingRing,
    /// See `GpuStats::flops`.
    flops: Mutex<f64>,
    /// Errors wgpu reported outside any scope; surfaced at the next readback.
    errors: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    /// See `GpuOptions::dry_run`.
    dry_run: bool,
    kernels: Mutex<KernelPolicy>,
}

#[derive(Clone)]
pub struct Gpu {
    inner: Arc<GpuInner>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({} / {})", self.inner.caps.adapter_name, self.inner.caps.backend)
    }
}

fn backends() -> wgpu::Backends {
    if cfg!(target_arch = "wasm32") {
        wgpu::Backends::BROWSER_WEBGPU
    } else {
        // GL is left out: its compute support is too thin for our kernels.
        wgpu::Backends::from_env().unwrap_or(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12)
    }
}

impl Gpu {
    /// Finds an adapter and opens a device. Never panics: a machine without a usable GPU driver
    /// gets `Error::NoAdapter` with a hint of what to install.
    pub async fn new(options: &GpuOptions) -> Result<Gpu> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends();
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| Error::NoAdapter { backends: format!("{:?}: {e}", backends()) })?;
        Self::from_adapter(adapter, options).await
    }

    pub async fn from_adapter(adapter: wgpu::Adapter, options: &GpuOptions) -> Result<Gpu> {
        let info = adapter.get_info();
        let have = adapter.limits();
        let mut limits = wgpu::Limits::default();
        if options.limits == LimitsPolicy::Adapter {
            limits.max_storage_buffer_binding_size = have.max_storage_buffer_binding_size;
            limits.max_buffer_size = have.max_buffer_size;
            limits.max_compute_workgroup_storage_size = have.max_compute_workgroup_storage_size;
            limits.max_storage_buffers_per_shader_stage = have.max_storage_buffers_per_shader_stage;
            limits.max_compute_invocations_per_workgroup = have.max_compute_invocations_per_workgroup;
            limits.max_compute_workgroup_size_x = have.max_compute_workgroup_size_x;
            limits.max_compute_workgroup_size_y = have.max_compute_workgroup_size_y;
        }
        // Never ask above what the adapter has (some downlevel adapters are under the defaults).
        limits.max_storage_buffer_binding_size =
            limits.max_storage_buffer_binding_size.min(have.max_storage_buffer_binding_size);
        limits.max_buffer_size = limits.max_buffer_size.min(have.max_buffer_size);
        limits.max_compute_workgroup_storage_size =
            limits.max_compute_workgroup_storage_size.min(have.max_compute_workgroup_storage_size);
        limits.max_compute_invocations_per_workgroup =
            limits.max_compute_invocations_per_workgroup.min(have.max_compute_invocations_per_workgroup);

        let offered = adapter.features();
        let mut features = wgpu::Features::empty();
        let f16 = options.allow_f16 && offered.contains(wgpu::Features::SHADER_F16);
        if f16 {
            features |= wgpu::Features::SHADER_F16;
        }
        let subgroups = offered.contains(wgpu::Features::SUBGROUP);
        if subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("webdiffusion"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice(e.to_string()))?;

        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("wgpu: {e}");
            lock(&sink).push(e.to_string());
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let lost_sink = lost.clone();
        // `Destroyed` counts too: only our own drop destroys the device on purpose, and then
        // nobody is left to read it; any other destroy (the browser's, a test's) is a loss.
        device.set_device_lost_callback(move |reason, msg| {
            *lock(&lost_sink) = Some(format!("{reason:?}: {msg}"));
        });

        let got = device.limits();
        let caps = Capabilities {
            adapter_name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
            shader_f16: f16,
            subgroups,
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            max_storage_binding: got
                .max_storage_buffer_binding_size
                .min(options.binding_cap.unwrap_or(u64::MAX))
                .max(4),
            max_buffer_size: got.max_buffer_size,
            max_workgroup_storage: got.max_compute_workgroup_storage_size,
            max_invocations_per_workgroup: got.max_compute_invocations_per_workgroup,
            max_workgroups_per_dimension: got.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_stage: got.max_storage_buffers_per_shader_stage,
            min_uniform_offset_alignment: got.min_uniform_buffer_offset_alignment,
        };
        let batch = Batch::new(&device, caps.min_uniform_offset_alignment, options.dry_run, options.profile);
        Ok(Gpu {
            inner: Arc::new(GpuInner {
                device,
                queue,
                caps,
                pipelines: Mutex::new(PipelineCache::default()),
                pool: Arc::default(),
                batch: Mutex::new(batch),
                staging: StagingRing::default(),
                flops: Mutex::new(0.0),
                errors,
                lost,
                dry_run: options.dry_run,
                kernels: Mutex::new(options.kernels),
            }),
        })
    }

    /// Which kernel variants the ops run.
    pub fn kernel_policy(&self) -> KernelPolicy {
        *lock(&self.inner.kernels)
    }

    /// Changes the kernel variants for the ops recorded from now on (pipelines already built
    /// stay cached under their own keys).
    pub fn set_kernel_policy(&self, policy: KernelPolicy) {
        *lock(&self.inner.kernels) = policy;
    }

    /// Runs `f` recording nothing: every pipeline and bind group it needs is built (and
    /// validated), every buffer allocated, no kernel executed. A model's forward passes run so
    /// right after loading have the browser compile the pipelines (and the pool hold the
    /// buffers, the cache their bind groups) before the first generation needs them. What `f`
    /// computes is garbage: only its side effects count.
    pub fn record_only<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        lock(&self.inner.batch).set_dry_run(&self.inner.queue, true);
        let out = f();
        lock(&self.inner.batch).set_dry_run(&self.inner.queue, self.inner.dry_run);
        out
    }

    /// Whether kernels are only counted, not run (`GpuOptions::dry_run`).
    pub fn is_dry_run(&self) -> bool {
        self.inner.dry_run
    }

    pub fn caps(&self) -> &Capabilities {
        &self.inner.caps
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    pub fn stats(&self) -> GpuStats {
        let batch = lock(&self.inner.batch).stats();
        let memory = self.inner.pool.stats();
        GpuStats {
            dispatches: batch.dispatches,
            submits: batch.submits,
            passes: batch.passes,
            bind_groups: batch.bind_groups,
            bytes_written: batch.bytes_written,
            pipelines: lock(&self.inner.pipelines).len() as u64,
            bytes_live: memory.bytes_live,
            bytes_pooled: memory.bytes_pooled,
            peak_bytes: memory.peak_bytes,
            largest_binding: batch.largest_binding,
            largest_buffer: memory.largest_buffer,
            flops: *lock(&self.inner.flops),
        }
    }

    /// Kernels by total time, `(label, dispatches, seconds)`, when profiling is on.
    pub fn profile(&self) -> Option<Vec<(String, u64, f64)>> {
        lock(&self.inner.batch).profile()
    }

    /// Resets the peak (to what is allocated now), the largest binding/buffer, the FLOP and the
    /// dispatch/submit counters (not the live byte count).
    pub fn reset_stats(&self) {
        lock(&self.inner.batch).reset_stats();
        self.inner.pool.reset_peak();
        *lock(&self.inner.flops) = 0.0;
    }

    /// Adds the analytic FLOP count of a kernel about to be recorded.
    pub(crate) fn count_flops(&self, flops: f64) {
        *lock(&self.inner.flops) += flops;
    }

    /// Destroys the device under everything allocated on it, as a driver reset or the browser
    /// reclaiming the GPU does (the fault tests' way to lose a device on purpose).
    pub fn destroy_device(&self) {
        self.inner.device.destroy();
    }

    /// Why the device was lost, if it was.
    pub fn lost_reason(&self) -> Option<String> {
        lock(&self.inner.lost).clone()
    }

    /// Returns an error for anything wgpu reported asynchronously since the last check.
    pub fn check(&self) -> Result<()> {
        if let Some(reason) = lock(&self.inner.lost).clone() {
            return Err(Error::DeviceLost(reason));
        }
        let mut errs = lock(&self.inner.errors);
        if !errs.is_empty() {
            let message = errs.join("; ");
            errs.clear();
            return Err(Error::Validation { context: "a queued GPU command".into(), message });
        }
        Ok(())
    }

    /// Releases pooled (currently unused) buffers back to the driver, and the cached bind
    /// groups, which hold their buffers.
    pub fn trim_pool(&self) {
        lock(&self.inner.batch).clear_bind_groups();
        self.inner.staging.clear();
        self.inner.pool.clear();
    }

    /// A storage buffer of at least `bytes`, reused when possible.
    pub(crate) fn alloc(&self, bytes: u64) -> PooledBuffer {
        self.inner.pool.alloc(&self.inner.device, bytes, false)
    }

    /// A buffer of exactly `bytes` (rounded to 4): for tensors that live long (weights), where
    /// the size-class rounding of `alloc` would waste up to 12.5% for nothing.
    pub(crate) fn alloc_exact(&self, bytes: u64) -> PooledBuffer {
        self.inner.pool.alloc(&self.inner.device, bytes, true)
    }

    /// Records one dispatch of `key` into the open batch. Binding 0 is the uniform `params`,
    /// then `binds` in order.
    pub(crate) fn launch<P: Uniform>(
        &self,
        key: &KernelKey,
        params: &P,
        binds: &[Bind<'_>],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let max = self.caps().max_storage_binding;
        if let Some(b) = binds.iter().find(|b| b.size > max) {
            return Err(Error::BindingTooLarge { what: key.to_string(), needed: b.size, limit: max });
        }
        let inner = &self.inner;
        let layout = LaunchLayout { params: P::fields, params_size: std::mem::size_of::<P>(), storage: binds.len() };
        let kernel = lock(&inner.pipelines).get(&inner.device, inner.caps.shader_f16, key, &layout)?;
        let params = bytemuck::bytes_of(params);
        lock(&inner.batch).record(&inner.device, &inner.queue, &kernel, params, binds, workgroups);
        Ok(())
    }

    pub fn cached_pipelines(&self) -> usize {
        lock(&self.inner.pipelines).len()
    }

    /// The labels (keys) of the pipelines built so far, sorted: which variants a run used.
    pub fn pipeline_labels(&self) -> Vec<String> {
        lock(&self.inner.pipelines).labels()
    }

    /// Submits whatever is recorded. Cheap when nothing is.
    pub fn flush(&self) {
        lock(&self.inner.batch).flush(&self.inner.queue);
    }

    /// Writes bytes into a buffer, in order with the work recorded before (see `Batch::write`).
    pub(crate) fn write(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        lock(&self.inner.batch).write(&self.inner.queue, buffer, offset, bytes);
    }

    /// Copies `size` bytes (a multiple of 4) of `src` back, after everything recorded so far.
    pub(crate) async fn read_buffer(&self, src: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        self.flush();
        let inner = &self.inner;
        super::readback::read_buffer(&inner.device, &inner.queue, &inner.staging, src, size, || self.check()).await
    }

    /// Waits until the GPU has finished everything submitted so far (for timing).
    pub async fn sync(&self) -> Result<()> {
        let probe = self.alloc(4);
        self.read_buffer(probe.buffer(), 4).await.map(|_| ())
    }
}
