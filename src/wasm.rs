//! The wasm-bindgen surface. Glue only: every call converts arguments, calls the library and
//! turns `Error` into a `JsError` carrying its human-readable message. No model logic here.

use wasm_bindgen::prelude::*;

use crate::gpu::{DType, Gpu, GpuOptions, LimitsPolicy};
use std::cell::RefCell;

use crate::models::loader::{FileSource, LoadOptions};
use crate::pipeline::generate::{Request, StableDiffusion, Step, MAX_IMAGES};
use crate::pipeline::image::{a1111_parameters, blur_mask, encode_png, overlay as overlay_rgb};
use crate::pipeline::preview::{self, PreviewFit};
use crate::pipeline::prompt::PromptSyntax;
use crate::pipeline::rng::NormalRng;
use crate::quant::{QuantPolicy, StoreType};

mod reader;
mod request;

use reader::JsReader;
use request::{js_init, js_loras, memory_source, GenerateRequest, LoadRequest};

#[wasm_bindgen(start)]
pub fn start() {
    // A panic is a bug, but it should reach the console with a message, not "unreachable", and
    // the worker that sees the trap should be able to say what it was: the message is left in
    // `globalThis.webdiffusionPanic` before the instance traps.
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let msg = format!("{}{at}", what.unwrap_or_else(|| "a panic".into()));
        let _ = js_sys::Reflect::set(&js_sys::global(), &"webdiffusionPanic".into(), &msg.into());
    }));
}

fn js_err(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}

fn to_js<T: serde::Serialize>(v: &T) -> Result<JsValue, JsError> {
    // JSON-compatible: maps become plain objects (not `Map`s), u64 become numbers.
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| JsError::new(&format!("converting a result for JavaScript: {e}")))
}

/// A WebGPU device with our runtime on it.
#[wasm_bindgen]
pub struct Engine {
    gpu: Gpu,
}

#[wasm_bindgen]
impl Engine {
    /// Opens the GPU. `webDefaultLimits` asks only for WebGPU's default limits; `allowF16`
    /// uses shader-f16 where the browser offers it.
    pub async fn create(web_default_limits: bool, allow_f16: bool) -> Result<Engine, JsError> {
        let options = GpuOptions {
            limits: if web_default_limits { LimitsPolicy::WebDefault } else { LimitsPolicy::Adapter },
            allow_f16,
            binding_cap: None,
            dry_run: false,
            kernels: Default::default(),
            profile: false,
        };
        let gpu = Gpu::new(&options).await.map_err(js_err)?;
        Ok(Engine { gpu })
    }

    /// Adapter name, backend, features and limits, as a plain object.
    pub fn info(&self) -> Result<JsValue, JsError> {
        to_js(self.gpu.caps())
    }

    /// Why the GPU device was lost, or `null`. After a loss, create a new `Engine` and load again.
    pub fn lost(&self) -> Option<String> {
        self.gpu.lost_reason()
    }

    /// Test hook: the device is destroyed now; `lost()` reports it and requests fail until the
    /// worker makes a new `Engine`.
    #[wasm_bindgen(js_name = testLoseDevice)]
    pub fn test_lose_device(&self) {
        self.gpu.destroy_device();
    }

    /// Loads a model (a diffusers folder or a webdiffusion package) through `reader` (see
    /// `JsReader`). `options`: `{quant?: 'none'|'q8_0'|'q4_0', name?}`. Synchronous reads
    /// inside: call it from a worker, never from the page's main thread.
    pub async fn load(&self, reader: JsValue, options: JsValue) -> Result<Model, JsError> {
        let opts: LoadRequest = if options.is_undefined() || options.is_null() {
            LoadRequest::default()
        } else {
            serde_wasm_bindgen::from_value(options.clone())
                .map_err(|e| JsError::new(&format!("bad load options: {e}")))?
        };
        let src = JsReader::new(&reader)?;
        let dtype = if self.gpu.caps().shader_f16 { DType::F16 } else { DType::F32 };
        let mut load = LoadOptions::new(dtype);
        let mut merged = Vec::new();
        for (name, strength, bytes) in js_loras(&options)? {
            let lora = crate::models::lora::Lora::from_bytes(&name, &bytes).map_err(js_err)?;
            // The tag name is the file's stem, as A1111's `<lora:name:…>` is.
            let stem = name.strip_suffix(".safetensors").unwrap_or(&name).to_string();
            merged.push((stem, strength));
            load.loras.push(crate::models::lora::LoraUse { lora: std::sync::Arc::new(lora), strength });
        }
        match opts.quant.as_deref() {
            None | Some("none" | "") => {}
            Some(q) => {
                let store = StoreType::parse(q).map_err(js_err)?;
                load.quant = Some(std::sync::Arc::new(QuantPolicy::standard(store)));
            }
        }
        let load_model = if opts.low_memory { StableDiffusion::load_in_turns } else { StableDiffusion::load };
        let sd = load_model(&src, &self.gpu, &load).map_err(js_err)?;
        let fit = preview::initial_fit(&sd, 8).await.map_err(js_err)?;
        let name = opts.name.unwrap_or_else(|| src.describe());
        // In turns, the U-Net and the encoders reload with the LoRAs merged as now.
        let options = if opts.low_memory { load } else { LoadOptions { loras: Vec::new(), ..load } };
        let turns = opts.low_memory.then(|| InTurns { reader: reader.clone(), turns: Default::default() });
        Ok(Model { sd: RefCell::new(sd), name, preview: RefCell::new(fit), loras: merged, options, turns })
    }

