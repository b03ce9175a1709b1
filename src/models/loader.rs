//! A Stable Diffusion model as Hugging Face publishes it (the diffusers folder layout) or as our
//! converter packages it (`package`), read through a `FileSource` so the same code loads from a
//! local folder, memory or a CDN.
//!
//! Weight files: `<component>/{model,diffusion_pytorch_model}[.fp16].safetensors`; the plain
//! (usually fp32) file is preferred when present, else the `.fp16` variant. Only the header is
//! read whole; each tensor is then read by byte range, so loading never holds more than one
//! tensor beyond what the source itself keeps (a CDN source fetches exactly those ranges).

use super::component::Component;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::clip::ClipTextModel;
use super::config::{ClipConfig, UNetConfig, VaeConfig};
use super::lora::{LoraUse, Merged};
use super::package::Package;
use super::single_file::SingleFile;
use super::tokenizer::ClipTokenizer;
use super::unet::UNet;
use super::vae::{Decoder, Encoder};
use super::weights::{Rounding, TensorInfo, TensorSource, Weights};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};
use crate::quant::QuantPolicy;

/// Files of a model repo by relative path (`unet/config.json`). `Ok(None)` when absent.
pub trait FileSource {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>>;

    /// `len` bytes at `start`; an error if the file is shorter.
    fn read_range(&self, path: &str, start: u64, len: u64) -> Result<Option<Vec<u8>>> {
        Ok(match self.read(path)? {
            Some(all) => Some(slice_range(&all, path, start, len)?.to_vec()),
            None => None,
        })
    }

    /// Where the files come from, for messages.
    fn describe(&self) -> String;

    /// The package these files are, if they are one (see `Package`).
    fn as_package(&self) -> Option<&Package<'_>> {
        None
    }

    /// The single-file checkpoint these files are, if they are one (see `SingleFile`).
    fn as_single_file(&self) -> Option<&SingleFile<'_>> {
        None
    }

    /// Already found not to be a package (`with_model`'s `Plain`): no need to look again.
    fn is_plain(&self) -> bool {
        false
    }
}

/// A source `with_model` found is no package: the loaders it calls in turn do not probe for
/// `manifest.json` again (over HTTP, one request each).
struct Plain<'a>(&'a dyn FileSource);

impl FileSource for Plain<'_> {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.0.read(path)
    }
    fn read_range(&self, path: &str, start: u64, len: u64) -> Result<Option<Vec<u8>>> {
        self.0.read_range(path, start, len)
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn is_plain(&self) -> bool {
        true
    }
}

fn slice_range<'b>(all: &'b [u8], path: &str, start: u64, len: u64) -> Result<&'b [u8]> {
    let end = start
        .checked_add(len)
        .filter(|&e| e <= all.len() as u64)
        .ok_or_else(|| Error::Weights(format!("{path} is truncated: {} bytes, needed {start}+{len}", all.len())))?;
    Ok(&all[start as usize..end as usize])
}

/// A folder on disk (native only: shared code never sees paths).
#[cfg(not(target_arch = "wasm32"))]
pub struct DirSource(pub std::path::PathBuf);

/// The most a whole-file read takes (configs, tokenizer files, a package's largest shard): a
/// bigger file is refused before it is read, and so is anything that is not a regular file
/// (`/dev/zero` as a config never ends).
pub const MAX_WHOLE_FILE: u64 = 2048 << 20;

/// A whole regular file of at most `max` bytes.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_file(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error as IoError, ErrorKind, Read};
    let f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(IoError::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > max {
        return Err(IoError::new(ErrorKind::InvalidData, format!("{} bytes, more than the {max} taken", meta.len())));
    }
    let mut out = Vec::new();
    // `take`: a file that grows while it is read still stops at the bound.
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(IoError::new(ErrorKind::InvalidData, format!("more than the {max} bytes taken")));
    }
    Ok(out)
}

