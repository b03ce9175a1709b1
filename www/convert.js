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
// is written; a mismatch converts that file again once, then fails.

import * as store from './store.js';
import { resolveFiles, FatalError, describeNetworkError, contentRange, abortError, sleep } from './download.js';

const CHUNK = 8 << 20;
const PARALLEL = 3;
const TRIES = 4;
const BACKOFF_MS = 500;
const CHECKPOINT_BYTES = 64 << 20;
const COMPONENTS = ['vae', 'text_encoder', 'unet'];
const STATE = '__conversion__';

/// The Hub API's listing for a `…/<org>/<repo>/resolve/<rev>/` base: {path: {size, sha256}}.
async function hubListing(base, signal, stats) {
  const m = /^(https?:\/\/[^/]+)\/([^/]+)\/([^/]+)\/resolve\/([^/]+)\/$/.exec(base);
  if (!m) return {};
  const [, origin, org, repo, rev] = m;
  try {
    stats.requests++;
    const r = await fetch(`${origin}/api/models/${org}/${repo}/tree/${rev}?recursive=true`, { signal, cache: 'no-store' });
    if (!r.ok) return {};
    const out = {};
    for (const e of await r.json()) {
      if (e && e.type === 'file' && typeof e.path === 'string') {
        out[e.path] = { size: e.size, sha256: e.lfs && /^[0-9a-f]{64}$/.test(e.lfs.oid) ? e.lfs.oid : null };
      }
    }
    return out;
  } catch (e) {
    if (signal.aborted) throw e;
    return {}; // no listing: files are then marked as unverified
  }
}

