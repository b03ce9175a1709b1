//! LoRA files as Stable Diffusion users bring them, merged into the weights on load (W' = W +
//! strength · alpha/rank · up · down), so a generation with LoRAs costs what one without does
//! and quantizing sees the merged weights. A package's q8_0/q4_0 matrices (what the page keeps;
//! it never stores float weights) are dequantized, merged and stored as q8_0: refitting them to
//! q4_0 rounds twice and cost 4.4 dB of image PSNR against merging first on tiny-sd1, q8_0 costs
//! 0.7 dB (tests/package.rs), for 0.9x more bytes in the touched matrices only (kohya's default
//! SD 1.5 modules hold 267 M parameters of the U-Net by its published tensor list: +134 MB as
//! q8_0 rather than q4_0). A strength of 0 leaves every weight as stored.
//!
//! Formats, told apart by their key names:
//! - kohya sd-scripts / A1111 (`lora_unet_<module with _>.lora_down.weight`, `.lora_up.weight`,
//!   `.alpha`; `lora_te_…` for the text encoder), the diffusers module layout SD 1.x/2.x LoRAs use,
//!   or LDM block names (`lora_unet_input_blocks_1_1_…`), with LoCon's 3x3 convs;
//! - PEFT as diffusers saves it today (`unet.<module>.lora_A.weight` / `lora_B.weight`, the
//!   alphas in the `lora_adapter_metadata` JSON of the file's metadata; without it alpha = rank);
//! - diffusers' older training-script spelling (`.lora.down/.lora.up`, `.lora_linear_layer.*`).
//!
//! Underscored kohya names are resolved against the model's own tensor names, never guessed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use half::{bf16, f16};

use super::component::Component;
use super::config::{UNetConfig, VaeConfig};
use super::header;
use super::ldm;
use super::weights::{FileDType, TensorInfo, TensorSource};
use crate::error::{Error, Result};
use crate::quant::{dequantize, quantize_fit, QuantFormat};

/// One low-rank pair: `up` [out, rank(, 1, 1)], `down` [rank, in(, kh, kw)].
#[derive(Clone, Debug)]
struct Pair {
    up: Vec<f32>,
    up_shape: Vec<usize>,
    down: Vec<f32>,
    down_shape: Vec<usize>,
    /// alpha / rank.
    scale: f32,
}

/// How a layer is named in the file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// A module path with dots (PEFT, diffusers), under its component.
    Dotted(String),
    /// kohya's path with every dot an underscore.
    Underscored(String),
}

#[derive(Debug)]
pub struct Lora {
    pub name: String,
    layers: BTreeMap<(Component, Key), Pair>,
}

/// A LoRA and how strongly to apply it.
#[derive(Clone, Debug)]
pub struct LoraUse {
    pub lora: Arc<Lora>,
    pub strength: f32,
}

fn bad(file: &str, msg: impl std::fmt::Display) -> Error {
    Error::Weights(format!("LoRA {file}: {msg}"))
}

fn floats(file: &str, name: &str, dtype: FileDType, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        FileDType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        FileDType::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        FileDType::BF16 => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => return Err(bad(file, format!("{name} is {}, not a float tensor", other.name()))),
    })
}

/// PEFT's alphas from the file's `lora_adapter_metadata`, per component prefix (the rank is
/// each pair's own).
#[derive(Default)]
struct PeftMeta {
    alpha: HashMap<String, f32>,
}

impl PeftMeta {
    fn parse(file: &str, header_json: &[u8]) -> Result<PeftMeta> {
        let v: serde_json::Value =
            serde_json::from_slice(header_json).map_err(|e| bad(file, format!("header: {e}")))?;
        let Some(text) = v["__metadata__"]["lora_adapter_metadata"].as_str() else { return Ok(PeftMeta::default()) };
        let meta: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(file, format!("lora_adapter_metadata: {e}")))?;
        let mut out = PeftMeta::default();
        for (k, v) in meta.as_object().into_iter().flatten() {
            let Some((component, field)) = k.split_once('.') else { continue };
            let pattern = |f: &str| v.as_object().is_some_and(|o| !o.is_empty()) && field == f;
            if pattern("alpha_pattern") || pattern("rank_pattern") {
                return Err(bad(file, format!("per-module {field} is not supported yet")));
            }
            if field == "use_rslora" && v.as_bool() == Some(true) {
                return Err(bad(file, "rank-stabilized scaling (use_rslora, alpha/sqrt(r)) is not supported yet"));
            }
            match (field, v.as_f64()) {
                ("lora_alpha", Some(a)) => out.alpha.insert(component.to_string(), a as f32),
                _ => None,
            };
        }
        Ok(out)
    }
}

