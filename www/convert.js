// Downloads a diffusers repo and converts it while it streams (src/models/stream.rs through
// the wasm `Converter`): each weight file is fetched in order in Range chunks, pushed into the
// converter, and only the shard pieces it returns (the quantized package form) are stored. The
// browser never holds the fp16 files, and a returning visit loads a package: stored blocks go
// straight to the GPU with no CPU quantization.
//
// Resume: every CHECKPOINT_BYTES the converter's state (at its last tensor boundary) is saved
// with the pieces; a reload resumes there, drops pieces written after it, and fetches from the
// tensor that was in progress. Verification: each weight file's sha256 (pinned in the catalog,
// else listed by the Hub's API) is computed over the stream and checked before the model record
// is written; a mismatch converts that file again once, then fails. Versions: every request
// after a file's first carries If-Range with the validator its first answer gave (saved in the
// checkpoint, so a resume asks for the same version); a file that changed on the server starts
// the conversion over once rather than mixing two versions.

import * as store from './store.js';
import { diffusersLayout } from './pkg/webdiffusion.js';
import {
  resolveFiles, FatalError, describeNetworkError, contentRange, abortError, sleep, fetchModel, checkHost, checkSize, validatorOf,
} from './download.js';

const CHUNK = 8 << 20;
const PARALLEL = 3;
const TRIES = 4;
const BACKOFF_MS = 500;
const CHECKPOINT_BYTES = 64 << 20;
const STATE = '__conversion__';
// Package bytes stored per source byte, roughly (fp16 sources quantized): for the quota message.
const PACKAGE_RATIO = 0.4;

/// A file whose version on the server is no longer the one being converted.
class ChangedError extends FatalError {}

/// The Hub API's listing for a `…/<org>/<repo>/resolve/<rev>/` base: {path: {size, sha256}}.
async function hubListing(base, signal, stats) {
  const m = /^(https?:\/\/[^/]+)\/([^/]+)\/([^/]+)\/resolve\/([^/]+)\/$/.exec(base);
  if (!m) return {};
  const [, origin, org, repo, rev] = m;
  const url = `${origin}/api/models/${org}/${repo}/tree/${rev}?recursive=true`;
  try {
    stats.requests++;
    const r = await fetchModel(url, { signal, cache: 'no-store' });
    if (!r.ok) return {};
    const out = {};
    for (const e of await r.json()) {
      if (e && e.type === 'file' && typeof e.path === 'string') {
        // `where` names the entry when its size is used (and checked: see downloadConverted).
        out[e.path] = { size: e.size, sha256: e.lfs && /^[0-9a-f]{64}$/.test(e.lfs.oid) ? e.lfs.oid : null, where: `${url}: ${e.path}` };
      }
    }
    return out;
  } catch (e) {
    if (signal.aborted || e.fatal) throw e;
    return {}; // no listing: files are then marked as unverified
  }
}

/// A single-file checkpoint as the one weight file to convert: a local File (read in place),
/// or a URL whose size and sha256 come from the Hub's listing where there is one, else from a
/// one-byte Range answer (size only).
async function checkpointFile(ckpt, signal, stats) {
  if (ckpt.file) return { path: ckpt.name, size: ckpt.file.size, sha256: null, file: ckpt.file, single: true };
  const folder = ckpt.url.slice(0, ckpt.url.lastIndexOf('/') + 1);
  const listed = (await hubListing(folder, signal, stats))[decodeURIComponent(ckpt.url.slice(folder.length))] || {};
  let size = listed.size === undefined ? undefined : checkSize(listed.size, `${listed.where} size`);
  if (size === undefined) {
    stats.requests++;
    const r = await fetchModel(ckpt.url, { headers: { Range: 'bytes=0-0' }, signal, cache: 'no-store' });
    r.body?.cancel().catch(() => {});
    const cr = r.status === 206 ? contentRange(r.headers) : null;
    if (!cr || cr.total === null) throw new FatalError(`${ckpt.url}: ${r.ok ? 'the server does not give its size (HTTP Range)' : `HTTP ${r.status}`}`);
    size = checkSize(cr.total, `${ckpt.url} size`);
  }
  return { path: ckpt.name, url: ckpt.url, size, sha256: listed.sha256 || null, single: true };
}

