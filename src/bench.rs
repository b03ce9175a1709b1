//! The real-size benchmark shared by `webdiffusion bench` and `www/bench.html`: an architecture
//! with synthetic weights (nothing to download) run stage by stage as a generation runs it —
//! text encoder, U-Net steps with guidance, VAE decode — with wall time, FLOP rate, dispatches,
//! submits and the runtime's memory accounting per stage.

use std::sync::Arc;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, GpuStats, GpuTensor};
use crate::models::clip::{ClipTextModel, Hidden};
use crate::models::config::{ClipConfig, UNetConfig, VaeConfig};
use crate::models::loader::LoadOptions;
use crate::models::unet::{Added, UNet};
use crate::models::vae::Decoder;
use crate::models::weights::{Access, Rounding, Weights};
use crate::ops;
use crate::pipeline::rng::NormalRng;
use crate::pipeline::vae_tiling::{self, VaeTiling};
use crate::quant::{QuantPolicy, StoreType};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Name shown in the report (the architecture or config folder).
    pub name: String,
    /// The diffusers configs: text encoder, U-Net, VAE (`config.json` texts).
    pub text_encoder: String,
    pub unet: String,
    pub vae: String,
    /// SDXL's `text_encoder_2` config (empty: none).
    pub text_encoder_2: String,
    /// Weight storage under the standard policy: f32, f16, q8_0 or q4_0.
    pub quant: String,
    /// Square image side in pixels.
    pub size: usize,
    pub steps: usize,
    /// Above 1: the U-Net runs the [uncond, cond] batch of 2.
    pub guidance: f32,
    /// Timed repetitions of the text encoder and the VAE (median reported).
    pub repeats: usize,
    /// f16 activations where the device has shader-f16.
    pub f16: bool,
    /// Whole-run GPU budget in bytes: the VAE decode is tiled to fit what the weights leave.
    /// 0: none (512 MiB for the VAE's activations).
    pub budget: u64,
    pub release_text_encoder: bool,
    /// The text encoders and the U-Net take turns (`pipeline::sequential`): the U-Net's weights
    /// are uploaded only after the encoders have run and been released.
    pub low_memory: bool,
    /// Run the VAE decode. Off, a run times the text encoder and the U-Net only: the decode is
    /// the same work for every architecture sharing SD's VAE at one size and tiling.
    pub decode: bool,
    /// Also run img2img's VAE encode of a `size` x `size` image (tiled as the budget needs).
    pub encode: bool,
    /// Keep the first U-Net step's input, context and output (for comparing with another
    /// implementation).
    pub capture: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            name: String::new(),
            text_encoder: String::new(),
            unet: String::new(),
            vae: String::new(),
            text_encoder_2: String::new(),
            quant: "q4_0".into(),
            size: 512,
            steps: 1,
            guidance: 7.5,
            repeats: 1,
            f16: true,
            budget: 0,
            release_text_encoder: true,
            low_memory: false,
            decode: true,
            encode: false,
            capture: false,
        }
    }
}

impl BenchOptions {
    /// A published architecture (`models::arch::ARCHS`); the turbo models run unguided.
    pub fn arch(name: &str) -> Result<BenchOptions> {
        let a = crate::models::arch::by_name(name)?;
        Ok(BenchOptions {
            name: name.into(),
            text_encoder: a.text_encoder.into(),
            unet: a.unet.into(),
            vae: a.vae.into(),
            text_encoder_2: a.text_encoder_2.unwrap_or_default().into(),
            guidance: if name.ends_with("turbo") { 0.0 } else { 7.5 },
            ..Default::default()
        })
    }
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
    /// Compute passes begun (one per submit that records dispatches).
    pub passes: u64,
    /// Bind groups created; the other dispatches reused cached ones.
    pub bind_groups: u64,
    /// Compute pipelines built during the stage (zero once the kernels are warm).
    pub pipelines_created: u64,
    /// Bytes written through the queue: uploads and kernel parameters.
    pub bytes_written: u64,
    /// The U-Net: the first (cold) step apart, with what it created; `ms` and the counters are
    /// then the warm steps' median. Every step's time, in order.
    pub cold: Option<ColdStep>,
    pub step_ms: Vec<f64>,
    /// GPU bytes allocated (live + pooled) at the stage's high point, weights included.
    pub peak_bytes: u64,
    pub largest_binding: u64,
    pub largest_buffer: u64,
}

