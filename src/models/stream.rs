//! Converting a model while it downloads: weight files are pushed in as their bytes arrive, in
//! file order, and leave as package shards in their stored form (the policy's q4_0/q8_0/f16),
//! so a browser never stores the fp16 repo and a returning visit uploads stored blocks with no
//! CPU quantization. The native `convert` runs the same code over whole files, so the two give
//! the same package byte for byte however the bytes were cut.
//!
//! Each tensor is converted in slices as its bytes come (slices end on 32-value block
//! boundaries), so memory holds one slice, never a whole tensor in f32. Shards leave as pieces
//! through a `PieceSink`; a tensor is placed in a shard when it starts, as the converter always
//! placed it (a fresh shard when it does not fit, spanning shards when larger than one).
//!
//! After every tensor the converter notes a *checkpoint*: where the file's next tensor starts,
//! the shard pieces written, and the running sha256 states of the file and the open shard. A
//! download cut anywhere resumes from the checkpoint (`resume`, then fetch from `position`),
//! re-sending at most one tensor.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::component::Component;
use super::convert::component_accesses;
use super::hash::Sha256State;
use super::header::{self, HeaderTensor};
use super::package::{Manifest, ShardEntry, TensorEntry, FORMAT, VERSION};
use super::stream_single::{self, HeaderOnly, Planned};
use super::weights::{convert_bytes, storage, FileDType, Storage, Weights};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};
use crate::quant::{QuantPolicy, StoreType, BLOCK};

/// Input bytes converted at a time (f32 values of one slice: 8 MiB at most from f16).
const SLICE: usize = 4 << 20;

/// Where shard bytes go: piece `index` (0, 1, ... per shard) of `shard`, in order.
pub trait PieceSink {
    fn append(&mut self, shard: &str, index: u32, bytes: &[u8]) -> Result<()>;
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct OpenShard {
    file: String,
    size: u64,
    pieces: u32,
    hash: Sha256State,
}

/// The part of the state that moves at tensor boundaries (what a checkpoint restores).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Mark {
    /// Bytes of the file consumed.
    position: u64,
    /// The file's running sha256 over those bytes.
    file_hash: Sha256State,
    /// The next tensor of the file's plan.
    next: usize,
    open: Option<OpenShard>,
    shards: usize,
    tensors: usize,
    dropped: usize,
    component_shards: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct FileState {
    path: String,
    component: String,
    size: u64,
    expected_sha256: Option<String>,
    /// A single-file checkpoint (every component in one file, original names), and the
    /// prediction type the user chose for it.
    #[serde(default)]
    single: bool,
    #[serde(default)]
    prediction: Option<String>,
    /// The JSON header, once it has arrived (the plan is rebuilt from it on resume).
    header: Option<String>,
    mark: Mark,
}

/// What a tensor of the file becomes.
struct Item {
    /// The component it belongs to (empty for a checkpoint's tensors no model reads).
    component: String,
    t: HeaderTensor,
    /// The access the model made (`None`: no model uses it; its bytes are skipped).
    shape: Option<Vec<usize>>,
    storage: Storage,
}

/// The tensor being written out.
struct Current {
    hash: Sha256,
    entry: TensorEntry,
}

/// A slice to convert elsewhere (another thread or web worker, with `weights::convert_bytes`): its result goes
/// back through `StreamConverter::complete`, in the order the jobs were taken.
pub struct Job {
    pub name: String,
    pub from: FileDType,
    pub to: StoreType,
    pub bytes: Vec<u8>,
}

/// What the reading side hands the writing side, in file order. The writing side places tensors
/// in shards, hashes and emits their bytes and notes checkpoints; it waits at a slice still
/// being converted elsewhere.
enum Op {
    /// The next used tensor's first byte: its place in the shards.
    Start,
    /// Its next stored bytes.
    Bytes(Vec<u8>),
    /// Its next stored bytes, `len` of them, come from a job.
    Awaiting { len: usize },
    /// The tensor is done; the file had then been read to `position` with sha256 state `hash`.
    Finish { position: u64, hash: Sha256State },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    quant: String,
    policy: QuantPolicy,
    max_shard: u64,
    files: BTreeMap<String, String>,
    shards: Vec<ShardEntry>,
    tensors: Vec<TensorEntry>,
    dropped: Vec<String>,
    converted: Vec<(String, String)>,
    open: Option<OpenShard>,
    file: Option<FileState>,
}

pub struct StreamConverter {
    gpu: Gpu,
    policy: Arc<QuantPolicy>,
    st: State,
    /// The header bytes received so far (before it is parsed).
    head: Vec<u8>,
    plan: Vec<Item>,
    /// Reading: the file's running hash, bytes read, the plan item they belong to, whether its
    /// first byte was seen, and its bytes not yet cut into a whole slice.
    file_hash: Sha256State,
    position: u64,
    next: usize,
    started: bool,
    pending: Vec<u8>,
    /// Writing: what reading handed over and is not written yet (only ever more than nothing
    /// while a job is out), the plan item being written and its entry.
    ops: std::collections::VecDeque<Op>,
    written: usize,
    cur: Option<Current>,
    component_shards: u32,
    /// Quantizing slices are handed out as jobs (`take_jobs`) instead of converted here.
    offload: bool,
    jobs: Vec<Job>,
}

/// A finished conversion: the manifest to store last, and the source tensors no model uses.
pub struct Finished {
    pub manifest: Manifest,
    pub dropped: Vec<String>,
    /// (path, sha256) of every weight file converted, as computed over its bytes.
    pub files: Vec<(String, String)>,
}

/// The sink where no bytes can arrive.
struct NoBytes;

impl PieceSink for NoBytes {
    fn append(&mut self, shard: &str, _: u32, _: &[u8]) -> Result<()> {
        Err(Error::Request(format!("{shard}: bytes written after the file ended")))
    }
}

/// Bytes the stored form of a used tensor of `shape` takes.
fn stored_len(item: &Item, shape: &[usize]) -> Result<u64> {
    match item.storage {
        Storage::Keep(_) => Ok(item.t.len),
        Storage::Convert(t) => {
            shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).map(|n| t.bytes(n) as u64).ok_or_else(|| {
                Error::Tensor { name: item.t.name.clone(), msg: format!("shape {shape:?} is too large") }
            })
        }
    }
}