    /// Loads a diffusers model from `files` (path -> `Uint8Array`) and generates one image
    /// (tests and small models; the app uses `load` + `Model.generate`).
    pub async fn generate(
        &self,
        files: &js_sys::Object,
        request: JsValue,
        on_step: Option<js_sys::Function>,
    ) -> Result<JsValue, JsError> {
        let r = GenerateRequest::parse(request)?;
        let src = memory_source(files)?;
        let dtype = if self.gpu.caps().shader_f16 { DType::F16 } else { DType::F32 };
        let sd = crate::pipeline::generate::StableDiffusion::load(&src, &self.gpu, &LoadOptions::new(dtype))
            .map_err(js_err)?;
        let init = None;
        let model = Model {
            sd: RefCell::new(sd),
            name: "model".into(),
            preview: RefCell::new(PreviewFit::new(0)),
            loras: Vec::new(),
            options: LoadOptions::new(dtype),
            turns: None,
        };
        model.run(r, init, on_step, false).await
    }

    /// Runs a fixture's text encoder, U-Net and VAE and compares them with its diffusers
    /// reference. `files` maps paths (`unet/config.json`, …) to `Uint8Array`s.
    pub async fn parity(&self, files: &js_sys::Object, f16: bool) -> Result<JsValue, JsError> {
        let src = memory_source(files)?;
        let dtype = if f16 { DType::F16 } else { DType::F32 };
        let outputs = crate::models::parity::run(&src, &self.gpu, &LoadOptions::new(dtype)).await.map_err(js_err)?;
        to_js(&outputs)
    }

