//! `webdiffusion bench`: the real-size benchmark of `webdiffusion::bench` (synthetic weights,
//! stage by stage) as a command, plus `--candle`: candle-transformers' U-Net on the CPU with the
//! same weights and input (bench_candle.rs).

use anyhow::{bail, Context, Result};
use serde::Serialize;
use webdiffusion::bench::{self, BenchOptions, Report};
use webdiffusion::gpu::Gpu;
use webdiffusion::models::arch;

use super::bench_candle::{self, CandleReport};

#[derive(clap::Args)]
pub struct Args {
    /// Architecture: sd15, sd21-base, sd-turbo, sdxl-turbo or sdxl, or a folder with unet/, vae/ and
    /// text_encoder/config.json (diffusers layout; weights are never read).
    #[arg(long, default_value = "sd15")]
    pub arch: String,
    /// Weight storage under the standard policy: f32, f16, q8_0 or q4_0.
    #[arg(long, default_value = "q4_0")]
    pub quant: String,
    /// Image side in pixels (square).
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// U-Net steps.
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
    /// Guidance scale; above 1 runs the U-Net on the [uncond, cond] batch of 2. Default: 7.5, or
    /// 0 for sd-turbo (which is run without guidance).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Timed repetitions of the text encoder and the VAE (the median is reported).
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Activations in f32 even where the device has shader-f16.
    #[arg(long)]
    pub f32: bool,
    /// GPU memory the run should stay within (MB, 10^6 bytes): the VAE decode is tiled to fit
    /// what the weights leave. 0: no overall budget (512 MiB for the VAE's activations).
    #[arg(long, default_value_t = 0)]
    pub budget_mb: u64,
    /// Keep the text encoder's weights after encoding (by default they are released).
    #[arg(long)]
    pub keep_text_encoder: bool,
    /// The text encoders and the U-Net take turns: the U-Net's weights are uploaded after the
    /// encoders ran and were released (`generate --low-memory`).
    #[arg(long)]
    pub low_memory: bool,
    /// Stop after the U-Net: time the text encoder and the U-Net steps only.
    #[arg(long)]
    pub no_decode: bool,
    /// Also run img2img's VAE encode of a --size image (tiled within the budget as needed).
    #[arg(long)]
    pub encode: bool,
    /// Accounting run: build and record everything, execute no kernel. Memory, bindings,
    /// dispatches, submits and FLOPs are those of a real run; times are not.
    #[arg(long)]
    pub dry: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also time candle-transformers' U-Net on the CPU with the same (f32) weights and print the
    /// ratio (needs --quant f32).
    #[arg(long)]
    pub candle: bool,
}

#[derive(Serialize)]
struct CliReport<'a> {
    #[serde(flatten)]
    report: &'a Report,
    candle: Option<&'a CandleReport>,
}

/// The three configs of `--arch`: a published architecture or a folder of configs.
fn options(name: &str) -> Result<BenchOptions> {
    if arch::by_name(name).is_ok() {
        return Ok(BenchOptions::arch(name)?);
    }
    let dir = std::path::Path::new(name);
    if !dir.is_dir() {
        let names: Vec<&str> = arch::ARCHS.iter().map(|a| a.name).collect();
        bail!("--arch {name}: neither a published architecture ({}) nor a folder", names.join(", "));
    }
    let read = |c: &str| {
        let p = dir.join(c).join("config.json");
        webdiffusion::models::loader::read_file(&p, 16 << 20)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .with_context(|| format!("reading {}", p.display()))
    };
    Ok(BenchOptions {
        name: name.into(),
        text_encoder: read("text_encoder")?,
        unet: read("unet")?,
        vae: read("vae")?,
        text_encoder_2: if dir.join("text_encoder_2/config.json").is_file() {
            read("text_encoder_2")?
        } else {
            String::new()
        },
        ..Default::default()
    })
}