#[cfg(not(target_arch = "wasm32"))]
impl FileSource for DirSource {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let full = self.0.join(path);
        match read_file(&full, MAX_WHOLE_FILE) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            r => r.map(Some).map_err(|e| Error::Weights(format!("reading {}: {e}", full.display()))),
        }
    }

    fn read_range(&self, path: &str, start: u64, len: u64) -> Result<Option<Vec<u8>>> {
        use std::io::{Read, Seek, SeekFrom};
        let full = self.0.join(path);
        let mut f = match std::fs::File::open(&full) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Weights(format!("reading {}: {e}", full.display()))),
        };
        // The range is checked against the file's real length before it sizes a buffer: the
        // numbers come from a header or a manifest, which may lie.
        let size = f.metadata().map_err(|e| Error::Weights(format!("reading {}: {e}", full.display())))?.len();
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::Weights(format!(
                "{} is truncated: bytes {start}+{len} asked, the file has {size}",
                full.display()
            )));
        }
        let mut buf = crate::error::try_zeroed(len, || format!("{} at {start}", full.display()))?;
        f.seek(SeekFrom::Start(start)).and_then(|_| f.read_exact(&mut buf)).map_err(|e| {
            Error::Weights(format!("{} is truncated or unreadable at {start}+{len}: {e}", full.display()))
        })?;
        Ok(Some(buf))
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
    fn read_range(&self, path: &str, start: u64, len: u64) -> Result<Option<Vec<u8>>> {
        self.files.get(path).map(|all| slice_range(all, path, start, len).map(<[u8]>::to_vec)).transpose()
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

fn required(src: &dyn FileSource, path: &str) -> Result<Vec<u8>> {
    src.read(path)?.ok_or_else(|| Error::Weights(format!("{} has no {path}", src.describe())))
}

/// A UTF-8 file of the model, required.
pub fn text(src: &dyn FileSource, path: &str) -> Result<String> {
    String::from_utf8(required(src, path)?).map_err(|_| Error::Weights(format!("{path} is not UTF-8")))
}

/// One safetensors file read by byte ranges: the header once, then each tensor on request.
pub struct SafeTensorsRanges<'a> {
    src: &'a dyn FileSource,
    path: String,
    entries: BTreeMap<String, (TensorInfo, u64, u64)>,
}

impl<'a> SafeTensorsRanges<'a> {
    /// `Ok(None)` when the file does not exist.
    pub fn open(src: &'a dyn FileSource, path: &str) -> Result<Option<SafeTensorsRanges<'a>>> {
        let Some(prefix) = src.read_range(path, 0, 8)? else { return Ok(None) };
        let n = super::header::header_len(path, &prefix, None)?;
        let json = src
            .read_range(path, 8, n)?
            .ok_or_else(|| Error::Weights(format!("{path} vanished while reading its header")))?;
        let entries =
            super::header::parse(path, &json, None)?.into_iter().map(|t| (t.name, (t.info, t.start, t.len))).collect();
        Ok(Some(SafeTensorsRanges { src, path: path.to_string(), entries }))
    }
}

impl TensorSource for SafeTensorsRanges<'_> {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.entries.get(name).map(|(i, _, _)| i.clone())
    }
    fn bytes(&self, name: &str) -> Result<std::borrow::Cow<'_, [u8]>> {
        let (_, start, len) = self
            .entries
            .get(name)
            .ok_or_else(|| Error::Tensor { name: name.into(), msg: "missing from the weights".into() })?;
        let bytes = self
            .src
            .read_range(&self.path, *start, *len)?
            .ok_or_else(|| Error::Weights(format!("{} vanished while loading", self.path)))?;
        Ok(std::borrow::Cow::Owned(bytes))
    }
    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
}

/// A component's tensors: from the package, or from its safetensors file (the plain file
/// preferred over the `.fp16` variant).
pub fn component_tensors<'a>(src: &'a dyn FileSource, component: Component) -> Result<Box<dyn TensorSource + 'a>> {
    if let Some(p) = src.as_package() {
        return Ok(Box::new(p.tensors(component.name())?));
    }
    if let Some(s) = src.as_single_file() {
        return Ok(Box::new(s.tensors(component)?));
    }
    for file in component.weights_files() {
        if let Some(t) = SafeTensorsRanges::open(src, &file)? {
            return Ok(Box::new(t));
        }
    }
    Err(Error::Weights(format!("{} has no {component}/{}[.fp16].safetensors", src.describe(), component.stem())))
}

/// How to load: the compute dtype, and optionally a quantization policy applied on load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub dtype: DType,
    pub quant: Option<Arc<QuantPolicy>>,
    /// Also load the VAE encoder (img2img).
    pub with_encoder: bool,
    /// How the policy picks block scales (`Nearest` only for benchmarks).
    pub rounding: Rounding,
    /// LoRAs merged into the U-Net and text encoder weights before the policy stores them.
    pub loras: Vec<LoraUse>,
}

impl LoadOptions {
    pub fn new(dtype: DType) -> LoadOptions {
        LoadOptions { dtype, quant: None, with_encoder: false, rounding: Rounding::Fit, loras: Vec::new() }
    }

    pub fn weights<'a>(&self, t: &'a dyn TensorSource, gpu: &'a Gpu, component: Component) -> Weights<'a> {
        self.apply(Weights::new(t, gpu, self.dtype), component.name())
    }

    /// `w` with this policy (if any) for `component`.
    pub fn apply<'a>(&self, w: Weights<'a>, component: &str) -> Weights<'a> {
        match &self.quant {
            Some(p) => w.with_policy(component, p.clone(), self.rounding),
            None => w,
        }
    }
}

