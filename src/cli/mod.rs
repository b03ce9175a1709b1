//! Command-line front end. Everything here is glue: parse, call the library, print.

mod adherence;
mod bench;
mod bench_candle;
mod bench_ops;
mod convert;
mod fuzz;
mod generate;
mod http;
mod quality;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use webdiffusion::gpu::{DType, Gpu, GpuOptions, KernelChoice, KernelPolicy, LimitsPolicy};
use webdiffusion::models::loader::{self, DirSource};
use webdiffusion::pipeline::conditioning;
use webdiffusion::pipeline::prompt::PromptSyntax;

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
    /// Kernel variants, e.g. `matmul=tiled:128x64,conv2d=direct:8:2,f16-math=on` (each op
    /// auto|tiled[:64x64|128x64|128x128]|direct[:A[:B]]; default auto: direct kernels on CPU
    /// adapters, the tile by device class elsewhere; f16-math: multiply f16 tensors in f16,
    /// accumulating in f32; subgroups=on|off: the norms' and softmax's reductions). The
    /// variables WEBDIFFUSION_MATMUL and WEBDIFFUSION_CONV2D set one op each when the flag
    /// leaves it out.
    #[arg(long, global = true, default_value = "")]
    kernels: String,
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
    /// A real-size architecture with random weights, stage by stage: time, GFLOP/s, dispatches,
    /// submits and GPU memory (try --limits default).
    Bench(bench::Args),
    /// Convert a diffusers model into a CDN package (manifest.json + shards of <= 64 MiB).
    Convert(convert::Args),
    /// Mutation-fuzz every parser of untrusted input (safetensors headers, manifests, configs,
    /// tokenizer files, PNG), seeded with the fixtures; exits non-zero on any crash.
    Fuzz(fuzz::Args),
    /// Measure how far quantized networks drift from f32 (cosine, max error).
    QuantQuality(quality::QualityArgs),
    /// Package sizes of the published architectures under each quantization policy.
    PackageSizes(quality::SizesArgs),
    /// Generate an image (txt2img, or img2img with --init-image).
    Generate(Box<generate::Args>),
    /// Print a prompt's CLIP token ids as JSON (77 per chunk), tokenized as the model's
    /// tokenizer/ says, and its token count as A1111 shows it (`34/75`) on stderr.
    Tokenize {
        /// A diffusers model folder.
        #[arg(long)]
        model: PathBuf,
        /// a1111 (weights, BREAK, 75-token chunks) or diffusers (literal, cut at 77).
        #[arg(long, default_value = "a1111")]
        prompt_syntax: String,
        prompt: String,
    },
    /// The demo model's prompt adherence through our pipeline (colour and position accuracy).
    Adherence(adherence::Args),
    /// Run a fixture's networks and compare with its diffusers reference.safetensors.
    Parity {
        #[arg(long)]
        model: PathBuf,
        /// Compute in f16 (the device must have shader-f16).
        #[arg(long)]
        f16: bool,
        /// Print every output with its values as JSON.
        #[arg(long)]
        json: bool,
    },
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
        dry_run: matches!(&cli.command, Command::Bench(a) if a.dry),
        kernels: kernel_policy(&cli.kernels)?,
        // Per-kernel times in `bench` (WEBDIFFUSION_PROFILE=1).
        profile: std::env::var_os("WEBDIFFUSION_PROFILE").is_some_and(|v| v != "0"),
    };
    // Tokenizing needs no GPU; a machine without one can still do it.
    if let Command::Tokenize { model, prompt, prompt_syntax } = &cli.command {
        return tokenize(model, prompt, PromptSyntax::parse(prompt_syntax).context("--prompt-syntax")?);
    }
    quiet_display_probe();
    let gpu = pollster::block_on(Gpu::new(&options)).context("opening the GPU")?;
    match cli.command {
        Command::Info => info(&gpu),
        Command::Selftest => selftest(&gpu),
        Command::BenchOps(args) => bench_ops::run(&gpu, &args),
        Command::Bench(args) => bench::run(&gpu, &args),
        Command::Parity { model, f16, json } => parity(&gpu, &model, f16, json),
        Command::Generate(args) => generate::run(&gpu, &args),
        Command::Adherence(args) => adherence::run(&gpu, &args),
        Command::Convert(args) => convert::run(&gpu, &args),
        Command::Fuzz(args) => fuzz::run(&gpu, &args),
        Command::QuantQuality(args) => quality::quality(&gpu, &args),
        Command::PackageSizes(args) => quality::sizes(&gpu, &args),
        Command::Tokenize { .. } => Ok(()),
    }
}

/// Opening a Vulkan instance probes for a Wayland display, and with no `XDG_RUNTIME_DIR` (any
/// headless machine) libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set" twice;
/// users read those as failures. We draw nothing, so an empty runtime folder makes the probe
/// fail quietly.
/// `--kernels`, with the environment filling in what it leaves out.
fn kernel_policy(flag: &str) -> Result<KernelPolicy> {
    let mut policy = KernelPolicy::default();
    for (var, op) in [("WEBDIFFUSION_MATMUL", &mut policy.matmul), ("WEBDIFFUSION_CONV2D", &mut policy.conv2d)] {
        if let Ok(v) = std::env::var(var) {
            *op = KernelChoice::parse(&v).with_context(|| format!("the variable {var}"))?;
        }
    }
    policy.with(flag).context("--kernels")
}

fn quiet_display_probe() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: called before the GPU (or anything else) starts a thread.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
}

fn tokenize(model: &Path, prompt: &str, syntax: PromptSyntax) -> Result<()> {
    let tok =
        loader::tokenizer(&DirSource(model.to_path_buf())).with_context(|| format!("loading {}", model.display()))?;
    let t = conditioning::tokenize(&tok, prompt, syntax)?;
    if t.dropped > 0 {
        let total = t.count + t.dropped + 2;
        eprintln!("warning: the prompt has {total} tokens; {} were dropped to fit {}", t.dropped, tok.max_len);
    }
    eprintln!("{}/{} tokens in {} chunk(s)", t.count, t.target(), t.chunks.len());
    let ids: Vec<u32> = t.chunks.iter().flat_map(|c| c.ids.iter().copied()).collect();
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

fn parity(gpu: &Gpu, model: &Path, f16: bool, json: bool) -> Result<()> {
    let dtype = if f16 { DType::F16 } else { DType::F32 };
    let opts = loader::LoadOptions::new(dtype);
    let outputs = pollster::block_on(webdiffusion::models::parity::run(&DirSource(model.to_path_buf()), gpu, &opts))?;
    if json {
        println!("{}", serde_json::to_string(&outputs)?);
    } else {
        for o in &outputs {
            println!("{:<32} {dtype} max |err| {:.3e}  (max |ref| {:.3})", o.name, o.max_abs_err, o.max_abs_ref);
        }
    }
    Ok(())
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
