//! Our CDN package: `manifest.json` plus shards of at most 64 MiB — small enough for one
//! storage binding, one IndexedDB record and one HTTP request.
//!
//! The manifest holds the format version, the conversion policy, the small files of the
//! diffusers layout verbatim (configs, scheduler, tokenizer), every shard's size and sha256, and
//! every tensor's component, name, storage type (f32/f16/q8_0/q4_0 in GGML blocks), logical shape
//! and place: `length` bytes at `offset` of shard `shard`. Tensors are written in the order the
//! models load them, so shards stream in order; a tensor larger than a shard starts a fresh shard
//! and runs on into the next ones.
//!
//! Reading verifies each shard's size and sha256 before any of its bytes is used, and errors
//! name the shard (`Error::Shard`), so a client knows exactly what to fetch again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::loader::FileSource;
use super::weights::{FileDType, TensorInfo, TensorSource};
use crate::error::{Error, Result};
use crate::quant::{QuantPolicy, StoreType};

pub const FORMAT: &str = "webdiffusion-package";
/// Version 2 gives every tensor its own sha256, so a reader verifies exactly the bytes it uses
/// and can read tensors in any order (version 1 packages are verified shard by shard).
pub const VERSION: u32 = 2;
/// The largest shard the converter writes (and a client should expect).
pub const MAX_SHARD: usize = 64 << 20;
pub const MANIFEST: &str = "manifest.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// What the converter was asked for (`q4_0`, `f16`, ...) and the whole policy it applied.
    pub quant: String,
    pub policy: QuantPolicy,
    /// Small text files of the diffusers layout by path (`unet/config.json`), verbatim.
    pub files: BTreeMap<String, String>,
    pub shards: Vec<ShardEntry>,
    pub tensors: Vec<TensorEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Path relative to the manifest (`shards/unet-003.bin`).
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub component: String,
    pub name: String,
    pub dtype: StoreType,
    pub shape: Vec<usize>,
    pub shard: usize,
    pub offset: u64,
    pub length: u64,
    /// sha256 of the tensor's `length` bytes (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::Weights(format!("{MANIFEST} is not a valid package manifest: {e}")))?;
        if m.format != FORMAT {
            return Err(Error::Weights(format!("{MANIFEST} is a {:?}, not a {FORMAT}", m.format)));
        }
        if !(1..=VERSION).contains(&m.version) {
            return Err(Error::Weights(format!(
                "package format version {} is not supported by this build (it reads versions 1 to {VERSION})",
                m.version
            )));
        }
        // Where each shard starts in the concatenation of all of them (checked: sizes are input).
        let mut starts = Vec::with_capacity(m.shards.len() + 1);
        let mut at = 0u64;
        for s in &m.shards {
            starts.push(at);
            at = at.checked_add(s.size).ok_or_else(|| {
                Error::Weights(format!("{MANIFEST}: shard {} has an impossible size {}", s.file, s.size))
            })?;
        }
        starts.push(at);
        for t in &m.tensors {
            let bad = |why: &str| Error::Weights(format!("{MANIFEST}: tensor {}.{} {why}", t.component, t.name));
            let start =
                starts.get(t.shard).filter(|_| t.shard < m.shards.len()).ok_or_else(|| bad("names no shard"))?;
            let end = start.checked_add(t.offset).and_then(|s| s.checked_add(t.length));
            if end.is_none_or(|e| e > at) || (t.length > 0 && t.offset >= m.shards[t.shard].size) {
                return Err(bad("lies outside its shards"));
            }
            let numel = t
                .shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .ok_or_else(|| bad("has too large a shape"))?;
            if t.dtype.quant().is_some() && numel % crate::quant::BLOCK != 0 || t.length != t.dtype.bytes(numel) as u64
            {
                return Err(bad(&format!(
                    "has {} bytes, its {} shape {:?} needs {}",
                    t.length,
                    t.dtype.name(),
                    t.shape,
                    t.dtype.bytes(numel)
                )));
            }
            if m.version >= 2 && t.sha256.as_ref().is_none_or(|h| h.len() != 64) {
                return Err(bad("has no sha256"));
            }
        }
        Ok(m)
    }

    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.size).sum()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a shard's bytes against its manifest entry.
pub fn verify_shard(entry: &ShardEntry, bytes: &[u8]) -> Result<()> {
    let err = |msg: String| Err(Error::Shard { file: entry.file.clone(), msg });
    if (bytes.len() as u64) < entry.size {
        return err(format!(
            "truncated: {} of {} bytes (an interrupted download? fetch it again)",
            bytes.len(),
            entry.size
        ));
    }
    if bytes.len() as u64 != entry.size {
        return err(format!("{} bytes, the manifest says {}", bytes.len(), entry.size));
    }
    let got = sha256_hex(bytes);
    if got != entry.sha256 {
        return err(format!("corrupt: sha256 {got}, the manifest says {} (fetch it again)", entry.sha256));
    }
    Ok(())
}

/// A package read through the `FileSource` holding its files.
pub struct Package<'a> {
    inner: &'a dyn FileSource,
    pub manifest: Manifest,
    /// The last two verified shards: tensors are read in shard order, and one may straddle two.
    cache: Mutex<Vec<(usize, Arc<Vec<u8>>)>>,
}

