//! `webdiffusion generate`: text-to-image and img2img from a diffusers folder.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use webdiffusion::gpu::{DType, Gpu};
use webdiffusion::models::loader;
use webdiffusion::models::lora::{Lora, LoraUse};
use webdiffusion::pipeline::generate::{InitImage, NoiseSource, Recorded, Request, StableDiffusion, MAX_IMAGES};
use webdiffusion::pipeline::image::{a1111_parameters, blur_mask, decode_png, encode_png, luma, outpaint, overlay};
use webdiffusion::pipeline::prompt::PromptSyntax;
use webdiffusion::pipeline::rng::NormalRng;
use webdiffusion::pipeline::schedulers::SchedulerKind;

#[derive(clap::Args)]
pub struct Args {
    /// A diffusers model or a package (a folder or an http(s) URL), or a single-file
    /// checkpoint in the original layout (`FILE.safetensors`, with --config).
    #[arg(long)]
    model: String,
    /// For a single-file checkpoint: the diffusers folder whose configs, tokenizer and
    /// scheduler go with it (the published repo's small files; its weights are not read).
    #[arg(long)]
    config: Option<PathBuf>,
    /// For a single-file checkpoint: epsilon or v_prediction, over its ModelSpec metadata and
    /// the --config scheduler (shapes cannot tell SD 2's 768-v models from its 512 ones).
    #[arg(long)]
    prediction_type: Option<String>,
    /// Another VAE (a folder or URL holding its config.json and weights), in place of the
    /// model's: madebyollin/sdxl-vae-fp16-fix decodes SDXL in f16 (its force_upcast is false).
    #[arg(long)]
    vae: Option<String>,
    /// The text encoders and the U-Net take turns on the GPU (each loaded when needed and
    /// released after): peak memory is the larger stage's, not their sum (SDXL in about 2 GB).
    #[arg(long)]
    low_memory: bool,
    /// A TAESD folder (madebyollin/taesd: config.json, diffusion_pytorch_model.safetensors) for
    /// --decoder taesd and --preview-decoder taesd.
    #[arg(long)]
    taesd: Option<PathBuf>,
    /// The final decode: vae (the model's own) or taesd (fast, a little softer).
    #[arg(long, default_value = "vae")]
    decoder: String,
    /// img2img's / inpainting's image encode: vae (the model's own) or taesd (fast, no
    /// posterior sample).
    #[arg(long, default_value = "vae")]
    encoder: String,
    /// Per-step previews: none or taesd (each step's image written to --previews).
    #[arg(long, default_value = "none")]
    preview_decoder: String,
    /// The folder --preview-decoder writes step-N.png into.
    #[arg(long)]
    previews: Option<PathBuf>,
    /// Quantize on load: q8_0, q4_0 or f16 storage with the standard policy (a package is
    /// already quantized; this re-quantizes only its float tensors).
    #[arg(long)]
    quant: Option<String>,
    /// A JSON quantization policy file (implies quantize-on-load).
    #[arg(long)]
    policy: Option<PathBuf>,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    negative_prompt: Option<String>,
    /// How prompts are read: a1111 (`(word:1.2)`, `[word]`, BREAK, any length in 75-token
    /// chunks) or diffusers (literal text, cut at 77 tokens).
    #[arg(long, default_value = "a1111")]
    prompt_syntax: String,
    /// Denoising steps (default 50, or 4 for LCM models, as diffusers' pipelines).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; <= 1 skips the unconditional pass (default 7.5; LCM
    /// models embed it instead, default 8.5).
    #[arg(long)]
    guidance: Option<f32>,
    /// ddim, euler, euler-a, dpm++2m, dpm++2m-karras, pndm, heun, lms, lms-karras, unipc,
    /// unipc-karras, dpm++sde, dpm++sde-karras or lcm
    /// (default: the model's scheduler).
    #[arg(long)]
    scheduler: Option<String>,
    /// DDIM's eta, 0 to 1: 0 is deterministic, 1 adds DDPM's noise each step (other samplers
    /// ignore it).
    #[arg(long, default_value_t = 0.0)]
    eta: f32,
    /// Pixels; default the U-Net's sample_size times the VAE factor.
    #[arg(long)]
    width: Option<usize>,
    #[arg(long)]
    height: Option<usize>,
    /// Seed of the normal RNG (random when absent; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Images with seeds seed, seed + 1, … (A1111's order), written as OUT's name with `-SEED`
    /// before the extension; images small enough run as one U-Net batch.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// safetensors with tensor `latents` [1,4,H/8,W/8]: diffusers' `latents=` argument.
    #[arg(long)]
    latents: Option<PathBuf>,
    /// safetensors with tensor `noise` [K,1,4,H/8,W/8]: every other draw, in diffusers' order.
    #[arg(long)]
    noise: Option<PathBuf>,
    /// img2img: the starting picture (PNG, resized by nobody: it must be width x height).
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// img2img: how much of the schedule runs (0..1]; default 0.8, and 1 with --mask/--outpaint
    /// (diffusers' defaults).
    #[arg(long)]
    strength: Option<f32>,
    /// Inpainting: a PNG the size of --init-image, white where it is redrawn (grey ≥ 128 after
    /// PIL's `L` conversion, as diffusers binarizes it).
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Outpainting: LEFT,RIGHT,UP,DOWN pixels to extend --init-image by; the new border is
    /// inpainted (filled from the edge first). The output is the larger image.
    #[arg(long)]
    outpaint: Option<String>,
    /// Inpainting and outpainting: the original's pixels are put back where the mask keeps them,
    /// blended over a seam blurred by this many pixels (0: a hard edge).
    #[arg(long, default_value_t = 4.0)]
    mask_blur: f32,
    /// Inpainting: keep diffusers' raw output (the kept region as the VAE redraws it), no overlay.
    #[arg(long)]
    no_overlay: bool,
    /// Compute precision: f16 where the device has it (auto), or f32.
    #[arg(long, default_value = "auto")]
    precision: String,
    #[arg(long)]
    out: PathBuf,
    /// Also write the final latents (before the VAE) as safetensors tensor `latents`.
    #[arg(long)]
    out_latents: Option<PathBuf>,
    /// A LoRA merged into the weights on load: FILE.safetensors[:STRENGTH] (default 1; kohya,
    /// PEFT or diffusers format); repeatable.
    #[arg(long)]
    lora: Vec<String>,
    /// Where `<lora:NAME:STRENGTH>` tags in the prompt find NAME.safetensors (A1111's Lora
    /// folder); the tags are taken out of the prompt the model sees.
    #[arg(long)]
    lora_dir: Option<PathBuf>,
}