impl StreamConverter {
    /// A conversion with `policy` (`quant` names it in the manifest) into shards of at most
    /// `max_shard` bytes; `files` are the small text files of the layout (configs, tokenizer).
    pub fn new(
        gpu: &Gpu,
        quant: &str,
        policy: &QuantPolicy,
        max_shard: usize,
        files: BTreeMap<String, String>,
    ) -> Result<Self> {
        if max_shard < BLOCK {
            return Err(Error::Request(format!("a shard of {max_shard} bytes is too small")));
        }
        let st = State {
            quant: quant.into(),
            policy: policy.clone(),
            max_shard: max_shard as u64,
            files,
            shards: Vec::new(),
            tensors: Vec::new(),
            dropped: Vec::new(),
            converted: Vec::new(),
            open: None,
            file: None,
        };
        Ok(Self::from_state(gpu, st))
    }

    fn from_state(gpu: &Gpu, st: State) -> Self {
        StreamConverter {
            gpu: gpu.clone(),
            policy: Arc::new(st.policy.clone()),
            st,
            head: Vec::new(),
            plan: Vec::new(),
            file_hash: Sha256State::new(),
            position: 0,
            next: 0,
            started: false,
            pending: Vec::new(),
            ops: Default::default(),
            written: 0,
            cur: None,
            component_shards: 0,
            offload: false,
            jobs: Vec::new(),
        }
    }

    /// Starts weight file `path` (`<component>/<name>.safetensors`) of `size` bytes; its sha256
    /// is checked at `end_file` when known.
    pub fn begin_file(&mut self, path: &str, size: u64, expected_sha256: Option<String>) -> Result<()> {
        let component = path.split('/').next().unwrap_or_default().to_string();
        Component::parse(&component).map_err(|e| Error::Weights(format!("{path}: {e}")))?;
        self.begin(path, component, size, expected_sha256, None)
    }

