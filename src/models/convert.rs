//! The converter: a diffusers model (or a package) in, a package out (see `package`).
//!
//! Which tensors are matrices, and the order they load in, comes from a dry run of our own model
//! constructors, so the policy never guesses from names and shards stream in load order. Each
//! tensor's bytes come from `Weights::stored`, the very function quantize-on-load uses: a
//! package loads to exactly the weights the same policy gives on load. Shards go to a
//! `ShardSink` as they fill (a folder natively; IndexedDB in the browser), so memory stays at
//! one shard plus one tensor.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::clip::ClipTextModel;
use super::config::{ClipConfig, UNetConfig, VaeConfig};
use super::loader::{component_tensors, FileSource};
use super::package::{sha256_hex, Manifest, ShardEntry, TensorEntry, FORMAT, VERSION};
use super::unet::UNet;
use super::vae::{Decoder, Encoder};
use super::weights::{Access, Weights};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};
use crate::quant::QuantPolicy;

/// Small files copied verbatim into the manifest when present.
pub const SMALL_FILES: &[&str] = &[
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
];

/// Components in load order.
pub const COMPONENTS: [&str; 3] = ["vae", "text_encoder", "unet"];

/// Where finished shards go.
pub trait ShardSink {
    fn write_shard(&mut self, file: &str, bytes: &[u8]) -> Result<()>;
}

/// The tensors a component's model loads, in order, from `w` (a dry-run or synthetic cursor).
pub fn component_accesses(component: &str, config_json: &str, w: &Weights) -> Result<Vec<Access>> {
    match component {
        "vae" => {
            let c = VaeConfig::from_json(config_json)?;
            Decoder::load(&c, w)?;
            Encoder::load(&c, w)?;
        }
        "text_encoder" => {
            ClipTextModel::load(ClipConfig::from_json(config_json)?, w)?;
        }
        "unet" => {
            UNet::load(UNetConfig::from_json(config_json)?, w)?;
        }
        other => return Err(Error::Request(format!("unknown component {other}"))),
    }
    Ok(w.accesses())
}

struct ShardWriter<'s> {
    component: &'static str,
    max: usize,
    buf: Vec<u8>,
    count: usize,
    shards: Vec<ShardEntry>,
    sink: &'s mut dyn ShardSink,
}

impl ShardWriter<'_> {
    /// Appends a tensor; returns its (shard, offset).
    fn add(&mut self, bytes: &[u8]) -> Result<(usize, u64)> {
        if !self.buf.is_empty() && self.buf.len() + bytes.len() > self.max {
            self.flush()?;
        }
        let place = (self.shards.len(), self.buf.len() as u64);
        self.buf.extend_from_slice(bytes);
        while self.buf.len() > self.max {
            let rest = self.buf.split_off(self.max);
            self.flush()?;
            self.buf = rest;
        }
        Ok(place)
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let file = format!("shards/{}-{:03}.bin", self.component, self.count);
        self.sink.write_shard(&file, &self.buf)?;
        self.shards.push(ShardEntry { file, size: self.buf.len() as u64, sha256: sha256_hex(&self.buf) });
        self.count += 1;
        self.buf.clear();
        Ok(())
    }
}

/// What a conversion wrote, and which source tensors no model uses (left out).
pub struct Converted {
    pub manifest: Manifest,
    pub dropped: Vec<String>,
}

/// Converts the model at `src` with `policy` (`quant` names it in the manifest), writing shards
/// of at most `max_shard` bytes to `sink`. The manifest is returned, not written: callers
/// store it last, so a half-written package is never taken for a whole one.
pub fn convert(
    src: &dyn FileSource,
    gpu: &Gpu,
    quant: &str,
    policy: &QuantPolicy,
    max_shard: usize,
    sink: &mut dyn ShardSink,
) -> Result<Converted> {
    super::loader::check_index(src)?;
    let mut files = BTreeMap::new();
    for path in SMALL_FILES {
        if let Some(bytes) = src.read(path)? {
            let text = String::from_utf8(bytes).map_err(|_| Error::Weights(format!("{path} is not UTF-8")))?;
            files.insert(path.to_string(), text);
        }
    }
    let policy_arc = Arc::new(policy.clone());
    let mut shards = Vec::new();
    let mut tensors = Vec::new();
    let mut dropped = Vec::new();
    for component in COMPONENTS {
        let config = files
            .get(&format!("{component}/config.json"))
            .ok_or_else(|| Error::Weights(format!("{} has no {component}/config.json", src.describe())))?;
        let source = component_tensors(src, component)?;
        let dry = Weights::dry_run(&*source, gpu, DType::F32);
        let accesses = component_accesses(component, config, &dry)?;
        dropped.extend(dry.unused().into_iter().map(|n| format!("{component}.{n}")));
        let w = Weights::new(&*source, gpu, DType::F32).with_policy(component, policy_arc.clone());
        let mut writer =
            ShardWriter { component, max: max_shard, buf: Vec::new(), count: 0, shards: Vec::new(), sink: &mut *sink };
        let mut entries = Vec::new();
        for a in &accesses {
            let (dtype, bytes) = w.stored_access(a)?;
            let (shard, offset) = writer.add(&bytes)?;
            entries.push(TensorEntry {
                component: component.to_string(),
                name: a.name.clone(),
                dtype,
                shape: a.shape.clone(),
                shard: shards.len() + shard,
                offset,
                length: bytes.len() as u64,
            });
        }
        writer.flush()?;
        shards.extend(writer.shards);
        tensors.extend(entries);
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        quant: quant.into(),
        policy: policy.clone(),
        files,
        shards,
        tensors,
    };
    Ok(Converted { manifest, dropped })
}