    /// The real-size benchmark (`webdiffusion bench`): `options` is `{arch?: 'sd15'|'sd21-base'|
    /// 'sd-turbo', configs?: {text_encoder, unet, vae, text_encoder_2?} (config.json texts, instead of arch),
    /// quant?, size?, steps?, guidance?, repeats?, f16?, budget? (bytes), release_text_encoder?, low_memory?}`.
    /// Synthetic weights, nothing downloaded. Returns the report as a plain object.
    pub async fn bench(&self, options: JsValue) -> Result<JsValue, JsError> {
        #[derive(serde::Deserialize)]
        struct Configs {
            text_encoder: String,
            unet: String,
            vae: String,
            text_encoder_2: Option<String>,
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Request {
            arch: Option<String>,
            configs: Option<Configs>,
            quant: Option<String>,
            size: Option<usize>,
            steps: Option<usize>,
            guidance: Option<f32>,
            repeats: Option<usize>,
            f16: Option<bool>,
            budget: Option<u64>,
            release_text_encoder: Option<bool>,
            low_memory: Option<bool>,
            decode: Option<bool>,
        }
        let r: Request =
            serde_wasm_bindgen::from_value(options).map_err(|e| JsError::new(&format!("bad bench options: {e}")))?;
        let mut o = match (r.arch, r.configs) {
            (name, Some(c)) => crate::bench::BenchOptions {
                name: name.unwrap_or_else(|| "custom".into()),
                text_encoder: c.text_encoder,
                unet: c.unet,
                vae: c.vae,
                text_encoder_2: c.text_encoder_2.unwrap_or_default(),
                ..Default::default()
            },
            (Some(a), None) => crate::bench::BenchOptions::arch(&a).map_err(js_err)?,
            (None, None) => return Err(JsError::new("bench needs `arch` or `configs`")),
        };
        o.quant = r.quant.unwrap_or(o.quant);
        o.size = r.size.unwrap_or(o.size);
        o.steps = r.steps.unwrap_or(o.steps);
        o.guidance = r.guidance.unwrap_or(o.guidance);
        o.repeats = r.repeats.unwrap_or(o.repeats);
        o.f16 = r.f16.unwrap_or(o.f16);
        o.budget = r.budget.unwrap_or(o.budget);
        o.release_text_encoder = r.release_text_encoder.unwrap_or(o.release_text_encoder);
        o.low_memory = r.low_memory.unwrap_or(o.low_memory);
        o.decode = r.decode.unwrap_or(o.decode);
        let report = crate::bench::run(&self.gpu, &o).await.map_err(js_err)?;
        to_js(&report)
    }

    /// Runs matmul, conv2d and attention on the GPU against candle on the CPU (in wasm).
    #[wasm_bindgen(js_name = selfTest)]
    pub async fn self_test(&self) -> Result<JsValue, JsError> {
        let results = crate::selftest::run(&self.gpu).await.map_err(js_err)?;
        to_js(&results)
    }
}

/// A loaded model on the GPU.
#[wasm_bindgen]
pub struct Model {
    /// Borrowed mutably only between awaits (the loads of `InTurns`), so the worker's calls
    /// during a generation (`tokenCount`) still see it.
    sd: RefCell<StableDiffusion>,
    name: String,
    preview: RefCell<PreviewFit>,
    /// The LoRAs merged into its weights: (name, strength).
    loras: Vec<(String, f32)>,
    /// How it was loaded (dtype, quantization; no LoRAs): the encoder loads the same way.
    options: LoadOptions,
    /// Loaded with `lowMemory`: where the components reload from, and the kept prompt.
    turns: Option<InTurns>,
}

struct InTurns {
    reader: JsValue,
    turns: RefCell<crate::pipeline::sequential::Turns>,
}

#[wasm_bindgen]
impl Model {
    /// `{name, defaultWidth, defaultHeight, sizeMultiple, latentChannels, steps, guidance,
    /// scheduler}`: the last three are what the model's own files imply (`pipeline::defaults`).
    pub fn info(&self) -> Result<JsValue, JsError> {
        let f = self.sd.borrow().vae_config.downscale();
        let multiple = f << (self.sd.borrow().unet_config.block_out_channels.len() - 1);
        let side = self.sd.borrow().unet_config.sample_size.unwrap_or(64) * f;
        let d = crate::pipeline::defaults::for_model(&self.sd.borrow().scheduler_config, &self.sd.borrow().unet_config);
        to_js(&serde_json::json!({
            "name": self.name,
            "defaultWidth": side,
            "defaultHeight": side,
            "sizeMultiple": multiple,
            "latentChannels": self.sd.borrow().vae_config.latent_channels,
            "steps": d.steps,
            "guidance": d.guidance,
            "scheduler": d.scheduler,
            "lowMemory": self.turns.is_some(),
        }))
    }

    /// `{count, target, chunks}`: the prompt's tokens as A1111 counts them (`count/target`
    /// reads `34/75`; a prompt over 75 takes another chunk) under `syntax` ("a1111" or
    /// "diffusers"; with the latter, tokens past 75 are dropped and `dropped` says how many).
    #[wasm_bindgen(js_name = tokenCount)]
    pub fn token_count(&self, prompt: &str, syntax: &str) -> Result<JsValue, JsError> {
        let syntax = PromptSyntax::parse(syntax).map_err(js_err)?;
        // LoRA tags are not text (A1111 counts without them).
        let (prompt, _) = crate::pipeline::prompt::extract_loras(prompt).map_err(js_err)?;
        let t =
            crate::pipeline::conditioning::tokenize(&self.sd.borrow().tokenizer, &prompt, syntax).map_err(js_err)?;
        to_js(&serde_json::json!({
            "count": t.count,
            "target": t.target(),
            "chunks": t.chunks.len(),
            "dropped": t.dropped,
            "maxChunks": crate::pipeline::conditioning::MAX_PROMPT_CHUNKS,
        }))
    }