/// `end - start` bytes of a local File from `start`.
async function readLocal(file, start, end, stats) {
  const buf = new Uint8Array(await file.slice(start, end).arrayBuffer());
  stats.bytesRead = (stats.bytesRead || 0) + buf.length;
  if (buf.length !== end - start) throw new FatalError(`${file.name}: read ${buf.length} bytes at ${start} instead of ${end - start} (did the file change?)`);
  return buf;
}

/// `end - start` bytes of `url` from `start`, checked: the exact range, of the same version
/// (If-Range with the validator the file's first answer gave).
async function fetchRange(url, start, end, size, file, signal, stats) {
  let lastError = null;
  for (let attempt = 0; attempt < TRIES; attempt++) {
    if (attempt) await sleep(BACKOFF_MS * 2 ** (attempt - 1), signal);
    try {
      const headers = { Range: `bytes=${start}-${end - 1}` };
      const asked = file.net?.ifRange && file.validator;
      if (asked) headers['If-Range'] = file.validator;
      stats.requests++;
      let r;
      try {
        r = await fetchModel(url, { headers, signal, cache: 'no-store' });
      } catch (e) {
        // If-Range is not a CORS-safelisted header: a host whose preflight refuses it fails the
        // request outright. Without it a change still shows as another validator (below).
        if (asked && e instanceof TypeError && !signal.aborted) file.net.ifRange = false;
        throw e;
      }
      const version = validatorOf(r.headers);
      if (file.validator && (r.status === 200 || r.status === 206) && (r.status === 200 && asked ? version !== file.validator : version && version !== file.validator)) {
        r.body?.cancel().catch(() => {});
        throw new ChangedError(`${file.path} changed on the server during the conversion (${file.validator} is now ${version || 'unnamed'}).`);
      }
      if (r.status === 200 && !(start === 0 && end === size)) {
        r.body?.cancel().catch(() => {});
        throw new FatalError(`${url}: the server ignores HTTP Range requests.`);
      }
      if (r.status !== 200 && r.status !== 206) {
        r.body?.cancel().catch(() => {});
        const E = r.status >= 500 || r.status === 429 || r.status === 408 ? Error : FatalError;
        throw new E(`${url}: HTTP ${r.status}`);
      }
      if (r.status === 206) {
        const cr = contentRange(r.headers);
        if (!cr || cr.start !== start || cr.end !== end - 1 || (cr.total !== null && cr.total !== size)) {
          r.body?.cancel().catch(() => {});
          throw new FatalError(`${url}: asked for bytes ${start}-${end - 1} of ${size}, the server sent ${r.headers.get('content-range')}`);
        }
      }
      if (!file.validator) file.validator = version;
      file.answered = true;
      const buf = new Uint8Array(await r.arrayBuffer());
      stats.bytesFetched += buf.length;
      if (buf.length !== end - start) throw new Error(`got ${buf.length} bytes instead of ${end - start}`);
      return buf;
    } catch (e) {
      if (e instanceof FatalError || e.fatal || signal.aborted) throw e;
      lastError = e;
      console.warn(`webdiffusion: ${file.path} bytes ${start}-${end - 1}, try ${attempt + 1}/${TRIES}: ${e.message}`);
    }
  }
  throw new FatalError(`Downloading ${file.path} failed ${TRIES} times: ${lastError.message}`);
}

async function storePieces(id, pieces) {
  if (!pieces.length) return;
  await store.putChunks(id, pieces.map((p) => ({ path: p.shard, index: p.index, blob: new Blob([p.bytes]) })));
}

/// After a resume: every stored piece the converter's state does not cover goes.
async function dropStalePieces(id, keep) {
  const kept = new Map(keep);
  for (const [path, indices] of Object.entries(await store.chunkMap(id))) {
    if (path === STATE) continue;
    if (!kept.has(path)) await store.deleteChunksFrom(id, path, 0);
    else if (kept.get(path) < 4294967295) await store.deleteChunksFrom(id, path, kept.get(path));
    void indices;
  }
}

