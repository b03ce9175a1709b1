//! What the page hands the engine, read and checked: generation requests (the prompt's LoRA
//! tags against what is merged, an img2img start), load options, LoRA files, in-memory files.

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::js_err;
use crate::models::loader::MemorySource;
use crate::pipeline::generate::{InitImage, Request};
use crate::pipeline::prompt::PromptSyntax;
use crate::pipeline::schedulers::SchedulerKind;

/// `{path: Uint8Array}` as a file source.
pub(super) fn memory_source(files: &js_sys::Object) -> Result<MemorySource, JsError> {
    let mut src = MemorySource { name: "the files given".into(), ..Default::default() };
    for entry in js_sys::Object::entries(files).iter() {
        let pair = js_sys::Array::from(&entry);
        let path = pair.get(0).as_string().ok_or_else(|| JsError::new("file names must be strings"))?;
        src.files.insert(path, js_sys::Uint8Array::new(&pair.get(1)).to_vec());
    }
    Ok(src)
}

/// `options.loras`: `[{name, strength, bytes: Uint8Array}]`, checked (the page's list is input).
pub(super) fn js_loras(options: &JsValue) -> Result<Vec<(String, f32, Vec<u8>)>, JsError> {
    if !options.is_object() {
        return Ok(Vec::new());
    }
    let list = js_sys::Reflect::get(options, &"loras".into()).unwrap_or(JsValue::UNDEFINED);
    if list.is_undefined() || list.is_null() {
        return Ok(Vec::new());
    }
    let list: js_sys::Array = list.dyn_into().map_err(|_| JsError::new("load options: loras must be an array"))?;
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let get = |k: &str| js_sys::Reflect::get(&item, &k.into()).unwrap_or(JsValue::UNDEFINED);
        let name = get("name").as_string().ok_or_else(|| JsError::new(&format!("loras[{i}].name must be a string")))?;
        let strength = get("strength").as_f64().filter(|s| s.is_finite() && s.abs() <= 16.0).ok_or_else(|| {
            JsError::new(&format!("loras[{i}] ({name}): the strength must be a number from -16 to 16"))
        })?;
        let bytes = get("bytes")
            .dyn_into::<js_sys::Uint8Array>()
            .map_err(|_| JsError::new(&format!("loras[{i}] ({name}): bytes must be a Uint8Array")))?;
        out.push((name, strength as f32, bytes.to_vec()));
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GenerateRequest {
    pub(super) prompt: String,
    #[serde(default)]
    pub(super) negative_prompt: Option<String>,
    pub(super) steps: usize,
    pub(super) guidance: f32,
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) scheduler: String,
    pub(super) seed: u64,
    /// DDIM's eta (absent: 0).
    #[serde(default)]
    pub(super) eta: f32,
    /// "a1111" (absent) or "diffusers".
    #[serde(default)]
    pub(super) prompt_syntax: Option<String>,
    /// Images with seeds seed, seed + 1, … (A1111's order); absent: 1.
    #[serde(default)]
    pub(super) count: Option<usize>,
}

impl GenerateRequest {
    pub(super) fn parse(v: JsValue) -> Result<GenerateRequest, JsError> {
        serde_wasm_bindgen::from_value(v).map_err(|e| JsError::new(&format!("bad request: {e}")))
    }

    /// The pipeline's request. A1111's `<lora:name:strength>` tags leave the prompt (they would
    /// reach the text encoder as words); each must name a LoRA merged into the model at that
    /// strength (`loaded`: what the worker loaded it with, from the page's LoRA list and tags).
    pub(super) fn request(&self, loaded: &[(String, f32)], init: Option<InitImage>) -> Result<Request, JsError> {
        let (prompt, tags) = crate::pipeline::prompt::extract_loras(&self.prompt).map_err(js_err)?;
        for t in tags.iter().filter(|t| t.strength != 0.0) {
            match loaded.iter().find(|(n, _)| *n == t.name) {
                Some((_, s)) if (s - t.strength).abs() <= 1e-6 => {}
                Some((_, s)) => {
                    return Err(JsError::new(&format!(
                        "<lora:{}:{}>: the model is loaded with {} at strength {s}",
                        t.name, t.strength, t.name
                    )))
                }
                None => {
                    return Err(JsError::new(&format!(
                        "<lora:{}:{}>: no LoRA named {} is in the page's list (add its .safetensors file there)",
                        t.name, t.strength, t.name
                    )))
                }
            }
        }
        Ok(Request {
            prompt,
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps,
            guidance: self.guidance,
            width: self.width,
            height: self.height,
            scheduler: SchedulerKind::parse(&self.scheduler).map_err(js_err)?,
            prompt_syntax: match &self.prompt_syntax {
                Some(s) => PromptSyntax::parse(s).map_err(js_err)?,
                None => PromptSyntax::default(),
            },
            eta: self.eta,
            init,
        })
    }
}

