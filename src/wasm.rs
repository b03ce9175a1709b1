//! The wasm-bindgen surface. Glue only: every call converts arguments, calls the library and
//! turns `Error` into a `JsError` carrying its human-readable message. No model logic here.

use wasm_bindgen::prelude::*;

use crate::gpu::{DType, Gpu, GpuOptions, LimitsPolicy};
use crate::models::loader::MemorySource;

#[wasm_bindgen(start)]
pub fn start() {
    // A panic is a bug, but it should reach the console with a message, not "unreachable".
    console_error_panic_hook::set_once();
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

    /// Runs a fixture's text encoder, U-Net and VAE and compares them with its diffusers
    /// reference. `files` maps paths (`unet/config.json`, …) to `Uint8Array`s.
    pub async fn parity(&self, files: &js_sys::Object, f16: bool) -> Result<JsValue, JsError> {
        let mut src = MemorySource { name: "fixture".into(), ..Default::default() };
        for entry in js_sys::Object::entries(files).iter() {
            let pair = js_sys::Array::from(&entry);
            let path = pair.get(0).as_string().ok_or_else(|| JsError::new("file names must be strings"))?;
            let bytes = js_sys::Uint8Array::new(&pair.get(1)).to_vec();
            src.files.insert(path, bytes);
        }
        let dtype = if f16 { DType::F16 } else { DType::F32 };
        let outputs = crate::models::parity::run(&src, &self.gpu, dtype).await.map_err(js_err)?;
        to_js(&outputs)
    }

    /// Runs matmul, conv2d and attention on the GPU against candle on the CPU (in wasm).
    #[wasm_bindgen(js_name = selfTest)]
    pub async fn self_test(&self) -> Result<JsValue, JsError> {
        let results = crate::selftest::run(&self.gpu).await.map_err(js_err)?;
        to_js(&results)
    }
}
