//! `webdiffusion bench-ops`: kernel baselines (matmul, conv2d, attention) at SD-like sizes.

use std::time::Instant;

use anyhow::Result;
use webdiffusion::gpu::{DType, Gpu, GpuTensor, KernelChoice, KernelPolicy};
use webdiffusion::ops;
use webdiffusion::random::random_values;

#[derive(clap::Args)]
pub struct Args {
    /// Timed repetitions per kernel (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Only the f32 kernels.
    #[arg(long)]
    f32_only: bool,
    /// Only conv2d, at the tiny-model and SD sizes, once per kernel variant (tiled, direct).
    #[arg(long)]
    conv: bool,
    /// With --conv: skip the SD-sized conv (slow on CPU adapters).
    #[arg(long)]
    no_sd: bool,
    /// Only linear layers (transposed weight, dense and q4_0), at U-Net sizes, once per kernel
    /// variant (tiled, direct).
    #[arg(long)]
    linear: bool,
}

/// Linear sizes: (label, rows, in, out) — U-Net attention and feed-forward layers at 32x32.
const LINEAR_SIZES: &[(&str, usize, usize, usize)] = &[
    ("2048x640 -> 640 (attn proj)", 2048, 640, 640),
    ("2048x640 -> 5120 (GEGLU in)", 2048, 640, 5120),
    ("2048x2560 -> 640 (ff out)", 2048, 2560, 640),
];

fn bench_linear(gpu: &Gpu, args: &Args, dtype: DType) -> Result<()> {
    use webdiffusion::quant::{QTensor, QuantFormat};
    for &(label, rows, k, n) in LINEAR_SIZES {
        let x = upload(gpu, 3, &[rows, k], dtype)?;
        let w = upload(gpu, 4, &[n, k], dtype)?;
        let wv: Vec<f32> = random_values(4, n * k).iter().map(|v| v / (k as f32).sqrt()).collect();
        let q = QTensor::from_blocks(
            gpu,
            QuantFormat::Q4_0,
            &webdiffusion::quant::quantize(QuantFormat::Q4_0, &wv)?,
            n,
            k,
        )?;
        let flops = 2.0 * (rows * k * n) as f64;
        let variants = std::env::var("BENCH_MATMUL_VARIANTS").unwrap_or_else(|_| "tiled,direct".into());
        let policy = gpu.kernel_policy();
        for variant in variants.split(',') {
            gpu.set_kernel_policy(KernelPolicy { matmul: KernelChoice::parse(variant)?, ..policy });
            let s = time(gpu, args.repeats, || Ok(ops::linear(&x, &w, None)?))?;
            println!(
                "{:<44} {dtype:>6} {:>10.1} {:>10.2}",
                format!("linear {label} [{variant}]"),
                s * 1e3,
                flops / s / 1e9
            );
            let s = time(gpu, args.repeats, || Ok(ops::matmul_quant(&x, &q, None)?))?;
            println!(
                "{:<44} {dtype:>6} {:>10.1} {:>10.2}",
                format!("q4_0 {label} [{variant}]"),
                s * 1e3,
                flops / s / 1e9
            );
        }
        gpu.set_kernel_policy(policy);
    }
    Ok(())
}

/// conv2d sizes: (label, batch, cin, cout, hw, kernel).
const CONV_SIZES: &[(&str, usize, usize, usize, usize, usize)] = &[
    ("3x3 32->32 16x16 b2", 2, 32, 32, 16, 3),
    ("3x3 32->32 16x16 b64", 64, 32, 32, 16, 3),
    ("3x3 128->128 4x4 b2", 2, 128, 128, 4, 3),
    ("3x3 128->128 4x4 b64", 64, 128, 128, 4, 3),
    ("1x1 64->128 8x8 b2", 2, 64, 128, 8, 1),
    ("3x3 16->16 64x64 b1", 1, 16, 16, 64, 3),
    ("3x3 16->3 64x64 b1", 1, 16, 3, 64, 3),
    ("3x3 320->320 64x64 b1", 1, 320, 320, 64, 3),
];