    /// Generates one image. `request`: `{prompt, negativePrompt?, steps, guidance, width,
    /// height, scheduler, seed, eta?, promptSyntax?}`. `onStep(index, total, preview)` runs after every step, with
    /// `preview = {width, height, rgba}` at latent resolution; returning `false` cancels (the
    /// result then has `cancelled: true` and no image). Every step awaits a GPU readback, so the
    /// worker's message handlers (a cancel button) run between steps.
    /// Returns `{width, height, rgb, rgba, png, parameters, cancelled}`.
    pub async fn generate(&self, request: JsValue, on_step: Option<js_sys::Function>) -> Result<JsValue, JsError> {
        let mut r = GenerateRequest::parse(request.clone())?;
        let init = js_init(&request, r.width, r.height)?;
        if let Some((w, h)) = init.as_ref().and_then(|i| i.size) {
            // Outpainting generates the extended canvas.
            (r.width, r.height) = (w, h);
        }
        self.run(r, init, on_step, true).await
    }

    /// Builds the pipelines and bind groups a `width`×`height` generation needs (guided: the
    /// batch of 2), recording without executing (`StableDiffusion::prepare`): called right after
    /// loading, the browser compiles them while the visitor types. Returns the pipelines built.
    pub fn prepare(&self, width: usize, height: usize, guided: bool) -> Result<u32, JsError> {
        self.sd.borrow().prepare(width, height, guided).map(|n| n as u32).map_err(js_err)
    }

    /// Loads TAESD (madebyollin/taesd's `config.json` and `diffusion_pytorch_model.safetensors`)
    /// through `reader`, for previews and fast final decodes (`setTaesdUse`).
    #[wasm_bindgen(js_name = loadTaesd)]
    pub fn load_taesd(&mut self, reader: JsValue) -> Result<(), JsError> {
        let src = JsReader::new(&reader)?;
        let opts = LoadOptions { with_encoder: true, ..self.options.clone() };
        let (decoder, encoder) = crate::models::loader::taesd(&src, &self.sd.borrow().gpu, &opts).map_err(js_err)?;
        self.sd.get_mut().taesd = Some(decoder);
        self.sd.get_mut().taesd_encoder = encoder;
        Ok(())
    }

    /// What TAESD does (once loaded): every step's preview, the final image, img2img's encode.
    #[wasm_bindgen(js_name = setTaesdUse)]
    pub fn set_taesd_use(&mut self, previews: bool, final_decode: bool, encode: bool) {
        self.sd.get_mut().taesd_use = crate::pipeline::generate::TaesdUse { previews, final_decode, encode };
    }

    #[wasm_bindgen(js_name = hasTaesd)]
    pub fn has_taesd(&self) -> bool {
        self.sd.borrow().taesd.is_some()
    }

    /// Whether the VAE encoder (img2img) is loaded.
    #[wasm_bindgen(js_name = hasEncoder)]
    pub fn has_encoder(&self) -> bool {
        self.sd.borrow().encoder.is_some()
    }