/// Runs `f` on the model's files, seen as a package when they are one.
pub fn with_model<T>(src: &dyn FileSource, f: impl FnOnce(&dyn FileSource) -> Result<T>) -> Result<T> {
    if src.as_package().is_some() || src.as_single_file().is_some() || src.is_plain() {
        return f(src);
    }
    match Package::detect(src)? {
        Some(p) => f(&p),
        None => f(&Plain(src)),
    }
}

#[derive(Deserialize)]
pub struct ModelIndex {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// SDXL pipelines: a missing negative prompt is zeros, not the encoding of "" (diffusers'
    /// default for StableDiffusionXLPipeline is true).
    #[serde(default = "yes")]
    pub force_zeros_for_empty_prompt: bool,
}

fn yes() -> bool {
    true
}

/// `model_index.json`, parsed.
pub fn model_index(src: &dyn FileSource) -> Result<ModelIndex> {
    serde_json::from_str(&text(src, "model_index.json")?)
        .map_err(|e| Error::Config { component: "model_index".into(), msg: e.to_string() })
}

/// The tokenizer of `folder` (`tokenizer`, SDXL's `tokenizer_2`).
fn tokenizer_in(src: &dyn FileSource, folder: &str) -> Result<ClipTokenizer> {
    ClipTokenizer::from_files(
        &required(src, &format!("{folder}/vocab.json"))?,
        &required(src, &format!("{folder}/merges.txt"))?,
        src.read(&format!("{folder}/tokenizer_config.json"))?.as_deref(),
        src.read(&format!("{folder}/special_tokens_map.json"))?.as_deref(),
    )
}

pub fn tokenizer(src: &dyn FileSource) -> Result<ClipTokenizer> {
    with_model(src, |src| tokenizer_in(src, "tokenizer"))
}

/// Whether the model has SDXL's second text encoder (`text_encoder_2/config.json`).
pub fn has_text_encoder_2(src: &dyn FileSource) -> Result<bool> {
    with_model(src, |src| Ok(src.read(&Component::TextEncoder2.config_file())?.is_some()))
}

/// SDXL's `tokenizer_2` (the same BPE, padded with `!`).
pub fn tokenizer_2(src: &dyn FileSource) -> Result<ClipTokenizer> {
    with_model(src, |src| tokenizer_in(src, "tokenizer_2"))
}

pub fn text_encoder(src: &dyn FileSource, gpu: &Gpu, opts: &LoadOptions) -> Result<ClipTextModel> {
    text_encoder_of(src, gpu, opts, Component::TextEncoder)
}

/// SDXL's `text_encoder_2` (CLIPTextModelWithProjection).
pub fn text_encoder_2(src: &dyn FileSource, gpu: &Gpu, opts: &LoadOptions) -> Result<ClipTextModel> {
    text_encoder_of(src, gpu, opts, Component::TextEncoder2)
}

fn text_encoder_of(src: &dyn FileSource, gpu: &Gpu, opts: &LoadOptions, c: Component) -> Result<ClipTextModel> {
    with_model(src, |src| {
        let config = ClipConfig::from_json(&text(src, &c.config_file())?)?;
        let t = component_tensors(src, c)?;
        let merged = Merged::new(&*t, c, &opts.loras, None)?;
        let w = opts.weights(&merged, gpu, c);
        ClipTextModel::load(config, &w)
    })
}

pub fn unet(src: &dyn FileSource, gpu: &Gpu, opts: &LoadOptions) -> Result<UNet> {
    with_model(src, |src| {
        let config = UNetConfig::from_json(&text(src, "unet/config.json")?)?;
        let t = component_tensors(src, Component::Unet)?;
        let vae = if opts.loras.is_empty() { None } else { Some(vae_config(src)?) };
        let merged = Merged::new(&*t, Component::Unet, &opts.loras, vae.as_ref().map(|v| (&config, v)))?;
        let w = opts.weights(&merged, gpu, Component::Unet);
        UNet::load(config, &w)
    })
}

pub fn unet_config(src: &dyn FileSource) -> Result<UNetConfig> {
    with_model(src, |src| UNetConfig::from_json(&text(src, "unet/config.json")?))
}

pub fn vae_config(src: &dyn FileSource) -> Result<VaeConfig> {
    with_model(src, |src| VaeConfig::from_json(&text(src, "vae/config.json")?))
}