    /// Starts single-file checkpoint `path` (original LDM names, every component; see
    /// `stream_single`), converted against the base model's configs given to `new`. Its
    /// `prediction` type (`epsilon`, `v_prediction`) when the user chose one.
    pub fn begin_single_file(
        &mut self,
        path: &str,
        size: u64,
        expected_sha256: Option<String>,
        prediction: Option<String>,
    ) -> Result<()> {
        if let Some(p) = prediction.as_deref().filter(|p| !matches!(*p, "epsilon" | "v_prediction")) {
            return Err(Error::Request(format!("prediction type {p}: epsilon or v_prediction")));
        }
        self.begin(path, String::new(), size, expected_sha256, Some(prediction))
    }

    fn begin(
        &mut self,
        path: &str,
        component: String,
        size: u64,
        expected_sha256: Option<String>,
        single: Option<Option<String>>,
    ) -> Result<()> {
        if let Some(f) = &self.st.file {
            return Err(Error::Request(format!("{path} started before {} ended", f.path)));
        }
        let done = |c: &str| self.st.tensors.iter().any(|t| t.component == c);
        if single.is_some() && !self.st.converted.is_empty() || done(&component) {
            let what = if component.is_empty() { "a checkpoint's".into() } else { format!("the {component}") };
            return Err(Error::Weights(format!("{path}: {what} weights were converted already")));
        }
        let mark = Mark {
            position: 0,
            file_hash: Sha256State::new(),
            next: 0,
            open: self.st.open.clone(),
            shards: self.st.shards.len(),
            tensors: self.st.tensors.len(),
            dropped: self.st.dropped.len(),
            component_shards: 0,
        };
        self.st.file = Some(FileState {
            path: path.into(),
            component,
            size,
            expected_sha256: expected_sha256.map(|s| s.to_ascii_lowercase()),
            single: single.is_some(),
            prediction: single.flatten(),
            header: None,
            mark,
        });
        self.head.clear();
        self.plan.clear();
        self.file_hash = Sha256State::new();
        self.position = 0;
        self.next = 0;
        self.started = false;
        self.pending.clear();
        self.ops.clear();
        self.written = 0;
        self.cur = None;
        self.component_shards = 0;
        Ok(())
    }

    /// Hands quantizing slices out as jobs (`take_jobs`, results through `complete`) instead of
    /// converting them here, so several threads or workers can quantize one stream.
    pub fn set_offload(&mut self, on: bool) {
        self.offload = on;
    }

    /// The jobs the last pushes produced, in order.
    pub fn take_jobs(&mut self) -> Vec<Job> {
        std::mem::take(&mut self.jobs)
    }

    /// Jobs taken and not yet completed.
    pub fn jobs_out(&self) -> usize {
        self.ops.iter().filter(|o| matches!(o, Op::Awaiting { .. })).count()
    }

    /// The result of the oldest job not yet completed; writes what it unblocks.
    pub fn complete(&mut self, bytes: &[u8], sink: &mut dyn PieceSink) -> Result<()> {
        // Everything before the first job is written already, so it is at the front.
        match self.ops.front() {
            Some(Op::Awaiting { len }) if *len == bytes.len() => {}
            Some(Op::Awaiting { len }) => {
                return Err(Error::Request(format!("a conversion result of {} bytes, expected {len}", bytes.len())))
            }
            _ => return Err(Error::Request("a conversion result with no job out".into())),
        }
        self.ops.pop_front();
        self.write(bytes, sink)?;
        self.drain(sink)
    }