    /// Loads the VAE encoder from `reader` (the model's files again) with the options the model
    /// was loaded with: the page loads it on the first img2img request, so text-to-image never
    /// holds its weights.
    #[wasm_bindgen(js_name = loadEncoder)]
    pub fn load_encoder(&mut self, reader: JsValue) -> Result<(), JsError> {
        if self.sd.borrow().encoder.is_some() {
            return Ok(());
        }
        let src = JsReader::new(&reader)?;
        let encoder = crate::models::loader::vae_encoder(&src, &self.sd.borrow().gpu, &self.options).map_err(js_err)?;
        self.sd.get_mut().encoder = Some(encoder);
        Ok(())
    }
}

impl Model {
    async fn run(
        &self,
        r: GenerateRequest,
        init: Option<request::Init>,
        on_step: Option<js_sys::Function>,
        previews: bool,
    ) -> Result<JsValue, JsError> {
        let overlay = init.as_ref().and_then(|i| i.overlay);
        let req = r.request(&self.loras, init.map(|i| i.image))?;
        let count = r.count.unwrap_or(1);
        if count == 0 || count > MAX_IMAGES {
            return Err(JsError::new(&format!("count must be 1 to {MAX_IMAGES} (got {count})")));
        }
        let f = self.sd.borrow().vae_config.downscale();
        let latent_shape = [1, self.sd.borrow().vae_config.latent_channels, r.height / f.max(1), r.width / f.max(1)];
        let projection = self.preview.borrow().solve();
        // As many as fit one U-Net batch at a time, the rest in further batches; in turns, one
        // by one on the prompt's kept conditioning.
        let batch = if self.turns.is_some() { 1 } else { StableDiffusion::batch_size(r.width, r.height, count) };
        if let Some(t) = &self.turns {
            self.take_turn(t, &req).await?;
        }
        let groups = count.div_ceil(batch);
        let images = js_sys::Array::new();
        for g in 0..groups {
            let rows: Vec<usize> = (g * batch..((g + 1) * batch).min(count)).collect();
            let reqs: Vec<Request> = rows.iter().map(|_| req.clone()).collect();
            let mut rngs: Vec<NormalRng> =
                rows.iter().map(|&k| NormalRng::new(r.seed.wrapping_add(k as u64))).collect();
            let mut noises: Vec<&mut dyn crate::pipeline::generate::NoiseSource> =
                rngs.iter_mut().map(|n| n as &mut dyn crate::pipeline::generate::NoiseSource).collect();
            let mut callback = |s: Step<'_>| -> bool {
                let Some(f) = &on_step else { return true };
                // The first row: TAESD's picture at the image's size when it made one, else the
                // fitted map at latent size.
                let preview = if previews {
                    let (rgba, w, h) = match s.image {
                        Some(rgb) => {
                            (rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect(), r.width, r.height)
                        }
                        None => (projection.rgba(s.latents, latent_shape), latent_shape[3], latent_shape[2]),
                    };
                    let obj = js_sys::Object::new();
                    let _ = js_sys::Reflect::set(&obj, &"width".into(), &(w as u32).into());
                    let _ = js_sys::Reflect::set(&obj, &"height".into(), &(h as u32).into());
                    let _ =
                        js_sys::Reflect::set(&obj, &"rgba".into(), &js_sys::Uint8Array::from(rgba.as_slice()).into());
                    obj.into()
                } else {
                    JsValue::UNDEFINED
                };
                let (index, total) = (g * s.total + s.index, groups * s.total);
                // A throwing callback is the page's bug; it must not abort the generation silently,
                // so it counts as "go on" and the exception is logged by the browser.
                f.call3(&JsValue::NULL, &(index as u32).into(), &(total as u32).into(), &preview)
                    .map_or(true, |v| v.as_bool() != Some(false))
            };
            let sd = self.sd.borrow();
            let outs = match &self.turns {
                Some(t) => {
                    let turns = t.turns.borrow();
                    sd.turn_generate(&turns, &reqs[0], None, &mut *noises[0], &mut callback).await.map(|g| vec![g])
                }
                None => sd.generate_rows(&reqs, &mut noises, &mut callback).await,
            };
            drop(sd);
            let outs = match outs {
                Ok(outs) => outs,
                Err(crate::Error::Cancelled) => {
                    let obj = js_sys::Object::new();
                    js_sys::Reflect::set(&obj, &"cancelled".into(), &true.into())
                        .map_err(|_| JsError::new("building the result"))?;
                    return Ok(obj.into());
                }
                Err(e) => return Err(js_err(e)),
            };
            for (&k, out) in rows.iter().zip(&outs) {
                // Inpainting: the original's pixels back where the mask keeps them.
                let rgb = match (overlay, req.init.as_ref().and_then(|i| i.mask.as_ref().map(|m| (i, m)))) {
                    (Some(blur), Some((init, mask))) => {
                        overlay_rgb(&init.rgb, &out.rgb, &blur_mask(mask, out.width, out.height, blur))
                    }
                    _ => out.rgb.clone(),
                };
                images.push(&self.image(&r, &req, out, &rgb, r.seed.wrapping_add(k as u64), previews)?.into());
            }
        }
        // The first image's fields at the top (one image is what most callers ask for), every
        // image in `images`.
        let first = images.get(0);
        let obj: js_sys::Object = js_sys::Object::assign(&js_sys::Object::new(), &first.into());
        js_sys::Reflect::set(&obj, &"images".into(), &images).map_err(|_| JsError::new("building the result"))?;
        Ok(obj.into())
    }

