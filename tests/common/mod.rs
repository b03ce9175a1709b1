//! The shared GPU-vs-CPU harness: every op test runs its kernel on the GPU (Mesa lavapipe in
//! CI) and the same computation in candle on the CPU, on identical random inputs, in f32 and in
//! f16 where the device has shader-f16, and compares against the per-op tolerance table below.

#![allow(dead_code)]

use std::sync::{OnceLock, RwLock};

use candle_core::{Device, Tensor};
use webdiffusion::gpu::{DType, GemmTile, Gpu, GpuOptions, GpuTensor, KernelChoice, KernelPolicy};
use webdiffusion::random::random_values;

/// Reference attention on the CPU in candle, [B, H, N, D] layout: softmax(q k^T * scale) v.
pub fn cpu_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> candle_core::Result<Tensor> {
    let d = q.dim(3)?;
    let s = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let s = if causal {
        let (nq, nk) = (s.dim(2)?, s.dim(3)?);
        let mask: Vec<f32> = (0..nq * nk).map(|x| if x % nk > x / nk { f32::NEG_INFINITY } else { 0.0 }).collect();
        s.broadcast_add(&Tensor::from_vec(mask, (nq, nk), &Device::Cpu)?)?
    } else {
        s
    };
    let m = s.max_keepdim(3)?;
    let e = s.broadcast_sub(&m)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(3)?)?;
    p.matmul(v)
}

/// The tests' device options: the library's defaults (kernel variants by adapter). The op tests
/// run every variant themselves (`each_kernel`).
pub fn options() -> GpuOptions {
    GpuOptions::default()
}

/// Every variant of matmul and conv2d: the tiled kernel real GPUs run at each of its tiles, and
/// the direct kernel with its block chosen by size and with every block size it takes (matmul:
/// columns × rows per invocation; conv2d: output channels × pixels).
pub fn kernel_choices() -> Vec<KernelChoice> {
    let mut v: Vec<KernelChoice> = GemmTile::ALL.into_iter().map(KernelChoice::Tile).collect();
    v.push(KernelChoice::Direct { block: (0, 0) });
    for a in [4, 8, 16] {
        for b in [1, 2, 4] {
            v.push(KernelChoice::Direct { block: (a, b) });
        }
    }
    v
}

/// The kernel policies an op is checked under: each of its variants, the tiled kernels with f16
/// math at each tile, the reductions with and without subgroups (ops without variants: the
/// default). `op` as in `tolerance`.
pub fn policies(op: &str) -> Vec<KernelPolicy> {
    let base = KernelPolicy::default();
    let f16 = KernelPolicy { f16_math: true, ..base };
    let tiles = || GemmTile::ALL.into_iter().map(KernelChoice::Tile);
    match op {
        "matmul" | "linear" => kernel_choices()
            .into_iter()
            .map(|c| KernelPolicy { matmul: c, ..base })
            .chain(tiles().map(|c| KernelPolicy { matmul: c, ..f16 }))
            .collect(),
        "conv2d" => kernel_choices()
            .into_iter()
            .map(|c| KernelPolicy { conv2d: c, ..base })
            .chain(tiles().map(|c| KernelPolicy { conv2d: c, ..f16 }))
            .collect(),
        // Reductions through subgroups (the default where the device has them, as lavapipe
        // does) and through workgroup memory.
        "group_norm" | "layer_norm" | "softmax" => vec![base, KernelPolicy { subgroups: false, ..base }],
        _ => vec![base],
    }
}

/// Which of an op's kernel policies a case runs under. On a fresh machine lavapipe compiles each
/// pipeline with LLVM at its first dispatch (~0.4 s a direct kernel, ~1 s a tiled one), and a
/// case's shape picks its own pipelines (vector widths, epilogue), so sweeping every policy over
/// every shape compiled ~400 pipelines in the op tests alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sweep {
    /// Every policy (`policies`): the cases that carry the variants (aligned, odd tails, each
    /// epilogue), so each variant meets aligned and ragged shapes.
    Every,
    /// The direct kernel by size (what CPU adapters run) and the smallest tile: cases that add a
    /// shape (edge handling both kernel families share), not a variant.
    Shape,
}