/// `--lora FILE[:STRENGTH]`, then the prompt's `<lora:NAME:STRENGTH>` tags from `--lora-dir`.
fn loras(a: &Args, tags: &[webdiffusion::pipeline::prompt::LoraTag]) -> Result<Vec<LoraUse>> {
    let read = |path: &Path, strength: f32| -> Result<LoraUse> {
        let bytes = loader::read_file(path, 2 << 30).with_context(|| format!("reading the LoRA {}", path.display()))?;
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("lora");
        Ok(LoraUse { lora: std::sync::Arc::new(Lora::from_bytes(name, &bytes)?), strength })
    };
    let mut out = Vec::new();
    for spec in &a.lora {
        let (path, strength) = match spec.rsplit_once(':').map(|(p, s)| (p, s.parse::<f32>())) {
            Some((p, Ok(s))) if s.is_finite() => (p, s),
            _ => (spec.as_str(), 1.0),
        };
        out.push(read(Path::new(path), strength)?);
    }
    for tag in tags {
        let dir = a.lora_dir.as_ref().with_context(|| {
            format!("the prompt names <lora:{}>: --lora-dir says which folder holds {}.safetensors", tag.name, tag.name)
        })?;
        if tag.name.contains(['/', '\\']) || tag.name.starts_with('.') {
            bail!("<lora:{}>: a LoRA name, not a path", tag.name);
        }
        out.push(read(&dir.join(format!("{}.safetensors", tag.name)), tag.strength)?);
    }
    Ok(out)
}

/// Our name for the scheduler class a model ships with.
pub(super) fn default_scheduler(class: Option<&str>, karras: bool) -> Result<SchedulerKind> {
    if let Some(kind) = class.and_then(|c| SchedulerKind::for_class(c, karras)) {
        return Ok(kind);
    }
    Ok(match class {
        None => {
            eprintln!("note: the model's scheduler config names no class; using DDIM");
            SchedulerKind::Ddim
        }
        Some(other) => bail!("the model's scheduler {other} is not supported; pick one with --scheduler"),
    })
}

fn read_tensor(path: &Path, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = loader::read_file(path, 1 << 30).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not safetensors", path.display()))?;
    let t = st.tensor(name).with_context(|| format!("{} has no tensor `{name}`", path.display()))?;
    if t.dtype() != safetensors::Dtype::F32 {
        bail!("{}: tensor `{name}` must be f32", path.display());
    }
    let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok((t.shape().to_vec(), v))
}