    /// Before a generation in turns: the prompt encoded (the U-Net released and the encoders
    /// loaded for it, when it is new), then the U-Net loaded. The loads borrow the model
    /// mutably between awaits only.
    async fn take_turn(&self, t: &InTurns, req: &Request) -> Result<(), JsError> {
        let src = JsReader::new(&t.reader)?;
        let busy = || JsError::new("the model is busy with another generation");
        let needs = self.sd.borrow().turn_needs_encoding(&t.turns.borrow(), req).map_err(js_err)?;
        if needs {
            let mut turns = t.turns.try_borrow_mut().map_err(|_| busy())?;
            self.sd
                .try_borrow_mut()
                .map_err(|_| busy())?
                .turn_load_text_encoders(&src, &self.options, &mut turns)
                .map_err(js_err)?;
            let sd = self.sd.borrow();
            sd.turn_encode(&mut turns, req).await.map_err(js_err)?;
        }
        let mut turns = t.turns.try_borrow_mut().map_err(|_| busy())?;
        self.sd.try_borrow_mut().map_err(|_| busy())?.turn_load_unet(&src, &self.options, &mut turns).map_err(js_err)
    }

    /// One finished image for JavaScript: pixels, PNG with A1111's parameters, its seed.
    fn image(
        &self,
        r: &GenerateRequest,
        req: &Request,
        out: &crate::pipeline::generate::Generated,
        rgb: &[u8],
        seed: u64,
        previews: bool,
    ) -> Result<js_sys::Object, JsError> {
        let f = self.sd.borrow().vae_config.downscale();
        if previews {
            self.preview.borrow_mut().add(&out.latents, out.latent_shape, &out.rgb, f);
        }
        let params = a1111_parameters(
            &r.prompt,
            r.negative_prompt.as_deref(),
            r.steps,
            req.scheduler.a1111_name(),
            r.guidance,
            Some(seed),
            out.width,
            out.height,
            &self.name,
        );
        let png = encode_png(rgb, out.width, out.height, Some(&params)).map_err(js_err)?;
        let obj = js_sys::Object::new();
        let set = |k: &str, v: JsValue| {
            js_sys::Reflect::set(&obj, &k.into(), &v).map(drop).map_err(|_| JsError::new("building the result"))
        };
        set("width", (out.width as u32).into())?;
        set("height", (out.height as u32).into())?;
        let rgba: Vec<u8> = rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
        set("rgb", js_sys::Uint8Array::from(rgb).into())?;
        set("rgba", js_sys::Uint8Array::from(rgba.as_slice()).into())?;
        set("png", js_sys::Uint8Array::from(png.as_slice()).into())?;
        set("parameters", params.into())?;
        set("seed", (seed as f64).into())?;
        set("cancelled", false.into())?;
        Ok(obj)
    }
}

/// The engine's schedulers in the page's order, `[{id, name}]` (`id` goes in a request's
/// `scheduler`; `name` is A1111's): the page's list comes from here, not from its own copy.
#[wasm_bindgen]
pub fn schedulers() -> Result<JsValue, JsError> {
    #[derive(serde::Serialize)]
    struct Named {
        id: &'static str,
        name: &'static str,
    }
    let list: Vec<Named> =
        crate::pipeline::schedulers::REGISTRY.iter().map(|e| Named { id: e.id, name: e.a1111 }).collect();
    to_js(&list)
}

/// The diffusers layout the loader reads, for the page to probe a bare folder with:
/// `{files: [{path, required}], weights: [{component, plain, half}]}` (`plain` and `half` are
/// the component's `.safetensors` and `.fp16.safetensors`). The page keeps no list of its own.
#[wasm_bindgen(js_name = diffusersLayout)]
pub fn diffusers_layout() -> Result<JsValue, JsError> {
    use crate::models::component::{Component, SmallFile, SMALL_FILES};
    #[derive(serde::Serialize)]
    struct Weights {
        component: &'static str,
        plain: String,
        half: String,
        /// Where not required, the model has it when it has this config.
        config: String,
        required: bool,
    }
    #[derive(serde::Serialize)]
    struct Layout {
        files: [SmallFile; SMALL_FILES.len()],
        weights: Vec<Weights>,
    }
    let weights = Component::LOAD_ORDER
        .iter()
        .map(|&c| {
            let [plain, half] = c.weights_files();
            Weights { component: c.name(), plain, half, config: c.config_file(), required: c.required() }
        })
        .collect();
    to_js(&Layout { files: SMALL_FILES, weights })
}

/// A1111's `<lora:name:strength>` tags in `prompt`, as the generation reads them:
/// `[{name, strength}]` (the page loads those LoRAs before generating).
#[wasm_bindgen(js_name = loraTags)]
pub fn lora_tags(prompt: &str) -> Result<JsValue, JsError> {
    let (_, tags) = crate::pipeline::prompt::extract_loras(prompt).map_err(js_err)?;
    // The shortest decimal of the f32 (0.7, not 0.699999988…), which reads back as the same f32.
    let decimal = |s: f32| s.to_string().parse::<f64>().unwrap_or(s as f64);
    let list: Vec<_> =
        tags.iter().map(|t| serde_json::json!({"name": t.name, "strength": decimal(t.strength)})).collect();
    to_js(&list)
}

