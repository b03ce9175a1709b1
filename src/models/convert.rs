//! The converter: a diffusers model (or a package) in, a package out (see `package`).
//!
//! Which tensors are matrices comes from a dry run of our own model constructors, so the policy
//! never guesses from names. A diffusers model streams file by file through `StreamConverter`
//! (what the browser runs while downloading), whose per-slice conversion is the very function
//! quantize-on-load uses: a package loads to exactly the weights the same policy gives on load.
//! Shard bytes leave through a `PieceSink` as they are made, so memory stays at one slice.

use super::component::{Component, SMALL_FILES};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::clip::ClipTextModel;
use super::config::{ClipConfig, UNetConfig, VaeConfig};
use super::hash::Sha256State;
use super::header;
use super::loader::FileSource;
use super::package::{sha256_hex, Manifest, ShardEntry, TensorEntry, FORMAT, VERSION};
use super::stream::{PieceSink, StreamConverter};
use super::unet::UNet;
use super::vae::{Decoder, Encoder};
use super::weights::{Access, Rounding, TensorSource, Weights};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};
use crate::quant::QuantPolicy;

/// The tensors a component's model loads, in order, from `w` (a dry-run or synthetic cursor).
pub fn component_accesses(component: Component, config_json: &str, w: &Weights) -> Result<Vec<Access>> {
    match component {
        Component::Vae => {
            let c = VaeConfig::from_json(config_json)?;
            Decoder::load(&c, w)?;
            Encoder::load(&c, w)?;
        }
        Component::TextEncoder | Component::TextEncoder2 => {
            ClipTextModel::load(ClipConfig::from_json(config_json)?, w)?;
        }
        Component::Unet => {
            UNet::load(UNetConfig::from_json(config_json)?, w)?;
        }
    }
    Ok(w.accesses())
}

/// What a conversion wrote, and which source tensors no model uses (left out).
pub struct Converted {
    pub manifest: Manifest,
    pub dropped: Vec<String>,
}

/// Bytes read from the source at a time.
const READ: u64 = 16 << 20;

/// Converts the model at `src` with `policy` (`quant` names it in the manifest), writing shards
/// of at most `max_shard` bytes to `sink`. Each weight file streams through the same
/// `StreamConverter` the browser feeds while downloading. The manifest is returned, not
/// written: callers store it last, so a half-written package is never taken for a whole one.
pub fn convert(
    src: &dyn FileSource,
    gpu: &Gpu,
    quant: &str,
    policy: &QuantPolicy,
    max_shard: usize,
    sink: &mut dyn PieceSink,
) -> Result<Converted> {
    super::loader::check_index(src)?;
    let mut files = BTreeMap::new();
    for f in SMALL_FILES {
        let path = f.path;
        if f.with.is_some_and(|w| !files.contains_key(w)) {
            continue;
        }
        if let Some(bytes) = src.read(path)? {
            let text = String::from_utf8(bytes).map_err(|_| Error::Weights(format!("{path} is not UTF-8")))?;
            files.insert(path.to_string(), text);
        }
    }
    if let Some(p) = src.as_package() {
        let tensors = |c: Component| -> Result<Box<dyn TensorSource + '_>> { Ok(Box::new(p.tensors(c.name())?)) };
        return convert_tensors(&tensors, gpu, quant, policy, max_shard, files, sink);
    }
    let components = Component::present(|p| files.contains_key(p));
    let mut conv = StreamConverter::new(gpu, quant, policy, max_shard, files)?;
    // A single-file checkpoint streams as the browser streams it: one file, names mapped.
    if let Some(s) = src.as_single_file() {
        let (path, file) = s.checkpoint();
        stream_file(file, path, &mut conv, sink, |c, size| {
            c.begin_single_file(path, size, None, s.prediction().map(str::to_string))
        })?;
    } else {
        for component in components {
            let path = weights_file(src, component)?;
            stream_file(src, &path, &mut conv, sink, |c, size| c.begin_file(&path, size, None))?;
        }
    }
    let done = conv.finish()?;
    Ok(Converted { manifest: done.manifest, dropped: done.dropped })
}

/// Pushes weight file `path` of `src` through `conv` (begun by `begin` with its size); returns
/// the size.
fn stream_file(
    src: &dyn FileSource,
    path: &str,
    conv: &mut StreamConverter,
    sink: &mut dyn PieceSink,
    begin: impl FnOnce(&mut StreamConverter, u64) -> Result<()>,
) -> Result<u64> {
    // The file's size from its own header (the last tensor's end), checked as it streams.
    let prefix = src.read_range(path, 0, 8)?.unwrap_or_default();
    let n = header::header_len(path, &prefix, None)?;
    let json = src.read_range(path, 8, n)?.unwrap_or_default();
    let size = header::parse(path, &json, None)?.iter().map(|t| t.start + t.len).max().unwrap_or(8 + n);
    begin(conv, size)?;
    let mut at = 0;
    while at < size {
        let len = READ.min(size - at);
        let bytes = src
            .read_range(path, at, len)?
            .ok_or_else(|| Error::Weights(format!("{path} vanished while converting")))?;
        conv.push(&bytes, sink)?;
        at += len;
    }
    conv.end_file()?;
    Ok(size)
}

