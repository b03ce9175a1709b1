// The module worker that owns the wasm Engine (the GPU device) and the loaded Model, so
// downloads, loading and generation never block the page.
//
// Protocol — page -> worker: {type, id, ...}; every reply carries the request's id.
//   init {}                      -> ready {info, f16Fallback, schedulers: [{id, name}]}
//   list {}                      -> models {models, storage: {usage, quota, persisted}}
//   load {entry, file, quant, chunkSize} -> download {phase, done, total, speed, eta, file, ...}*,
//                                   loading {done, total}*, loaded {model, ms, downloadMs,
//                                   wasmHeapBytes, download: {requests, bytesFetched, bytesFromCache}}
//     (entry.checkpoint: a single-file checkpoint, by URL or the local File in `file`)
//   generate {request (initImage?: {rgb, strength, mask?, outpaint?, maskBlur?}), loras: [{id, strength}], taesd?: {entry, previews, finalDecode, encode}} -> (loading {done, total}* when the LoRAs change) step {index, total, msPerStep, preview}*, then
//                                   done {image: {width, height, rgba}, png, parameters, seed, ms,
//                                   images: [{image, png, parameters, seed}] (request.count of them)}
//                                   | cancelled {}
//   cancel {}                    -> (no reply; the running load or generate ends as cancelled)
//   delete {modelId}             -> deleted {modelId}
//   testTrap {}                  -> (test hook) the engine traps: error {trapped: true}
//   testHang {ms} / testStall {} -> (test hooks) the thread busy for ms / a request that never ends
//   testLoseDevice {}            -> (test hook) the GPU device is destroyed, as a driver reset does
//   any failure                  -> error {op, message, lost, loaded: id of the model still loaded,
//                                   trapped: the engine trapped and this worker is unusable}
// Unprompted: alive {} every second (the page's watchdog); recovering {reason} / recovered {} when the GPU device was lost and rebuilt;
// trapped {message} when the engine trapped (the page replaces this worker).

import init, { Engine, loraTags, schedulers, testTrap } from './pkg/webdiffusion.js';
import * as store from './store.js';
import { downloadModel } from './download.js';
import { downloadConverted } from './convert.js';
import { ConvertPool } from './convert-pool.js';

let wasm = null;
let engine = null;
let model = null; // {handle, record, quant, info, sizeStep}
let cancelRequested = false;
let abort = null; // AbortController of a running download

const post = (msg, transfer = []) => self.postMessage(msg, transfer);
setInterval(() => post({ type: 'alive' }), 1000);

async function createEngine() {
  if (!self.navigator.gpu) {
    throw new Error('This browser has no WebGPU in workers. Use Chrome or Edge 113+, Safari 26+, or Firefox 141+ on Windows.');
  }
  // The adapter's own limits: bigger bindings mean fewer split weights on desktop GPUs.
  engine = await Engine.create(false, true);
  return engine.info();
}

function lostReason() {
  try {
    return engine ? engine.lost() : null;
  } catch {
    return null;
  }
}

// ---- the reader the synchronous Rust loader calls --------------------------------------------

/// Reads a cached model straight from its IndexedDB Blobs: each read is a slice, so only the
/// tensor being uploaded is ever in memory. FileReaderSync because the loader cannot await.
async function cachedReader(record, onRead) {
  const blobs = new Map();
  await Promise.all(record.files.map(async (f) => {
    const blob = await store.getFileBlob(record.id, f.path);
    if (!blob) throw new Error(`${f.path} is missing from the cached ${record.name}; delete the model and download it again.`);
    blobs.set(f.path, blob);
  }));
  const fr = new FileReaderSync();
  const bytes = (blob) => {
    onRead(blob.size);
    return new Uint8Array(fr.readAsArrayBuffer(blob));
  };
  const total = record.files.reduce((s, f) => s + f.size, 0);
  return {
    total,
    reader: {
      read(path) {
        const b = blobs.get(path);
        return b ? bytes(b) : null;
      },
      readRange(path, start, len) {
        const b = blobs.get(path);
        if (!b) return null;
        if (start + len > b.size) throw new Error(`${path}: bytes ${start}..${start + len} are past its end (${b.size})`);
        return bytes(b.slice(start, start + len));
      },
      describe() {
        return `cached model ${record.id}`;
      },
    },
  };
}