impl<'a> Package<'a> {
    /// The package at `src`, if `src` has a manifest.
    pub fn detect(src: &'a dyn FileSource) -> Result<Option<Package<'a>>> {
        match src.read(MANIFEST)? {
            Some(bytes) => {
                Ok(Some(Package { inner: src, manifest: Manifest::parse(&bytes)?, cache: Mutex::default() }))
            }
            None => Ok(None),
        }
    }

    /// Shard `i`, verified.
    fn shard(&self, i: usize) -> Result<Arc<Vec<u8>>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, b)) = cache.iter().find(|(j, _)| *j == i) {
            return Ok(b.clone());
        }
        let entry =
            self.manifest.shards.get(i).ok_or_else(|| Error::Weights(format!("{MANIFEST} has no shard {i}")))?;
        let bytes = self.inner.read(&entry.file)?.ok_or_else(|| Error::Shard {
            file: entry.file.clone(),
            msg: format!("missing from {}", self.inner.describe()),
        })?;
        verify_shard(entry, &bytes)?;
        let bytes = Arc::new(bytes);
        if cache.len() == 2 {
            cache.remove(0);
        }
        cache.push((i, bytes.clone()));
        Ok(bytes)
    }

    pub fn tensors(&self, component: &str) -> Result<PackageTensors<'_, 'a>> {
        let entries: BTreeMap<String, &TensorEntry> =
            self.manifest.tensors.iter().filter(|t| t.component == component).map(|t| (t.name.clone(), t)).collect();
        if entries.is_empty() {
            return Err(Error::Weights(format!("the package at {} has no {component} tensors", self.inner.describe())));
        }
        Ok(PackageTensors { package: self, entries })
    }
}

impl FileSource for Package<'_> {
    /// The manifest's small files, else the underlying files (shards).
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.manifest.files.get(path) {
            Some(text) => Ok(Some(text.as_bytes().to_vec())),
            None => self.inner.read(path),
        }
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn as_package(&self) -> Option<&Package<'_>> {
        Some(self)
    }
}

impl PackageTensors<'_, '_> {
    /// `len` bytes at `offset` of a shard, errors naming it.
    fn shard_range(&self, entry: &ShardEntry, offset: u64, len: u64) -> Result<Vec<u8>> {
        let inner = self.package.inner;
        inner
            .read_range(&entry.file, offset, len)
            .map_err(|e| Error::Shard {
                file: entry.file.clone(),
                msg: format!("truncated or unreadable ({e}); an interrupted download? fetch it again"),
            })?
            .ok_or_else(|| Error::Shard { file: entry.file.clone(), msg: format!("missing from {}", inner.describe()) })
    }

    /// Version 2: exactly the tensor's bytes, checked against its own sha256.
    fn read_verified(&self, t: &TensorEntry, want: &str) -> Result<Vec<u8>> {
        let shards = &self.package.manifest.shards;
        let (mut shard, mut offset) = (t.shard, t.offset);
        // The common case, a tensor inside one shard, is read straight into its own buffer.
        let mut out = if let Some(entry) =
            shards.get(shard).filter(|e| offset.checked_add(t.length).is_some_and(|end| end <= e.size))
        {
            shard += 1;
            offset = 0;
            self.shard_range(entry, t.offset, t.length)?
        } else {
            crate::error::try_vec(t.length, || format!("tensor `{}`", t.name))?
        };
        while (out.len() as u64) < t.length {
            let entry = shards
                .get(shard)
                .ok_or_else(|| Error::Tensor { name: t.name.clone(), msg: "runs past the last shard".into() })?;
            let take = (t.length - out.len() as u64).min(entry.size.saturating_sub(offset));
            let bytes = self.shard_range(entry, offset, take)?;
            out.extend_from_slice(&bytes);
            shard += 1;
            offset = 0;
        }
        let got = sha256_hex(&out);
        if got != *want {
            return Err(Error::Shard {
                file: shards[t.shard].file.clone(),
                msg: format!(
                    "corrupt: tensor {}.{} has sha256 {got}, the manifest says {want} (fetch it again)",
                    t.component, t.name
                ),
            });
        }
        Ok(out)
    }

    /// Version 1: whole shards verified, then sliced.
    fn read_from_verified_shards(&self, t: &TensorEntry) -> Result<Vec<u8>> {
        let name = &t.name;
        let mut out = crate::error::try_vec(t.length, || format!("tensor `{name}`"))?;
        let (mut shard, mut offset) = (t.shard, t.offset as usize);
        while (out.len() as u64) < t.length {
            let bytes = self.package.shard(shard)?;
            let take = (t.length as usize - out.len()).min(bytes.len().saturating_sub(offset));
            out.extend_from_slice(&bytes[offset..offset + take]);
            shard += 1;
            offset = 0;
            if shard >= self.package.manifest.shards.len() && (out.len() as u64) < t.length {
                return Err(Error::Tensor { name: name.clone(), msg: "runs past the last shard".into() });
            }
        }
        Ok(out)
    }
}

/// One component's tensors in a package.
pub struct PackageTensors<'p, 'a> {
    package: &'p Package<'a>,
    entries: BTreeMap<String, &'p TensorEntry>,
}

impl TensorSource for PackageTensors<'_, '_> {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.entries.get(name).map(|t| TensorInfo { dtype: FileDType::from(t.dtype), shape: t.shape.clone() })
    }

    fn bytes(&self, name: &str) -> Result<std::borrow::Cow<'_, [u8]>> {
        let t = self
            .entries
            .get(name)
            .ok_or_else(|| Error::Tensor { name: name.into(), msg: "missing from the package".into() })?;
        match &t.sha256 {
            Some(want) => self.read_verified(t, want),
            None => self.read_from_verified_shards(t),
        }
        .map(std::borrow::Cow::Owned)
    }

    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
}