/// `policies(op)` under `sweep`.
pub fn policies_in(op: &str, sweep: Sweep) -> Vec<KernelPolicy> {
    let all = policies(op);
    match (sweep, op) {
        (Sweep::Shape, "matmul" | "linear" | "conv2d") => {
            // `policies` names no `Auto`: the direct kernel by size is what CPU adapters run.
            let shape = [KernelChoice::Tile(GemmTile::T64x64), KernelChoice::Direct { block: (0, 0) }];
            let choice = |p: &KernelPolicy| if op == "conv2d" { p.conv2d } else { p.matmul };
            all.into_iter().filter(|p| !p.f16_math && shape.contains(&choice(p))).collect()
        }
        _ => all,
    }
}

/// The shared device's kernel policy is global to it: a test that changes it holds this for
/// writing, every other GPU check for reading.
static POLICY: RwLock<()> = RwLock::new(());

/// Runs `f` under each of `op`'s kernel policies on the shared device (`f` gets the policy's
/// label), then puts the default back.
pub fn each_kernel(op: &str, f: impl FnMut(&str)) {
    each_kernel_in(op, Sweep::Every, f)
}

/// `each_kernel` over the policies of `sweep`.
pub fn each_kernel_in(op: &str, sweep: Sweep, mut f: impl FnMut(&str)) {
    let variants = policies_in(op, sweep);
    if variants.len() == 1 {
        let _shared = POLICY.read().unwrap_or_else(|e| e.into_inner());
        return f("");
    }
    let _exclusive = POLICY.write().unwrap_or_else(|e| e.into_inner());
    for p in variants {
        gpu().set_kernel_policy(p);
        let choice = match op {
            "conv2d" => format!("conv2d={}", p.conv2d),
            "matmul" | "linear" => format!("matmul={}", p.matmul),
            _ => format!("subgroups={}", if p.subgroups { "on" } else { "off" }),
        };
        let label = if p.f16_math { format!("{choice},f16-math=on") } else { choice };
        f(&label);
    }
    gpu().set_kernel_policy(KernelPolicy::default());
}

/// One device per test binary. No adapter is a test failure with the library's own message
/// (what to install), never a silent skip.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| match pollster::block_on(Gpu::new(&options())) {
        Ok(g) => g,
        Err(e) => panic!("GPU tests need a GPU adapter: {e}"),
    })
}

/// `tolerance`, or for the tiled kernels' f16 math (the kernel label says `f16-math=on`) on f16
/// tensors its own bound: products rounded to f16 and summed 4 at a time in f16 err by up to
/// ~1e-2 where the f32 math on the same inputs stays within the output's rounding.
pub fn kernel_tolerance(op: &str, dtype: DType, kernel: &str) -> Tol {
    if dtype == DType::F16 && kernel.contains("f16-math=on") {
        return Tol { atol: F16_MATH_ATOL, rtol: F16_MATH_RTOL };
    }
    tolerance(op, dtype)
}

pub const F16_MATH_ATOL: f32 = 2e-2;
pub const F16_MATH_RTOL: f32 = 4e-3;

/// `|gpu - cpu| <= atol + rtol * |cpu|`, elementwise.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub atol: f32,
    pub rtol: f32,
}