/// An img2img / inpainting start as the page sends it, checked.
pub(super) struct Init {
    pub(super) image: InitImage,
    /// Put the original back over a seam blurred by this many pixels (inpainting, outpainting).
    pub(super) overlay: Option<f32>,
    /// Outpainting: the extended canvas's size (the request's width and height become it).
    pub(super) size: Option<(usize, usize)>,
}

/// `request.initImage`: `{rgb: Uint8Array (width × height × 3), strength, mask?: Uint8Array
/// (width × height, ≥ 128 = redraw), outpaint?: [left, right, up, down], maskBlur? (pixels,
/// default 4), overlay? (default true)}`.
pub(super) fn js_init(request: &JsValue, width: usize, height: usize) -> Result<Option<Init>, JsError> {
    if !request.is_object() {
        return Ok(None);
    }
    let init = js_sys::Reflect::get(request, &"initImage".into()).unwrap_or(JsValue::UNDEFINED);
    if init.is_undefined() || init.is_null() {
        return Ok(None);
    }
    let get = |k: &str| js_sys::Reflect::get(&init, &k.into()).unwrap_or(JsValue::UNDEFINED);
    let bytes = |k: &str| -> Result<Option<Vec<u8>>, JsError> {
        let v = get(k);
        if v.is_undefined() || v.is_null() {
            return Ok(None);
        }
        let a = v
            .dyn_into::<js_sys::Uint8Array>()
            .map_err(|_| JsError::new(&format!("initImage.{k} must be a Uint8Array")))?;
        Ok(Some(a.to_vec()))
    };
    let rgb = bytes("rgb")?.ok_or_else(|| JsError::new("initImage.rgb must be a Uint8Array"))?;
    let mask = bytes("mask")?;
    let outpaint = get("outpaint");
    let outpaint: Option<[usize; 4]> = if outpaint.is_undefined() || outpaint.is_null() {
        None
    } else {
        let a: Vec<f64> = serde_wasm_bindgen::from_value(outpaint)
            .map_err(|_| JsError::new("initImage.outpaint must be [left, right, up, down]"))?;
        let ok = a.len() == 4 && a.iter().all(|v| v.fract() == 0.0 && (0.0..=4096.0).contains(v));
        if !ok {
            return Err(JsError::new("initImage.outpaint must be four whole numbers of pixels, 0 to 4096"));
        }
        Some([a[0] as usize, a[1] as usize, a[2] as usize, a[3] as usize])
    };
    let painting = mask.is_some() || outpaint.is_some();
    let strength = match get("strength").as_f64() {
        Some(s) if (0.0..=1.0).contains(&s) => s as f32,
        None if painting => 1.0,
        _ => return Err(JsError::new("initImage.strength must be a number from 0 to 1")),
    };
    let blur = match get("maskBlur").as_f64() {
        None => 4.0,
        Some(b) if (0.0..=64.0).contains(&b) => b as f32,
        Some(b) => return Err(JsError::new(&format!("initImage.maskBlur {b}: 0 to 64 pixels"))),
    };
    let overlay = painting && get("overlay").as_bool() != Some(false);
    let (image, size) = match (mask, outpaint) {
        (Some(_), Some(_)) => return Err(JsError::new("initImage: a mask or outpaint, not both")),
        (mask, None) => (InitImage { rgb, strength, mask }, None),
        (None, Some(by)) => {
            let (rgb, mask, w, h) = crate::pipeline::image::outpaint(&rgb, width, height, by).map_err(js_err)?;
            (InitImage { rgb, strength, mask: Some(mask) }, Some((w, h)))
        }
    };
    Ok(Some(Init { image, overlay: overlay.then_some(blur), size }))
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct LoadRequest {
    /// `none` (the files' own precision), `q8_0` or `q4_0` (standard policy, quantized on load).
    #[serde(default)]
    pub(super) quant: Option<String>,
    /// A name for PNG metadata.
    #[serde(default)]
    pub(super) name: Option<String>,
    /// The text encoders and the U-Net take turns on the GPU (`pipeline::sequential`): the
    /// reader stays with the model, which reloads from it when the prompt changes.
    #[serde(default)]
    pub(super) low_memory: bool,
    // `loras` ([{name, strength, bytes}]) is read by `js_loras`: its bytes are a Uint8Array.
}