/// The first U-Net step of a run: it builds the pipelines and bind groups the next ones reuse.
#[derive(Serialize, Clone, Debug)]
pub struct ColdStep {
    pub ms: f64,
    pub bind_groups: u64,
    pub pipelines_created: u64,
}

/// The first U-Net step, kept with `capture`.
#[derive(Clone, Debug, Default)]
pub struct Captured {
    pub input: Vec<f32>,
    pub input_shape: [usize; 4],
    pub context: Vec<f32>,
    pub context_shape: [usize; 3],
    pub output: Vec<f32>,
    pub timestep: f32,
    /// The U-Net tensors as loaded (names, shapes, roles): with `synthetic_values` they rebuild
    /// the same weights elsewhere.
    pub unet_tensors: Vec<Access>,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub arch: String,
    pub quant: String,
    pub compute: String,
    /// The VAE's activations: `compute`, or f32 where its config says `force_upcast`.
    pub vae_compute: String,
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
    /// The text encoders and the U-Net took turns (the U-Net loaded after encoding).
    pub low_memory: bool,
    pub vae_tiling: Option<VaeTiling>,
    /// The img2img encode's tiling, when it ran (`encode`): `Some(None)` whole.
    pub vae_encode_tiling: Option<Option<VaeTiling>>,
    /// False when the run stopped after the U-Net (`decode: false`).
    pub decoded: bool,
    pub stages: Vec<StageReport>,
    /// The highest allocation of the run (loading included).
    pub peak_bytes: u64,
    /// Kernels were counted, not run (`GpuOptions::dry_run`): the times are meaningless.
    pub dry_run: bool,
    #[serde(skip)]
    pub captured: Option<Captured>,
}

/// Milliseconds from an arbitrary origin.
fn now_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static T0: OnceLock<std::time::Instant> = OnceLock::new();
        T0.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
    }
}

/// `pipelines_before`: `GpuStats::pipelines` when the stage began.
fn stage_report(name: &str, times: &mut [f64], s: GpuStats, pipelines_before: u64) -> StageReport {
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];
    log::info!("{name}: {ms:.0} ms");
    StageReport {
        stage: name.into(),
        ms,
        runs: times.len(),
        gflop: s.flops / 1e9,
        gflops: s.flops / 1e9 / (ms / 1e3),
        dispatches: s.dispatches,
        submits: s.submits,
        passes: s.passes,
        bind_groups: s.bind_groups,
        pipelines_created: s.pipelines - pipelines_before,
        bytes_written: s.bytes_written,
        cold: None,
        step_ms: Vec::new(),
        peak_bytes: s.peak_bytes,
        largest_binding: s.largest_binding,
        largest_buffer: s.largest_buffer,
    }
}

/// The architecture built with synthetic weights, as the app loads a model: everything up front,
/// components in package order.
struct Loaded<'g> {
    dtype: DType,
    te_cfg: ClipConfig,
    un_cfg: UNetConfig,
    vae_cfg: VaeConfig,
    decoder: Decoder,
    text_encoder: Option<ClipTextModel>,
    text_encoder_2: Option<ClipTextModel>,
    /// `None` until loaded (after the text encoders with `low_memory`).
    unet: Option<UNet>,
    unet_weights: Option<Weights<'g>>,
    /// GPU bytes each component's weights took.
    weights: Vec<(String, u64)>,
    load_s: f64,
}