/// The weights file of `component` in a diffusers folder: the plain file, else `.fp16`.
pub fn weights_file(src: &dyn FileSource, component: Component) -> Result<String> {
    for file in component.weights_files() {
        if src.read_range(&file, 0, 8)?.is_some() {
            return Ok(file);
        }
    }
    Err(Error::Weights(format!("{} has no {component}/{}[.fp16].safetensors", src.describe(), component.stem())))
}

/// Re-quantizing a package: each component's tensors (in load
/// order, under diffusers names) through the policy, as on load.
#[allow(clippy::too_many_arguments)]
fn convert_tensors<'s>(
    tensors: &dyn Fn(Component) -> Result<Box<dyn TensorSource + 's>>,
    gpu: &Gpu,
    quant: &str,
    policy: &QuantPolicy,
    max_shard: usize,
    files: BTreeMap<String, String>,
    sink: &mut dyn PieceSink,
) -> Result<Converted> {
    let policy_arc = Arc::new(policy.clone());
    let mut out = PackageWriter::new(max_shard, sink)?;
    let mut dropped = Vec::new();
    for component in Component::present(|p| files.contains_key(p)) {
        let config = files
            .get(&component.config_file())
            .ok_or_else(|| Error::Weights(format!("the model has no {component}/config.json")))?;
        let source = tensors(component)?;
        let dry = Weights::dry_run(&*source, gpu, DType::F32);
        let accesses = component_accesses(component, config, &dry)?;
        dropped.extend(dry.unused().into_iter().map(|n| format!("{component}.{n}")));
        let w =
            Weights::new(&*source, gpu, DType::F32).with_policy(component.name(), policy_arc.clone(), Rounding::Fit);
        for a in &accesses {
            let (dtype, bytes) = w.stored_access(a)?;
            out.add(component.name(), &a.name, dtype, &a.shape, &bytes)?;
        }
        out.end_component();
    }
    let (shards, tensors) = out.finish();
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

/// Whole tensors into shards (re-quantizing a package, where tensors come in load order).
struct PackageWriter<'s> {
    max: u64,
    sink: &'s mut dyn PieceSink,
    open: Option<(String, u64, u32, Sha256State)>,
    count: u32,
    shards: Vec<ShardEntry>,
    tensors: Vec<TensorEntry>,
}

impl<'s> PackageWriter<'s> {
    fn new(max: usize, sink: &'s mut dyn PieceSink) -> Result<Self> {
        if max < crate::quant::BLOCK {
            return Err(Error::Request(format!("a shard of {max} bytes is too small")));
        }
        Ok(PackageWriter { max: max as u64, sink, open: None, count: 0, shards: Vec::new(), tensors: Vec::new() })
    }

    fn add(
        &mut self,
        component: &str,
        name: &str,
        dtype: crate::quant::StoreType,
        shape: &[usize],
        mut bytes: &[u8],
    ) -> Result<()> {
        let length = bytes.len() as u64;
        if self.open.as_ref().is_some_and(|o| o.1 > 0 && o.1 + length > self.max) {
            self.close();
        }
        let offset = self.open.as_ref().map_or(0, |o| o.1);
        self.tensors.push(TensorEntry {
            component: component.into(),
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            shard: self.shards.len(),
            offset,
            length,
            sha256: Some(sha256_hex(bytes)),
        });
        while !bytes.is_empty() {
            if self.open.as_ref().is_some_and(|o| o.1 >= self.max) {
                self.close();
            }
            if self.open.is_none() {
                self.open = Some((format!("shards/{component}-{:03}.bin", self.count), 0, 0, Sha256State::new()));
                self.count += 1;
            }
            let o = self.open.as_mut().expect("opened");
            let take = ((self.max - o.1) as usize).min(bytes.len());
            self.sink.append(&o.0, o.2, &bytes[..take])?;
            o.3.update(&bytes[..take]);
            o.1 += take as u64;
            o.2 += 1;
            bytes = &bytes[take..];
        }
        Ok(())
    }

    fn close(&mut self) {
        if let Some((file, size, _, hash)) = self.open.take() {
            self.shards.push(ShardEntry { file, size, sha256: hash.hex() });
        }
    }

    fn end_component(&mut self) {
        self.close();
        self.count = 0;
    }

    fn finish(mut self) -> (Vec<ShardEntry>, Vec<TensorEntry>) {
        self.close();
        (self.shards, self.tensors)
    }
}
