//! A single-file checkpoint (`.safetensors` in the original layout, see `ldm`) seen as the
//! diffusers model it holds: configs, tokenizer and scheduler from a companion folder (the
//! published repo's small files, or a fine-tune's), every weight from the checkpoint under its
//! diffusers name. Loading, quantizing on load and converting to a package then work as they do
//! for a diffusers folder.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::component::Component;
use super::config::{ClipConfig, UNetConfig, VaeConfig};
use super::ldm::{self, Cut, Family};
use super::loader::{text, FileSource, SafeTensorsRanges};
use super::weights::{TensorInfo, TensorSource};
use crate::error::{Error, Result};

pub struct SingleFile<'a> {
    checkpoint: Box<dyn FileSource + 'a>,
    path: String,
    companion: Box<dyn FileSource + 'a>,
    pub family: Family,
    unet: UNetConfig,
    vae: VaeConfig,
    /// The scheduler's `prediction_type` when the file or the user says (shapes cannot tell an
    /// SD 2 768-v model from a 512 epsilon one), else the companion's.
    prediction: Option<String>,
}

/// What Stability's ModelSpec metadata (`modelspec.prediction_type`: `epsilon` or `v`) in a
/// safetensors header says.
pub fn modelspec_prediction(path: &str, header_json: &[u8]) -> Result<Option<String>> {
    let v: serde_json::Value =
        serde_json::from_slice(header_json).map_err(|e| Error::Weights(format!("{path}: header: {e}")))?;
    Ok(match v["__metadata__"]["modelspec.prediction_type"].as_str() {
        Some("v") | Some("v_prediction") => Some("v_prediction".into()),
        Some("epsilon") => Some("epsilon".into()),
        _ => None,
    })
}

fn file_prediction(checkpoint: &dyn FileSource, path: &str) -> Result<Option<String>> {
    let Some(prefix) = checkpoint.read_range(path, 0, 8)? else { return Ok(None) };
    let n = super::header::header_len(path, &prefix, None)?;
    let Some(json) = checkpoint.read_range(path, 8, n)? else { return Ok(None) };
    modelspec_prediction(path, &json)
}

/// Checks that `names` (with `info`) are a single-file SD 1.x/2.x checkpoint whose U-Net and
/// text encoder fit the companion's configs (`companion` names them in messages): the loader and
/// the streaming converter both ask before reading any weight.
pub fn check_checkpoint(
    path: &str,
    names: &[String],
    info: &dyn Fn(&str) -> Option<TensorInfo>,
    unet: &UNetConfig,
    text_encoder_config: &str,
    companion: &str,
) -> Result<Family> {
    let family = Family::detect(names).ok_or_else(|| {
        Error::Weights(format!(
            "{path}: not a single-file Stable Diffusion checkpoint (no `{}` or `{}` tensors)",
            ldm::CLIP_L,
            ldm::OPEN_CLIP
        ))
    })?;
    if family == Family::Sdxl {
        return Err(Error::Weights(format!("{path}: an SDXL checkpoint; single-file SDXL is not supported yet")));
    }
    // The text encoder's width tells SD 1 (768) from SD 2 (1024); a companion of the other
    // family is a wrong choice the user should hear about now, not as a shape error later.
    let want = match family {
        Family::Sd1 => "SD 1.x (CLIP ViT-L, 768 wide)",
        _ => "SD 2.x (OpenCLIP ViT-H, 1024 wide)",
    };
    // OpenCLIP (SD 2) uses gelu, OpenAI's CLIP (SD 1) quick_gelu: configs of the other
    // family would fail later on a tensor name; say what is wrong instead.
    let te = ClipConfig::from_json(text_encoder_config)?;
    let sd2_configs = te.hidden_act == "gelu";
    if sd2_configs != (family == Family::Sd2) {
        let theirs =
            if sd2_configs { "an SD 2.x model's (OpenCLIP, gelu)" } else { "an SD 1.x model's (CLIP, quick_gelu)" };
        return Err(Error::Weights(format!(
            "{path} is {want}; the configs in {companion} are {theirs}: pass the configs of its base model"
        )));
    }
    let key = format!("{}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", ldm::UNET);
    let context = info(&key).and_then(|i| i.shape.get(1).copied());
    let ctx = unet.cross_attention_dim;
    if let Some(got) = context.filter(|&c| c != ctx) {
        return Err(Error::Weights(format!(
            "{path} is {want} with a {got}-wide context; the configs in {companion} are for {ctx}"
        )));
    }
    Ok(family)
}

/// `scheduler_config.json` with `prediction_type` set to `prediction`.
pub fn with_prediction(config: &[u8], prediction: &str) -> Result<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(config)
        .map_err(|e| Error::Config { component: "scheduler".into(), msg: e.to_string() })?;
    if let Some(o) = v.as_object_mut() {
        o.insert("prediction_type".into(), prediction.into());
        // from_config would otherwise take the class default for a listed key.
        if let Some(serde_json::Value::Array(d)) = o.get_mut("_use_default_values") {
            d.retain(|k| k != "prediction_type");
        }
    }
    serde_json::to_vec(&v).map_err(|e| Error::Weights(e.to_string()))
}

