//! Command-line front end. Everything here is glue: parse, call the library, print.

mod bench_ops;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use webdiffusion::gpu::{Gpu, GpuOptions, LimitsPolicy};

#[derive(Parser)]
#[command(name = "webdiffusion", version, about = "Stable Diffusion on WebGPU (native CLI)")]
struct Cli {
    /// Limits to request from the device: the adapter's own, or WebGPU's defaults (what most
    /// browsers grant).
    #[arg(long, global = true, value_enum, default_value_t = Limits::Adapter)]
    limits: Limits,
    /// Never use shader-f16 even where the device has it.
    #[arg(long, global = true)]
    no_f16: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Limits {
    Adapter,
    Default,
}

#[derive(Subcommand)]
enum Command {
    /// Print the GPU adapter, backend, features and limits.
    Info,
    /// Check matmul, conv2d and attention on the GPU against the CPU.
    Selftest,
    /// Time the core kernels at SD-like sizes and print GFLOP/s.
    BenchOps(bench_ops::Args),
}

pub fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let options = GpuOptions {
        limits: match cli.limits {
            Limits::Adapter => LimitsPolicy::Adapter,
            Limits::Default => LimitsPolicy::WebDefault,
        },
        allow_f16: !cli.no_f16,
        binding_cap: None,
    };
    let gpu = pollster::block_on(Gpu::new(&options)).context("opening the GPU")?;
    match cli.command {
        Command::Info => info(&gpu),
        Command::Selftest => selftest(&gpu),
        Command::BenchOps(args) => bench_ops::run(&gpu, &args),
    }
}

fn info(gpu: &Gpu) -> Result<()> {
    let c = gpu.caps();
    let mib = |b: u64| format!("{} MiB", b >> 20);
    println!("adapter:                 {}", c.adapter_name);
    println!("backend:                 {}", c.backend);
    println!("device type:             {}", c.device_type);
    println!("driver:                  {}", c.driver);
    println!("shader-f16:              {}", c.shader_f16);
    println!("subgroups:               {} (sizes {}..{})", c.subgroups, c.subgroup_min_size, c.subgroup_max_size);
    println!("max storage binding:     {}", mib(c.max_storage_binding));
    println!("max buffer size:         {}", mib(c.max_buffer_size));
    println!("workgroup storage:       {} bytes", c.max_workgroup_storage);
    println!("invocations / workgroup: {}", c.max_invocations_per_workgroup);
    println!("storage buffers / stage: {}", c.max_storage_buffers_per_stage);
    Ok(())
}

fn selftest(gpu: &Gpu) -> Result<()> {
    let results = pollster::block_on(webdiffusion::selftest::run(gpu))?;
    let mut failed = 0;
    for r in &results {
        println!(
            "{:<28} {:<4} max |err| {:.3e} (tolerance {:.0e})  {}",
            r.name,
            r.dtype,
            r.max_abs_err,
            r.tolerance,
            if r.passed { "ok" } else { "FAILED" }
        );
        failed += !r.passed as usize;
    }
    anyhow::ensure!(failed == 0, "{failed} self-test check(s) failed");
    Ok(())
}