/// Per-op tolerances. f32 bounds cover summation-order differences; f16 bounds cover the f16
/// rounding of the output (inputs are rounded to f16 for both sides, kernels accumulate in f32).
pub fn tolerance(op: &str, dtype: DType) -> Tol {
    let t = |atol, rtol| Tol { atol, rtol };
    match (op, dtype) {
        ("matmul" | "linear" | "conv2d", DType::F32) => t(1e-4, 1e-5),
        ("matmul" | "linear" | "conv2d", _) => t(2e-3, 2e-3),
        ("group_norm" | "layer_norm", DType::F32) => t(5e-6, 1e-5),
        ("group_norm" | "layer_norm", _) => t(2e-3, 2e-3),
        ("softmax", DType::F32) => t(1e-6, 1e-5),
        ("softmax", _) => t(1e-4, 2e-3),
        ("attention", DType::F32) => t(2e-6, 2e-5),
        ("attention", _) => t(2e-3, 4e-3),
        ("silu" | "gelu" | "gelu_quick" | "geglu" | "affine" | "soft_clamp", DType::F32) => t(1e-5, 1e-5),
        ("silu" | "gelu" | "gelu_quick" | "geglu" | "affine" | "soft_clamp", _) => t(1e-3, 2e-3),
        ("relu", _) => t(0.0, 0.0),
        ("add" | "mul", DType::F32) => t(0.0, 1e-7),
        ("add" | "mul", _) => t(1e-4, 1e-3),
        ("timestep_embedding", DType::F32) => t(1e-6, 0.0),
        ("timestep_embedding", _) => t(1e-3, 1e-3),
        // Pure data movement must be exact.
        ("permute" | "upsample" | "concat" | "embedding", _) => t(0.0, 0.0),
        // A dequantized weight (f16 scale times a small integer) is exact in f32; in f16 it is
        // rounded once.
        ("embedding_quant", DType::F32) => t(0.0, 0.0),
        ("embedding_quant", _) => t(0.0, 1e-3),
        _ => panic!("no tolerance for {op}"),
    }
}

/// A random input: uniform in [offset - scale, offset + scale).
#[derive(Clone, Debug)]
pub struct Input {
    pub shape: Vec<usize>,
    pub scale: f32,
    pub offset: f32,
}

pub fn inp(shape: &[usize]) -> Input {
    Input { shape: shape.to_vec(), scale: 1.0, offset: 0.0 }
}

pub fn inp_scaled(shape: &[usize], scale: f32, offset: f32) -> Input {
    Input { shape: shape.to_vec(), scale, offset }
}

pub fn dtypes() -> Vec<DType> {
    if gpu().caps().shader_f16 {
        vec![DType::F32, DType::F16]
    } else {
        vec![DType::F32]
    }
}

fn round_to(dtype: DType, v: Vec<f32>) -> Vec<f32> {
    match dtype {
        DType::F16 => v.into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect(),
        _ => v,
    }
}

pub fn to_vec(t: &GpuTensor) -> Vec<f32> {
    pollster::block_on(t.to_vec_f32()).expect("readback")
}

/// Compares and returns the max abs error; panics with the worst element when out of bounds.
pub fn compare(label: &str, tol: Tol, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{label}: {} values, expected {}", got.len(), want.len());
    let mut max_err = 0f32;
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let bound = tol.atol + tol.rtol * w.abs();
        if !(err <= bound) && worst.is_none_or(|(_, e)| err > e) {
            worst = Some((i, err));
        }
        max_err = max_err.max(if err.is_nan() { f32::INFINITY } else { err });
    }
    if let Some((i, err)) = worst {
        panic!("{label}: element {i}: gpu {} vs cpu {} (|err| {err:e} > {tol:?})", got[i], want[i]);
    }
    max_err
}

/// Runs `gpu_fn` and `cpu_fn` on the same random inputs for every dtype the device has and
/// checks them against `tolerance(op, dtype)`, the GPU side under each of the op's kernel
/// policies (the inputs and the CPU reference are made once per dtype: under the test profile
/// our own code and the reference are the slow part). Returns the max abs error per dtype.
pub fn check_op<G, C>(op: &str, case: &str, inputs: &[Input], gpu_fn: G, cpu_fn: C) -> Vec<(DType, f32)>
where
    G: Fn(&[GpuTensor]) -> webdiffusion::Result<GpuTensor>,
    C: Fn(&[Tensor]) -> candle_core::Result<Tensor>,
{
    check_op_in(Sweep::Every, op, case, inputs, gpu_fn, cpu_fn)
}