async fn load<'g>(gpu: &'g Gpu, o: &BenchOptions, opts: &LoadOptions) -> Result<Loaded<'g>> {
    let dtype = opts.dtype;
    let te_cfg = ClipConfig::from_json(&o.text_encoder)?;
    let un_cfg = UNetConfig::from_json(&o.unet)?;
    let vae_cfg = VaeConfig::from_json(&o.vae)?;
    let f = vae_cfg.downscale() * (1 << (un_cfg.block_out_channels.len() - 1));
    if o.size == 0 || o.size % f != 0 {
        return Err(Error::Request(format!("the size must be a positive multiple of {f}")));
    }
    let synth = |component: &str| opts.apply(Weights::synthetic(gpu, dtype, 0), component);
    let t0 = now_ms();
    gpu.reset_stats();
    let mut weights = Vec::new();
    let mut took = |name: &str, before: u64| weights.push((name.to_string(), gpu.stats().bytes_live - before));
    let b = gpu.stats().bytes_live;
    // As the app loads it: in f32 where the config says force_upcast (loader::vae).
    let vae_dtype = vae_cfg.compute_dtype(dtype);
    let decoder = Decoder::load(&vae_cfg, &opts.apply(Weights::synthetic(gpu, vae_dtype, 0), "vae"))?;
    took("vae_decoder", b);
    let b = gpu.stats().bytes_live;
    let text_encoder = Some(ClipTextModel::load(te_cfg.clone(), &synth("text_encoder"))?);
    took("text_encoder", b);
    let text_encoder_2 = if o.text_encoder_2.is_empty() {
        None
    } else {
        let b = gpu.stats().bytes_live;
        let te = ClipTextModel::load(ClipConfig::from_json(&o.text_encoder_2)?, &synth("text_encoder_2"))?;
        took("text_encoder_2", b);
        Some(te)
    };
    gpu.sync().await?;
    let load_s = (now_ms() - t0) / 1e3;
    let mut m = Loaded {
        dtype,
        te_cfg,
        un_cfg,
        vae_cfg,
        decoder,
        text_encoder,
        text_encoder_2,
        unet: None,
        unet_weights: None,
        weights,
        load_s,
    };
    if !o.low_memory {
        load_unet(gpu, &mut m, opts).await?;
    }
    Ok(m)
}

/// Uploads the U-Net's (synthetic) weights, counted into the load time.
async fn load_unet<'g>(gpu: &'g Gpu, m: &mut Loaded<'g>, opts: &LoadOptions) -> Result<()> {
    let t0 = now_ms();
    let b = gpu.stats().bytes_live;
    let w = opts.apply(Weights::synthetic(gpu, m.dtype, 0), "unet");
    m.unet = Some(UNet::load(m.un_cfg.clone(), &w)?);
    m.unet_weights = Some(w);
    m.weights.push(("unet".into(), gpu.stats().bytes_live - b));
    gpu.sync().await?;
    m.load_s += (now_ms() - t0) / 1e3;
    Ok(())
}

pub async fn run(gpu: &Gpu, o: &BenchOptions) -> Result<Report> {
    let store = StoreType::parse(&o.quant)?;
    let dtype = if gpu.caps().shader_f16 && o.f16 { DType::F16 } else { DType::F32 };
    let opts = LoadOptions {
        quant: Some(Arc::new(QuantPolicy::standard(store))),
        rounding: Rounding::Nearest,
        ..LoadOptions::new(dtype)
    };
    let mut m = load(gpu, o, &opts).await?;
    let mut peak = gpu.stats().peak_bytes;
    let mut stages = Vec::new();

    let (context, added) = time_text_encoder(gpu, o, &m, &mut stages).await?;
    // Its buffers go back to the pool either way, as in a generation; released, the pool is
    // trimmed so the U-Net and VAE run without them counted.
    m.text_encoder = None;
    m.text_encoder_2 = None;
    if o.release_text_encoder || o.low_memory {
        gpu.trim_pool();
    }
    if m.unet.is_none() {
        load_unet(gpu, &mut m, &opts).await?;
        peak = peak.max(gpu.stats().peak_bytes);
    }
    let (x, captured) = time_unet(gpu, o, &m, (&context, added.as_ref()), &mut stages).await?;
    peak = peak.max(stages.iter().map(|s| s.peak_bytes).max().unwrap_or(0));
    let head = |stages, captured| report_head(gpu, o, dtype, m.weights.clone(), m.load_s, stages, captured);
    if !o.decode {
        return Ok(Report { decoded: false, peak_bytes: peak, ..head(stages, captured) });
    }
    let tiling = time_decode(gpu, o, &m, &x, &mut stages).await?;
    let encode_tiling = if o.encode { Some(time_encode(gpu, o, &m, &opts, &mut stages).await?) } else { None };
    peak = peak.max(stages.iter().map(|s| s.peak_bytes).max().unwrap_or(0));
    Ok(Report { vae_tiling: tiling, vae_encode_tiling: encode_tiling, peak_bytes: peak, ..head(stages, captured) })
}