fn write_latents(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &bytes)?;
    let out = safetensors::serialize([("latents", view)], None)?;
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// The compute dtype `--precision` asks for on this device.
fn precision(gpu: &Gpu, asked: &str) -> Result<DType> {
    Ok(match asked {
        "f32" => DType::F32,
        "f16" if gpu.caps().shader_f16 => DType::F16,
        "f16" => bail!("this device has no shader-f16; use --precision f32"),
        "auto" if gpu.caps().shader_f16 => DType::F16,
        "auto" => DType::F32,
        other => bail!("--precision must be auto, f16 or f32, not {other}"),
    })
}

/// Draws replayed from `--noise` (diffusers' recorded draws), else the seeded RNG.
fn noise_source(recorded: Option<&Path>, seed: u64) -> Result<Box<dyn NoiseSource>> {
    let Some(p) = recorded else { return Ok(Box::new(NormalRng::new(seed))) };
    let (shape, v) = read_tensor(p, "noise")?;
    // [K, 1, C, h, w]: K draws of everything after the leading dim. The product cannot overflow
    // or outrun the data: safetensors has checked that the shape's elements are the bytes there.
    let per: usize = shape.iter().skip(1).product();
    let draws = v.chunks(per.max(1)).take(shape.first().copied().unwrap_or(0)).map(<[f32]>::to_vec);
    Ok(Box::new(Recorded(draws.collect::<VecDeque<_>>())))
}

/// The per-kernel GPU time table, when profiling was on.
fn print_profile(gpu: &Gpu) {
    let Some(rows) = gpu.profile() else { return };
    let total: f64 = rows.iter().map(|r| r.2).sum();
    eprintln!("GPU time by kernel (WEBDIFFUSION_PROFILE), total {total:.2} s:");
    for (label, n, t) in rows.iter().take(25) {
        eprintln!("{:>8.1} ms {:>5.1}% {:>6}x  {label}", t * 1e3, 100.0 * t / total.max(1e-9), n);
    }
}