/// `end - start` bytes of `url` from `start`, checked: the exact range, of the same version
/// (If-Range with the validator the file's first answer gave).
async function fetchRange(url, start, end, size, file, signal, stats) {
  let lastError = null;
  for (let attempt = 0; attempt < TRIES; attempt++) {
    if (attempt) await sleep(BACKOFF_MS * 2 ** (attempt - 1), signal);
    try {
      const headers = { Range: `bytes=${start}-${end - 1}` };
      if (file.validator) headers['If-Range'] = file.validator;
      stats.requests++;
      const r = await fetch(url, { headers, signal, cache: 'no-store' });
      if (r.status === 200 && !(start === 0 && end === size)) {
        r.body?.cancel().catch(() => {});
        throw new FatalError(file.validator
          ? `${file.path} changed on the server while downloading; delete the model and download it again.`
          : `${url}: the server ignores HTTP Range requests.`);
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
      if (!file.validator) file.validator = r.headers.get('etag') || r.headers.get('last-modified') || null;
      const buf = new Uint8Array(await r.arrayBuffer());
      stats.bytesFetched += buf.length;
      if (buf.length !== end - start) throw new Error(`got ${buf.length} bytes instead of ${end - start}`);
      return buf;
    } catch (e) {
      if (e instanceof FatalError || signal.aborted) throw e;
      lastError = e;
      console.warn(`webdiffusion: ${file.path} bytes ${start}-${end - 1}, try ${attempt + 1}/${TRIES}: ${e.message}`);
    }
  }
  throw new FatalError(`Downloading ${file.path} failed ${TRIES} times: ${lastError.message}`);
}

async function storePieces(id, pieces, entry) {
  if (!pieces.length) return;
  try {
    await store.putChunks(id, pieces.map((p) => ({ path: p.shard, index: p.index, blob: new Blob([p.bytes]) })));
  } catch (e) {
    if (store.isQuotaError(e)) throw await store.quotaError(entry.bytes ? entry.bytes * 0.4 : 1e9, entry.name || entry.id);
    throw e;
  }
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

/// Downloads and converts `entry` to `quant` with `engine` unless it is cached; returns
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
  let pool = null;
  const chunk = opts.chunkSize || CHUNK;
  const checkpointBytes = Math.min(CHECKPOINT_BYTES, 8 * chunk);
  try {
    const resolved = await resolveFiles(entry, signal, stats);
    if (resolved.kind === 'package') return null;
    const listing = await hubListing(entry.url, signal, stats);
    const weights = COMPONENTS.map((c) => {
      const f = resolved.files.find((x) => x.path.startsWith(`${c}/`) && x.path.endsWith('.safetensors'));
      if (!f) throw new FatalError(`${entry.url} has no ${c} weights`);
      const listed = listing[f.path] || {};
      // A pinned (catalog) hash always wins over what a server says.
      return { ...f, size: f.size ?? listed.size, sha256: f.sha256 || listed.sha256 || null };
    });
    const unverified = weights.filter((f) => !f.sha256).map((f) => f.path);
    const small = resolved.files.filter((f) => !f.path.endsWith('.safetensors'));
    const texts = {};
    for (const f of small) {
      const buf = await fetchRange(entry.url + f.path, 0, f.size, f.size, { path: f.path }, signal, stats)
        .catch(async (e) => {
          if (!(e instanceof FatalError)) throw e;
          stats.requests++;
          const r = await fetch(entry.url + f.path, { signal, cache: 'no-store' }); // size unknown or off
          if (!r.ok) throw new FatalError(`${entry.url}${f.path}: HTTP ${r.status}`);
          return new Uint8Array(await r.arrayBuffer());
        });
      texts[f.path] = new TextDecoder().decode(buf);
    }
    for (const f of weights) if (!(f.size > 0)) throw new FatalError(`${entry.url}${f.path}: the size is unknown`);
    const total = weights.reduce((s, f) => s + f.size, 0);

    // Resume where a previous visit stopped, if it converted the same files the same way.
    let conv = null;
    let fileIndex = 0;
    const saved = await store.getFile(id, STATE);
    const key = JSON.stringify({ quant, files: weights.map((f) => [f.path, f.size, f.sha256]) });
    if (saved && saved.key === key) {
      try {
        conv = engine.resumeConverter(saved.checkpoint);
        fileIndex = saved.fileIndex;
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
    const jobs = pool && pool.size ? new Jobs(pool, (pieces) => storePieces(id, pieces, entry)) : null;
    if (jobs) conv.setOffload(true);
    stats.workers = jobs ? pool.size : 0;
    const done0 = weights.slice(0, fileIndex).reduce((s, f) => s + f.size, 0) + (conv.currentFile() ? conv.position() : 0);
    stats.bytesFromCache = done0;
    let done = done0;
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
    const saveState = (index) => store.putFile({ modelId: id, path: STATE, key, fileIndex: index, checkpoint: conv.checkpoint(), size: 0 });

    for (; fileIndex < weights.length; fileIndex++) {
      const f = weights[fileIndex];
      const url = entry.url + f.path;
      let retried = false;
      for (;;) {
        if (!conv.currentFile()) conv.beginFile(f.path, f.size, f.sha256 || undefined);
        const atStart = conv.position() === 0 ? conv.checkpoint() : null;
        const file = { path: f.path, validator: null };
        let next = conv.position();
        let since = 0;
        const inflight = [];
        while (next < f.size || inflight.length) {
          while (inflight.length < PARALLEL && next < f.size) {
            const end = Math.min(f.size, next + chunk);
            const p = fetchRange(url, next, end, f.size, file, signal, stats);
            p.catch(() => {}); // awaited in order below; a later failure must not go unhandled
            inflight.push(p);
            next = end;
          }
          const bytes = await inflight.shift();
          await storePieces(id, conv.push(bytes), entry);
          if (jobs) await jobs.pump(conv);
          done += bytes.length;
          since += bytes.length;
          if (since >= checkpointBytes) {
            await saveState(fileIndex);
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
      url: entry.url,
      kind: 'package',
      convertedFrom: 'diffusers',
      quant,
      files,
      bytes: files.reduce((s, f) => s + f.size, 0),
      sourceBytes: total,
      unverified,
      completed: new Date().toISOString(),
      entry: { ...entry, files: undefined },
    };
    await store.putModel(record);
    return { record, stats };
  } catch (e) {
    throw describeNetworkError(e, entry, opts.signal);
  } finally {
    pool?.close();
  }
}