/// img2img's VAE encode of a `size`² image beside the loaded model (its encoder's weights
/// loaded now), planned within the same budget as the decode.
async fn time_encode(
    gpu: &Gpu,
    o: &BenchOptions,
    m: &Loaded<'_>,
    opts: &LoadOptions,
    stages: &mut Vec<StageReport>,
) -> Result<Option<VaeTiling>> {
    let vae_dtype = m.vae_cfg.compute_dtype(m.dtype);
    let encoder =
        crate::models::vae::Encoder::load(&m.vae_cfg, &opts.apply(Weights::synthetic(gpu, vae_dtype, 0), "vae"))?;
    gpu.trim_pool();
    let s = gpu.stats();
    let act_budget = if o.budget == 0 { 512 << 20 } else { o.budget.saturating_sub(s.bytes_live + s.bytes_pooled) };
    let limit = gpu.caps().max_storage_binding.min(gpu.caps().max_buffer_size);
    let tiling = vae_tiling::plan_encode(&m.vae_cfg, o.size, o.size, vae_dtype, act_budget, limit)?;
    let px: Vec<f32> = (0..3 * o.size * o.size).map(|i| ((i % 255) as f32 / 127.0) - 1.0).collect();
    let f = m.vae_cfg.downscale();
    let (mut times, mut st) = (Vec::new(), GpuStats::default());
    let pipelines = gpu.stats().pipelines;
    for _ in 0..o.repeats.max(1) {
        gpu.reset_stats();
        let t = now_ms();
        let (mean, _) = vae_tiling::encode(&encoder, gpu, vae_dtype, f, &px, [3, o.size, o.size], tiling).await?;
        times.push(now_ms() - t);
        st = gpu.stats();
        if !gpu.is_dry_run() && mean.iter().any(|v| !v.is_finite()) {
            return Err(Error::Request("the VAE encoder produced non-finite latents".into()));
        }
    }
    stages.push(stage_report("vae_encode", &mut times, st, pipelines));
    Ok(tiling)
}

/// Rows of the guided batch: [uncond, cond] above guidance 1.
fn batch_of(o: &BenchOptions) -> usize {
    if o.guidance > 1.0 {
        2
    } else {
        1
    }
}

