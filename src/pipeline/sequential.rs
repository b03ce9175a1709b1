//! Generating where the GPU cannot hold every component at once (SDXL-Turbo's q4_0 weights are
//! 2.49 GB; a 2 GB budget holds the text encoders or the U-Net, not both): the text encoders
//! and the U-Net take turns, as diffusers' `enable_model_cpu_offload` moves them, with the
//! model's files (a package in IndexedDB, a folder) in place of CPU memory. A new prompt is
//! encoded with the U-Net released; the U-Net is then loaded for the denoising and stays while
//! the prompt does (its conditioning is kept, a few MB), so only a prompt change reloads.

use super::generate::{Generated, NoiseSource, Request, StableDiffusion, Step};
use super::prompt::PromptSyntax;
use super::text::Conditioning;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::models::loader::{self, FileSource, LoadOptions};

/// GPU bytes a generation in turns aims to stay within (WebGPU devices of 2 GB and up).
pub const LOW_MEMORY_BUDGET: u64 = 2_000_000_000;

/// What a conditioning was made from: a request with the same key reuses it.
#[derive(Clone, Debug, PartialEq)]
struct Key {
    prompt: String,
    negative_prompt: Option<String>,
    syntax: PromptSyntax,
    guided: bool,
    width: usize,
    height: usize,
}

/// The last prompt's conditioning, kept between generations.
#[derive(Default)]
pub struct Turns {
    kept: Option<(Key, Conditioning)>,
    /// Text-encoder and U-Net loads made so far (each a read of its weights).
    pub loads: usize,
}

impl StableDiffusion {
    /// Everything but the U-Net, which `generate_in_turns` loads once the prompt is encoded.
    /// In turns the whole run aims at `LOW_MEMORY_BUDGET`: the VAE decode is tiled to what the
    /// U-Net's and the VAE's weights leave of it.
    pub fn load_in_turns(src: &dyn FileSource, gpu: &Gpu, opts: &LoadOptions) -> Result<StableDiffusion> {
        let mut sd = Self::load_parts(src, gpu, opts, false)?;
        sd.memory.budget = Some(LOW_MEMORY_BUDGET);
        Ok(sd)
    }

    /// Frees the U-Net's weights until `load_unet`.
    pub fn release_unet(&mut self) {
        self.unet = None;
        self.gpu.trim_pool();
    }

    /// (Re)loads the U-Net from the model's files.
    pub fn load_unet(&mut self, src: &dyn FileSource, opts: &LoadOptions) -> Result<()> {
        if self.unet.is_none() {
            self.unet = Some(loader::unet(src, &self.gpu, opts)?);
        }
        Ok(())
    }

    /// (Re)loads the text encoders (both, for SDXL) from the model's files.
    pub fn load_text_encoders(&mut self, src: &dyn FileSource, opts: &LoadOptions) -> Result<()> {
        if self.text_encoder.is_none() {
            self.text_encoder = Some(loader::text_encoder(src, &self.gpu, opts)?);
        }
        if self.tokenizer_2.is_some() && self.text_encoder_2.is_none() {
            self.text_encoder_2 = Some(loader::text_encoder_2(src, &self.gpu, opts)?);
        }
        Ok(())
    }

    /// `generate` with the text encoders and the U-Net never on the GPU together: a prompt not
    /// seen last time releases the U-Net, loads the encoders from `src`, encodes, releases
    /// them; then the U-Net is loaded (if it is not) and the image made. The same image as
    /// `generate` gives. The steps are public for callers that hold the model in a `RefCell`
    /// (the wasm `Model`): the loads need `&mut self`, the awaits only `&self`.
    #[allow(clippy::too_many_arguments)]
    pub async fn generate_in_turns(
        &mut self,
        src: &dyn FileSource,
        opts: &LoadOptions,
        turns: &mut Turns,
        req: &Request,
        latents: Option<Vec<f32>>,
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(Step<'_>) -> bool,
    ) -> Result<Generated> {
        if self.turn_needs_encoding(turns, req)? {
            self.turn_load_text_encoders(src, opts, turns)?;
            self.turn_encode(turns, req).await?;
        }
        self.turn_load_unet(src, opts, turns)?;
        self.turn_generate(turns, req, latents, noise, on_step).await
    }

    /// Whether `req`'s prompt must be encoded (it is not the one kept). A request that cannot
    /// run is refused here, before it costs a reload.
    pub fn turn_needs_encoding(&self, turns: &Turns, req: &Request) -> Result<bool> {
        self.check_request(req)?;
        let key = self.key(req);
        Ok(turns.kept.as_ref().is_none_or(|(k, _)| *k != key))
    }

    /// Releases the U-Net and loads the text encoders.
    pub fn turn_load_text_encoders(
        &mut self,
        src: &dyn FileSource,
        opts: &LoadOptions,
        turns: &mut Turns,
    ) -> Result<()> {
        turns.kept = None;
        self.release_unet();
        if self.text_encoder.is_none() {
            turns.loads += 1;
        }
        self.load_text_encoders(src, opts)
    }

    /// Encodes `req`'s prompts and keeps their conditioning.
    pub async fn turn_encode(&self, turns: &mut Turns, req: &Request) -> Result<()> {
        let c = self.condition(std::slice::from_ref(req), self.guided(req)).await?;
        turns.kept = Some((self.key(req), c));
        Ok(())
    }

    /// Releases the text encoders and loads the U-Net (when it is not loaded).
    pub fn turn_load_unet(&mut self, src: &dyn FileSource, opts: &LoadOptions, turns: &mut Turns) -> Result<()> {
        if self.text_encoder.is_some() || self.text_encoder_2.is_some() {
            self.release_text_encoder();
        }
        if self.unet.is_none() {
            turns.loads += 1;
            self.load_unet(src, opts)?;
        }
        Ok(())
    }

    /// The denoising and decode on the kept conditioning.
    pub async fn turn_generate(
        &self,
        turns: &Turns,
        req: &Request,
        latents: Option<Vec<f32>>,
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(Step<'_>) -> bool,
    ) -> Result<Generated> {
        let kept = match &turns.kept {
            Some((k, c)) if *k == self.key(req) => c,
            _ => return Err(Error::Request("this prompt was not encoded (turn_encode)".into())),
        };
        let mut noises: [&mut dyn NoiseSource; 1] = [noise];
        let mut out = self.run(std::slice::from_ref(req), vec![latents], &mut noises, on_step, Some(kept)).await?;
        Ok(out.remove(0))
    }

    fn key(&self, req: &Request) -> Key {
        let guided = self.guided(req);
        Key {
            prompt: req.prompt.clone(),
            negative_prompt: req.negative_prompt.clone().filter(|_| guided),
            syntax: req.prompt_syntax,
            guided,
            width: req.width,
            height: req.height,
        }
    }
}
