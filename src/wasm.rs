//! The wasm-bindgen surface. Glue only: every call converts arguments, calls the library and
//! turns `Error` into a `JsError` carrying its human-readable message. No model logic here.

use wasm_bindgen::prelude::*;

use crate::gpu::{Gpu, GpuOptions, LimitsPolicy};

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

    /// Runs matmul, conv2d and attention on the GPU against candle on the CPU (in wasm).
    #[wasm_bindgen(js_name = selfTest)]
    pub async fn self_test(&self) -> Result<JsValue, JsError> {
        let results = crate::selftest::run(&self.gpu).await.map_err(js_err)?;
        to_js(&results)
    }
}
