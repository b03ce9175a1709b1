//! The wasm-bindgen surface. Glue only: every call converts arguments, calls the library and
//! turns `Error` into a `JsError` carrying its human-readable message. No model logic here.

use wasm_bindgen::prelude::*;

use crate::gpu::{DType, Gpu, GpuOptions, LimitsPolicy};
use crate::models::loader::{LoadOptions, MemorySource};
use crate::pipeline::generate::Request;
use crate::pipeline::image::{a1111_parameters, encode_png};
use crate::pipeline::rng::NormalRng;
use crate::pipeline::scheduler::SchedulerKind;

#[wasm_bindgen(start)]
pub fn start() {
    // A panic is a bug, but it should reach the console with a message, not "unreachable".
    console_error_panic_hook::set_once();
}

/// `{path: Uint8Array}` as a file source.
fn memory_source(files: &js_sys::Object) -> Result<MemorySource, JsError> {
    let mut src = MemorySource { name: "the files given".into(), ..Default::default() };
    for entry in js_sys::Object::entries(files).iter() {
        let pair = js_sys::Array::from(&entry);
        let path = pair.get(0).as_string().ok_or_else(|| JsError::new("file names must be strings"))?;
        src.files.insert(path, js_sys::Uint8Array::new(&pair.get(1)).to_vec());
    }
    Ok(src)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest {
    prompt: String,
    #[serde(default)]
    negative_prompt: Option<String>,
    steps: usize,
    guidance: f32,
    width: usize,
    height: usize,
    scheduler: String,
    seed: u64,
}

fn js_err(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}

fn to_js<T: serde::Serialize>(v: &T) -> Result<JsValue, JsError> {
    serde_wasm_bindgen::to_value(v).map_err(|e| JsError::new(&format!("converting a result for JavaScript: {e}")))
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
        };
        let gpu = Gpu::new(&options).await.map_err(js_err)?;
        Ok(Engine { gpu })
    }

    /// Adapter name, backend, features and limits, as a plain object.
    pub fn info(&self) -> Result<JsValue, JsError> {
        to_js(self.gpu.caps())
    }

    /// Loads a diffusers model from `files` (path -> `Uint8Array`) and generates one image.
    /// `request`: `{prompt, negativePrompt?, steps, guidance, width, height, scheduler, seed}`.
    /// `onStep(index, total)` is called after every step; returning `false` cancels.
    /// Returns `{width, height, rgb, rgba, png}` (the last three `Uint8Array`s).
    pub async fn generate(
        &self,
        files: &js_sys::Object,
        request: JsValue,
        on_step: Option<js_sys::Function>,
    ) -> Result<JsValue, JsError> {
        let r: GenerateRequest =
            serde_wasm_bindgen::from_value(request).map_err(|e| JsError::new(&format!("bad request: {e}")))?;
        let src = memory_source(files)?;
        let dtype = if self.gpu.caps().shader_f16 { DType::F16 } else { DType::F32 };
        let sd = crate::models::loader::stable_diffusion(&src, &self.gpu, &LoadOptions::new(dtype)).map_err(js_err)?;
        let req = Request {
            prompt: r.prompt.clone(),
            negative_prompt: r.negative_prompt.clone(),
            steps: r.steps,
            guidance: r.guidance,
            width: r.width,
            height: r.height,
            scheduler: SchedulerKind::parse(&r.scheduler).map_err(js_err)?,
            init: None,
        };
        let mut rng = NormalRng::new(r.seed);
        let out = sd
            .generate(&req, None, &mut rng, &mut |s| match &on_step {
                Some(f) => f
                    .call2(&JsValue::NULL, &(s.index as u32).into(), &(s.total as u32).into())
                    .map_or(false, |v| v.as_bool() != Some(false)),
                None => true,
            })
            .await
            .map_err(js_err)?;
        let params = a1111_parameters(
            &r.prompt,
            r.negative_prompt.as_deref(),
            r.steps,
            req.scheduler.a1111_name(),
            r.guidance,
            Some(r.seed),
            out.width,
            out.height,
            "model",
        );
        let png = encode_png(&out.rgb, out.width, out.height, Some(&params)).map_err(js_err)?;
        let obj = js_sys::Object::new();
        let set = |k: &str, v: JsValue| {
            js_sys::Reflect::set(&obj, &k.into(), &v).map(drop).map_err(|_| JsError::new("building the result"))
        };
        set("width", (out.width as u32).into())?;
        set("height", (out.height as u32).into())?;
        set("rgb", js_sys::Uint8Array::from(out.rgb.as_slice()).into())?;
        set("rgba", js_sys::Uint8Array::from(out.rgba().as_slice()).into())?;
        set("png", js_sys::Uint8Array::from(png.as_slice()).into())?;
        Ok(obj.into())
    }

    /// Runs a fixture's text encoder, U-Net and VAE and compares them with its diffusers
    /// reference. `files` maps paths (`unet/config.json`, …) to `Uint8Array`s.
    pub async fn parity(&self, files: &js_sys::Object, f16: bool) -> Result<JsValue, JsError> {
        let src = memory_source(files)?;
        let dtype = if f16 { DType::F16 } else { DType::F32 };
        let outputs = crate::models::parity::run(&src, &self.gpu, &LoadOptions::new(dtype)).await.map_err(js_err)?;
        to_js(&outputs)
    }

    /// Runs matmul, conv2d and attention on the GPU against candle on the CPU (in wasm).
    #[wasm_bindgen(js_name = selfTest)]
    pub async fn self_test(&self) -> Result<JsValue, JsError> {
        let results = crate::selftest::run(&self.gpu).await.map_err(js_err)?;
        to_js(&results)
    }
}