/// Incremental SHA-256 for the page's downloads: the same implementation that checks package
/// shards in the engine, so the page carries none of its own.
#[wasm_bindgen(js_name = Sha256)]
pub struct JsSha256(crate::models::hash::Sha256State);

#[wasm_bindgen(js_class = Sha256)]
impl JsSha256 {
    #[wasm_bindgen(constructor)]
    pub fn new() -> JsSha256 {
        JsSha256(Default::default())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest so far as lower-case hex (more bytes may still follow).
    pub fn hex(&self) -> String {
        self.0.hex()
    }
}

impl Default for JsSha256 {
    fn default() -> Self {
        Self::new()
    }
}

/// Traps the instance, as a bug in the engine would (a panic is a trap in wasm): the test hook
/// for the worker's recovery (the worker starts over, the page reloads the model).
#[wasm_bindgen(js_name = testTrap)]
pub fn test_trap() {
    panic!("a trap asked for by a test (testTrap)");
}

/// One conversion job's slice (see `Converter.jobs`), converted: what the conversion workers
/// run. Needs no GPU.
#[wasm_bindgen(js_name = convertSlice)]
pub fn convert_slice(bytes: &[u8], from: &str, to: &str, name: &str) -> Result<Vec<u8>, JsError> {
    let to = StoreType::parse(to).map_err(js_err)?;
    crate::models::weights::convert_bytes(bytes, crate::models::weights::FileDType::parse(from), to, name)
        .map_err(js_err)
}

/// A model converted while it downloads (see `models::stream`): the worker pushes each weight
/// file's bytes in order as they arrive and stores the shard pieces that come back, so the
/// browser keeps the package form, never the fp16 files.
#[wasm_bindgen]
pub struct Converter {
    inner: crate::models::stream::StreamConverter,
}

/// Collects shard pieces for JavaScript: `[{shard, index, bytes}]`.
struct JsPieces(js_sys::Array);

impl crate::models::stream::PieceSink for JsPieces {
    fn append(&mut self, shard: &str, index: u32, bytes: &[u8]) -> crate::Result<()> {
        let o = js_sys::Object::new();
        let set = |k: &str, v: JsValue| js_sys::Reflect::set(&o, &k.into(), &v).map(drop);
        set("shard", shard.into())
            .and_then(|_| set("index", index.into()))
            .and_then(|_| set("bytes", js_sys::Uint8Array::from(bytes).into()))
            .map_err(|_| crate::Error::Request("building a shard piece for JavaScript".into()))?;
        self.0.push(&o);
        Ok(())
    }
}

#[wasm_bindgen]
impl Engine {
    /// A new conversion. `files`: the small files of the layout (`{path: string}`: configs,
    /// scheduler, tokenizer); `quant`: `q8_0`, `q4_0`, `f16` or `f32` (standard policy).
    pub fn converter(&self, files: JsValue, quant: &str) -> Result<Converter, JsError> {
        let files: std::collections::BTreeMap<String, String> =
            serde_wasm_bindgen::from_value(files).map_err(|e| JsError::new(&format!("bad small files: {e}")))?;
        let policy = QuantPolicy::standard(StoreType::parse(quant).map_err(js_err)?);
        let inner = crate::models::stream::StreamConverter::new(
            &self.gpu,
            quant,
            &policy,
            crate::models::package::MAX_SHARD,
            files,
        )
        .map_err(js_err)?;
        Ok(Converter { inner })
    }

    /// A conversion back at a `Converter.checkpoint()`.
    #[wasm_bindgen(js_name = resumeConverter)]
    pub fn resume_converter(&self, checkpoint: &str) -> Result<Converter, JsError> {
        let inner = crate::models::stream::StreamConverter::resume(&self.gpu, checkpoint).map_err(js_err)?;
        Ok(Converter { inner })
    }
}

#[wasm_bindgen]
impl Converter {
    /// Starts weight file `path` of `size` bytes, with its sha256 when known (checked at the end).
    #[wasm_bindgen(js_name = beginFile)]
    pub fn begin_file(&mut self, path: &str, size: f64, sha256: Option<String>) -> Result<(), JsError> {
        if !(size >= 0.0 && size <= 9.0e15 && size.fract() == 0.0) {
            return Err(JsError::new(&format!("{path}: bad size {size}")));
        }
        self.inner.begin_file(path, size as u64, sha256).map_err(js_err)
    }

