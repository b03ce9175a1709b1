//! The whole pipeline from a diffusers folder or a package: each component through the models'
//! loaders, plus the scheduler config. Here, not in `models`, because a pipeline is what the
//! layer above the models assembles from them.

use super::generate::StableDiffusion;
use super::schedule::SchedulerConfig;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::models::loader::{self, FileSource, LoadOptions};

impl StableDiffusion {
    /// Everything generation needs. Components load in the order the converter writes them
    /// (`Component::LOAD_ORDER`: VAE, text encoder(s), U-Net), so a package streams in order.
    pub fn load(src: &dyn FileSource, gpu: &Gpu, opts: &LoadOptions) -> Result<StableDiffusion> {
        Self::load_parts(src, gpu, opts, true)
    }

    /// `load`, with or without the U-Net's weights (`pipeline::sequential` loads them later).
    pub(super) fn load_parts(
        src: &dyn FileSource,
        gpu: &Gpu,
        opts: &LoadOptions,
        with_unet: bool,
    ) -> Result<StableDiffusion> {
        loader::with_model(src, |src| {
            let index = loader::check_index(src)?;
            let scheduler_config = SchedulerConfig::from_json(&loader::text(src, "scheduler/scheduler_config.json")?)?;
            let (decoder, encoder) = loader::vae(src, gpu, opts)?;
            let xl = loader::has_text_encoder_2(src)?;
            let text_encoder = loader::text_encoder(src, gpu, opts)?;
            let text_encoder_2 = if xl { Some(loader::text_encoder_2(src, gpu, opts)?) } else { None };
            let unet = if with_unet { Some(loader::unet(src, gpu, opts)?) } else { None };
            Ok(StableDiffusion {
                gpu: gpu.clone(),
                dtype: opts.dtype,
                tokenizer: loader::tokenizer(src)?,
                text_encoder: Some(text_encoder),
                tokenizer_2: if xl { Some(loader::tokenizer_2(src)?) } else { None },
                text_encoder_2,
                force_zeros_for_empty_prompt: index.force_zeros_for_empty_prompt,
                unet_config: match &unet {
                    Some(u) => u.config.clone(),
                    None => loader::unet_config(src)?,
                },
                unet,
                decoder,
                encoder,
                vae_config: loader::vae_config(src)?,
                scheduler_config,
                memory: Default::default(),
                taesd: None,
                taesd_encoder: None,
                taesd_use: Default::default(),
            })
        })
    }
}