/// `check_op` under the policies of `sweep`.
pub fn check_op_in<G, C>(
    sweep: Sweep,
    op: &str,
    case: &str,
    inputs: &[Input],
    gpu_fn: G,
    cpu_fn: C,
) -> Vec<(DType, f32)>
where
    G: Fn(&[GpuTensor]) -> webdiffusion::Result<GpuTensor>,
    C: Fn(&[Tensor]) -> candle_core::Result<Tensor>,
{
    let mut errs = Vec::new();
    for dtype in dtypes() {
        let mut gpu_in = Vec::new();
        let mut cpu_in = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let n = input.shape.iter().product();
            let seed = case.bytes().fold(i as u64 * 7919 + 1, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
            let raw = random_values(seed, n).into_iter().map(|x| x * input.scale + input.offset).collect();
            let vals = round_to(dtype, raw);
            gpu_in.push(GpuTensor::from_f32_as(gpu(), &vals, &input.shape, dtype).expect("upload"));
            cpu_in.push(Tensor::from_vec(vals, input.shape.as_slice(), &Device::Cpu).expect("cpu tensor"));
        }
        let want = cpu_fn(&cpu_in).unwrap_or_else(|e| panic!("{op} {case} cpu: {e}"));
        let dims = want.dims().to_vec();
        let want: Vec<f32> = want.flatten_all().and_then(|t| t.to_vec1()).expect("cpu values");
        each_kernel_in(op, sweep, |kernel| {
            let label = format!("{op} {case} {dtype} {kernel}");
            let out = gpu_fn(&gpu_in).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(out.shape(), dims.as_slice(), "{label}: output shape");
            let err = compare(&label, kernel_tolerance(op, dtype, kernel), &to_vec(&out), &want);
            eprintln!("{label}: max |err| {err:.3e}");
            errs.push((dtype, err));
        });
    }
    errs
}

/// A model's files with some replaced (an edited config, a poisoned weight file): reads come
/// from `files` first, then from `base`.
pub struct Overlay<S> {
    pub base: S,
    pub files: std::collections::HashMap<String, Vec<u8>>,
}

impl<S: webdiffusion::models::loader::FileSource> Overlay<S> {
    pub fn new(base: S) -> Self {
        Overlay { base, files: Default::default() }
    }

    /// Replaces the JSON file `path` with `edit` applied to it.
    pub fn edit_json(mut self, path: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Self {
        let bytes = self.base.read(path).unwrap().unwrap_or_else(|| panic!("{path} is missing"));
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        edit(&mut v);
        self.files.insert(path.into(), serde_json::to_vec(&v).unwrap());
        self
    }
}

impl<S: webdiffusion::models::loader::FileSource> webdiffusion::models::loader::FileSource for Overlay<S> {
    fn read(&self, path: &str) -> webdiffusion::Result<Option<Vec<u8>>> {
        match self.files.get(path) {
            Some(b) => Ok(Some(b.clone())),
            None => self.base.read(path),
        }
    }
    fn read_range(&self, path: &str, start: u64, len: u64) -> webdiffusion::Result<Option<Vec<u8>>> {
        match self.files.get(path) {
            Some(b) => {
                let range =
                    usize::try_from(start).ok().and_then(|s| Some(s..s.checked_add(usize::try_from(len).ok()?)?));
                Ok(Some(range.and_then(|r| b.get(r)).expect("a range inside the replaced file").to_vec()))
            }
            None => self.base.read_range(path, start, len),
        }
    }
    fn describe(&self) -> String {
        format!("{} (edited)", self.base.describe())
    }
}