    /// Starts single-file checkpoint `path` (original LDM names, every component) of `size`
    /// bytes, converted against the base model's configs the converter was made with;
    /// `prediction`: `epsilon` or `v_prediction` when the user chose (else the file's metadata,
    /// else the base model's scheduler).
    #[wasm_bindgen(js_name = beginSingleFile)]
    pub fn begin_single_file(
        &mut self,
        path: &str,
        size: f64,
        sha256: Option<String>,
        prediction: Option<String>,
    ) -> Result<(), JsError> {
        if !(size >= 0.0 && size <= 9.0e15 && size.fract() == 0.0) {
            return Err(JsError::new(&format!("{path}: bad size {size}")));
        }
        self.inner.begin_single_file(path, size as u64, sha256, prediction).map_err(js_err)
    }

    /// The next bytes of the file; returns the shard pieces they produced.
    pub fn push(&mut self, bytes: &[u8]) -> Result<js_sys::Array, JsError> {
        let mut out = JsPieces(js_sys::Array::new());
        self.inner.push(bytes, &mut out).map_err(js_err)?;
        Ok(out.0)
    }

    /// Hands quantizing slices out as jobs (`jobs`, results through `complete`) so that
    /// conversion workers can quantize in parallel.
    #[wasm_bindgen(js_name = setOffload)]
    pub fn set_offload(&mut self, on: bool) {
        self.inner.set_offload(on);
    }

    /// The jobs the pushes since the last call produced, in order:
    /// `[{name, from, to, bytes}]`; run each with `convertSlice`.
    pub fn jobs(&mut self) -> Result<js_sys::Array, JsError> {
        let out = js_sys::Array::new();
        for j in self.inner.take_jobs() {
            let o = js_sys::Object::new();
            let set = |k: &str, v: JsValue| js_sys::Reflect::set(&o, &k.into(), &v).map(drop);
            set("name", j.name.as_str().into())
                .and_then(|_| set("from", j.from.name().into()))
                .and_then(|_| set("to", j.to.name().into()))
                .and_then(|_| set("bytes", js_sys::Uint8Array::from(j.bytes.as_slice()).into()))
                .map_err(|_| JsError::new("building a conversion job for JavaScript"))?;
            out.push(&o);
        }
        Ok(out)
    }

    /// The result of the oldest job not completed yet; returns the shard pieces it unblocks.
    pub fn complete(&mut self, bytes: &[u8]) -> Result<js_sys::Array, JsError> {
        let mut out = JsPieces(js_sys::Array::new());
        self.inner.complete(bytes, &mut out).map_err(js_err)?;
        Ok(out.0)
    }

    /// Jobs handed out and not completed.
    #[wasm_bindgen(js_name = jobsOut)]
    pub fn jobs_out(&self) -> u32 {
        self.inner.jobs_out() as u32
    }

    /// The file is complete and its sha256 (returned) matches the expected one.
    #[wasm_bindgen(js_name = endFile)]
    pub fn end_file(&mut self) -> Result<String, JsError> {
        self.inner.end_file().map_err(js_err)
    }

    /// Where the current file must continue from (after a resume).
    pub fn position(&self) -> f64 {
        self.inner.position() as f64
    }

    /// The file being converted, or `undefined`.
    #[wasm_bindgen(js_name = currentFile)]
    pub fn current_file(&self) -> Option<String> {
        self.inner.current_file().map(str::to_string)
    }

    /// The state at the last tensor boundary, as a string to store (see `Engine.resumeConverter`).
    pub fn checkpoint(&self) -> Result<String, JsError> {
        self.inner.checkpoint().map_err(js_err)
    }

    /// `[[shard file, pieces to keep]]` the state covers (pieces: 4294967295 = all).
    #[wasm_bindgen(js_name = shardPieces)]
    pub fn shard_pieces(&self) -> Result<JsValue, JsError> {
        to_js(&self.inner.shard_pieces())
    }

    /// All weight files converted: the manifest JSON (store it last).
    pub fn finish(self) -> Result<String, JsError> {
        let done = self.inner.finish().map_err(js_err)?;
        serde_json::to_string(&done.manifest).map_err(|e| JsError::new(&format!("writing the manifest: {e}")))
    }
}
