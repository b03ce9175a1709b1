//! The page's model files as a `FileSource`: synchronous reads the worker backs with IndexedDB.

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::models::loader::FileSource;

/// A model's files as the page's worker sees them: a JS object with synchronous
/// `read(path) -> Uint8Array | null`, optional `readRange(path, start, len) -> Uint8Array | null`
/// and optional `describe() -> string`. The worker backs it with IndexedDB blobs read through
/// `FileReaderSync`, so only what the loader asks for at a time (a shard, a tensor) is ever in
/// wasm memory.
pub(super) struct JsReader {
    this: JsValue,
    read: js_sys::Function,
    read_range: Option<js_sys::Function>,
    name: String,
}

impl JsReader {
    pub(super) fn new(reader: &JsValue) -> Result<JsReader, JsError> {
        let method = |name: &str| {
            js_sys::Reflect::get(reader, &name.into()).ok().and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        };
        let read = method("read").ok_or_else(|| JsError::new("the model reader has no read(path) method"))?;
        let name = method("describe")
            .and_then(|f| f.call0(reader).ok())
            .and_then(|v| v.as_string())
            .unwrap_or_else(|| "the model's files".into());
        Ok(JsReader { this: reader.clone(), read, read_range: method("readRange"), name })
    }

    fn bytes(&self, path: &str, result: Result<JsValue, JsValue>) -> crate::Result<Option<Vec<u8>>> {
        let v = result.map_err(|e| {
            let msg = e
                .dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
                .or_else(|| e.as_string())
                .unwrap_or_else(|| format!("{e:?}"));
            crate::Error::Weights(format!("reading {path} from {}: {msg}", self.name))
        })?;
        if v.is_null() || v.is_undefined() {
            return Ok(None);
        }
        let arr = v
            .dyn_into::<js_sys::Uint8Array>()
            .map_err(|_| crate::Error::Weights(format!("reading {path}: the reader did not return a Uint8Array")))?;
        Ok(Some(arr.to_vec()))
    }
}

impl FileSource for JsReader {
    fn read(&self, path: &str) -> crate::Result<Option<Vec<u8>>> {
        self.bytes(path, self.read.call1(&self.this, &path.into()))
    }

    fn read_range(&self, path: &str, start: u64, len: u64) -> crate::Result<Option<Vec<u8>>> {
        let Some(f) = &self.read_range else {
            let Some(all) = self.read(path)? else { return Ok(None) };
            let range = usize::try_from(start).ok().zip(usize::try_from(start.saturating_add(len)).ok());
            return range.and_then(|(a, b)| all.get(a..b)).map(|b| Some(b.to_vec())).ok_or_else(|| {
                crate::Error::Weights(format!("{path} in {} is shorter than {start}+{len} bytes", self.name))
            });
        };
        let got = self.bytes(path, f.call3(&self.this, &path.into(), &(start as f64).into(), &(len as f64).into()))?;
        match got {
            Some(b) if b.len() as u64 != len => Err(crate::Error::Weights(format!(
                "reading {path} from {}: asked for {len} bytes at {start}, got {}",
                self.name,
                b.len()
            ))),
            other => Ok(other),
        }
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}