pub fn run(gpu: &Gpu, a: &Args) -> Result<()> {
    // Found out before the model loads and the image is made, not after.
    for out in [Some(&a.out), a.out_latents.as_ref()].into_iter().flatten() {
        let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            bail!("--out {}: the folder {} does not exist", out.display(), dir.display());
        }
    }
    let dtype = precision(gpu, &a.precision)?;
    let t0 = Instant::now();
    let src = super::http::open_model_with(&a.model, a.config.as_deref(), a.prediction_type.as_deref())?;
    let src = super::http::with_vae(src, a.vae.as_deref())?;
    let quant = match (&a.quant, &a.policy) {
        (None, None) => None,
        (q, p) => Some(std::sync::Arc::new(super::convert::policy(q.as_deref().unwrap_or("q8_0"), p.as_deref())?)),
    };
    let (prompt, tags) = webdiffusion::pipeline::prompt::extract_loras(&a.prompt)?;
    let loras = loras(a, &tags)?;
    let opts =
        loader::LoadOptions { quant, with_encoder: a.init_image.is_some(), loras, ..loader::LoadOptions::new(dtype) };
    let final_taesd = match a.decoder.as_str() {
        "vae" => false,
        "taesd" => true,
        other => bail!("--decoder {other}: vae or taesd"),
    };
    let preview_taesd = match a.preview_decoder.as_str() {
        "none" => false,
        "taesd" => true,
        other => bail!("--preview-decoder {other}: none or taesd"),
    };
    if preview_taesd != a.previews.is_some() {
        bail!("--preview-decoder taesd and --previews DIR go together");
    }
    let encode_taesd = match a.encoder.as_str() {
        "vae" => false,
        "taesd" => true,
        other => bail!("--encoder {other}: vae or taesd"),
    };
    if (final_taesd || preview_taesd || encode_taesd) && a.taesd.is_none() {
        bail!(
            "--decoder taesd, --encoder taesd and --preview-decoder taesd need --taesd DIR (madebyollin/taesd's files)"
        );
    }
    let load = if a.low_memory { StableDiffusion::load_in_turns } else { StableDiffusion::load };
    let mut sd = load(&*src, gpu, &opts).with_context(|| format!("loading {}", a.model))?;
    eprintln!("loaded {} ({dtype}) in {:.1} s", a.model, t0.elapsed().as_secs_f64());
    if let Some(dir) = &a.taesd {
        let opts = loader::LoadOptions { with_encoder: encode_taesd, ..loader::LoadOptions::new(dtype) };
        let (d, e) = loader::taesd(&loader::DirSource(dir.clone()), gpu, &opts)
            .with_context(|| format!("loading TAESD from {}", dir.display()))?;
        sd.taesd = Some(d);
        sd.taesd_encoder = e;
        sd.taesd_use = webdiffusion::pipeline::generate::TaesdUse {
            previews: preview_taesd,
            final_decode: final_taesd,
            encode: encode_taesd,
        };
    }
    // LatentConsistencyModelPipeline's defaults for LCM-distilled U-Nets, else StableDiffusionPipeline's.
    let lcm = sd.unet_config.time_cond_proj_dim.is_some();
    let (default_steps, default_guidance) = if lcm { (4, 8.5) } else { (50, 7.5) };
    let scheduler = match &a.scheduler {
        Some(s) => SchedulerKind::parse(s)?,
        None => default_scheduler(sd.scheduler_config.class_name.as_deref(), sd.scheduler_config.use_karras_sigmas)?,
    };
    let factor = sd.vae_config.downscale();
    let default_px = sd.unet_config.sample_size.unwrap_or(64) * factor;
    let init = match &a.init_image {
        Some(p) => Some(init_image(a, p)?),
        None if a.mask.is_some() || a.outpaint.is_some() => bail!("--mask and --outpaint need --init-image"),
        None => None,
    };
    let (width, height) = match &init {
        Some((_, w, h)) => {
            if a.width.is_some_and(|x| x != *w) || a.height.is_some_and(|x| x != *h) {
                bail!("--width/--height must match the init image ({w}x{h})");
            }
            (*w, *h)
        }
        None => (a.width.unwrap_or(default_px), a.height.unwrap_or(default_px)),
    };
    let req = Request {
        prompt,
        negative_prompt: a.negative_prompt.clone(),
        steps: a.steps.unwrap_or(default_steps),
        guidance: a.guidance.unwrap_or(default_guidance),
        width,
        height,
        scheduler,
        prompt_syntax: PromptSyntax::parse(&a.prompt_syntax).context("--prompt-syntax")?,
        eta: a.eta,
        init: init.map(|(i, _, _)| i),
    };
    let latents = match &a.latents {
        Some(p) => Some(read_tensor(p, "latents")?.1),
        None => None,
    };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    if a.count != 1 {
        if a.count == 0 || a.count > MAX_IMAGES {
            bail!("--count must be 1 to {MAX_IMAGES} (got {})", a.count);
        }
        if a.latents.is_some() || a.noise.is_some() || a.out_latents.is_some() {
            bail!("--count makes images from seeds; --latents, --noise and --out-latents are for one image");
        }
        if a.low_memory {
            bail!("--low-memory makes one image at a time: drop --count");
        }
        let model = a.model.trim_end_matches('/').rsplit('/').next().unwrap_or("model");
        return generate_many(&sd, a, &req, seed, model);
    }
    let mut noise = noise_source(a.noise.as_deref(), seed)?;
    if a.noise.is_none() {
        eprintln!("seed {seed}");
    }
    let t1 = Instant::now();
    let mut last = Instant::now();
    let mut failed = None;
    let mut turns = webdiffusion::pipeline::sequential::Turns::default();
    let mut on_step = |s: webdiffusion::pipeline::generate::Step<'_>| {
        eprintln!("step {}/{} (t={}) {:.2} s", s.index + 1, s.total, s.timestep, last.elapsed().as_secs_f64());
        last = Instant::now();
        if let (Some(rgb), Some(dir)) = (s.image, &a.previews) {
            let path = dir.join(format!("step-{}.png", s.index + 1));
            let written = encode_png(rgb, req.width, req.height, None)
                .map_err(anyhow::Error::from)
                .and_then(|png| std::fs::write(&path, png).with_context(|| format!("writing {}", path.display())));
            if let Err(e) = written {
                failed = Some(e);
                return false;
            }
        }
        true
    };
    let out = if a.low_memory {
        pollster::block_on(sd.generate_in_turns(&*src, &opts, &mut turns, &req, latents, noise.as_mut(), &mut on_step))
    } else {
        pollster::block_on(sd.generate(&req, latents, noise.as_mut(), &mut on_step))
    };
    if let Some(e) = failed {
        return Err(e);
    }
    let out = out?;
    eprintln!("generated in {:.1} s", t1.elapsed().as_secs_f64());
    print_profile(gpu);
    let params = a1111_parameters(
        &a.prompt,
        a.negative_prompt.as_deref(),
        req.steps,
        scheduler.a1111_name(),
        req.guidance,
        a.noise.is_none().then_some(seed),
        out.width,
        out.height,
        a.model.trim_end_matches('/').rsplit('/').next().unwrap_or("model"),
    );
    let rgb = match req.init.as_ref().and_then(|i| i.mask.as_ref().map(|m| (i, m))) {
        Some((init, mask)) if !a.no_overlay => {
            overlay(&init.rgb, &out.rgb, &blur_mask(mask, out.width, out.height, a.mask_blur))
        }
        _ => out.rgb.clone(),
    };
    let png = encode_png(&rgb, out.width, out.height, Some(&params))?;
    std::fs::write(&a.out, png).with_context(|| format!("writing {}", a.out.display()))?;
    if let Some(p) = &a.out_latents {
        write_latents(p, &out.latent_shape, &out.latents)?;
    }
    println!("{}", a.out.display());
    Ok(())
}

