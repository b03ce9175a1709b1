//! The denoising loop of diffusers' StableDiffusionPipeline and StableDiffusionImg2ImgPipeline:
//! encode the prompt (and the negative prompt for classifier-free guidance), start from scaled
//! noise (txt2img) or from the noised VAE encoding of an image (img2img), run the U-Net on the
//! [uncond, cond] batch each step, guide, step the scheduler, decode with the VAE.

use super::prompt::PromptSyntax;
use super::schedule::SchedulerConfig;
use super::schedulers::{Scheduler, SchedulerKind};
use super::text::Conditioning;
use super::vae_tiling;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, GpuTensor};
use crate::models::clip::ClipTextModel;
use crate::models::config::{UNetConfig, VaeConfig};
use crate::models::taesd::{TinyDecoder, TinyEncoder};
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::UNet;
use crate::models::vae::{Decoder, Encoder};

/// The least the VAE decode is given under a budget the weights already fill (small tiles).
const MIN_VAE_ACTIVATIONS: u64 = 64 << 20;

/// The largest side of an image, in pixels (a 4096² SD image is 16× the trained area already).
pub const MAX_SIDE: usize = 4096;
/// The most denoising steps a request may ask for.
pub const MAX_STEPS: usize = 1000;
/// Classifier-free guidance above this only saturates; the page's own limit is 30.
pub const MAX_GUIDANCE: f32 = 100.0;
/// Images one request may ask for (A1111's batch count × size tops out near here in practice).
pub const MAX_IMAGES: usize = 16;
/// The latent area one U-Net batch may span: one 512×512 image's, the size the memory plan is
/// made for (activations grow with batch × area), so smaller images batch and 512² runs alone.
const BATCH_PIXELS: usize = 512 * 512;

/// HWC RGB bytes → CHW floats in [-1, 1], as diffusers' image processor does; with a mask, the
/// pixels to redraw (mask ≥ 128) become 0, as `init_image * (mask < 0.5)`.
fn pixels(rgb: &[u8], mask: Option<&[u8]>, width: usize, height: usize) -> Result<Vec<f32>> {
    if rgb.len() != width * height * 3 {
        return Err(Error::Request(format!("the init image must be {width}x{height} RGB")));
    }
    let hw = width * height;
    let mut px = vec![0f32; 3 * hw];
    for (i, p) in rgb.chunks_exact(3).enumerate() {
        let keep = mask.is_none_or(|m| m[i] < 128);
        for c in 0..3 {
            px[c * hw + i] = if keep { p[c] as f32 / 255.0 * 2.0 - 1.0 } else { 0.0 };
        }
    }
    Ok(px)
}

/// A binarized pixel mask at latent size: torch's nearest `interpolate` picks source pixel
/// floor(i · in / out) (exact for the integer ratios latents have).
fn latent_mask(mask: &[u8], width: usize, height: usize, lw: usize, lh: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(lw * lh);
    for y in 0..lh {
        for x in 0..lw {
            let (sy, sx) = (y * height / lh, x * width / lw);
            out.push(if mask[sy * width + sx] >= 128 { 1.0 } else { 0.0 });
        }
    }
    out
}

/// CHW floats in [-1, 1] → HWC 8-bit RGB as diffusers' image processor does:
/// round(255 * clamp(x / 2 + 0.5, 0, 1)).
fn to_rgb8(px: &[f32], channels: usize, h: usize, w: usize) -> Vec<u8> {
    let mut rgb = vec![0u8; h * w * 3];
    for c in 0..channels.min(3) {
        for i in 0..h * w {
            let v = (px[c * h * w + i] / 2.0 + 0.5).clamp(0.0, 1.0);
            rgb[i * 3 + c] = (v * 255.0).round() as u8;
        }
    }
    rgb
}