impl Lora {
    /// Reads a LoRA safetensors file (`name`: for messages and A1111's `<lora:name:…>`).
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Lora> {
        let n = header::header_len(name, bytes.get(..8).unwrap_or(&[]), Some(bytes.len() as u64))?;
        let json = usize::try_from(n)
            .ok()
            .and_then(|n| bytes.get(8..n.checked_add(8)?))
            .ok_or_else(|| bad(name, "the header runs past the end of the file"))?;
        // Offsets come back absolute (past the header), checked against the file size.
        let tensors = header::parse(name, json, Some(bytes.len() as u64))?;
        let peft = PeftMeta::parse(name, json)?;
        let mut raw: HashMap<String, (FileDType, Vec<usize>, Vec<f32>)> = HashMap::new();
        for t in &tensors {
            let end = t.start.checked_add(t.len).filter(|&e| e <= bytes.len() as u64);
            let (s, Some(e)) = (t.start, end) else {
                return Err(bad(name, format!("{} lies outside the file", t.name)));
            };
            let v = floats(name, &t.name, t.info.dtype, &bytes[s as usize..e as usize])?;
            raw.insert(t.name.clone(), (t.info.dtype, t.info.shape.clone(), v));
        }
        let mut layers = BTreeMap::new();
        let mut take = |key: (Component, Key), up: &str, down: &str, alpha: Option<f32>| -> Result<()> {
            let (Some(u), Some(d)) = (raw.get(up), raw.get(down)) else {
                return Err(bad(name, format!("{up} or {down} is missing its pair")));
            };
            let rank = *d.1.first().ok_or_else(|| bad(name, format!("{down} has no rank axis")))?;
            if rank == 0 || u.1.get(1) != Some(&rank) {
                return Err(bad(name, format!("{up} {:?} and {down} {:?} disagree on the rank", u.1, d.1)));
            }
            let scale = alpha.map_or(1.0, |a| a / rank as f32);
            let pair =
                Pair { up: u.2.clone(), up_shape: u.1.clone(), down: d.2.clone(), down_shape: d.1.clone(), scale };
            layers.insert(key, pair);
            Ok(())
        };
        let mut names: Vec<&String> = raw.keys().collect();
        names.sort();
        for k in names {
            if let Some(stem) = k.strip_suffix(".lora_down.weight") {
                let (component, module) = if let Some(m) = stem.strip_prefix("lora_unet_") {
                    (Component::Unet, m)
                } else if let Some(m) = stem.strip_prefix("lora_te_") {
                    (Component::TextEncoder, m)
                } else {
                    return Err(bad(name, format!("{k}: neither lora_unet_ nor lora_te_ (an SDXL LoRA's lora_te1_/lora_te2_ is not supported yet)")));
                };
                let alpha = raw.get(&format!("{stem}.alpha")).and_then(|a| a.2.first().copied());
                take((component, Key::Underscored(module.into())), &format!("{stem}.lora_up.weight"), k, alpha)?;
                continue;
            }
            let (component, rest) = if let Some(r) = k.strip_prefix("unet.") {
                (Component::Unet, r)
            } else if let Some(r) = k.strip_prefix("text_encoder.") {
                (Component::TextEncoder, r)
            } else {
                continue;
            };
            let prefix = if component == Component::Unet { "unet" } else { "text_encoder" };
            for (down_sfx, up_sfx) in [
                (".lora_A.weight", ".lora_B.weight"),
                (".lora.down.weight", ".lora.up.weight"),
                (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
            ] {
                if let Some(module) = rest.strip_suffix(down_sfx) {
                    let up = format!("{prefix}.{module}{up_sfx}");
                    // Without metadata PEFT's alpha is the rank: scale 1.
                    let alpha = peft.alpha.get(prefix).copied();
                    take((component, Key::Dotted(module.into())), &up, k, alpha)?;
                }
            }
        }
        let known = |k: &str| {
            k.ends_with(".alpha")
                || k.ends_with("lora_up.weight")
                || k.ends_with("lora_B.weight")
                || k.ends_with(".up.weight")
                || k.ends_with("lora_down.weight")
                || k.ends_with("lora_A.weight")
                || k.ends_with(".down.weight")
        };
        if let Some(k) = raw.keys().find(|k| !known(k)) {
            return Err(bad(
                name,
                format!("{k} is not a LoRA tensor this loader knows (LoHa, LoKr and DoRA are not supported)"),
            ));
        }
        if layers.is_empty() {
            return Err(bad(name, "holds no LoRA layers"));
        }
        Ok(Lora { name: name.to_string(), layers })
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

/// The model's weight names of a component, indexed the ways LoRA files name modules.
struct Index {
    dotted: HashMap<String, String>,
    underscored: HashMap<String, String>,
}

impl Index {
    fn new(names: &[String]) -> Index {
        let mut dotted = HashMap::new();
        let mut underscored = HashMap::new();
        for n in names {
            let Some(module) = n.strip_suffix(".weight") else { continue };
            // Text encoders come with and without transformers 4's `text_model.` level, LoRAs too.
            let module = module.strip_prefix("text_model.").unwrap_or(module);
            dotted.insert(module.to_string(), n.clone());
            underscored.insert(module.replace('.', "_"), n.clone());
        }
        Index { dotted, underscored }
    }

    fn find(&self, key: &Key, unet: Option<(&UNetConfig, &VaeConfig)>) -> Option<&String> {
        match key {
            Key::Dotted(m) => self.dotted.get(m.strip_prefix("text_model.").unwrap_or(m)),
            Key::Underscored(m) => {
                let m = m.strip_prefix("text_model_").unwrap_or(m);
                self.underscored.get(m).or_else(|| {
                    let (u, v) = unet?;
                    let diffusers = ldm_kohya(m, u, v)?;
                    self.underscored.get(&diffusers)
                })
            }
        }
    }
}

/// A kohya key in LDM block names (`input_blocks_4_1_proj_in`) as the underscored diffusers
/// module (`down_blocks_1_attentions_0_proj_in`).
fn ldm_kohya(key: &str, unet: &UNetConfig, vae: &VaeConfig) -> Option<String> {
    let (block, rest) = ["input_blocks_", "output_blocks_", "middle_block_"]
        .iter()
        .find_map(|b| key.strip_prefix(b).map(|r| (*b, r)))?;
    let mut parts = rest.splitn(if block == "middle_block_" { 2 } else { 3 }, '_');
    let k = parts.next()?;
    let j = if block == "middle_block_" { None } else { Some(parts.next()?) };
    let inner = parts.next()?;
    // ResnetBlock layers are `<name>_<index>` in LDM: give them their dot back.
    let inner = ["in_layers_", "out_layers_", "emb_layers_"]
        .iter()
        .find_map(|p| inner.strip_prefix(p).map(|i| format!("{}.{i}", &p[..p.len() - 1])))
        .unwrap_or_else(|| inner.to_string());
    let path = match j {
        Some(j) => format!("{}{}.{k}.{j}.{inner}.weight", ldm::UNET, &block[..block.len() - 1]),
        None => format!("{}middle_block.{k}.{inner}.weight", ldm::UNET),
    };
    let (_, name, _) = ldm::ldm_to_diffusers(&path, unet, vae).into_iter().next()?;
    Some(name.strip_suffix(".weight")?.replace('.', "_"))
}

/// A component's tensors with LoRAs merged in: touched float weights come out as f32, touched
/// q8_0/q4_0 ones as q8_0.
pub struct Merged<'a> {
    inner: &'a dyn TensorSource,
    deltas: HashMap<String, Vec<f32>>,
}

impl<'a> Merged<'a> {
    /// `configs`: the U-Net's and VAE's, for LoRAs in LDM block names.
    pub fn new(
        inner: &'a dyn TensorSource,
        component: Component,
        loras: &[LoraUse],
        configs: Option<(&UNetConfig, &VaeConfig)>,
    ) -> Result<Merged<'a>> {
        let mut deltas: HashMap<String, Vec<f32>> = HashMap::new();
        // Most loads have no LoRA for this component: no index of its names then.
        if !loras.iter().any(|u| u.lora.layers.keys().any(|(c, _)| *c == component)) {
            return Ok(Merged { inner, deltas });
        }
        let index = Index::new(&inner.names());
        for u in loras.iter().filter(|u| u.strength != 0.0) {
            for ((c, key), pair) in &u.lora.layers {
                if *c != component {
                    continue;
                }
                let target = index.find(key, configs).ok_or_else(|| {
                    bad(
                        &u.lora.name,
                        format!("{key:?} names no {component} weight of this model (a LoRA for another base model?)"),
                    )
                })?;
                let info = inner.info(target).ok_or_else(|| bad(&u.lora.name, format!("{target}: no info")))?;
                if !matches!(
                    info.dtype,
                    FileDType::F32
                        | FileDType::F16
                        | FileDType::BF16
                        | FileDType::Q8_0
                        | FileDType::Q4_0
                        | FileDType::Q3_0
                ) {
                    return Err(bad(
                        &u.lora.name,
                        format!(
                            "{component} weight {target} is stored as {}: a LoRA merges into float, q8_0 or q4_0 weights",
                            info.dtype.name()
                        ),
                    ));
                }
                let numel: usize = info.shape.iter().product();
                let (out, rank) = (pair.up_shape[0], pair.down_shape[0]);
                let cols: usize = pair.down_shape[1..].iter().product();
                if out.checked_mul(cols) != Some(numel) || pair.up.len() != out * rank || pair.down.len() != rank * cols
                {
                    return Err(bad(
                        &u.lora.name,
                        format!(
                            "{key:?}: up {:?} · down {:?} does not make {target} {:?}",
                            pair.up_shape, pair.down_shape, info.shape
                        ),
                    ));
                }
                let s = u.strength * pair.scale;
                let d = deltas.entry(target.clone()).or_insert_with(|| vec![0.0; numel]);
                for o in 0..out {
                    for r in 0..rank {
                        let a = s * pair.up[o * rank + r];
                        let row = &pair.down[r * cols..(r + 1) * cols];
                        for (x, &b) in d[o * cols..(o + 1) * cols].iter_mut().zip(row) {
                            *x += a * b;
                        }
                    }
                }
            }
        }
        Ok(Merged { inner, deltas })
    }
}

/// The block format of a quantized stored tensor.
fn blocks(dtype: FileDType) -> Option<QuantFormat> {
    match dtype {
        FileDType::Q8_0 => Some(QuantFormat::Q8_0),
        FileDType::Q4_0 => Some(QuantFormat::Q4_0),
        FileDType::Q3_0 => Some(QuantFormat::Q3_0),
        _ => None,
    }
}

impl TensorSource for Merged<'_> {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        let mut info = self.inner.info(name)?;
        if self.deltas.contains_key(name) {
            info.dtype = if blocks(info.dtype).is_some() { FileDType::Q8_0 } else { FileDType::F32 };
        }
        Some(info)
    }

    fn bytes(&self, name: &str) -> Result<std::borrow::Cow<'_, [u8]>> {
        let Some(delta) = self.deltas.get(name) else { return self.inner.bytes(name) };
        let info = self.inner.info(name).ok_or_else(|| Error::Tensor { name: name.into(), msg: "missing".into() })?;
        let stored = self.inner.bytes(name)?;
        let base = match blocks(info.dtype) {
            Some(f) => dequantize(f, &stored)?,
            None => floats("merge", name, info.dtype, &stored)?,
        };
        if base.len() != delta.len() {
            return Err(Error::Tensor {
                name: name.into(),
                msg: format!("{} values, the LoRA made {}", base.len(), delta.len()),
            });
        }
        let merged: Vec<f32> = base.iter().zip(delta).map(|(w, d)| w + d).collect();
        Ok(std::borrow::Cow::Owned(match blocks(info.dtype) {
            Some(_) => quantize_fit(QuantFormat::Q8_0, &merged)?,
            None => merged.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }))
    }

    fn names(&self) -> Vec<String> {
        self.inner.names()
    }

    fn has(&self, name: &str) -> bool {
        self.inner.has(name)
    }

    fn lookup(&self, name: &str, shape: &[usize]) -> Option<TensorInfo> {
        if self.deltas.contains_key(name) {
            return self.info(name);
        }
        self.inner.lookup(name, shape)
    }

    fn stored(
        &self,
        name: &str,
        info: &TensorInfo,
        matrix: Option<[usize; 2]>,
    ) -> Result<(crate::quant::StoreType, std::borrow::Cow<'_, [u8]>)> {
        if !self.deltas.contains_key(name) {
            return self.inner.stored(name, info, matrix);
        }
        let bytes = self.bytes(name)?;
        let dtype = self.info(name).map_or(FileDType::F32, |i| i.dtype);
        super::weights::restore(name, dtype, bytes, None, super::weights::Rounding::Fit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-pair PEFT file with the given adapter metadata.
    fn peft_file(meta: &str) -> Vec<u8> {
        let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (a, b) = (f(&[1.0, 2.0]), f(&[3.0, 4.0]));
        let header = serde_json::json!({
            "__metadata__": {"lora_adapter_metadata": meta},
            "unet.x.lora_A.weight": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]},
            "unet.x.lora_B.weight": {"dtype": "F32", "shape": [2, 1], "data_offsets": [8, 16]},
        });
        let json = serde_json::to_vec(&header).unwrap();
        [&(json.len() as u64).to_le_bytes()[..], &json, &a, &b].concat()
    }

    #[test]
    fn peft_alpha_comes_from_the_metadata_and_rslora_is_refused() {
        let l = Lora::from_bytes("p", &peft_file(r#"{"unet.lora_alpha": 4.0, "unet.r": 1}"#)).unwrap();
        assert_eq!(l.layers.values().next().unwrap().scale, 4.0);
        let l = Lora::from_bytes("p", &peft_file("{}")).unwrap();
        assert_eq!(l.layers.values().next().unwrap().scale, 1.0);
        let e = Lora::from_bytes("p", &peft_file(r#"{"unet.use_rslora": true}"#)).unwrap_err();
        assert!(e.to_string().contains("use_rslora"), "{e}");
        let e = Lora::from_bytes("p", &[1, 2, 3]).unwrap_err();
        assert!(e.to_string().contains('p'), "{e}");
    }
}
