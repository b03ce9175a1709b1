//! A Stable Diffusion model as Hugging Face publishes it (the diffusers folder layout), read
//! through a `FileSource` so the same code loads from a local folder, a package or a CDN.
//!
//! Weight files: `<component>/{model,diffusion_pytorch_model}[.fp16].safetensors`; the plain
//! (usually fp32) file is preferred when present, else the `.fp16` variant — either is converted to
//! the compute dtype while uploading.

use serde::Deserialize;

use super::clip::ClipTextModel;
use super::config::{ClipConfig, UNetConfig, VaeConfig};
use super::tokenizer::ClipTokenizer;
use super::unet::UNet;
use super::vae::{Decoder, Encoder};
use super::weights::{SafeTensorsBytes, Weights};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};

/// Files of a model repo by relative path (`unet/config.json`). `Ok(None)` when absent.
pub trait FileSource {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>>;
    /// Where the files come from, for messages.
    fn describe(&self) -> String;
}

/// A folder on disk (native only: shared code never sees paths).
#[cfg(not(target_arch = "wasm32"))]
pub struct DirSource(pub std::path::PathBuf);

#[cfg(not(target_arch = "wasm32"))]
impl FileSource for DirSource {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match std::fs::read(self.0.join(path)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Weights(format!("reading {}: {e}", self.0.join(path).display()))),
        }
    }
    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

/// Files held in memory (what the browser fetched, a test's inputs).
#[derive(Default)]
pub struct MemorySource {
    pub files: std::collections::HashMap<String, Vec<u8>>,
    pub name: String,
}

impl FileSource for MemorySource {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.files.get(path).cloned())
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

fn required(src: &dyn FileSource, path: &str) -> Result<Vec<u8>> {
    src.read(path)?.ok_or_else(|| Error::Weights(format!("{} has no {path}", src.describe())))
}

fn text(src: &dyn FileSource, path: &str) -> Result<String> {
    String::from_utf8(required(src, path)?).map_err(|_| Error::Weights(format!("{path} is not UTF-8")))
}

/// Reads a component's weights, preferring the plain file over the `.fp16` variant.
pub fn component_weights(src: &dyn FileSource, component: &str, stem: &str) -> Result<SafeTensorsBytes> {
    for file in [format!("{component}/{stem}.safetensors"), format!("{component}/{stem}.fp16.safetensors")] {
        if let Some(bytes) = src.read(&file)? {
            return SafeTensorsBytes::new(bytes, &file);
        }
    }
    Err(Error::Weights(format!("{} has no {component}/{stem}[.fp16].safetensors", src.describe())))
}

#[derive(Deserialize)]
struct ModelIndex {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
}

pub fn tokenizer(src: &dyn FileSource) -> Result<ClipTokenizer> {
    ClipTokenizer::from_files(
        &required(src, "tokenizer/vocab.json")?,
        &required(src, "tokenizer/merges.txt")?,
        src.read("tokenizer/tokenizer_config.json")?.as_deref(),
        src.read("tokenizer/special_tokens_map.json")?.as_deref(),
    )
}

pub fn text_encoder(src: &dyn FileSource, gpu: &Gpu, dtype: DType) -> Result<ClipTextModel> {
    let config = ClipConfig::from_json(&text(src, "text_encoder/config.json")?)?;
    let file = component_weights(src, "text_encoder", "model")?;
    ClipTextModel::load(config, &Weights::new(&file, gpu, dtype))
}

pub fn unet(src: &dyn FileSource, gpu: &Gpu, dtype: DType) -> Result<UNet> {
    let config = UNetConfig::from_json(&text(src, "unet/config.json")?)?;
    let file = component_weights(src, "unet", "diffusion_pytorch_model")?;
    UNet::load(config, &Weights::new(&file, gpu, dtype))
}

pub fn vae_config(src: &dyn FileSource) -> Result<VaeConfig> {
    VaeConfig::from_json(&text(src, "vae/config.json")?)
}

/// The VAE decoder, and the encoder when `with_encoder` (img2img).
pub fn vae(src: &dyn FileSource, gpu: &Gpu, dtype: DType, with_encoder: bool) -> Result<(Decoder, Option<Encoder>)> {
    let config = vae_config(src)?;
    let file = component_weights(src, "vae", "diffusion_pytorch_model")?;
    let w = Weights::new(&file, gpu, dtype);
    let decoder = Decoder::load(&config, &w)?;
    let encoder = if with_encoder { Some(Encoder::load(&config, &w)?) } else { None };
    Ok((decoder, encoder))
}

/// Checks `model_index.json` names a pipeline we can run.
pub fn check_index(src: &dyn FileSource) -> Result<()> {
    let index: ModelIndex = serde_json::from_str(&text(src, "model_index.json")?)
        .map_err(|e| Error::Config { component: "model_index".into(), msg: e.to_string() })?;
    match index.class_name.as_deref() {
        Some("StableDiffusionPipeline" | "StableDiffusionImg2ImgPipeline" | "LatentConsistencyModelPipeline")
        | None => Ok(()),
        Some(other) => {
            Err(Error::Config { component: "model_index".into(), msg: format!("{other} is not a supported pipeline") })
        }
    }
}

/// Everything generation needs from a diffusers folder; `with_encoder` also loads the VAE
/// encoder (img2img).
pub fn stable_diffusion(
    src: &dyn FileSource,
    gpu: &Gpu,
    dtype: DType,
    with_encoder: bool,
) -> Result<crate::pipeline::generate::StableDiffusion> {
    check_index(src)?;
    let scheduler_config =
        crate::pipeline::schedule::SchedulerConfig::from_json(&text(src, "scheduler/scheduler_config.json")?)?;
    let (decoder, encoder) = vae(src, gpu, dtype, with_encoder)?;
    Ok(crate::pipeline::generate::StableDiffusion {
        gpu: gpu.clone(),
        dtype,
        tokenizer: tokenizer(src)?,
        text_encoder: text_encoder(src, gpu, dtype)?,
        unet: unet(src, gpu, dtype)?,
        decoder,
        encoder,
        vae_config: vae_config(src)?,
        scheduler_config,
    })
}