/// The text encoder's median over `repeats` on a fixed prompt-like id sequence; its output is
/// the U-Net's context. SDXL: both encoders' penultimate states, concatenated, and the second's
/// pooled embedding with the time ids as the added conditioning.
async fn time_text_encoder(
    gpu: &Gpu,
    o: &BenchOptions,
    m: &Loaded<'_>,
    stages: &mut Vec<StageReport>,
) -> Result<(GpuTensor, Option<Added>)> {
    let (batch, tokens) = (batch_of(o), m.te_cfg.max_position_embeddings);
    // BOS, words, EOS padding, per row.
    let ids: Vec<u32> = (0..batch * tokens)
        .map(|i| match i % tokens {
            0 => 49406,
            j if j < 12 => ((j * 7919) % 40000 + 400) as u32,
            _ => 49407,
        })
        .map(|id: u32| id.min(m.te_cfg.vocab_size as u32 - 1))
        .collect();
    let te = m.text_encoder.as_ref().ok_or_else(|| Error::Request("no text encoder".into()))?;
    let (mut times, mut s, mut context) = (Vec::new(), GpuStats::default(), None);
    let pipelines = gpu.stats().pipelines;
    for _ in 0..o.repeats.max(1) {
        gpu.reset_stats();
        let t = now_ms();
        let c = match &m.text_encoder_2 {
            None => (te.forward(&ids, batch, 0)?, None),
            Some(te2) => {
                let penultimate = Hidden::Penultimate { skip: 0 };
                let a = te.encode(&ids, batch, penultimate, None)?;
                let b = te2.encode(&ids, batch, penultimate, Some(49407))?;
                let pooled = b.pooled.ok_or_else(|| Error::Request("text_encoder_2 has no projection".into()))?;
                let time_ids = crate::pipeline::text::time_ids(o.size, o.size).repeat(batch);
                (ops::concat(&[&a.hidden, &b.hidden], 2)?, Some(Added { text_embeds: pooled, time_ids }))
            }
        };
        c.0.to_bytes().await?;
        times.push(now_ms() - t);
        s = gpu.stats();
        context = Some(c);
    }
    stages.push(stage_report("text_encoder", &mut times, s, pipelines));
    context.ok_or_else(|| Error::Request("no context".into()))
}

/// `steps` U-Net steps (the median one reported, with the peak of all); returns the final
/// latents and, with `capture`, the first step's tensors.
async fn time_unet(
    gpu: &Gpu,
    o: &BenchOptions,
    m: &Loaded<'_>,
    (context, added): (&GpuTensor, Option<&Added>),
    stages: &mut Vec<StageReport>,
) -> Result<(Vec<f32>, Option<Captured>)> {
    let (cfg, batch) = (o.guidance > 1.0, batch_of(o));
    let (lh, lw) = (o.size / m.vae_cfg.downscale(), o.size / m.vae_cfg.downscale());
    // Latents have the VAE's channels; an inpainting U-Net also takes the mask and the masked
    // image's latents (9 channels in all), stand-ins here.
    let (c, unet_in) = (m.vae_cfg.latent_channels, m.un_cfg.in_channels);
    let n = c * lh * lw;
    let extra = vec![0.5f32; unet_in.saturating_sub(c) * lh * lw];
    let mut x = NormalRng::new(7).normals(n);
    let mut runs: Vec<StageReport> = Vec::new();
    let mut captured = None;
    for i in 0..o.steps.max(1) {
        let t = 999.0 - (i as f32) * (999.0 / o.steps.max(1) as f32);
        gpu.reset_stats();
        let pipelines = gpu.stats().pipelines;
        let t0 = now_ms();
        let row = [&x[..], &extra[..]].concat();
        let input = if cfg { [row.clone(), row].concat() } else { row };
        let up = GpuTensor::from_f32_as(gpu, &input, &[batch, unet_in, lh, lw], m.dtype)?;
        let unet = m.unet.as_ref().ok_or_else(|| Error::Request("the U-Net is not loaded".into()))?;
        let out = unet.forward_with(&up, t, context, None, added)?.to_vec_f32().await?;
        let mut times = vec![now_ms() - t0];
        runs.push(stage_report("unet_step", &mut times, gpu.stats(), pipelines));
        let eps: Vec<f32> = if cfg {
            let (u, cd) = out.split_at(n);
            u.iter().zip(cd).map(|(&u, &cd)| u + o.guidance * (cd - u)).collect()
        } else {
            out.clone()
        };
        if o.capture && captured.is_none() {
            captured = Some(Captured {
                input,
                input_shape: [batch, unet_in, lh, lw],
                context: context.to_vec_f32().await?,
                context_shape: [batch, m.te_cfg.max_position_embeddings, m.un_cfg.cross_attention_dim],
                output: out,
                timestep: t,
                unet_tensors: m.unet_weights.as_ref().map(Weights::accesses).unwrap_or_default(),
            });
        }
        // A small Euler-like move keeps the latents finite and the work real.
        x.iter_mut().zip(&eps).for_each(|(x, e)| *x -= 0.05 * e);
    }
    let peak_unet = runs.iter().map(|r| r.peak_bytes).max().unwrap_or(0);
    let step_ms: Vec<f64> = runs.iter().map(|r| r.ms).collect();
    // The first step builds pipelines and bind groups: with more than one, it is reported
    // apart and the median is of the warm steps.
    let first = runs[0].clone();
    let mut warm = if runs.len() > 1 { runs.split_off(1) } else { runs };
    warm.sort_by(|p, q| p.ms.total_cmp(&q.ms));
    let mut unet_stage = warm[warm.len() / 2].clone();
    unet_stage.runs = step_ms.len();
    unet_stage.peak_bytes = peak_unet;
    if step_ms.len() > 1 {
        unet_stage.cold =
            Some(ColdStep { ms: first.ms, bind_groups: first.bind_groups, pipelines_created: first.pipelines_created });
    }
    unet_stage.step_ms = step_ms;
    stages.push(unet_stage);
    Ok((x, captured))
}

