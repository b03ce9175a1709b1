//! The tiled GEMM core that matmul and conv2d share (`shaders/common/gemm_tile.wgsl`): which tile
//! a launch uses, how deep its K staging is, whether it multiplies in f16, and the defines that
//! compile it.

use crate::gpu::{Capabilities, DType, GemmTile, GpuTensor, KernelChoice, KernelKey};

/// A launch's tile shape, as compiled into the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TileShape {
    pub tile: GemmTile,
    /// K per staging step: 16, or 8 where two buffers of 16 do not fit the workgroup storage
    /// (tiles stage in the tensors' dtype).
    pub tk: usize,
    pub f16_math: bool,
    /// Tiles staged in f16: f16 tensors with plain weights, or f16 math.
    pub f16_stage: bool,
}

/// Fewer workgroups than this leave most of a GPU idle: the tile shrinks (down to 64×64) until a
/// launch has at least this many. SD's big convs keep 128×128 (a 320-channel conv at 64×64
/// latents: 96 workgroups); the text encoder's 77-row matmuls drop to 64×64.
const MIN_WORKGROUPS: usize = 64;

/// The tile a device class starts from. Discrete GPUs have the registers for 8×8 per thread;
/// integrated ones and browsers (whose adapters do not say what they are) get 8×4, which keeps
/// more workgroups in flight per core; CPU adapters run the direct kernels unless told otherwise,
/// and then the smallest tile.
fn device_tile(caps: &Capabilities) -> GemmTile {
    match caps.device_type.as_str() {
        "DiscreteGpu" => GemmTile::T128x128,
        "Cpu" => GemmTile::T64x64,
        _ => GemmTile::T128x64,
    }
}

/// Workgroup bytes of two K buffers of `tk` for `tile` with `elem`-byte staging.
fn staging_bytes(tile: GemmTile, tk: usize, elem: usize) -> usize {
    let (tm, tn) = tile.dims();
    2 * tk * (tm + tn) * elem
}

/// The shape a launch of `rows` x `cols` outputs (per batch entry, `batch` entries) uses under
/// `choice` on `caps`.
#[allow(clippy::too_many_arguments)]
pub(super) fn plan(
    caps: &Capabilities,
    choice: KernelChoice,
    f16_math: bool,
    dtype: DType,
    quant: bool,
    rows: usize,
    cols: usize,
    batch: usize,
) -> TileShape {
    let f16_math = f16_math && dtype == DType::F16;
    let f16_stage = f16_math || (dtype == DType::F16 && !quant);
    let elem = if f16_stage { 2 } else { 4 };
    let limit = caps.max_workgroup_storage as usize;
    let fits = |t: GemmTile| staging_bytes(t, 8, elem) <= limit;
    let tile = choice.tile().unwrap_or_else(|| {
        let groups = |t: GemmTile| {
            let (tm, tn) = t.dims();
            rows.div_ceil(tm) * cols.div_ceil(tn) * batch
        };
        let mut t = device_tile(caps);
        while t != GemmTile::T64x64 && (groups(t) < MIN_WORKGROUPS || !fits(t)) {
            t = GemmTile::ALL[GemmTile::ALL.iter().position(|&g| g == t).unwrap_or(1) - 1];
        }
        t
    });
    // 64×64 needs TK 16 (its loads are one vec4 per thread); WebGPU guarantees the 16 KiB it takes.
    let tk = if tile == GemmTile::T64x64 || staging_bytes(tile, 16, elem) <= limit { 16 } else { 8 };
    TileShape { tile, tk, f16_math, f16_stage }
}

/// The planned shape for an op on `t`'s device under its kernel policy for that op.
pub(super) fn plan_for(
    t: &GpuTensor,
    choice: KernelChoice,
    quant: bool,
    rows: usize,
    cols: usize,
    batch: usize,
) -> TileShape {
    let gpu = t.gpu();
    plan(gpu.caps(), choice, gpu.kernel_policy().f16_math, t.dtype(), quant, rows, cols, batch)
}

