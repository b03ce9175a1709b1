//! `webdiffusion bench-ops`: kernel baselines (matmul, conv2d, attention) at SD-like sizes.

use std::time::Instant;

use anyhow::Result;
use webdiffusion::gpu::{DType, Gpu, GpuTensor};
use webdiffusion::ops;
use webdiffusion::selftest::random_values;

#[derive(clap::Args)]
pub struct Args {
    /// Timed repetitions per kernel (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Only the f32 kernels.
    #[arg(long)]
    f32_only: bool,
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