fn bench_conv(gpu: &Gpu, args: &Args, dtype: DType) -> Result<()> {
    for &(label, n, cin, cout, hw, k) in CONV_SIZES {
        if args.no_sd && cin == 320 {
            continue;
        }
        let x = upload(gpu, 3, &[n, cin, hw, hw], dtype)?;
        let w = upload(gpu, 4, &[cout, cin, k, k], dtype)?;
        let bias = upload(gpu, 5, &[cout], dtype)?;
        let cp = ops::Conv2dParams { stride: 1, padding: k / 2, pad_end: 0 };
        let flops = 2.0 * (n * cout * cin * k * k * hw * hw) as f64;
        let variants =
            std::env::var("BENCH_CONV_VARIANTS").unwrap_or_else(|_| "tiled,direct:8:2,direct:16:1,direct:16:2".into());
        let policy = gpu.kernel_policy();
        for variant in variants.split(',') {
            gpu.set_kernel_policy(KernelPolicy { conv2d: KernelChoice::parse(variant)?, ..policy });
            let s = time(gpu, args.repeats, || Ok(ops::conv2d(&x, &w, Some(&bias), cp)?))?;
            println!(
                "{:<44} {dtype:>6} {:>10.1} {:>10.2}",
                format!("conv2d {label} [{variant}]"),
                s * 1e3,
                flops / s / 1e9
            );
        }
        gpu.set_kernel_policy(policy);
    }
    Ok(())
}

fn upload(gpu: &Gpu, seed: u64, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
    let n = shape.iter().product();
    Ok(GpuTensor::from_f32_as(gpu, &random_values(seed, n), shape, dtype)?)
}

/// Runs `f` once to compile and warm up, then `repeats` times, each waited for; median seconds.
fn time(gpu: &Gpu, repeats: usize, mut f: impl FnMut() -> Result<GpuTensor>) -> Result<f64> {
    let warm = f()?;
    pollster::block_on(gpu.sync())?;
    drop(warm);
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let t0 = Instant::now();
        let out = f()?;
        pollster::block_on(gpu.sync())?;
        times.push(t0.elapsed().as_secs_f64());
        drop(out);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub fn run(gpu: &Gpu, args: &Args) -> Result<()> {
    println!("adapter: {} ({})", gpu.caps().adapter_name, gpu.caps().backend);
    println!("{:<44} {:>6} {:>10} {:>10}", "kernel", "dtype", "ms", "GFLOP/s");
    let mut dtypes = vec![DType::F32];
    if gpu.caps().shader_f16 && !args.f32_only {
        dtypes.push(DType::F16);
    }
    for dtype in dtypes {
        if args.conv {
            bench_conv(gpu, args, dtype)?;
            continue;
        }
        if args.linear {
            bench_linear(gpu, args, dtype)?;
            continue;
        }
        let report = |name: &str, secs: f64, flops: f64| {
            println!("{name:<44} {dtype:>6} {:>10.1} {:>10.2}", secs * 1e3, flops / secs / 1e9);
        };

        let n = 1024;
        let (a, b) = (upload(gpu, 1, &[n, n], dtype)?, upload(gpu, 2, &[n, n], dtype)?);
        let s = time(gpu, args.repeats, || Ok(ops::matmul(&a, &b, None, Default::default())?))?;
        report("matmul 1024x1024x1024", s, 2.0 * (n * n * n) as f64);

        let (c, hw) = (320, 64);
        let x = upload(gpu, 3, &[1, c, hw, hw], dtype)?;
        let w = upload(gpu, 4, &[c, c, 3, 3], dtype)?;
        let bias = upload(gpu, 5, &[c], dtype)?;
        let cp = ops::Conv2dParams { stride: 1, padding: 1, pad_end: 0 };
        let s = time(gpu, args.repeats, || Ok(ops::conv2d(&x, &w, Some(&bias), cp)?))?;
        report("conv2d 3x3 320->320 64x64 (batch 1)", s, 2.0 * (c * c * 9 * hw * hw) as f64);

        let (tokens, heads, d) = (4096, 8, 40);
        let q = upload(gpu, 6, &[1, tokens, heads * d], dtype)?;
        let k = upload(gpu, 7, &[1, tokens, heads * d], dtype)?;
        let v = upload(gpu, 8, &[1, tokens, heads * d], dtype)?;
        let s = time(gpu, args.repeats, || {
            Ok(ops::attention(&q, &k, &v, heads, ops::AttentionLayout::Merged, false, None)?)
        })?;
        report("attention N=4096 d=40 heads=8", s, 4.0 * (tokens * tokens * d * heads) as f64);
    }
    Ok(())
}