impl TileShape {
    /// The defines `gemm_tile.wgsl` and its includers read: tile, per-thread block, K depth,
    /// f16 math, and the vec4 loads per thread of the A (rows) and B (columns) staging.
    pub fn define(self, key: KernelKey) -> KernelKey {
        let (tm, tn) = self.tile.dims();
        let (rm, rn) = self.tile.per_thread();
        let slots = |n: usize| (n * self.tk / 4).div_ceil(256) as u32;
        key.with("TM", tm as u32)
            .with("TN", tn as u32)
            .with("TK", self.tk as u32)
            .with("RM", rm as u32)
            .with("RN", rn as u32)
            .with("LA", slots(tm))
            .with("LB", slots(tn))
            .with("F16MATH", self.f16_math as u32)
            .with("F16STAGE", self.f16_stage as u32)
    }

    /// Workgroups for `rows` x `cols` outputs and `batch` entries.
    pub fn groups(self, rows: usize, cols: usize, batch: usize) -> [u32; 3] {
        let (tm, tn) = self.tile.dims();
        [cols.div_ceil(tn) as u32, rows.div_ceil(tm) as u32, batch as u32]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(device_type: &str, storage: u32) -> Capabilities {
        Capabilities {
            adapter_name: String::new(),
            backend: String::new(),
            device_type: device_type.into(),
            driver: String::new(),
            shader_f16: true,
            subgroups: false,
            subgroup_min_size: 0,
            subgroup_max_size: 0,
            max_storage_binding: 1 << 27,
            max_buffer_size: 1 << 28,
            max_workgroup_storage: storage,
            max_invocations_per_workgroup: 256,
            max_workgroups_per_dimension: 65535,
            max_storage_buffers_per_stage: 8,
            min_uniform_offset_alignment: 256,
        }
    }

    #[test]
    fn tiles_follow_device_class_shape_and_storage() {
        let auto = KernelChoice::Tiled;
        // SD 1.5's 320-channel conv at 64x64 latents, batch 2 (classifier-free guidance).
        let big = |c: &Capabilities, d| plan(c, auto, true, d, false, 320, 4096, 2);
        let discrete = caps("DiscreteGpu", 49152);
        assert_eq!(
            big(&discrete, DType::F32),
            TileShape { tile: GemmTile::T128x128, tk: 16, f16_math: false, f16_stage: false }
        );
        assert_eq!(
            big(&discrete, DType::F16),
            TileShape { tile: GemmTile::T128x128, tk: 16, f16_math: true, f16_stage: true }
        );
        assert_eq!(plan(&discrete, auto, false, DType::F16, false, 320, 4096, 2).tk, 16);
        // Dequantized weights stage in f32.
        assert!(!plan(&discrete, auto, false, DType::F16, true, 320, 4096, 2).f16_stage);
        // WebGPU's default 16 KiB: 128x128 in f32 stages K 8 deep, in f16 16 deep.
        let browser = caps("Other", 16384);
        assert_eq!(plan(&browser, KernelChoice::Tile(GemmTile::T128x128), true, DType::F32, false, 320, 4096, 2).tk, 8);
        assert_eq!(
            big(&browser, DType::F32),
            TileShape { tile: GemmTile::T128x64, tk: 8, f16_math: false, f16_stage: false }
        );
        assert_eq!(plan(&browser, auto, false, DType::F16, false, 320, 4096, 2).tk, 16);
        assert_eq!(big(&caps("IntegratedGpu", 32768), DType::F32).tile, GemmTile::T128x64);
        // The text encoder's 77 rows: too few workgroups for big tiles.
        assert_eq!(plan(&discrete, auto, true, DType::F32, false, 154, 768, 1).tile, GemmTile::T64x64);
        // The policy's f16 switch, and f32 tensors never multiply in f16.
        assert!(!plan(&discrete, auto, false, DType::F16, false, 320, 4096, 2).f16_math);
        // Every tile forced on a device with WebGPU's minimum storage still fits it.
        for t in GemmTile::ALL {
            for dtype in [DType::F32, DType::F16] {
                let s = plan(&browser, KernelChoice::Tile(t), true, dtype, true, 320, 4096, 2);
                let elem = if s.f16_stage { 2 } else { 4 };
                assert!(staging_bytes(t, s.tk, elem) <= 16384, "{s:?}");
            }
        }
    }
}