    /// Where the current file's bytes must continue from (after `resume`, fetch from here).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next bytes of the current file.
    pub fn push(&mut self, mut data: &[u8], sink: &mut dyn PieceSink) -> Result<()> {
        let f = self.st.file.as_ref().ok_or_else(|| Error::Request("bytes pushed with no file begun".into()))?;
        if self.position.checked_add(data.len() as u64).is_none_or(|end| end > f.size) {
            return Err(Error::Weights(format!("{}: more bytes than its {} announced", f.path, f.size)));
        }
        if f.header.is_none() {
            data = self.take_header(data)?;
        }
        while self.st.file.as_ref().is_some_and(|f| f.header.is_some()) {
            self.finish_empty_tensors(sink)?;
            if data.is_empty() {
                break;
            }
            let item = self.plan.get(self.next).ok_or_else(|| {
                Error::Weights(format!("{}: bytes past its last tensor", self.st.file.as_ref().map_or("", |f| &f.path)))
            })?;
            let end = item.t.start + item.t.len;
            let take = (end - self.position).min(data.len() as u64) as usize;
            let (seg, rest) = data.split_at(take);
            self.file_hash.update(seg);
            self.position += take as u64;
            self.tensor_bytes(seg, sink)?;
            if self.position == end {
                self.finish_tensor(sink)?;
            }
            data = rest;
        }
        Ok(())
    }