/// The planned VAE decode of the latents `x` (tiled when the budget needs it: the plan is
/// `Some`), median over `repeats`.
async fn time_decode(
    gpu: &Gpu,
    o: &BenchOptions,
    m: &Loaded<'_>,
    x: &[f32],
    stages: &mut Vec<StageReport>,
) -> Result<Option<VaeTiling>> {
    let (lh, lw) = (o.size / m.vae_cfg.downscale(), o.size / m.vae_cfg.downscale());
    let c = m.vae_cfg.latent_channels;
    gpu.trim_pool();
    let s = gpu.stats();
    let act_budget = if o.budget == 0 { 512 << 20 } else { o.budget.saturating_sub(s.bytes_live + s.bytes_pooled) };
    let limit = gpu.caps().max_storage_binding.min(gpu.caps().max_buffer_size);
    let vae_dtype = m.vae_cfg.compute_dtype(m.dtype);
    let tiling = vae_tiling::plan(&m.vae_cfg, lh, lw, vae_dtype, act_budget, limit)?;
    let z: Vec<f32> = x.iter().map(|v| v / m.vae_cfg.scaling_factor as f32).collect();
    let (mut times, mut s) = (Vec::new(), GpuStats::default());
    let pipelines = gpu.stats().pipelines;
    for _ in 0..o.repeats.max(1) {
        gpu.reset_stats();
        let t = now_ms();
        let px = vae_tiling::decode(&m.decoder, gpu, vae_dtype, &z, [c, lh, lw], tiling).await?;
        times.push(now_ms() - t);
        s = gpu.stats();
        if !gpu.is_dry_run() && px.data.iter().any(|v| !v.is_finite()) {
            return Err(Error::Request("the VAE produced non-finite pixels".into()));
        }
    }
    stages.push(stage_report("vae_decode", &mut times, s, pipelines));
    Ok(tiling)
}

fn report_head(
    gpu: &Gpu,
    o: &BenchOptions,
    dtype: DType,
    weights: Vec<(String, u64)>,
    load_s: f64,
    stages: Vec<StageReport>,
    captured: Option<Captured>,
) -> Report {
    Report {
        arch: o.name.clone(),
        quant: o.quant.clone(),
        compute: dtype.to_string(),
        vae_compute: VaeConfig::from_json(&o.vae).map(|c| c.compute_dtype(dtype).to_string()).unwrap_or_default(),
        size: o.size,
        steps: o.steps,
        guidance: o.guidance,
        adapter: format!("{} ({})", gpu.caps().adapter_name, gpu.caps().backend),
        max_storage_binding: gpu.caps().max_storage_binding,
        max_buffer_size: gpu.caps().max_buffer_size,
        weights,
        load_s,
        text_encoder_released: o.release_text_encoder || o.low_memory,
        low_memory: o.low_memory,
        vae_tiling: None,
        vae_encode_tiling: None,
        decoded: true,
        stages,
        peak_bytes: 0,
        dry_run: gpu.is_dry_run(),
        captured,
    }
}