/// Quantizing jobs of `conv` run by `pool`, their results completed in job order: at most
/// `limit` out at a time (memory: a 4 MiB slice and its result each).
class Jobs {
  constructor(pool, store) {
    this.pool = pool;
    this.store = store;
    this.out = [];
    this.limit = 2 * pool.size + 1;
  }

  /// Sends the jobs `conv`'s last pushes produced; completes finished ones, waiting while more
  /// than `limit` are out (all of them with `all`).
  async pump(conv, all = false) {
    for (const job of conv.jobs()) {
      const slot = { done: false, value: null };
      slot.promise = this.pool.run(job).then((v) => { slot.done = true; slot.value = v; });
      slot.promise.catch(() => {}); // awaited in order below
      this.out.push(slot);
    }
    while (this.out.length && (this.out[0].done || this.out.length > (all ? 0 : this.limit))) {
      const slot = this.out.shift();
      await slot.promise;
      await this.store(conv.complete(slot.value));
    }
  }

  /// Forgets jobs of a converter that is being replaced.
  reset() {
    this.out = [];
  }
}

/// Downloads and converts `entry` to `quant` with `engine` unless it is cached (a diffusers
/// repo, or with `entry.checkpoint` a single-file checkpoint over `entry.base`'s small files); returns
/// `{record, stats}` as `downloadModel` does, or null when the entry is already a package.
/// Options: chunkSize (bytes per Range request; a checkpoint every 8 chunks, 64 MiB at most),
/// signal, onProgress, makePool (returns a `ConvertPool` whose workers quantize in parallel,
/// closed when the conversion ends; without one the converter quantizes on this thread).
export async function downloadConverted(entry, engine, quant, opts = {}) {
  const cached = await store.getModel(entry.id);
  if (cached) return { record: cached, stats: { requests: 0, bytesFetched: 0, bytesFromCache: cached.bytes } };
  const ctrl = new AbortController();
  const signal = ctrl.signal;
  if (opts.signal) {
    if (opts.signal.aborted) throw abortError();
    opts.signal.addEventListener('abort', () => ctrl.abort(), { once: true });
  }
  const stats = { requests: 0, bytesFetched: 0, bytesFromCache: 0 };
  const id = entry.id;
  const ckpt = entry.checkpoint || null;
  // Where the configs come from: the repo itself, or a checkpoint's base model.
  const home = ckpt ? entry.base : entry;
  if (ckpt && !home?.url) throw new FatalError(`${entry.name}: no base model to take the configs from`);
  checkHost(home.url);
  if (ckpt?.url) checkHost(ckpt.url);
  let pool = null;
  let conv = null;
  const chunk = opts.chunkSize || CHUNK;
  const checkpointBytes = Math.min(CHECKPOINT_BYTES, 8 * chunk);
  // Package bytes still to store, for the quota message; exact-ish once the sizes are known.
  let left = () => (entry.bytes || 0) * PACKAGE_RATIO;
  const net = { ifRange: true }; // off once a host's CORS refused If-Range
  try {
    const resolved = await resolveFiles(home, signal, stats);
    if (resolved.kind === 'package') {
      if (ckpt) throw new FatalError(`${home.name} is a webdiffusion package; a checkpoint takes a diffusers base model's configs`);
      return null;
    }
    const listing = ckpt ? {} : await hubListing(entry.url, signal, stats);
    // The engine's components in its load order; SDXL's text_encoder_2 where its config is.
    const components = diffusersLayout().weights.filter((w) => w.required || resolved.files.some((x) => x.path === w.config));
    const weights = ckpt ? [await checkpointFile(ckpt, signal, stats)] : components.map(({ component: c, plain, half }) => {
      const f = resolved.files.find((x) => x.path === plain || x.path === half);
      if (!f) throw new FatalError(`${entry.url} has no ${c} weights`);
      const listed = listing[f.path] || {};
      // Catalog sizes were checked with the catalog; a listing's are checked here, where one is
      // used (a repo may hold other files above any limit). A pinned hash wins over a listing's.
      const size = f.size ?? (listed.size === undefined ? undefined : checkSize(listed.size, `${listed.where} size`));
      return { ...f, size, sha256: f.sha256 || listed.sha256 || null };
    });
    const unverified = weights.filter((f) => !f.sha256 && !f.file).map((f) => f.path);
    const small = resolved.files.filter((f) => !f.path.endsWith('.safetensors'));
    const texts = {};
    for (const f of small) {
      const whole = async () => { // size unknown (a list without sizes) or a Range answer that was off
        stats.requests++;
        const r = await fetchModel(home.url + f.path, { signal, cache: 'no-store' });
        if (!r.ok) throw new FatalError(`${home.url}${f.path}: HTTP ${r.status}`);
        const bytes = new Uint8Array(await r.arrayBuffer());
        stats.bytesFetched += bytes.length;
        return bytes;
      };
      const buf = f.size > 0
        ? await fetchRange(home.url + f.path, 0, f.size, f.size, { path: f.path }, signal, stats).catch((e) => {
          if (!(e instanceof FatalError)) throw e;
          return whole();
        })
        : await whole();
      texts[f.path] = new TextDecoder().decode(buf);
    }
    for (const f of weights) if (!(f.size > 0)) throw new FatalError(`${f.url || home.url + f.path}: the size is unknown`);
    const total = weights.reduce((s, f) => s + f.size, 0);

    // Resume where a previous visit stopped, if it converted the same files the same way.
    let fileIndex = 0;
    let resumed = null; // {fileIndex, validator} of the file the checkpoint is inside
    const saved = await store.getFile(id, STATE);
    const key = JSON.stringify({
      quant, files: weights.map((f) => [f.path, f.size, f.sha256]),
      checkpoint: ckpt && [ckpt.url || null, ckpt.lastModified || null, home.id, entry.prediction || null],
    });
    if (saved && saved.key === key) {
      try {
        conv = engine.resumeConverter(saved.checkpoint);
        fileIndex = saved.fileIndex;
        resumed = { fileIndex, validator: saved.validator || null };
        await dropStalePieces(id, conv.shardPieces());
      } catch (e) {
        console.warn(`webdiffusion: the saved conversion cannot be resumed (${e.message}); starting over.`);
        conv = null;
      }
    }
    if (!conv) {
      await store.deleteModel(id);
      conv = engine.converter(texts, quant);
      fileIndex = 0;
    }
    pool = opts.makePool ? opts.makePool() : null;
    const jobs = pool && pool.size ? new Jobs(pool, (pieces) => storePieces(id, pieces)) : null;
    if (jobs) conv.setOffload(true);
    stats.workers = jobs ? pool.size : 0;
    const done0 = weights.slice(0, fileIndex).reduce((s, f) => s + f.size, 0) + (conv.currentFile() ? conv.position() : 0);
    stats.bytesFromCache = done0;
    let done = done0;
    left = () => (total - done) * PACKAGE_RATIO;
    const t0 = performance.now();
    let lastPost = 0;
    const progress = (file, force = false) => {
      const now = performance.now();
      if (!opts.onProgress || (!force && now - lastPost < 100)) return;
      lastPost = now;
      const speed = now - t0 > 500 ? ((done - done0) * 1000) / (now - t0) : 0;
      opts.onProgress({
        phase: 'convert', quant, done, total, speed, eta: speed > 0 ? (total - done) / speed : null, file,
        unverified, files: weights.length, filesDone: fileIndex, ...stats,
      });
    };
    // The validator goes with the checkpoint: resumed mid-file, the first request asks (If-Range)
    // for the version the stored pieces came from.
    const saveState = (index, validator = null) =>
      store.putFile({ modelId: id, path: STATE, key, fileIndex: index, checkpoint: conv.checkpoint(), validator, size: 0 });

    for (; fileIndex < weights.length; fileIndex++) {
      const f = weights[fileIndex];
      const url = f.url || entry.url + f.path;
      let retried = false;
      const file = { path: f.path, validator: resumed?.fileIndex === fileIndex ? resumed.validator : null, answered: false, net };
      for (;;) {
        if (!conv.currentFile()) {
          if (f.single) conv.beginSingleFile(f.path, f.size, f.sha256 || undefined, entry.prediction || undefined);
          else conv.beginFile(f.path, f.size, f.sha256 || undefined);
        }
        const atStart = conv.position() === 0 ? conv.checkpoint() : null;
        let next = conv.position();
        let since = 0;
        const inflight = [];
        while (next < f.size || inflight.length) {
          // One request until a first answer named the version: parallel ones sent before
          // could not carry If-Range, and could each be of another version.
          const width = file.validator || file.answered ? PARALLEL : 1;
          while (inflight.length < width && next < f.size) {
            const end = Math.min(f.size, next + chunk);
            const p = f.file ? readLocal(f.file, next, end, stats) : fetchRange(url, next, end, f.size, file, signal, stats);
            p.catch(() => {}); // awaited in order below; a later failure must not go unhandled
            inflight.push(p);
            next = end;
          }
          const bytes = await inflight.shift();
          await storePieces(id, conv.push(bytes));
          if (jobs) await jobs.pump(conv);
          done += bytes.length;
          since += bytes.length;
          if (since >= checkpointBytes) {
            await saveState(fileIndex, file.validator);
            since = 0;
          }
          progress(f.path);
        }
        if (jobs) await jobs.pump(conv, true);
        try {
          conv.endFile();
          break;
        } catch (e) {
          if (retried || !atStart || !/corrupt/.test(String(e.message || e))) throw new FatalError(String(e.message || e));
          // Corrupt bytes: convert this file once more from its start, dropping its pieces.
          console.warn(`webdiffusion: ${e.message}; downloading ${f.path} again.`);
          retried = true;
          conv.free();
          conv = engine.resumeConverter(atStart);
          if (jobs) conv.setOffload(true);
          await dropStalePieces(id, conv.shardPieces());
          done -= f.size;
        }
      }
      await saveState(fileIndex + 1);
    }

    progress('', true);
    const manifestText = conv.finish();
    const manifest = JSON.parse(manifestText);
    const manifestBlob = new Blob([manifestText]);
    await store.putChunks(id, [{ path: 'manifest.json', index: 0, blob: manifestBlob }]);
    const files = [{ path: 'manifest.json', size: manifestBlob.size }, ...manifest.shards.map((s) => ({ path: s.file, size: s.size, sha256: s.sha256 }))];
    for (const f of files) await store.putFile({ modelId: id, path: f.path, size: f.size, chunkSize: f.size, sha256: f.sha256 || null, complete: true });
    await store.deleteFileChunks(id, STATE);
    const record = {
      id,
      name: entry.name || id,
      url: ckpt ? ckpt.url || null : entry.url,
      kind: 'package',
      convertedFrom: ckpt ? 'single-file' : 'diffusers',
      quant,
      files,
      bytes: files.reduce((s, f) => s + f.size, 0),
      sourceBytes: total,
      unverified,
      completed: new Date().toISOString(),
      // Never the local File itself: IndexedDB would keep a copy of the checkpoint.
      entry: { ...entry, files: undefined, checkpoint: ckpt ? { ...ckpt, file: undefined } : undefined, base: ckpt ? { id: home.id, name: home.name } : undefined },
    };
    await store.putModel(record);
    return { record, stats };
  } catch (e) {
    if (e instanceof ChangedError && !opts.changedOnce) {
      // The pieces and checkpoint are of the old version; starting over beats mixing two.
      console.warn(`webdiffusion: ${e.message} Converting it again from the start.`);
      pool?.close();
      pool = null;
      try {
        conv?.free();
      } catch {
        // already consumed
      }
      await store.deleteModel(id);
      return downloadConverted(entry, engine, quant, { ...opts, changedOnce: true });
    }
    // A write can fail for quota anywhere (a piece, the checkpoint, a record); the visitor needs
    // the sizes either way, not a bare QuotaExceededError.
    if (store.isQuotaError(e) && !e.quota) throw await store.quotaError(Math.max(0, left()), entry.name || id);
    throw describeNetworkError(e, { ...entry, url: entry.url || home?.url }, opts.signal);
  } finally {
    pool?.close();
  }
}