    /// Buffers the header until it is whole, then plans the file; returns the bytes after it.
    fn take_header<'d>(&mut self, mut data: &'d [u8]) -> Result<&'d [u8]> {
        let (path, size) = self.st.file.as_ref().map(|f| (f.path.clone(), f.size)).unwrap_or_default();
        loop {
            let need = if self.head.len() < 8 {
                8 - self.head.len()
            } else {
                let n = header::header_len(&path, &self.head[..8], Some(size))?;
                (8 + n as usize) - self.head.len()
            };
            if need == 0 {
                let json = String::from_utf8(self.head[8..].to_vec())
                    .map_err(|_| Error::Weights(format!("{path}: the safetensors header is not UTF-8")))?;
                self.plan_file(&json)?;
                if let Some(f) = self.st.file.as_mut() {
                    f.header = Some(json);
                }
                self.head.clear();
                self.mark(self.position, self.file_hash.clone());
                return Ok(data);
            }
            if data.is_empty() {
                return Ok(data);
            }
            let take = need.min(data.len());
            self.head.extend_from_slice(&data[..take]);
            self.file_hash.update(&data[..take]);
            self.position += take as u64;
            data = &data[take..];
        }
    }

    /// What each tensor of the file becomes: a dry run of the component's model over the header.
    fn plan_file(&mut self, json: &str) -> Result<()> {
        let f = self.st.file.as_ref().ok_or_else(|| Error::Request("no file begun".into()))?;
        let planned = if f.single {
            let (path, size, prediction) = (f.path.clone(), f.size, f.prediction.clone());
            stream_single::plan(&self.gpu, &mut self.st.files, &path, size, json, prediction.as_deref())?
        } else {
            // Checked there: every byte belongs to the header or to exactly one tensor.
            let tensors = header::parse(&f.path, json.as_bytes(), Some(f.size))?;
            let config = self.st.files.get(&format!("{}/config.json", f.component)).ok_or_else(|| {
                Error::Weights(format!("{}: no {}/config.json came before its weights", f.path, f.component))
            })?;
            let source = HeaderOnly(tensors.iter().map(|t| (t.name.clone(), t.info.clone())).collect());
            let dry = Weights::dry_run(&source, &self.gpu, DType::F32);
            let mut accesses: BTreeMap<String, _> = component_accesses(Component::parse(&f.component)?, config, &dry)?
                .into_iter()
                .map(|a| (a.name.clone(), a))
                .collect();
            let component = f.component.clone();
            tensors
                .into_iter()
                .map(|t| Planned { component: component.clone(), access: accesses.remove(&t.name), t })
                .collect()
        };
        self.plan = planned
            .into_iter()
            .map(|Planned { component, t, access }| {
                let target = access.as_ref().map(|a| self.policy.decide(&format!("{component}.{}", t.name), a.matrix));
                Item { shape: access.map(|a| a.shape), storage: storage(t.info.dtype, target), component, t }
            })
            .collect();
        Ok(())
    }

    /// Notes a tensor boundary: what `checkpoint` saves.
    fn mark(&mut self, position: u64, file_hash: Sha256State) {
        let (next, component_shards) = (self.written, self.component_shards);
        let (open, shards, tensors, dropped) =
            (self.st.open.clone(), self.st.shards.len(), self.st.tensors.len(), self.st.dropped.len());
        if let Some(f) = self.st.file.as_mut() {
            f.mark = Mark { position, file_hash, next, open, shards, tensors, dropped, component_shards };
        }
    }

    /// Writing: opens the tensor being written on its first byte, its entry and its place in
    /// the shards.
    fn start_tensor(&mut self) -> Result<()> {
        let item = &self.plan[self.written];
        let Some(shape) = item.shape.clone() else { return Ok(()) };
        let name = item.t.name.clone();
        let length = stored_len(item, &shape)?;
        let dtype = match item.storage {
            Storage::Keep(s) | Storage::Convert(s) => s,
        };
        let component = item.component.clone();
        // A shard holds one component (a checkpoint's come in one file), so loading one reads none
        // of another's bytes.
        let other = |o: &OpenShard| !o.file.starts_with(&format!("shards/{component}-"));
        if self.st.open.as_ref().is_some_and(|o| o.size > 0 && o.size + length > self.st.max_shard || other(o)) {
            self.close_shard();
        }
        let offset = self.st.open.as_ref().map_or(0, |o| o.size);
        let entry =
            TensorEntry { component, name, dtype, shape, shard: self.st.shards.len(), offset, length, sha256: None };
        self.cur = Some(Current { hash: Sha256::new(), entry });
        Ok(())
    }

    /// Hands `op` to the writing side: applied now unless a job is out before it.
    fn emit(&mut self, op: Op, sink: &mut dyn PieceSink) -> Result<()> {
        self.ops.push_back(op);
        self.drain(sink)
    }

    /// Stored bytes of the tensor being read, written now when nothing waits before them.
    fn emit_bytes(&mut self, bytes: &[u8], sink: &mut dyn PieceSink) -> Result<()> {
        if self.ops.is_empty() {
            self.write(bytes, sink)
        } else {
            self.emit(Op::Bytes(bytes.to_vec()), sink)
        }
    }

    /// Writing: applies handed-over operations up to the first job still out.
    fn drain(&mut self, sink: &mut dyn PieceSink) -> Result<()> {
        while let Some(op) = self.ops.front() {
            if matches!(op, Op::Awaiting { .. }) {
                break;
            }
            match self.ops.pop_front().expect("a front") {
                Op::Start => self.start_tensor()?,
                Op::Bytes(b) => self.write(&b, sink)?,
                Op::Finish { position, hash } => self.written_tensor(position, hash)?,
                Op::Awaiting { .. } => unreachable!("checked above"),
            }
        }
        Ok(())
    }

    /// Reading: bytes of the tensor being read, converted in whole slices.
    fn tensor_bytes(&mut self, seg: &[u8], sink: &mut dyn PieceSink) -> Result<()> {
        if self.plan[self.next].shape.is_none() {
            return Ok(());
        }
        if !self.started {
            self.started = true;
            self.emit(Op::Start, sink)?;
        }
        let item = &self.plan[self.next];
        let done = self.position == item.t.start + item.t.len;
        match item.storage {
            Storage::Keep(_) => self.emit_bytes(seg, sink),
            Storage::Convert(to) => {
                let from = item.t.info.dtype;
                let elem = from.element_bytes().ok_or_else(|| Error::Tensor {
                    name: item.t.name.clone(),
                    msg: format!("{from:?} cannot be converted"),
                })?;
                let unit = elem * if to.quant().is_some() { BLOCK } else { 1 };
                let name = item.t.name.clone();
                let slice = SLICE / unit * unit + unit;
                let mut pending = std::mem::take(&mut self.pending);
                pending.extend_from_slice(seg);
                let mut at = 0;
                while pending.len() - at >= slice || (done && at < pending.len()) {
                    let n = (pending.len() - at).min(slice) / unit * unit;
                    if n == 0 {
                        return Err(Error::Tensor { name, msg: "is not a whole number of 32-value blocks".into() });
                    }
                    let input = &pending[at..at + n];
                    if self.offload && to.quant().is_some() {
                        let len = to.bytes(n / elem);
                        self.jobs.push(Job { name: name.clone(), from, to, bytes: input.to_vec() });
                        self.ops.push_back(Op::Awaiting { len });
                    } else {
                        let out = convert_bytes(input, from, to, &name)?;
                        self.emit_bytes(&out, sink)?;
                    }
                    at += n;
                }
                pending.drain(..at);
                self.pending = pending;
                Ok(())
            }
        }
    }

    /// Output bytes of the current tensor into the open shard (opening and closing shards).
    fn write(&mut self, mut bytes: &[u8], sink: &mut dyn PieceSink) -> Result<()> {
        if let Some(cur) = self.cur.as_mut() {
            cur.hash.update(bytes);
        }
        while !bytes.is_empty() {
            if self.st.open.as_ref().is_some_and(|o| o.size >= self.st.max_shard) {
                self.close_shard();
            }
            if self.st.open.is_none() {
                let component = self.cur.as_ref().map(|c| c.entry.component.clone()).unwrap_or_default();
                let file = format!("shards/{component}-{:03}.bin", self.component_shards);
                self.component_shards += 1;
                self.st.open = Some(OpenShard { file, size: 0, pieces: 0, hash: Sha256State::new() });
            }
            let o = self.st.open.as_mut().expect("opened");
            let take = ((self.st.max_shard - o.size) as usize).min(bytes.len());
            sink.append(&o.file, o.pieces, &bytes[..take])?;
            o.hash.update(&bytes[..take]);
            o.size += take as u64;
            o.pieces += 1;
            bytes = &bytes[take..];
        }
        Ok(())
    }

    fn close_shard(&mut self) {
        if let Some(o) = self.st.open.take() {
            self.st.shards.push(ShardEntry { file: o.file, size: o.size, sha256: o.hash.hex() });
        }
    }

    /// Reading: the tensor being read is complete.
    fn finish_tensor(&mut self, sink: &mut dyn PieceSink) -> Result<()> {
        if !self.pending.is_empty() {
            let name = self.plan[self.next].t.name.clone();
            return Err(Error::Tensor { name, msg: "is not a whole number of 32-value blocks".into() });
        }
        self.next += 1;
        self.started = false;
        let (position, hash) = (self.position, self.file_hash.clone());
        self.emit(Op::Finish { position, hash }, sink)
    }

    /// Writing: the tensor being written is complete; its entry goes into the manifest and the
    /// state after it is the checkpoint.
    fn written_tensor(&mut self, position: u64, hash: Sha256State) -> Result<()> {
        let item = &self.plan[self.written];
        if item.shape.is_some() {
            if self.cur.is_none() {
                self.start_tensor()?;
            }
            let cur = self.cur.take().expect("started");
            let mut entry = cur.entry;
            entry.sha256 = Some(cur.hash.finalize().iter().map(|b| format!("{b:02x}")).collect());
            self.st.tensors.push(entry);
        } else if item.component.is_empty() {
            self.st.dropped.push(item.t.name.clone());
        } else {
            self.st.dropped.push(format!("{}.{}", item.component, item.t.name));
        }
        self.written += 1;
        self.mark(position, hash);
        Ok(())
    }

    /// Zero-length tensors at the current position take no bytes: finish them now.
    fn finish_empty_tensors(&mut self, sink: &mut dyn PieceSink) -> Result<()> {
        while self.plan.get(self.next).is_some_and(|i| i.t.len == 0 && i.t.start == self.position) {
            self.finish_tensor(sink)?;
        }
        Ok(())
    }

    /// The current file is complete: checks its length and sha256; returns the sha256.
    pub fn end_file(&mut self) -> Result<String> {
        let f = self.st.file.as_ref().ok_or_else(|| Error::Request("end_file with no file begun".into()))?;
        let (path, expected) = (f.path.clone(), f.expected_sha256.clone());
        if self.position != f.size || f.header.is_none() {
            return Err(Error::Weights(format!("{path}: truncated at byte {} of {}", self.position, f.size)));
        }
        let out = self.jobs_out();
        if out > 0 {
            return Err(Error::Request(format!("{path}: ended with {out} conversion jobs not completed")));
        }
        // With no job out nothing waits, and trailing empty tensors write no bytes.
        self.finish_empty_tensors(&mut NoBytes)?;
        if self.next != self.plan.len() {
            return Err(Error::Weights(format!("{path}: ended inside tensor {}", self.plan[self.next].t.name)));
        }
        let got = self.file_hash.hex();
        if let Some(want) = &expected {
            if &got != want {
                return Err(Error::Weights(format!(
                    "{path} is corrupt: its sha256 is {got}, expected {want} (download it again)"
                )));
            }
        }
        self.close_shard();
        self.st.converted.push((path, got.clone()));
        self.st.file = None;
        self.plan.clear();
        Ok(got)
    }

    /// The converter's state at the last tensor boundary, as JSON (see `resume`).
    pub fn checkpoint(&self) -> Result<String> {
        let mut st = self.st.clone();
        if let Some(f) = st.file.as_ref() {
            let m = &f.mark;
            st.shards.truncate(m.shards);
            st.tensors.truncate(m.tensors);
            st.open = m.open.clone();
            st.dropped.truncate(m.dropped);
        }
        serde_json::to_string(&st).map_err(|e| Error::Request(format!("saving the conversion: {e}")))
    }

    /// A converter back at a checkpoint. The bytes of the current file continue at `position()`;
    /// shard pieces written after the checkpoint must be discarded (`open_shard_pieces` says how
    /// many of the open shard to keep).
    pub fn resume(gpu: &Gpu, checkpoint: &str) -> Result<Self> {
        let st: State = serde_json::from_str(checkpoint)
            .map_err(|e| Error::Request(format!("the saved conversion cannot be resumed: {e}")))?;
        if st.max_shard < BLOCK as u64 {
            return Err(Error::Request(format!("the saved conversion has {}-byte shards", st.max_shard)));
        }
        let mut c = Self::from_state(gpu, st);
        if let Some(f) = c.st.file.clone() {
            c.file_hash = f.mark.file_hash.clone();
            c.position = f.mark.position;
            c.next = f.mark.next;
            c.written = f.mark.next;
            c.component_shards = f.mark.component_shards;
            if let Some(json) = &f.header {
                c.plan_file(json)?;
                // A stored state is input too: its mark must sit on a tensor boundary of the plan.
                let boundary = match c.next {
                    0 => Some(8 + json.len() as u64),
                    n => c.plan.get(n - 1).map(|i| i.t.start + i.t.len),
                };
                if boundary != Some(c.position) {
                    return Err(Error::Request(format!(
                        "the saved conversion of {} is inconsistent (tensor {} at byte {})",
                        f.path, c.next, c.position
                    )));
                }
            } else {
                c.position = 0;
                c.file_hash = Sha256State::new();
            }
        }
        Ok(c)
    }

    /// The shard files this state covers, with how many pieces of each: after `resume`, every
    /// other stored shard file, and every later piece, is stale.
    pub fn shard_pieces(&self) -> Vec<(String, u32)> {
        let done = self.st.shards.iter().map(|s| (s.file.clone(), u32::MAX));
        done.chain(self.st.open.as_ref().map(|o| (o.file.clone(), o.pieces))).collect()
    }

    /// The path of the file being converted, if any.
    pub fn current_file(&self) -> Option<&str> {
        self.st.file.as_ref().map(|f| f.path.as_str())
    }

    /// All components converted: the manifest.
    pub fn finish(mut self) -> Result<Finished> {
        if let Some(f) = &self.st.file {
            return Err(Error::Request(format!("{} has not ended", f.path)));
        }
        for c in Component::present(|p| self.st.files.contains_key(p)) {
            if !self.st.tensors.iter().any(|t| t.component == c.name()) {
                return Err(Error::Weights(format!("no {c} weights were converted")));
            }
        }
        self.close_shard();
        let st = self.st;
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            quant: st.quant,
            policy: st.policy,
            files: st.files,
            shards: st.shards,
            tensors: st.tensors,
        };
        Ok(Finished { manifest, dropped: st.dropped, files: st.converted })
    }
}