/// Everything a generation needs, loaded once.
pub struct StableDiffusion {
    pub gpu: Gpu,
    pub dtype: DType,
    pub tokenizer: ClipTokenizer,
    /// `None` once released (`release_text_encoder`).
    pub text_encoder: Option<ClipTextModel>,
    /// SDXL's second tokenizer and text encoder (OpenCLIP bigG with its projection).
    pub tokenizer_2: Option<ClipTokenizer>,
    pub text_encoder_2: Option<ClipTextModel>,
    /// `model_index.json`'s flag: a missing negative prompt is zeros (SDXL) under guidance.
    pub force_zeros_for_empty_prompt: bool,
    /// `None` while released: the sequential plan (`pipeline::sequential`) loads it after the
    /// prompt is encoded, so the text encoders and the U-Net are never on the GPU together.
    pub unet: Option<UNet>,
    pub unet_config: UNetConfig,
    pub decoder: Decoder,
    /// Only loaded when img2img is wanted.
    pub encoder: Option<Encoder>,
    pub vae_config: VaeConfig,
    pub scheduler_config: SchedulerConfig,
    pub memory: MemoryOptions,
    /// TAESD, when loaded (`models::loader::taesd`), and what it decodes.
    pub taesd: Option<TinyDecoder>,
    pub taesd_encoder: Option<TinyEncoder>,
    pub taesd_use: TaesdUse,
}

/// What TAESD decodes when it is loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaesdUse {
    /// Every step's first row, for a live preview (`Step::image`).
    pub previews: bool,
    /// The final images, instead of the VAE (fast, a little softer).
    pub final_decode: bool,
    /// img2img's and inpainting's image encodes (`taesd_encoder`), instead of the VAE's: as
    /// diffusers' `AutoencoderTiny`, deterministic latents (no posterior sample is drawn).
    pub encode: bool,
}

/// How a generation trades memory for speed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryOptions {
    /// GPU bytes the whole generation should stay within (weights included). The VAE decode gets
    /// what the weights and the prompt embeddings leave, and is tiled to fit it.
    pub budget: Option<u64>,
    /// Activation bytes for the VAE decode when there is no overall budget.
    pub vae_activations: u64,
    /// Return the buffer pool to the driver between the U-Net and the VAE, whose activations
    /// have different sizes (otherwise both stages' buffers stay allocated).
    pub trim_between_stages: bool,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions { budget: None, vae_activations: 512 << 20, trim_between_stages: true }
    }
}

#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub steps: usize,
    pub guidance: f32,
    pub width: usize,
    pub height: usize,
    pub scheduler: SchedulerKind,
    /// How the prompts are read: A1111's weights, BREAK and any length, or diffusers' literal text.
    pub prompt_syntax: PromptSyntax,
    /// DDIM's eta, 0..=1: 0 is deterministic DDIM, 1 adds DDPM's full noise each step (a draw
    /// per step). Other samplers ignore it, as diffusers' pipelines do.
    pub eta: f32,
    /// img2img: the starting picture (RGB, `width` x `height`) and how much to change it.
    pub init: Option<InitImage>,
}

#[derive(Clone, Debug)]
pub struct InitImage {
    pub rgb: Vec<u8>,
    /// 0..=1: the fraction of the schedule that runs (diffusers' `strength`).
    pub strength: f32,
    /// Inpainting: one byte per pixel, ≥ 128 where the image is to be redrawn (diffusers
    /// binarizes its mask at 0.5). A 9-channel inpainting U-Net takes it with the masked image's
    /// latents; an ordinary one gets the kept region re-noised and pasted back every step.
    pub mask: Option<Vec<u8>>,
}

/// What an inpainting row carries through the loop.
struct Inpaint {
    /// The mask at latent size (nearest, as diffusers' `interpolate`), 0 or 1.
    mask: Vec<f32>,
    /// The masked image's latents (9-channel U-Nets).
    masked: Vec<f32>,
    /// The image's latents and the start noise, to re-noise the kept region (4-channel U-Nets).
    image: Option<(Vec<f32>, Vec<f32>)>,
}

/// Where standard-normal draws come from: the seeded RNG, or a recorded sequence (tests,
/// `--noise FILE`) so a run can be replayed exactly as diffusers made it.
pub trait NoiseSource {
    fn draw(&mut self, n: usize) -> Result<Vec<f32>>;
}

/// Draws replayed from a list, in order.
pub struct Recorded(pub std::collections::VecDeque<Vec<f32>>);

impl NoiseSource for Recorded {
    fn draw(&mut self, n: usize) -> Result<Vec<f32>> {
        let d = self.0.pop_front().ok_or_else(|| Error::Request("the recorded noise ran out".into()))?;
        if d.len() != n {
            return Err(Error::Request(format!("a recorded noise draw has {} values, {n} needed", d.len())));
        }
        Ok(d)
    }
}