impl<'a> SingleFile<'a> {
    /// `path` in `checkpoint` is the file; `companion` has the configs (`unet/config.json`, …,
    /// `tokenizer/`, `scheduler/`). Checks the file is a single-file SD 1.x/2.x checkpoint whose
    /// U-Net and text encoder fit those configs.
    pub fn open(
        checkpoint: Box<dyn FileSource + 'a>,
        path: &str,
        companion: Box<dyn FileSource + 'a>,
    ) -> Result<SingleFile<'a>> {
        let file = SafeTensorsRanges::open(&*checkpoint, path)?
            .ok_or_else(|| Error::Weights(format!("{} has no {path}", checkpoint.describe())))?;
        let names = file.names();
        let unet = UNetConfig::from_json(&text(&*companion, "unet/config.json")?)?;
        let vae = VaeConfig::from_json(&text(&*companion, "vae/config.json")?)?;
        let te = text(&*companion, "text_encoder/config.json")?;
        let family = check_checkpoint(path, &names, &|n| file.info(n), &unet, &te, &companion.describe())?;
        drop(file);
        let prediction = file_prediction(&*checkpoint, path)?;
        let sf = SingleFile { checkpoint, path: path.to_string(), companion, family, unet, vae, prediction };
        Ok(sf)
    }

    /// The user's choice of `epsilon` or `v_prediction`, over the file's metadata and the
    /// companion's scheduler config.
    pub fn set_prediction(&mut self, prediction: &str) -> Result<()> {
        if !matches!(prediction, "epsilon" | "v_prediction") {
            return Err(Error::Request(format!("prediction type {prediction}: epsilon or v_prediction")));
        }
        self.prediction = Some(prediction.into());
        Ok(())
    }

    pub fn prediction(&self) -> Option<&str> {
        self.prediction.as_deref()
    }

    /// The checkpoint file's path and where its bytes are (the streaming converter reads it raw).
    pub fn checkpoint(&self) -> (&str, &dyn FileSource) {
        (&self.path, &*self.checkpoint)
    }

    /// The component's tensors, named as diffusers names them.
    pub fn tensors(&self, component: Component) -> Result<LdmTensors<'_>> {
        let file = SafeTensorsRanges::open(&*self.checkpoint, &self.path)?
            .ok_or_else(|| Error::Weights(format!("{} vanished while loading", self.path)))?;
        let mut map = BTreeMap::new();
        for name in file.names() {
            for (c, diffusers, cut) in ldm::ldm_to_diffusers(&name, &self.unet, &self.vae) {
                if c == component {
                    map.insert(diffusers, (name.clone(), cut));
                }
            }
        }
        Ok(LdmTensors { file, map, path: self.path.clone(), last: Mutex::new(None) })
    }
}

impl FileSource for SingleFile<'_> {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let file = self.companion.read(path)?;
        match (&self.prediction, file) {
            (Some(p), Some(bytes)) if path == "scheduler/scheduler_config.json" => {
                Ok(Some(with_prediction(&bytes, p)?))
            }
            (_, file) => Ok(file),
        }
    }
    fn describe(&self) -> String {
        format!("{} (configs from {})", self.path, self.companion.describe())
    }
    fn as_single_file(&self) -> Option<&SingleFile<'_>> {
        Some(self)
    }
}

/// One component of a single-file checkpoint under diffusers names.
pub struct LdmTensors<'a> {
    file: SafeTensorsRanges<'a>,
    /// diffusers name → (name in the file, how to cut it)
    map: BTreeMap<String, (String, Cut)>,
    path: String,
    /// The last whole tensor read: a fused `in_proj` serves q, k and v in turn.
    last: Mutex<Option<(String, Arc<Vec<u8>>)>>,
}

impl LdmTensors<'_> {
    fn whole(&self, name: &str) -> Result<Arc<Vec<u8>>> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, b)) = last.as_ref() {
            if n == name {
                return Ok(b.clone());
            }
        }
        let b = Arc::new(self.file.bytes(name)?.into_owned());
        *last = Some((name.to_string(), b.clone()));
        Ok(b)
    }
}

impl TensorSource for LdmTensors<'_> {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        let (src, cut) = self.map.get(name)?;
        let mut info = self.file.info(src)?;
        match *cut {
            Cut::Whole => {}
            Cut::Squeeze => {
                if info.shape.len() == 4 && info.shape[2..] == [1, 1] {
                    info.shape.truncate(2);
                }
            }
            Cut::Rows { parts, .. } => {
                let rows = *info.shape.first()?;
                if rows % parts != 0 {
                    return None;
                }
                info.shape[0] = rows / parts;
            }
        }
        Some(info)
    }

    fn bytes(&self, name: &str) -> Result<std::borrow::Cow<'_, [u8]>> {
        let (src, cut) = self.map.get(name).ok_or_else(|| Error::Tensor {
            name: name.into(),
            msg: format!("missing from the single-file checkpoint {}", self.path),
        })?;
        match *cut {
            Cut::Whole | Cut::Squeeze => Ok(std::borrow::Cow::Owned(self.file.bytes(src)?.into_owned())),
            Cut::Rows { index, parts } => {
                let all = self.whole(src)?;
                let rows = self.file.info(src).and_then(|i| i.shape.first().copied()).unwrap_or(0);
                if rows == 0 || rows % parts != 0 || all.len() % parts != 0 {
                    return Err(Error::Tensor {
                        name: src.clone(),
                        msg: format!(
                            "in {}: {rows} rows ({} bytes) do not split into {parts} equal parts",
                            self.path,
                            all.len()
                        ),
                    });
                }
                let n = all.len() / parts;
                Ok(std::borrow::Cow::Owned(all[index * n..(index + 1) * n].to_vec()))
            }
        }
    }

    fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }
}