/// The VAE decoder, and the encoder when `opts.with_encoder` (img2img), in the VAE's compute
/// dtype (`VaeConfig::compute_dtype`: f32 under `force_upcast`).
pub fn vae(src: &dyn FileSource, gpu: &Gpu, opts: &LoadOptions) -> Result<(Decoder, Option<Encoder>)> {
    with_model(src, |src| {
        let config = vae_config(src)?;
        let t = component_tensors(src, Component::Vae)?;
        let opts = LoadOptions { dtype: config.compute_dtype(opts.dtype), ..opts.clone() };
        let w = opts.weights(&*t, gpu, Component::Vae);
        let decoder = Decoder::load(&config, &w)?;
        let encoder = if opts.with_encoder { Some(Encoder::load(&config, &w)?) } else { None };
        Ok((decoder, encoder))
    })
}

/// The VAE encoder alone, for a model loaded without it that is asked for img2img.
pub fn vae_encoder(src: &dyn FileSource, gpu: &Gpu, opts: &LoadOptions) -> Result<Encoder> {
    with_model(src, |src| {
        let config = vae_config(src)?;
        let t = component_tensors(src, Component::Vae)?;
        let opts = LoadOptions { dtype: config.compute_dtype(opts.dtype), ..opts.clone() };
        let w = opts.weights(&*t, gpu, Component::Vae);
        let encoder = Encoder::load(&config, &w)?;
        Ok(encoder)
    })
}

/// TAESD (`AutoencoderTiny`) from a folder holding its `config.json` and
/// `diffusion_pytorch_model.safetensors` (madebyollin/taesd as published): the decoder, and the
/// encoder when `opts.with_encoder`.
pub fn taesd(
    src: &dyn FileSource,
    gpu: &Gpu,
    opts: &LoadOptions,
) -> Result<(super::taesd::TinyDecoder, Option<super::taesd::TinyEncoder>)> {
    use super::taesd::{TinyConfig, TinyDecoder, TinyEncoder};
    let config = TinyConfig::from_json(&text(src, "config.json")?)?;
    let file = "diffusion_pytorch_model.safetensors";
    let t = SafeTensorsRanges::open(src, file)?
        .ok_or_else(|| Error::Weights(format!("{} has no {file} (a TAESD folder)", src.describe())))?;
    // Tiny and run once per step: plain f16/f32, never quantized.
    let w = LoadOptions { quant: None, loras: Vec::new(), ..opts.clone() }.weights(&t, gpu, Component::Vae);
    let decoder = TinyDecoder::load(&config, &w)?;
    let encoder = if opts.with_encoder { Some(TinyEncoder::load(&config, &w)?) } else { None };
    Ok((decoder, encoder))
}

/// Checks `model_index.json` names a pipeline we can run.
pub fn check_index(src: &dyn FileSource) -> Result<ModelIndex> {
    let index = model_index(src)?;
    match index.class_name.as_deref() {
        Some(
            "StableDiffusionPipeline"
            | "StableDiffusionImg2ImgPipeline"
            | "StableDiffusionInpaintPipeline"
            | "LatentConsistencyModelPipeline"
            | "StableDiffusionXLPipeline"
            | "StableDiffusionXLImg2ImgPipeline",
        )
        | None => Ok(index),
        Some(other) => {
            Err(Error::Config { component: "model_index".into(), msg: format!("{other} is not a supported pipeline") })
        }
    }
}

/// `base` with one component's folder read from `with` instead, whose root holds that
/// component's `config.json` and weights: a standalone VAE repo such as
/// madebyollin/sdxl-vae-fp16-fix (`force_upcast: false`, so SDXL decodes in f16). Only over a
/// diffusers folder: a package or a single file keeps its own components.
pub struct Swapped<'a> {
    base: Box<dyn FileSource + 'a>,
    folder: String,
    with: Box<dyn FileSource + 'a>,
}

impl<'a> Swapped<'a> {
    pub fn new(base: Box<dyn FileSource + 'a>, component: Component, with: Box<dyn FileSource + 'a>) -> Result<Self> {
        if base.as_package().is_some() || base.as_single_file().is_some() {
            return Err(Error::Weights(format!(
                "{}: a {} can be swapped in a diffusers folder only, not a package or a single file",
                base.describe(),
                component.name()
            )));
        }
        if with.read("config.json")?.is_none() {
            return Err(Error::Weights(format!("{}: no config.json for the {}", with.describe(), component.name())));
        }
        Ok(Swapped { base, folder: format!("{}/", component.name()), with })
    }

    fn route(&self, path: &str) -> (&dyn FileSource, String) {
        match path.strip_prefix(&self.folder) {
            Some(rest) => (&*self.with, rest.to_string()),
            None => (&*self.base, path.to_string()),
        }
    }
}

impl FileSource for Swapped<'_> {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let (src, p) = self.route(path);
        src.read(&p)
    }

    fn read_range(&self, path: &str, start: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let (src, p) = self.route(path);
        src.read_range(&p, start, len)
    }

    fn describe(&self) -> String {
        format!("{} with {}from {}", self.base.describe(), self.folder, self.with.describe())
    }
}