pub fn run(gpu: &Gpu, a: &Args) -> Result<()> {
    let mut o = options(&a.arch)?;
    if a.candle && (a.quant != "f32" || !a.f32) {
        bail!("--candle compares f32 weights and activations: add --quant f32 --f32");
    }
    o.quant = a.quant.clone();
    o.size = a.size;
    o.steps = a.steps;
    o.guidance = a.guidance.unwrap_or(o.guidance);
    o.repeats = a.repeats;
    o.f16 = !a.f32;
    o.budget = a.budget_mb * 1_000_000;
    o.release_text_encoder = !a.keep_text_encoder;
    o.low_memory = a.low_memory;
    if a.low_memory && a.keep_text_encoder {
        bail!("--low-memory releases the text encoders before the U-Net loads: drop --keep-text-encoder");
    }
    o.decode = !a.no_decode;
    o.encode = a.encode;
    o.capture = a.candle;
    let report = pollster::block_on(bench::run(gpu, &o))?;
    let candle = match &report.captured {
        Some(c) => {
            let (ms, theirs) = bench_candle::candle_unet(
                &webdiffusion::models::config::UNetConfig::from_json(&o.unet)?,
                &c.unet_tensors,
                (&c.input, c.input_shape),
                (&c.context, c.context_shape),
                c.timestep as f64,
            )?;
            Some(bench_candle::report(report.stages[1].ms, &c.output, ms, &theirs))
        }
        None => None,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&CliReport { report: &report, candle: candle.as_ref() })?);
    } else {
        print_table(&report, candle.as_ref());
    }
    Ok(())
}

fn mb(b: u64) -> String {
    format!("{:.1}", b as f64 / 1e6)
}

fn print_table(r: &Report, candle: Option<&CandleReport>) {
    if r.dry_run {
        println!("ACCOUNTING RUN (--dry): kernels counted, not executed; times are not measurements");
    }
    println!(
        "{} {} ({} activations, VAE {}), {}x{}, {} step(s), guidance {} on {}",
        r.arch, r.quant, r.compute, r.vae_compute, r.size, r.size, r.steps, r.guidance, r.adapter
    );
    println!("limits: storage binding {} MB, buffer {} MB", mb(r.max_storage_binding), mb(r.max_buffer_size));
    let w: Vec<String> = r.weights.iter().map(|(n, b)| format!("{n} {} MB", mb(*b))).collect();
    println!("weights on the GPU: {} (loaded in {:.1} s)", w.join(", "), r.load_s);
    println!(
        "text encoder {}; VAE decode {}",
        match (r.low_memory, r.text_encoder_released) {
            (true, _) => "released after encoding, then the U-Net loaded (--low-memory)",
            (false, true) => "released after encoding",
            (false, false) => "kept",
        },
        match (r.decoded, r.vae_tiling) {
            (false, _) => "not run (--no-decode)".into(),
            (true, Some(t)) => format!("tiled ({} latent px, overlap {})", t.tile, t.overlap),
            (true, None) => "whole".into(),
        }
    );
    if let Some(t) = r.vae_encode_tiling {
        println!(
            "VAE encode (img2img) {}",
            t.map_or("whole".into(), |t| format!("tiled ({} latent px, overlap {})", t.tile, t.overlap))
        );
    }
    println!(
        "{:<14} {:>10} {:>9} {:>8} {:>10} {:>8} {:>7} {:>11} {:>10} {:>10} {:>10} {:>12} {:>11}",
        "stage",
        "ms",
        "GFLOP",
        "GFLOP/s",
        "dispatches",
        "submits",
        "passes",
        "bind groups",
        "pipelines",
        "upload MB",
        "peak MB",
        "binding MB",
        "buffer MB"
    );
    for s in &r.stages {
        println!(
            "{:<14} {:>10.0} {:>9.1} {:>8.2} {:>10} {:>8} {:>7} {:>11} {:>10} {:>10.2} {:>10} {:>12} {:>11}",
            s.stage,
            s.ms,
            s.gflop,
            s.gflops,
            s.dispatches,
            s.submits,
            s.passes,
            s.bind_groups,
            s.pipelines_created,
            s.bytes_written as f64 / 1e6,
            mb(s.peak_bytes),
            mb(s.largest_binding),
            mb(s.largest_buffer)
        );
    }
    if let Some(u) = r.stages.iter().find(|s| s.stage == "unet_step") {
        if let Some(c) = &u.cold {
            println!(
                "unet_step: the row is the median of {} warm steps; the first (cold) step took {:.0} ms, created {} \
                 bind groups and {} pipelines; every step: {}",
                u.runs - 1,
                c.ms,
                c.bind_groups,
                c.pipelines_created,
                u.step_ms.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(", ")
            );
        }
    }
    println!("peak GPU memory (runtime accounting, loading included): {} MB", mb(r.peak_bytes));
    if let Some(c) = candle {
        println!(
            "U-Net step, same weights and input: ours {:.0} ms on {}, candle-transformers {:.0} ms on the CPU ({} threads): \
             ours / candle = {:.2}; outputs agree to cosine {:.6} (max |diff| {:.2e})",
            c.ours_ms, r.adapter, c.candle_ms, c.threads, c.ratio, c.cosine, c.max_abs_diff
        );
    }
}