/// `loras`: [{id, name, strength, bytes}] merged into the weights as they load. `lowMemory`:
/// the text encoders and the U-Net take turns on the GPU, reloading from the cache as the prompt
/// changes (the engine keeps the reader).
async function loadFromCache(record, quant, id, loras = [], lowMemory = false) {
  let done = 0;
  let last = 0;
  const { reader, total } = await cachedReader(record, (n) => {
    done += n;
    const now = performance.now();
    if (now - last > 100) {
      last = now;
      post({ type: 'loading', id, done: Math.min(done, total), total });
    }
  });
  post({ type: 'loading', id, done: 0, total });
  const handle = await engine.load(reader, { quant, name: record.name, lowMemory, loras: loras.map(({ name, strength, bytes }) => ({ name, strength, bytes })) });
  post({ type: 'loading', id, done: total, total });
  // The engine knows the size step (VAE downscale times the U-Net's levels); the page keeps no
  // copy of that rule.
  const info = handle.info();
  const merged = loras.map((l) => [l.id, l.strength]);
  return { handle, record, quant, lowMemory, info, sizeStep: info.sizeMultiple, loras: merged, lorasKey: JSON.stringify(merged) };
}

/// The LoRAs a generation wants, `[[id, strength]]` sorted: the page's switched-on ones, and the
/// prompt's `<lora:name:strength>` tags over them (0 leaves one out).
function wantedLoras(msg) {
  const want = new Map((Array.isArray(msg.loras) ? msg.loras : []).map((l) => [String(l.id), Number(l.strength)]));
  for (const t of loraTags(String(msg.request?.prompt ?? ''))) want.set(t.name, t.strength);
  return [...want].filter(([, s]) => s !== 0 && Number.isFinite(s)).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/// Reloads the model from the cache with the wanted LoRAs merged when they are not what it has
/// (a LoRA that fails to merge leaves the model loaded without any, and the error said).
async function ensureLoras(msg) {
  const want = wantedLoras(msg);
  if (JSON.stringify(want) === model.lorasKey) return;
  const loras = [];
  for (const [id, strength] of want) {
    const r = await store.getLora(id);
    if (!r) throw new Error(`<lora:${id}:${strength}>: no LoRA named ${id} is in the page's list (add its .safetensors file there).`);
    loras.push({ id, name: r.name, strength, bytes: new Uint8Array(await r.blob.arrayBuffer()) });
  }
  const { record, quant, lowMemory } = model;
  freeModel();
  try {
    model = await loadFromCache(record, quant, msg.id, loras, lowMemory);
  } catch (e) {
    model = await loadFromCache(record, quant, msg.id, [], lowMemory);
    throw e;
  }
}

function freeModel() {
  if (!model) return;
  try {
    model.handle.free();
  } catch {
    // a model of a lost device may already be gone
  }
  model = null;
}

/// After a lost device: a new Engine and the same model again, from the cache.
async function recover(reason, id) {
  post({ type: 'recovering', id, reason });
  const previous = model;
  freeModel();
  try {
    engine.free();
  } catch {
    // already unusable
  }
  engine = null;
  await createEngine();
  if (previous) model = await loadFromCache(previous.record, previous.quant, id, [], previous.lowMemory);
  post({ type: 'recovered', id });
}

// ---- handlers ----------------------------------------------------------------------------

const handlers = {
  /// Test hook: a trap, as an engine bug would cause.
  async testTrap() {
    testTrap();
    return { type: 'done' };
  },

  /// Test hooks for the page's watchdog: a stuck thread (no `alive`), a promise that never ends.
  async testHang(msg) {
    const until = performance.now() + Math.min(Number(msg.ms) || 0, 120_000);
    while (performance.now() < until) {
      // busy, as a runaway loop in the engine would be
    }
    return { type: 'done' };
  },
  testStall() {
    return new Promise(() => {});
  },

  /// Test hook: the device goes away under the loaded model; the next request finds it lost.
  async testLoseDevice() {
    if (!engine) throw new Error('no engine');
    engine.testLoseDevice();
    return { type: 'done' };
  },

  async init() {
    if (!wasm) wasm = await init();
    const info = engine ? engine.info() : await createEngine();
    return { type: 'ready', info, f16Fallback: !info.shader_f16, schedulers: schedulers() };
  },

  async list() {
    return { type: 'models', models: await store.listModels(), storage: await store.storageEstimate() };
  },

  async load(msg) {
    const { entry, chunkSize } = msg;
    // A checkpoint is always converted (its names are mapped on the way in): as published means
    // f16, which halves an f32 file and keeps an f16 one.
    const quant = entry.checkpoint && (msg.quant || 'none') === 'none' ? 'f16' : msg.quant || 'none';
    // SDXL's catalog entries ask for turns: its q3_0 weights (1.8 GB) with both encoders kept
    // peak at 1.86 GB, too close to a 2 GB GPU; in turns the peak is 1.76 GB (BENCHMARKS.md).
    const lowMemory = typeof msg.lowMemory === 'boolean' ? msg.lowMemory : entry.lowMemory === true;
    if (entry.checkpoint && msg.file) entry.checkpoint.file = msg.file;
    if (!engine) await handlers.init();
    abort = new AbortController();
    const t0 = performance.now();
    let download;
    try {
      // Hosted models move: the entry's mirrors (same pinned hashes) are tried in turn when a
      // host no longer has the files or cannot be reached.
      const hosts = [entry.url, ...(Array.isArray(entry.mirrors) ? entry.mirrors : [])];
      const hostOf = (u) => (u ? new URL(u, self.location.href).host : 'this device');
      for (let i = 0; i < hosts.length; i++) {
        const e = { ...entry, url: hosts[i] };
        const onProgress = (p) => post({ type: 'download', id: msg.id, host: hostOf(hosts[i]), ...p });
        try {
          download = null;
          // A diffusers repo to quantize is converted while it streams: the cache holds the
          // package form, and later visits upload it with no CPU work.
          if (quant !== 'none' || entry.checkpoint) download = await downloadConverted(e, engine, quant, { chunkSize, signal: abort.signal, onProgress, makePool: ConvertPool.forThisDevice });
          if (!download) download = await downloadModel(e, { chunkSize, signal: abort.signal, onProgress });
          download.host = hostOf(hosts[i]);
          break;
        } catch (err) {
          // A host the origin rule refuses is skipped like a gone one: another may be allowed.
          const gone = (err && err.name === 'OriginError') || /HTTP (401|403|404|410)\b|Could not reach|neither a webdiffusion package/.test(String(err && err.message));
          if (!gone || i + 1 === hosts.length || abort.signal.aborted) throw err;
          console.warn(`webdiffusion: ${hosts[i]} failed (${err.message}); trying the mirror ${hosts[i + 1]}`);
          post({ type: 'download', id: msg.id, phase: 'mirror', file: '', done: 0, total: 0, host: new URL(hosts[i + 1], self.location.href).host, reason: err.message });
        }
      }
    } finally {
      abort = null;
    }
    const downloadMs = performance.now() - t0;
    freeModel(); // one model on the GPU at a time
    const t1 = performance.now();
    try {
      model = await loadFromCache(download.record, quant, msg.id, [], lowMemory);
    } catch (e) {
      const reason = lostReason();
      if (!reason) throw e;
      // A lost device during upload (driver reset, memory pressure): one fresh try.
      await recover(reason, msg.id);
      model = await loadFromCache(download.record, quant, msg.id, [], lowMemory);
    }
    const ms = performance.now() - t1;
    // Next in the queue, after this reply is posted: the pipelines a generation at the model's
    // size needs, so the browser compiles them while the visitor types (a generation asked for
    // meanwhile waits behind it in the queue).
    const loaded = model;
    queue = queue.then(() => prepare(loaded));
    return {
      type: 'loaded',
      model: describeModel(),
      ms,
      downloadMs,
      download: { ...download.stats, host: download.host },
      // Linear memory only grows, so after loading this is the peak the load needed.
      wasmHeapBytes: wasm.memory.buffer.byteLength,
    };
  },

  async generate(msg) {
    if (!model) throw new Error('No model is loaded.');
    const reason = lostReason();
    if (reason) await recover(reason, msg.id);
    cancelRequested = false;
    try {
      return await runGeneration(msg);
    } catch (e) {
      // The failed readback and the device's `lost` promise are not ordered: give the latter a
      // moment before deciding this was not a loss.
      const lost = lostReason() || (await new Promise((r) => setTimeout(r, 100)), lostReason());
      if (!lost || cancelRequested) throw e;
      await recover(lost, msg.id);
      try {
        return await runGeneration(msg);
      } catch (e2) {
        const again = lostReason();
        throw new Error(again
          ? `The GPU device was lost again (${again}) after recovering from "${lost}". The GPU may be out of memory: try a smaller image, fewer other tabs, or a quantized model.`
          : e2.message);
      }
    }
  },

  async tokens(msg) {
    if (!model) return { type: 'tokens', counts: null };
    const syntax = String(msg.syntax || 'a1111');
    const counts = (msg.texts || []).map((t) => model.handle.tokenCount(String(t ?? ''), syntax));
    return { type: 'tokens', counts };
  },

  async delete(msg) {
    if (model && model.record.id === msg.modelId) freeModel();
    await store.deleteModel(msg.modelId);
    return { type: 'deleted', modelId: msg.modelId };
  },
};

/// `Model.prepare` at the model's default size and guidance; a failure only costs the head start.
function prepare(m) {
  if (m !== model || !m.handle.prepare) return;
  const { defaultWidth, defaultHeight, guidance } = m.info;
  const t0 = performance.now();
  try {
    const pipelines = m.handle.prepare(defaultWidth, defaultHeight, guidance > 1);
    post({ type: 'prepared', pipelines, ms: performance.now() - t0, width: defaultWidth, height: defaultHeight });
  } catch (e) {
    if (isTrap(e)) {
      noteTrap(e);
      return;
    }
    console.warn(`webdiffusion worker: preparing the pipelines failed (${e && e.message ? e.message : e}); they are built on first use`);
  }
}

function describeModel() {
  const { record, info, quant, sizeStep: step } = model;
  return {
    id: record.id, name: record.name, url: record.url, kind: record.kind, bytes: record.bytes, quant,
    sizeStep: step, info, entry: record.entry,
  };
}

/// TAESD for previews / a fast final decode (`msg.taesd`: {entry, previews, finalDecode}): its
/// 10 MB download is stored like a model's files the first time, then read from IndexedDB.
async function ensureTaesd(msg) {
  const want = msg.taesd && (msg.taesd.previews || msg.taesd.finalDecode || msg.taesd.encode) ? msg.taesd : null;
  if (!want) {
    // Nothing asked of TAESD: off, if this model ever had it.
    if (model.handle.hasTaesd?.()) model.handle.setTaesdUse(false, false, false);
    return;
  }
  if (!model.handle.hasTaesd()) {
    if (!want.entry) throw new Error('TAESD is not offered by this site (no catalog entry).');
    post({ type: 'loading', id: msg.id, done: 0, total: 0, what: 'taesd' });
    const dl = await downloadModel(want.entry, { onProgress: (p) => post({ type: 'download', id: msg.id, ...p }) });
    const { reader } = await cachedReader(dl.record, () => {});
    model.handle.loadTaesd(reader);
  }
  model.handle.setTaesdUse(!!want.previews, !!want.finalDecode, !!want.encode);
}

async function runGeneration(msg) {
  await ensureLoras(msg);
  await ensureTaesd(msg);
  const r = msg.request;
  const request = {
    prompt: String(r.prompt ?? ''),
    negativePrompt: r.negativePrompt ? String(r.negativePrompt) : undefined,
    steps: Number(r.steps),
    guidance: Number(r.guidance),
    width: Number(r.width),
    height: Number(r.height),
    scheduler: String(r.scheduler),
    seed: Number(r.seed),
    eta: Number(r.eta ?? 0),
    promptSyntax: r.promptSyntax === 'diffusers' ? 'diffusers' : 'a1111',
    count: Math.max(1, Math.floor(Number(r.count ?? 1)) || 1),
  };
  if (r.initImage) {
    // img2img: the VAE encoder loads on the first request that needs it (text to image never
    // holds its weights), from the same cached files.
    if (!model.handle.hasEncoder()) {
      post({ type: 'loading', id: msg.id, done: 0, total: 0, what: 'encoder' });
      const { reader } = await cachedReader(model.record, () => {});
      model.handle.loadEncoder(reader);
    }
    const i = r.initImage;
    request.initImage = { rgb: i.rgb instanceof Uint8Array ? i.rgb : new Uint8Array(0), strength: Number(i.strength) };
    if (i.mask instanceof Uint8Array) request.initImage.mask = i.mask;
    if (Array.isArray(i.outpaint)) request.initImage.outpaint = i.outpaint.map(Number);
    if (i.maskBlur !== undefined) request.initImage.maskBlur = Number(i.maskBlur);
  }
  const t0 = performance.now();
  let firstStepAt = null;
  const out = await model.handle.generate(request, (index, total, preview) => {
    // Time per denoising step, from the end of the first one: the first also holds the prompt
    // encoding (and the last is followed by the decode), so neither is counted in it.
    const now = performance.now();
    if (index === 0) firstStepAt = now;
    const msPerStep = index > 0 && firstStepAt !== null ? (now - firstStepAt) / index : null;
    let p = null;
    const transfer = [];
    if (preview && preview.rgba) {
      const rgba = preview.rgba.slice(); // our own copy to hand over
      p = { width: preview.width, height: preview.height, rgba };
      transfer.push(rgba.buffer);
    }
    post({ type: 'step', id: msg.id, index, total, msPerStep, preview: p }, transfer);
    return !cancelRequested;
  });
  const ms = performance.now() - t0;
  if (out.cancelled) return { type: 'cancelled' };
  // Our own copies to hand over: every image of the request, the first also at the top.
  const images = (out.images || [out]).map((o) => ({ image: { width: o.width, height: o.height, rgba: o.rgba.slice() }, png: o.png.slice(), parameters: o.parameters, seed: o.seed ?? request.seed }));
  const [first] = images;
  return {
    type: 'done',
    image: first.image,
    png: first.png,
    parameters: first.parameters,
    loras: model.loras,
    seed: request.seed,
    images,
    ms,
    // The peak linear memory so far: with the load's, what generating (the encoder, LoRAs) added.
    wasmHeapBytes: wasm.memory.buffer.byteLength,
    transfer: images.flatMap((i) => [i.image.rgba.buffer, i.png.buffer]),
  };
}

// Requests run one at a time (the GPU and the model are shared); cancel jumps the queue.
let queue = Promise.resolve();

// A trap (a panic or any `unreachable` in the wasm) leaves the instance's memory in an unknown
// state: after one, every request is refused with `trapped`, and the page starts a new worker
// and reloads the model from the cache.
let trapped = null;
const isTrap = (e) => e instanceof WebAssembly.RuntimeError;

function noteTrap(e) {
  if (trapped) return;
  // The engine's panic hook leaves the panic's message and place before the trap.
  const panic = self.webdiffusionPanic;
  trapped = panic ? `${panic}` : (e && e.message) || String(e);
  console.error('webdiffusion worker: the engine trapped:', e);
  post({ type: 'trapped', message: trapped });
}

self.onmessage = (ev) => {
  const msg = ev.data || {};
  if (msg.type === 'cancel') {
    cancelRequested = true;
    if (abort) abort.abort();
    return;
  }
  const handler = handlers[msg.type];
  if (!handler) {
    post({ type: 'error', id: msg.id, op: msg.type, message: `unknown request ${msg.type}` });
    return;
  }
  // Listing and counting tokens never touch the GPU (the count answers while a generation
  // runs); losing the device is a test's way to strike mid-request.
  if (msg.type === 'list' || msg.type === 'tokens' || msg.type === 'testLoseDevice') {
    run(msg, handler);
    return;
  }
  queue = queue.then(() => run(msg, handler));
};

async function run(msg, handler) {
  if (trapped) {
    post({ type: 'error', id: msg.id, op: msg.type, trapped: true, message: `The engine stopped after an internal error (${trapped}); it is being restarted.` });
    return;
  }
  try {
    const reply = await handler(msg);
    const transfer = reply.transfer || [];
    delete reply.transfer;
    post({ ...reply, id: msg.id }, transfer);
  } catch (e) {
    const cancelled = e && e.name === 'AbortError';
    if (cancelled) {
      post({ type: 'cancelled', id: msg.id, op: msg.type, loaded: model ? model.record.id : null });
      return;
    }
    if (isTrap(e)) {
      noteTrap(e);
      post({ type: 'error', id: msg.id, op: msg.type, trapped: true, message: `The engine stopped after an internal error (${trapped}); it is being restarted.` });
      return;
    }
    const message = e && e.message ? e.message : String(e);
    console.error(`webdiffusion worker: ${msg.type} failed:`, e);
    // `loaded`: the model still on the GPU (a failed download leaves the previous one usable).
    post({ type: 'error', id: msg.id, op: msg.type, message, lost: lostReason(), loaded: model ? model.record.id : null });
  }
}

self.addEventListener('unhandledrejection', (ev) => {
  if (isTrap(ev.reason)) {
    noteTrap(ev.reason);
    return;
  }
  post({ type: 'error', op: 'worker', message: String(ev.reason && ev.reason.message ? ev.reason.message : ev.reason) });
});
self.addEventListener('error', (ev) => {
  if (isTrap(ev.error)) {
    noteTrap(ev.error);
    return;
  }
  post({ type: 'error', op: 'worker', message: ev.message || 'worker error' });
});
