//! `webdiffusion bench`: a real-size architecture with synthetic weights (nothing to download),
//! run stage by stage as a generation runs it — text encoder, U-Net steps with guidance, VAE
//! decode — with time, FLOP rate, dispatches, submits and the runtime's memory accounting.
//! `--candle` adds candle-transformers' U-Net on the CPU with the same weights (bench_candle.rs).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use webdiffusion::gpu::{DType, Gpu, GpuStats, GpuTensor};
use webdiffusion::models::arch;
use webdiffusion::models::clip::ClipTextModel;
use webdiffusion::models::config::{ClipConfig, UNetConfig, VaeConfig};
use webdiffusion::models::loader::LoadOptions;
use webdiffusion::models::unet::UNet;
use webdiffusion::models::vae::Decoder;
use webdiffusion::models::weights::Weights;
use webdiffusion::pipeline::rng::NormalRng;
use webdiffusion::pipeline::vae_tiling::{self, VaeTiling};
use webdiffusion::quant::{QuantPolicy, StoreType};

#[derive(clap::Args)]
pub struct Args {
    /// Architecture: sd15, sd21-base or sd-turbo, or a folder with unet/, vae/ and
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

#[derive(Serialize, Clone, Debug)]
pub struct StageReport {
    pub stage: String,
    /// Median wall time of the runs, each ended by a readback.
    pub ms: f64,
    pub runs: usize,
    pub gflop: f64,
    pub gflops: f64,
    pub dispatches: u64,
    pub submits: u64,
    /// GPU bytes allocated (live + pooled) at the stage's high point, weights included.
    pub peak_bytes: u64,
    pub largest_binding: u64,
    pub largest_buffer: u64,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub arch: String,
    pub quant: String,
    pub compute: String,
    pub size: usize,
    pub steps: usize,
    pub guidance: f32,
    pub adapter: String,
    pub max_storage_binding: u64,
    pub max_buffer_size: u64,
    /// GPU bytes of each component's weights.
    pub weights: Vec<(String, u64)>,
    pub load_s: f64,
    pub text_encoder_released: bool,
    pub vae_tiling: Option<VaeTiling>,
    pub stages: Vec<StageReport>,
    /// The highest allocation of the run (loading included).
    pub peak_bytes: u64,
    pub candle: Option<super::bench_candle::CandleReport>,
    /// Kernels were counted, not run: the times are meaningless.
    pub dry_run: bool,
}

/// Times `f` `runs` times (each must end in a readback), with the counters of the last run.
fn stage(gpu: &Gpu, name: &str, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<StageReport> {
    let mut times = Vec::new();
    let mut s = GpuStats::default();
    for _ in 0..runs.max(1) {
        gpu.reset_stats();
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        s = gpu.stats();
    }
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];
    log::info!("{name}: {ms:.0} ms");
    Ok(StageReport {
        stage: name.into(),
        ms,
        runs: times.len(),
        gflop: s.flops / 1e9,
        gflops: s.flops / 1e9 / (ms / 1e3),
        dispatches: s.dispatches,
        submits: s.submits,
        peak_bytes: s.peak_bytes,
        largest_binding: s.largest_binding,
        largest_buffer: s.largest_buffer,
    })
}

pub fn run(gpu: &Gpu, a: &Args) -> Result<()> {
    let report = bench(gpu, a)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// The three configs of `--arch`: a published architecture or a folder of configs.
fn configs(name: &str) -> Result<[String; 3]> {
    if let Ok(arch) = arch::by_name(name) {
        return Ok([arch.text_encoder, arch.unet, arch.vae].map(String::from));
    }
    let dir = std::path::Path::new(name);
    if !dir.is_dir() {
        bail!("--arch {name}: neither a published architecture (sd15, sd21-base, sd-turbo) nor a folder");
    }
    let read = |c: &str| {
        let p = dir.join(c).join("config.json");
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    Ok([read("text_encoder")?, read("unet")?, read("vae")?])
}

pub fn bench(gpu: &Gpu, a: &Args) -> Result<Report> {
    let [te_json, un_json, vae_json] = configs(&a.arch)?;
    let store = StoreType::parse(&a.quant)?;
    let dtype = if gpu.caps().shader_f16 && !a.f32 { DType::F16 } else { DType::F32 };
    if a.candle && (store != StoreType::F32 || dtype != DType::F32) {
        bail!("--candle compares f32 weights and activations: add --quant f32 --f32");
    }
    let guidance = a.guidance.unwrap_or(if a.arch == "sd-turbo" { 0.0 } else { 7.5 });
    let te_cfg = ClipConfig::from_json(&te_json)?;
    let un_cfg = UNetConfig::from_json(&un_json)?;
    let vae_cfg = VaeConfig::from_json(&vae_json)?;
    let f = vae_cfg.downscale() * (1 << (un_cfg.block_out_channels.len() - 1));
    if a.size == 0 || a.size % f != 0 {
        bail!("--size must be a positive multiple of {f}");
    }
    let opts = LoadOptions { quant: Some(Arc::new(QuantPolicy::standard(store))), ..LoadOptions::new(dtype) };
    let synth = |component: &str| opts.apply(Weights::synthetic(gpu, dtype, 0, false).fast_quantization(), component);

    // Load as the app does: everything up front (components in package order).
    let t0 = Instant::now();
    gpu.reset_stats();
    let mut weights = Vec::new();
    let mut loaded = |name: &str, before: u64| weights.push((name.to_string(), gpu.stats().bytes_live - before));
    let b = gpu.stats().bytes_live;
    let decoder = Decoder::load(&vae_cfg, &synth("vae")).context("VAE decoder")?;
    loaded("vae_decoder", b);
    let b = gpu.stats().bytes_live;
    let mut text_encoder = Some(ClipTextModel::load(te_cfg.clone(), &synth("text_encoder")).context("text encoder")?);
    loaded("text_encoder", b);
    let b = gpu.stats().bytes_live;
    let unet_weights = synth("unet");
    let unet = UNet::load(un_cfg.clone(), &unet_weights).context("U-Net")?;
    loaded("unet", b);
    pollster::block_on(gpu.sync())?;
    let load_s = t0.elapsed().as_secs_f64();
    let mut peak = gpu.stats().peak_bytes;

    let cfg = guidance > 1.0;
    let batch = if cfg { 2 } else { 1 };
    let tokens = te_cfg.max_position_embeddings;
    // A fixed prompt-like id sequence (BOS, words, EOS padding) per row.
    let ids: Vec<u32> = (0..batch * tokens)
        .map(|i| match i % tokens {
            0 => 49406,
            j if j < 12 => ((j * 7919) % 40000 + 400) as u32,
            _ => 49407,
        })
        .collect();
    let mut stages = Vec::new();
    let mut context = None;
    let te = text_encoder.as_ref().context("text encoder")?;
    stages.push(stage(gpu, "text_encoder", a.repeats, || {
        let h = te.forward(&ids, batch, 0)?;
        pollster::block_on(h.to_bytes())?;
        context = Some(h);
        Ok(())
    })?);
    let context = context.context("no context")?;
    let released = !a.keep_text_encoder;
    if released {
        text_encoder = None;
        gpu.trim_pool();
    }
    drop(text_encoder);

    let (lh, lw) = (a.size / vae_cfg.downscale(), a.size / vae_cfg.downscale());
    let n = un_cfg.in_channels * lh * lw;
    let mut x = NormalRng::new(7).normals(n);
    let mut unet_runs = Vec::new();
    // The first step's input and output, for --candle.
    let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
    for i in 0..a.steps.max(1) {
        let t = 999.0 - (i as f32) * (999.0 / a.steps.max(1) as f32);
        unet_runs.push(stage(gpu, "unet_step", 1, || {
            let input = if cfg { [x.clone(), x.clone()].concat() } else { x.clone() };
            let up = GpuTensor::from_f32_as(gpu, &input, &[batch, un_cfg.in_channels, lh, lw], dtype)?;
            let out = pollster::block_on(unet.forward(&up, t, &context, None)?.to_vec_f32())?;
            if first.is_none() && a.candle {
                first = Some((input, out.clone()));
            }
            let eps: Vec<f32> = if cfg {
                let (u, c) = out.split_at(n);
                u.iter().zip(c).map(|(&u, &c)| u + guidance * (c - u)).collect()
            } else {
                out
            };
            // A small Euler-like move keeps the latents finite and the work real.
            x.iter_mut().zip(&eps).for_each(|(x, e)| *x -= 0.05 * e);
            Ok(())
        })?);
    }
    unet_runs.sort_by(|p, q| p.ms.total_cmp(&q.ms));
    let mut unet_stage = unet_runs[unet_runs.len() / 2].clone();
    unet_stage.runs = unet_runs.len();
    unet_stage.peak_bytes = unet_runs.iter().map(|r| r.peak_bytes).max().unwrap_or(0);
    stages.push(unet_stage);

    gpu.trim_pool();
    let s = gpu.stats();
    let act_budget =
        if a.budget_mb == 0 { 512 << 20 } else { (a.budget_mb * 1_000_000).saturating_sub(s.bytes_live + s.bytes_pooled) };
    let limit = gpu.caps().max_storage_binding.min(gpu.caps().max_buffer_size);
    let tiling = vae_tiling::plan(&vae_cfg, lh, lw, dtype, act_budget, limit)?;
    let z: Vec<f32> = x.iter().map(|v| v / vae_cfg.scaling_factor as f32).collect();
    stages.push(stage(gpu, "vae_decode", a.repeats, || {
        let px = pollster::block_on(vae_tiling::decode(&decoder, gpu, dtype, &z, [un_cfg.in_channels, lh, lw], tiling))?;
        if !gpu.is_dry_run() && px.data.iter().any(|v| !v.is_finite()) {
            bail!("the VAE produced non-finite pixels");
        }
        Ok(())
    })?);
    peak = peak.max(stages.iter().map(|s| s.peak_bytes).max().unwrap_or(0));

    let candle = match first {
        Some((input, ours)) => {
            let ctx = pollster::block_on(context.to_vec_f32())?;
            let (ms, theirs) = super::bench_candle::candle_unet(
                &un_cfg,
                &unet_weights.accesses(),
                (&input, [batch, un_cfg.in_channels, lh, lw]),
                (&ctx, [batch, tokens, un_cfg.cross_attention_dim]),
                999.0,
            )?;
            Some(super::bench_candle::report(unet_runs[0].ms, &ours, ms, &theirs))
        }
        None => None,
    };
    Ok(Report {
        arch: a.arch.clone(),
        quant: a.quant.clone(),
        compute: dtype.to_string(),
        size: a.size,
        steps: a.steps,
        guidance,
        adapter: format!("{} ({})", gpu.caps().adapter_name, gpu.caps().backend),
        max_storage_binding: gpu.caps().max_storage_binding,
        max_buffer_size: gpu.caps().max_buffer_size,
        weights,
        load_s,
        text_encoder_released: released,
        vae_tiling: tiling,
        stages,
        peak_bytes: peak,
        candle,
        dry_run: gpu.is_dry_run(),
    })
}

fn mb(b: u64) -> String {
    format!("{:.1}", b as f64 / 1e6)
}

fn print_table(r: &Report) {
    if r.dry_run {
        println!("ACCOUNTING RUN (--dry): kernels counted, not executed; times are not measurements");
    }
    println!(
        "{} {} ({} activations), {}x{}, {} step(s), guidance {} on {}",
        r.arch, r.quant, r.compute, r.size, r.size, r.steps, r.guidance, r.adapter
    );
    println!("limits: storage binding {} MB, buffer {} MB", mb(r.max_storage_binding), mb(r.max_buffer_size));
    let w: Vec<String> = r.weights.iter().map(|(n, b)| format!("{n} {} MB", mb(*b))).collect();
    println!("weights on the GPU: {} (loaded in {:.1} s)", w.join(", "), r.load_s);
    println!(
        "text encoder {}; VAE decode {}",
        if r.text_encoder_released { "released after encoding" } else { "kept" },
        match r.vae_tiling {
            Some(t) => format!("tiled ({} latent px, overlap {})", t.tile, t.overlap),
            None => "whole".into(),
        }
    );
    println!(
        "{:<14} {:>10} {:>9} {:>8} {:>10} {:>8} {:>10} {:>12} {:>11}",
        "stage", "ms", "GFLOP", "GFLOP/s", "dispatches", "submits", "peak MB", "binding MB", "buffer MB"
    );
    for s in &r.stages {
        println!(
            "{:<14} {:>10.0} {:>9.1} {:>8.2} {:>10} {:>8} {:>10} {:>12} {:>11}",
            s.stage,
            s.ms,
            s.gflop,
            s.gflops,
            s.dispatches,
            s.submits,
            mb(s.peak_bytes),
            mb(s.largest_binding),
            mb(s.largest_buffer)
        );
    }
    println!("peak GPU memory (runtime accounting, loading included): {} MB", mb(r.peak_bytes));
    if let Some(c) = &r.candle {
        println!(
            "U-Net step, same weights: ours {:.0} ms on {}, candle-transformers {:.0} ms on the CPU ({} threads): ours / candle = {:.2}",
            c.ours_ms, r.adapter, c.candle_ms, c.threads, c.ratio
        );
    }
}