/// The starting image with its mask (--mask) or extended for outpainting (--outpaint).
fn init_image(a: &Args, path: &Path) -> Result<(InitImage, usize, usize)> {
    let png = |p: &Path| -> Result<(Vec<u8>, usize, usize)> {
        let bytes = loader::read_file(p, 1 << 30).with_context(|| format!("reading {}", p.display()))?;
        decode_png(&bytes).with_context(|| format!("decoding {}", p.display()))
    };
    if !(a.mask_blur.is_finite() && (0.0..=64.0).contains(&a.mask_blur)) {
        bail!("--mask-blur {}: 0 to 64 pixels", a.mask_blur);
    }
    let (rgb, w, h) = png(path)?;
    let painting = a.mask.is_some() || a.outpaint.is_some();
    let strength = a.strength.unwrap_or(if painting { 1.0 } else { 0.8 });
    match (&a.mask, &a.outpaint) {
        (Some(_), Some(_)) => bail!("--mask and --outpaint: one or the other (--outpaint makes its own mask)"),
        (Some(m), None) => {
            let (mask, mw, mh) = png(m)?;
            if (mw, mh) != (w, h) {
                bail!("--mask {} is {mw}x{mh}; the init image is {w}x{h}", m.display());
            }
            Ok((InitImage { rgb, strength, mask: Some(luma(&mask)) }, w, h))
        }
        (None, Some(spec)) => {
            let by: Vec<usize> = spec
                .split(',')
                .map(|v| v.trim().parse())
                .collect::<Result<_, _>>()
                .with_context(|| format!("--outpaint {spec}: LEFT,RIGHT,UP,DOWN in pixels"))?;
            let by: [usize; 4] =
                by.try_into().map_err(|_| anyhow::anyhow!("--outpaint {spec}: four numbers, LEFT,RIGHT,UP,DOWN"))?;
            let (rgb, mask, w, h) = outpaint(&rgb, w, h, by)?;
            Ok((InitImage { rgb, strength, mask: Some(mask) }, w, h))
        }
        (None, None) => Ok((InitImage { rgb, strength, mask: None }, w, h)),
    }
}

/// `--count N`: seeds seed.. seed + N - 1, in U-Net batches of what `batch_size` allows; each
/// image written as OUT-SEED.png with its own parameters.
fn generate_many(sd: &StableDiffusion, a: &Args, req: &Request, seed: u64, model: &str) -> Result<()> {
    let batch = StableDiffusion::batch_size(req.width, req.height, a.count);
    let stem = a.out.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    let ext = a.out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    let t1 = Instant::now();
    for first in (0..a.count).step_by(batch) {
        let seeds: Vec<u64> = (first..(first + batch).min(a.count)).map(|k| seed.wrapping_add(k as u64)).collect();
        eprintln!("seeds {seeds:?} as one batch");
        let reqs = vec![req.clone(); seeds.len()];
        let mut rngs: Vec<NormalRng> = seeds.iter().map(|&s| NormalRng::new(s)).collect();
        let mut noises: Vec<&mut dyn NoiseSource> = rngs.iter_mut().map(|r| r as &mut dyn NoiseSource).collect();
        let outs = pollster::block_on(sd.generate_batch(&reqs, &mut noises, &mut |i, n| {
            eprintln!("step {}/{n}", i + 1);
            true
        }))?;
        for (s, out) in seeds.iter().zip(&outs) {
            let params = a1111_parameters(
                &a.prompt,
                a.negative_prompt.as_deref(),
                req.steps,
                req.scheduler.a1111_name(),
                req.guidance,
                Some(*s),
                out.width,
                out.height,
                model,
            );
            let path = a.out.with_file_name(format!("{stem}-{s}.{ext}"));
            std::fs::write(&path, encode_png(&out.rgb, out.width, out.height, Some(&params))?)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("{}", path.display());
        }
    }
    eprintln!("generated {} images in {:.1} s", a.count, t1.elapsed().as_secs_f64());
    Ok(())
}