/// Per-step progress: return `false` to cancel.
pub struct Step<'a> {
    pub index: usize,
    pub total: usize,
    pub timestep: f32,
    pub latents: &'a [f32],
    /// The first row decoded by TAESD (`TaesdUse::previews`): RGB at the image's size.
    pub image: Option<&'a [u8]>,
}

pub struct Generated {
    /// Final latents [1, C, h, w] before the VAE.
    pub latents: Vec<f32>,
    pub latent_shape: [usize; 4],
    /// RGB, row-major [height][width][3].
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

impl Generated {
    /// The image as RGBA (opaque), the layout a canvas `ImageData` takes.
    pub fn rgba(&self) -> Vec<u8> {
        self.rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect()
    }
}

impl StableDiffusion {
    /// Builds what a `width`×`height` generation will use before it runs: the text encoder's,
    /// the U-Net's (on the guided batch when `guided`) and the VAE decoder's pipelines and bind
    /// groups, by recording their forward passes on zeros without executing them
    /// (`Gpu::record_only`). In the browser the pipelines then compile while the visitor types;
    /// natively it moves the cost out of the first step. Returns the pipelines built.
    pub fn prepare(&self, width: usize, height: usize, guided: bool) -> Result<u64> {
        let f = self.vae_config.downscale();
        // The size comes from the model's config: bounded as a request's is, before anything
        // is sized by it.
        if width > MAX_SIDE || height > MAX_SIDE {
            return Err(Error::Request(format!("prepare: {width}x{height} is over {MAX_SIDE} pixels a side")));
        }
        if width == 0 || height == 0 || width % f != 0 || height % f != 0 {
            return Err(Error::Request(format!("prepare: {width}x{height} is not a multiple of {f}")));
        }
        let (lh, lw) = (height / f, width / f);
        let cfg = guided && self.unet_config.time_cond_proj_dim.is_none();
        let rows = if cfg { 2 } else { 1 };
        let before = self.gpu.stats().pipelines;
        let gpu = &self.gpu;
        gpu.record_only(|| {
            self.prepare_text(rows)?;
            let cond_in = self.zero_conditioning(rows, self.dtype)?;
            let unet_in = self.unet_config.in_channels;
            let x = GpuTensor::from_f32_as(
                gpu,
                &vec![0.0; rows * unet_in * lh * lw],
                &[rows, unet_in, lh, lw],
                self.dtype,
            )?;
            let cond = match self.unet_config.time_cond_proj_dim {
                Some(d) => Some(GpuTensor::from_f32_as(gpu, &vec![0.0; rows * d], &[rows, d], self.dtype)?),
                None => None,
            };
            if let Some(unet) = &self.unet {
                drop(unet.forward_with(&x, 999.0, &cond_in.context, cond.as_ref(), cond_in.added.as_ref())?);
            }
            // The decode as it will be planned: whole, or its tile.
            let caps = gpu.caps();
            let limit = caps.max_storage_binding.min(caps.max_buffer_size);
            let plan = vae_tiling::plan(&self.vae_config, lh, lw, self.vae_dtype(), self.vae_budget(), limit)?;
            let (th, tw) = plan.map_or((lh, lw), |t| (t.tile.min(lh), t.tile.min(lw)));
            let c = self.vae_config.latent_channels;
            let z = GpuTensor::from_f32_as(gpu, &vec![0.0; c * th * tw], &[1, c, th, tw], self.vae_dtype())?;
            drop(self.decoder.forward(&z)?);
            Ok(())
        })?;
        // The buffers it took go back to the driver as between stages: the pipelines are what
        // must be ready, not memory held idle.
        if self.memory.trim_between_stages {
            self.gpu.trim_pool();
        }
        Ok(self.gpu.stats().pipelines - before)
    }

    /// Frees the text encoder's weights (123 M parameters for SD 1.x, 340 M for SD 2.x) for the
    /// rest of the session: for devices where they would not fit beside the U-Net and the VAE.
    /// Prompts encoded before stay valid; new prompts need the model loaded again.
    pub fn release_text_encoder(&mut self) {
        self.text_encoder = None;
        self.text_encoder_2 = None;
        self.gpu.trim_pool();
    }

    /// Runs a generation. `latents`: diffusers' `latents=` argument for txt2img (standard normal,
    /// scaled by the scheduler's init_noise_sigma here), drawn from `noise` when `None`. Every
    /// other draw (img2img's posterior sample and start noise, ancestral steps) comes from `noise`
    /// in diffusers' order.
    pub async fn generate(
        &self,
        req: &Request,
        latents: Option<Vec<f32>>,
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(Step<'_>) -> bool,
    ) -> Result<Generated> {
        let mut noises: [&mut dyn NoiseSource; 1] = [noise];
        let mut out = self.run(std::slice::from_ref(req), vec![latents], &mut noises, on_step, None).await?;
        Ok(out.remove(0))
    }

    /// Several generations in one U-Net batch: the requests must agree on size, steps,
    /// scheduler, guidance and init-image strength (prompts, negative prompts, init images and
    /// noise differ). Each image is what `generate` gives for its request and noise alone;
    /// batching only amortizes the per-dispatch cost, which dominates small models (the demo
    /// model's adherence check runs 25 at once). `on_step(index, total)`.
    pub async fn generate_batch(
        &self,
        reqs: &[Request],
        noises: &mut [&mut dyn NoiseSource],
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<Generated>> {
        self.generate_rows(reqs, noises, &mut |s| on_step(s.index, s.total)).await
    }

    /// `generate_batch` with each step's latents (all rows) for previews.
    pub async fn generate_rows(
        &self,
        reqs: &[Request],
        noises: &mut [&mut dyn NoiseSource],
        on_step: &mut dyn FnMut(Step<'_>) -> bool,
    ) -> Result<Vec<Generated>> {
        self.run(reqs, vec![None; reqs.len()], noises, on_step, None).await
    }

    /// How many of `count` images of `width` × `height` run as one U-Net batch: as many as keep
    /// the batch within one 512×512 image's latent area (at least one; at most `count`).
    pub fn batch_size(width: usize, height: usize, count: usize) -> usize {
        (BATCH_PIXELS / width.saturating_mul(height).max(1)).clamp(1, count.max(1))
    }

    /// The size and step count of a request, checked before anything is allocated: sides are
    /// positive multiples of what the VAE and the U-Net's levels divide by, at most
    /// `MAX_SIDE`, and 1 to `MAX_STEPS` steps.
    pub(super) fn check_request(&self, req: &Request) -> Result<()> {
        let f = self.vae_config.downscale();
        let unet_factor = 1 << (self.unet_config.block_out_channels.len() - 1);
        let m = f * unet_factor;
        if req.width == 0 || req.height == 0 || req.width % m != 0 || req.height % m != 0 {
            return Err(Error::Request(format!(
                "width and height must be positive multiples of {m} (got {}x{})",
                req.width, req.height
            )));
        }
        if req.width > MAX_SIDE || req.height > MAX_SIDE {
            return Err(Error::Request(format!(
                "width and height are at most {MAX_SIDE} (got {}x{})",
                req.width, req.height
            )));
        }
        if req.steps == 0 || req.steps > MAX_STEPS {
            return Err(Error::Request(format!("steps must be 1 to {MAX_STEPS} (got {})", req.steps)));
        }
        // An infinite or NaN guidance gives a NaN image after the whole run.
        if !(req.guidance.is_finite() && (0.0..=MAX_GUIDANCE).contains(&req.guidance)) {
            return Err(Error::Request(format!("guidance must be 0 to {MAX_GUIDANCE} (got {})", req.guidance)));
        }
        if !(req.eta.is_finite() && (0.0..=1.0).contains(&req.eta)) {
            return Err(Error::Request(format!("eta must be 0 to 1 (got {})", req.eta)));
        }
        Ok(())
    }

    /// Checks a batch against one plan: one size, step count, scheduler, guidance and strength,
    /// and one noise source per request. Returns the first step to run (img2img starts part-way).
    fn plan(&self, reqs: &[Request], latents: &[Option<Vec<f32>>], noises: usize) -> Result<usize> {
        let first = reqs.first().ok_or_else(|| Error::Request("an empty batch".into()))?;
        if noises != reqs.len() || latents.len() != reqs.len() {
            return Err(Error::Request(format!("{} requests but {noises} noise sources", reqs.len())));
        }
        // First, so a NaN guidance is named as such (NaN equals nothing, not even itself).
        self.check_request(first)?;
        let strength = |r: &Request| r.init.as_ref().map(|i| i.strength);
        let same = |r: &Request| {
            r.width == first.width
                && r.height == first.height
                && r.steps == first.steps
                && r.scheduler == first.scheduler
                && r.guidance == first.guidance
                && r.eta == first.eta
                && strength(r) == strength(first)
        };
        if !reqs.iter().all(same) {
            return Err(Error::Request(
                "a batch needs one size, step count, scheduler, guidance, eta and init-image strength".into(),
            ));
        }
        let Some(init) = &first.init else { return Ok(0) };
        let keep = ((first.steps as f32 * init.strength) as usize).min(first.steps);
        if keep == 0 || !(0.0..=1.0).contains(&init.strength) {
            return Err(Error::Request(format!(
                "strength {} leaves no step to run at {} steps",
                init.strength, first.steps
            )));
        }
        if first.scheduler == SchedulerKind::Lcm {
            return Err(Error::Request("img2img with the LCM scheduler is not supported".into()));
        }
        if latents.iter().any(Option::is_some) {
            return Err(Error::Request("img2img starts from its image, not from given latents".into()));
        }
        Ok(first.steps - keep)
    }

    /// The U-Net, unless released (`pipeline::sequential`).
    pub(super) fn unet(&self) -> Result<&UNet> {
        self.unet.as_ref().ok_or_else(|| Error::Request("the U-Net is not loaded (released between prompts)".into()))
    }

    /// Whether `req` runs classifier-free guidance: guidance above 1 on a U-Net that does not
    /// take it as an embedding (LCM).
    pub(super) fn guided(&self, req: &Request) -> bool {
        req.guidance > 1.0 && self.unet_config.time_cond_proj_dim.is_none()
    }

    /// The one denoising loop: `reqs` as a U-Net batch of `reqs.len()` rows (twice that with
    /// classifier-free guidance), each with its own scheduler and noise, then decoded.
    /// `given`: the prompts' conditioning, already encoded (`pipeline::sequential`).
    pub(super) async fn run(
        &self,
        reqs: &[Request],
        latents: Vec<Option<Vec<f32>>>,
        noises: &mut [&mut dyn NoiseSource],
        on_step: &mut dyn FnMut(Step<'_>) -> bool,
        given: Option<&Conditioning>,
    ) -> Result<Vec<Generated>> {
        let start = self.plan(reqs, &latents, noises.len())?;
        let first = &reqs[0];
        let b = reqs.len();
        let f = self.vae_config.downscale();
        let c = self.vae_config.latent_channels;
        let unet_in = self.unet_config.in_channels;
        let shape = [1, c, first.height / f, first.width / f];
        let n: usize = shape.iter().product();
        let hw = shape[2] * shape[3];
        // An inpainting U-Net takes latents, the mask and the masked image's latents.
        let nine = unet_in == 2 * c + 1;
        if unet_in != c && !nine {
            return Err(Error::Request(format!("a U-Net taking {unet_in} channels for {c}-channel latents")));
        }
        if nine && reqs.iter().any(|r| r.init.as_ref().is_none_or(|i| i.mask.is_none())) {
            return Err(Error::Request(
                "this is an inpainting model (its U-Net takes 9 channels): it needs an image and a mask".into(),
            ));
        }
        // LCM-distilled U-Nets take the guidance scale as an embedding instead of running CFG.
        let w_embedding = self.unet_config.time_cond_proj_dim.map(|d| guidance_embedding(first.guidance - 1.0, d));
        let cfg = self.guided(first);
        // Rows: [uncond × b, cond × b] with guidance, [cond × b] without.
        let owned;
        let conditioning = match given {
            Some(c) => c,
            None => {
                owned = self.condition(reqs, cfg).await?;
                &owned
            }
        };
        let rows = if cfg { 2 * b } else { b };
        if conditioning.context.shape().first() != Some(&rows) {
            return Err(Error::Request(format!(
                "the prompts' conditioning has {:?} rows, this batch needs {rows}",
                conditioning.context.shape().first()
            )));
        }
        let mut schedulers = (0..b)
            .map(|_| Scheduler::new(first.scheduler, &self.scheduler_config, first.steps))
            .collect::<Result<Vec<_>>>()?;
        for s in &mut schedulers {
            s.set_eta(first.eta);
        }
        let timesteps = schedulers[0].timesteps().to_vec();
        let total = timesteps.len();
        // The steps img2img leaves out, in timesteps (Heun runs each step's twice).
        let start = start * schedulers[0].order();

        let mut xs = Vec::with_capacity(b);
        let mut inpaint: Vec<Option<Inpaint>> = Vec::with_capacity(b);
        for ((r, given), (noise, s)) in reqs.iter().zip(latents).zip(noises.iter_mut().zip(&schedulers)) {
            let x = match (&r.init, given) {
                (Some(init), _) if init.mask.is_some() => {
                    // diffusers' StableDiffusionInpaintPipeline, draw for draw: the image's
                    // posterior sample when it is needed, the start noise, the masked image's.
                    let mask_px = init.mask.as_deref().unwrap_or_default();
                    if mask_px.len() != r.width * r.height {
                        return Err(Error::Request(format!(
                            "the mask must be {}x{} (one byte per pixel)",
                            r.width, r.height
                        )));
                    }
                    let full = init.strength >= 1.0;
                    let image = if !nine || !full {
                        Some(
                            self.encode_pixels(
                                &pixels(&init.rgb, None, r.width, r.height)?,
                                r.width,
                                r.height,
                                &mut **noise,
                            )
                            .await?,
                        )
                    } else {
                        None
                    };
                    let z = noise.draw(n)?;
                    let x = match (&image, full) {
                        (Some(img), false) => s.add_noise(img, &z, start)?,
                        _ => {
                            let sigma0 = s.init_noise_sigma();
                            z.iter().map(|v| v * sigma0).collect()
                        }
                    };
                    let masked_px = pixels(&init.rgb, Some(mask_px), r.width, r.height)?;
                    let masked = self.encode_pixels(&masked_px, r.width, r.height, &mut **noise).await?;
                    let mask = latent_mask(mask_px, r.width, r.height, shape[3], shape[2]);
                    inpaint.push(Some(Inpaint {
                        mask,
                        masked,
                        image: if nine { None } else { image.map(|i| (i, z)) },
                    }));
                    xs.push(x);
                    continue;
                }
                (Some(init), _) => {
                    let clean = self.encode_image(init, r.width, r.height, &mut **noise).await?;
                    let z = noise.draw(n)?;
                    s.add_noise(&clean, &z, start)?
                }
                (None, Some(l)) if l.len() != n => {
                    return Err(Error::Request(format!("latents have {} values, {shape:?} needs {n}", l.len())))
                }
                (None, given) => {
                    let mut x = match given {
                        Some(l) => l,
                        None => noise.draw(n)?,
                    };
                    let sigma0 = s.init_noise_sigma();
                    x.iter_mut().for_each(|v| *v *= sigma0);
                    x
                }
            };
            xs.push(x);
            inpaint.push(None);
        }

        // The guidance embedding is the same every step: upload it once.
        let cond = match &w_embedding {
            Some(w) => Some(GpuTensor::from_f32_as(&self.gpu, &w.repeat(rows), &[rows, w.len()], self.dtype)?),
            None => None,
        };
        // img2img starts part-way through the schedule: its first `start` steps are not run (the
        // init image was noised to step `start` above), as diffusers' img2img pipeline does.
        for (i, &t) in timesteps.iter().enumerate().skip(start) {
            let mut input = Vec::with_capacity(rows * unet_in * hw);
            for ((x, s), p) in xs.iter().zip(&schedulers).zip(&inpaint) {
                let mut scaled = x.clone();
                s.scale_model_input(&mut scaled, i);
                input.extend(scaled);
                if let (true, Some(p)) = (nine, p) {
                    input.extend_from_slice(&p.mask);
                    input.extend_from_slice(&p.masked);
                }
            }
            if cfg {
                input.extend_from_within(..);
            }
            let input = GpuTensor::from_f32_as(&self.gpu, &input, &[rows, unet_in, shape[2], shape[3]], self.dtype)?;
            let out = self
                .unet()?
                .forward_with(&input, t, &conditioning.context, cond.as_ref(), conditioning.added.as_ref())?
                .to_vec_f32()
                .await?;
            finite(&out, &format!("the U-Net (step {} of {})", i - start + 1, total - start), self.dtype)?;
            for (k, ((x, s), noise)) in xs.iter_mut().zip(&mut schedulers).zip(noises.iter_mut()).enumerate() {
                let guided: Vec<f32> = if cfg {
                    let (u, cnd) = (&out[k * n..(k + 1) * n], &out[(b + k) * n..(b + k + 1) * n]);
                    u.iter().zip(cnd).map(|(&u, &c)| u + first.guidance * (c - u)).collect()
                } else {
                    out[k * n..(k + 1) * n].to_vec()
                };
                let z = if s.draws_noise(i) { Some(noise.draw(n)?) } else { None };
                *x = s.step(i, &guided, x, z.as_deref())?;
                // An ordinary U-Net inpaints by keeping the unmasked region on the image's own
                // noising path: re-noised to the next step's level (clean after the last).
                if let Some(Inpaint { mask, image: Some((image, z0)), .. }) = &inpaint[k] {
                    let kept = if i + 1 < total { s.add_noise(image, z0, i + 1)? } else { image.clone() };
                    for (j, v) in x.iter_mut().enumerate() {
                        let m = mask[j % hw];
                        *v = (1.0 - m) * kept[j] + m * *v;
                    }
                }
            }
            let image = match (&self.taesd, self.taesd_use.previews) {
                (Some(d), true) => Some(self.decode_taesd(d, &xs[0], shape).await?.0),
                _ => None,
            };
            let step =
                Step { index: i - start, total: total - start, timestep: t, latents: &xs[0], image: image.as_deref() };
            if !on_step(step) {
                return Err(Error::Cancelled);
            }
        }
        let mut images = Vec::with_capacity(b);
        for x in xs {
            let (rgb, width, height) = match (&self.taesd, self.taesd_use.final_decode) {
                (Some(d), true) => self.decode_taesd(d, &x, shape).await?,
                _ => self.decode(&x, shape).await?,
            };
            images.push(Generated { latents: x, latent_shape: shape, rgb, width, height });
        }
        Ok(images)
    }

    /// Latents (as the pipeline holds them: TAESD takes them unscaled) → 8-bit RGB by TAESD.
    async fn decode_taesd(
        &self,
        d: &TinyDecoder,
        latents: &[f32],
        shape: [usize; 4],
    ) -> Result<(Vec<u8>, usize, usize)> {
        if shape[1] != d.latent_channels {
            return Err(Error::Request(format!(
                "TAESD decodes {} latent channels, this model has {}",
                d.latent_channels, shape[1]
            )));
        }
        let z = GpuTensor::from_f32_as(&self.gpu, latents, &shape, self.dtype)?;
        let px = d.forward(&z)?.to_vec_f32().await?;
        finite(&px, "TAESD's decoder", self.dtype)?;
        let (h, w) = (shape[2] * d.upscale, shape[3] * d.upscale);
        Ok((to_rgb8(&px, 3, h, w), w, h))
    }

    /// The img2img start point: the VAE posterior sample of the image, times `scaling_factor`.
    async fn encode_image(
        &self,
        init: &InitImage,
        width: usize,
        height: usize,
        noise: &mut dyn NoiseSource,
    ) -> Result<Vec<f32>> {
        self.encode_pixels(&pixels(&init.rgb, None, width, height)?, width, height, noise).await
    }

    /// The VAE posterior sample of CHW pixels in [-1, 1], times `scaling_factor`.
    async fn encode_pixels(
        &self,
        px: &[f32],
        width: usize,
        height: usize,
        noise: &mut dyn NoiseSource,
    ) -> Result<Vec<f32>> {
        if let (Some(e), true) = (&self.taesd_encoder, self.taesd_use.encode) {
            let img = GpuTensor::from_f32_as(&self.gpu, px, &[1, 3, height, width], self.dtype)?;
            let latents = e.forward(&img)?.to_vec_f32().await?;
            finite(&latents, "TAESD's encoder", self.dtype)?;
            return Ok(latents);
        }
        let encoder = self
            .encoder
            .as_ref()
            .ok_or_else(|| Error::Request("this model was loaded without the VAE encoder".into()))?;
        // Tiled like the decode when the whole image's activations would not fit (a 512² SD
        // image in f32 is 134 MB in the first stage alone: over WebGPU's 128 MiB binding).
        if self.memory.trim_between_stages {
            self.gpu.trim_pool();
        }
        let caps = self.gpu.caps();
        let tiling = vae_tiling::plan_encode(
            &self.vae_config,
            height,
            width,
            self.vae_dtype(),
            self.vae_budget(),
            caps.max_storage_binding.min(caps.max_buffer_size),
        )?;
        let f = self.vae_config.downscale();
        let (mean, logvar) =
            vae_tiling::encode(encoder, &self.gpu, self.vae_dtype(), f, px, [3, height, width], tiling).await?;
        finite(&mean, "the VAE encoder", self.vae_dtype())?;
        finite(&logvar, "the VAE encoder", self.vae_dtype())?;
        let z = noise.draw(mean.len())?;
        let sf = self.vae_config.scaling_factor as f32;
        Ok(mean.iter().zip(&logvar).zip(&z).map(|((&m, &lv), &z)| (m + (0.5 * lv).exp() * z) * sf).collect())
    }

    /// VAE-decodes latents and converts to 8-bit RGB as diffusers' image processor does:
    /// round(255 * clamp(x / 2 + 0.5, 0, 1)).
    pub async fn decode(&self, latents: &[f32], shape: [usize; 4]) -> Result<(Vec<u8>, usize, usize)> {
        let inv = 1.0 / self.vae_config.scaling_factor as f32;
        let z: Vec<f32> = latents.iter().map(|v| v * inv).collect();
        let [_, c, lh, lw] = shape;
        if self.memory.trim_between_stages {
            self.gpu.trim_pool();
        }
        let tiling = vae_tiling::plan(
            &self.vae_config,
            lh,
            lw,
            self.vae_dtype(),
            self.vae_budget(),
            self.gpu.caps().max_storage_binding.min(self.gpu.caps().max_buffer_size),
        )?;
        let img = vae_tiling::decode(&self.decoder, &self.gpu, self.vae_dtype(), &z, [c, lh, lw], tiling).await?;
        finite(&img.data, "the VAE decoder", self.vae_dtype())?;
        Ok((to_rgb8(&img.data, img.channels, img.height, img.width), img.width, img.height))
    }

    /// What the VAE computes in: the model's dtype, or f32 where its config says `force_upcast`
    /// (its weights were loaded so: `loader::vae`).
    pub fn vae_dtype(&self) -> DType {
        self.vae_config.compute_dtype(self.dtype)
    }

    /// Activation bytes the VAE decode may use: what the overall budget leaves beside the buffers
    /// alive now (weights, the pool), or the fixed allowance.
    pub fn vae_budget(&self) -> u64 {
        match self.memory.budget {
            Some(total) => {
                let s = self.gpu.stats();
                // Weights over the budget still get small tiles rather than no decode.
                total.saturating_sub(s.bytes_live + s.bytes_pooled).max(MIN_VAE_ACTIVATIONS)
            }
            None => self.memory.vae_activations,
        }
    }
}

/// `Error::NonFinite` naming `stage` when `values` hold NaN or infinity: an overflow in f16 (or
/// broken weights) must end the generation with a reason, never become a black image.
pub(super) fn finite(values: &[f32], stage: &str, dtype: DType) -> Result<()> {
    if values.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    let hint = if dtype == DType::F16 {
        "f16 overflowed here; this model needs f32 for it (the command line's --precision f32)"
    } else {
        "the model's weights or this request's inputs hold values f32 cannot carry through"
    };
    Err(Error::NonFinite { stage: stage.into(), dtype: dtype.to_string(), hint: hint.into() })
}

/// diffusers' `get_guidance_scale_embedding(w, dim)` for one w, in its f32 operation order:
/// [sin(1000 w f_j), cos(1000 w f_j)] with f_j = exp(-j ln(10000) / (dim/2 - 1)). The
/// transcendentals are evaluated in f64 and rounded, which reproduces torch's f32 results (its
/// exp/sin/cos are accurate to the last bit here; arguments reach ~7500 rad).
pub fn guidance_embedding(w: f32, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let step = (10000f64.ln() as f32) / (half as f32 - 1.0);
    let w = w * 1000.0;
    let args: Vec<f32> = (0..half).map(|j| w * (libm::exp((j as f32 * -step) as f64) as f32)).collect();
    let mut out: Vec<f32> = args
        .iter()
        .map(|&a| libm::sin(a as f64) as f32)
        .chain(args.iter().map(|&a| libm::cos(a as f64) as f32))
        .collect();
    out.resize(dim, 0.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgba_is_opaque_rgb() {
        let g =
            Generated { latents: vec![], latent_shape: [1, 4, 1, 1], rgb: vec![1, 2, 3, 4, 5, 6], width: 2, height: 1 };
        assert_eq!(g.rgba(), [1, 2, 3, 255, 4, 5, 6, 255]);
    }
}
