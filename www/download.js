// Downloads a model's files into the IndexedDB store (store.js): HTTP Range requests of one chunk
// each, a few at a time, with retries; chunks already stored are never requested again, so a
// reload mid-download resumes where it stopped. Every file is verified (sha256 where known,
// sizes always) before it counts as complete, and the model record is written last. Servers are
// not trusted: only hosts origins.js allows are asked, every size and path a listing gives is
// checked before use, and each file's version (ETag or Last-Modified) is stored with its chunks
// and asked for with If-Range, so a file that changed on the server starts over, never mixed.

import * as store from './store.js';
import { checkOrigin } from './origins.js';

export const DEFAULT_CHUNK = 8 << 20;
const PARALLEL = 3;
const TRIES = 4;
const BACKOFF_MS = 500;
// crypto.subtle hashes one ArrayBuffer; above this the file is hashed incrementally in JS so a
// 1.7 GB U-Net is never in memory whole.
const SUBTLE_LIMIT = 64 << 20;
/// The largest file a listing (package manifest, catalog, Hub tree, Content-Range) may claim.
/// The biggest file of a supported model is an fp32 SD 2 U-Net (3.46 GB); a size beyond 4 GiB
/// is a broken or hostile listing, and refusing it keeps every offset and chunk count exact.
const MAX_FILE_BYTES = 2 ** 32;

/// Diffusers' layout, as the wasm loader reads it (a custom URL without a manifest is probed
/// for these). `weights` lists the safetensors stems whose `.fp16` variant may replace them.
const DIFFUSERS_FILES = [
  ['model_index.json', true],
  ['scheduler/scheduler_config.json', true],
  ['tokenizer/vocab.json', true],
  ['tokenizer/merges.txt', true],
  ['tokenizer/tokenizer_config.json', false],
  ['tokenizer/special_tokens_map.json', false],
  ['text_encoder/config.json', true],
  ['unet/config.json', true],
  ['vae/config.json', true],
];
const DIFFUSERS_WEIGHTS = [
  // [stem, prefer the fp16 variant when there is one: half the bytes, and quantizing or
  // uploading as f16 loses nothing a user can see]
  ['text_encoder/model', true],
  ['unet/diffusion_pytorch_model', true],
  ['vae/diffusion_pytorch_model', true],
];

export class FatalError extends Error {}

// download.js runs in the page's worker, whose location is the page's origin.
const pageOrigin = () => globalThis.location?.origin;

/// fetch() for anything of a model: a host origins.js refuses is never asked, and bytes a
/// redirect brought from one are not used.
export async function fetchModel(url, init) {
  checkOrigin(url, pageOrigin());
  const r = await fetch(url, init);
  if (r.redirected) {
    try {
      checkOrigin(r.url, pageOrigin());
    } catch (e) {
      r.body?.cancel().catch(() => {});
      throw e;
    }
  }
  return r;
}

/// Throws unless the model's host may serve weights (before its first request).
export const checkHost = (url) => checkOrigin(url, pageOrigin());

// ---- listings from servers: checked before any number in them is used -----------------------

function shown(v) {
  if (v === undefined) return 'missing';
  let s;
  try {
    s = JSON.stringify(v);
  } catch {
    s = undefined;
  }
  s ??= String(v);
  return s.length > 80 ? `${s.slice(0, 80)}…` : s;
}

/// `v` as a file size; `where` names the field in the error ("…/manifest.json: shards[3].size").
export function checkSize(v, where) {
  if (!Number.isSafeInteger(v) || v < 0 || v > MAX_FILE_BYTES) {
    throw new FatalError(`${where} is ${shown(v)}, expected a whole number of bytes (at most ${MAX_FILE_BYTES / 2 ** 30} GiB)`);
  }
  return v;
}

/// `v` as a path inside a model folder. It becomes a URL (base + path) and a cache key, so it
/// may neither climb out of the base nor change what the URL means.
function checkPath(v, where) {
  let why = null;
  if (typeof v !== 'string' || v === '') why = 'a relative file path';
  else if (v.length > 1024) why = 'a path of at most 1024 characters';
  else if (/^[a-z][a-z0-9+.-]*:/i.test(v)) why = 'a relative path, not a URL';
  else if (v.startsWith('/')) why = 'a relative path, not an absolute one';
  else if (/[\\?#\u0000-\u001f\u007f]/.test(v)) why = 'a path without backslashes, ?, # or control characters';
  else if (v.split('/').some((seg) => seg === '' || seg === '.' || seg === '..')) why = 'a path without empty, "." or ".." segments';
  if (why) throw new FatalError(`${where} is ${shown(v)}, expected ${why}`);
  return v;
}

/// `v` as a sha256 (lower-case hex, as every listing we read writes it).
function checkSha256(v, where) {
  if (typeof v !== 'string' || !/^[0-9a-f]{64}$/.test(v)) throw new FatalError(`${where} is ${shown(v)}, expected a sha256 (64 lower-case hex digits)`);
  return v;
}

const given = (v) => v !== undefined && v !== null;

/// A listed file `{[pathKey], size?, sha256?}` checked, as `{path, size?, sha256?}`.
function checkListed(f, where, pathKey, sizeRequired) {
  if (!f || typeof f !== 'object' || Array.isArray(f)) throw new FatalError(`${where} is ${shown(f)}, expected an object`);
  const out = { path: checkPath(f[pathKey], `${where}.${pathKey}`) };
  if (sizeRequired || given(f.size)) out.size = checkSize(f.size, `${where}.size`);
  if (given(f.sha256)) out.sha256 = checkSha256(f.sha256, `${where}.sha256`);
  return out;
}

function checkUnique(files, where, pathKey, seen = new Set()) {
  files.forEach((f, i) => {
    if (seen.has(f.path)) throw new FatalError(`${where}[${i}].${pathKey} ${shown(f.path)} is listed twice`);
    seen.add(f.path);
  });
}

export const sleep = (ms, signal) => new Promise((ok, fail) => {
  const t = setTimeout(ok, ms);
  signal?.addEventListener('abort', () => {
    clearTimeout(t);
    fail(abortError());
  }, { once: true });
});

export function abortError() {
  const e = new Error('Download cancelled.');
  e.name = 'AbortError';
  return e;
}

const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');

/// `Repr-Digest: sha-256=:BASE64:` (RFC 9530) as hex, or null.
function reprDigest(headers) {
  const m = /sha-256=:([A-Za-z0-9+/=]+):/.exec(headers.get('repr-digest') || '');
  if (!m) return null;
  try {
    return hex(Uint8Array.from(atob(m[1]), (c) => c.charCodeAt(0)));
  } catch {
    return null;
  }
}

/// What names a file's version for If-Range (RFC 9110 §13.1.5): a strong ETag, else
/// Last-Modified. A weak ETag may not be used, and none at all leaves nothing to compare.
export function validatorOf(headers) {
  const etag = headers.get('etag');
  if (etag && !etag.startsWith('W/')) return etag;
  return headers.get('last-modified') || null;
}

export function contentRange(headers) {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(headers.get('content-range') || '');
  return m ? { start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? null : Number(m[3]) } : null;
}

// ---- sha256 --------------------------------------------------------------------------------
// FIPS 180-4, incremental. The constants are derived as the standard defines them (fractional
// bits of square/cube roots of primes) rather than typed in.

const PRIMES = [];
for (let n = 2; PRIMES.length < 64; n++) if (PRIMES.every((p) => n % p)) PRIMES.push(n);
const frac32 = (x) => ((x - Math.floor(x)) * 2 ** 32) >>> 0;
const K = Int32Array.from(PRIMES, (p) => frac32(Math.cbrt(p)) | 0);
const H0 = Int32Array.from(PRIMES.slice(0, 8), (p) => frac32(Math.sqrt(p)) | 0);

export class Sha256 {
  constructor() {
    this.h = H0.slice();
    this.w = new Int32Array(64);
    this.buf = new Uint8Array(64);
    this.bufLen = 0;
    this.len = 0;
  }

  update(data) {
    let i = 0;
    this.len += data.length;
    if (this.bufLen) {
      const n = Math.min(64 - this.bufLen, data.length);
      this.buf.set(data.subarray(0, n), this.bufLen);
      this.bufLen += n;
      i = n;
      if (this.bufLen < 64) return this;
      this.block(this.buf, 0);
      this.bufLen = 0;
    }
    for (; i + 64 <= data.length; i += 64) this.block(data, i);
    if (i < data.length) {
      this.buf.set(data.subarray(i), 0);
      this.bufLen = data.length - i;
    }
    return this;
  }

  block(d, o) {
    const w = this.w;
    const H = this.h;
    for (let t = 0; t < 16; t++, o += 4) w[t] = (d[o] << 24) | (d[o + 1] << 16) | (d[o + 2] << 8) | d[o + 3];
    for (let t = 16; t < 64; t++) {
      const x = w[t - 15];
      const y = w[t - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
    }
    let a = H[0], b = H[1], c = H[2], d0 = H[3], e = H[4], f = H[5], g = H[6], h = H[7];
    for (let t = 0; t < 64; t++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (h + S1 + ((e & f) ^ (~e & g)) + K[t] + w[t]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g;
      g = f;
      f = e;
      e = (d0 + t1) | 0;
      d0 = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    H[0] = (H[0] + a) | 0;
    H[1] = (H[1] + b) | 0;
    H[2] = (H[2] + c) | 0;
    H[3] = (H[3] + d0) | 0;
    H[4] = (H[4] + e) | 0;
    H[5] = (H[5] + f) | 0;
    H[6] = (H[6] + g) | 0;
    H[7] = (H[7] + h) | 0;
  }

  /// Lower-case hex.
  digest() {
    const bits = this.len * 8;
    const tail = new Uint8Array(this.bufLen < 56 ? 64 - this.bufLen : 128 - this.bufLen);
    tail[0] = 0x80;
    const v = new DataView(tail.buffer);
    v.setUint32(tail.length - 8, Math.floor(bits / 2 ** 32));
    v.setUint32(tail.length - 4, bits >>> 0);
    this.update(tail);
    const out = new DataView(new ArrayBuffer(32));
    this.h.forEach((x, i) => out.setUint32(i * 4, x));
    return hex(out.buffer);
  }
}

async function sha256Blob(blob, signal, onBytes) {
  if (blob.size <= SUBTLE_LIMIT && globalThis.crypto?.subtle) {
    const d = hex(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()));
    onBytes(blob.size);
    return d;
  }
  const h = new Sha256();
  for (let o = 0; o < blob.size; o += DEFAULT_CHUNK) {
    if (signal.aborted) throw abortError();
    const part = new Uint8Array(await blob.slice(o, o + DEFAULT_CHUNK).arrayBuffer());
    h.update(part);
    onBytes(part.length);
  }
  return h.digest();
}

// ---- file lists ----------------------------------------------------------------------------

/// Status and size of `url` from a one-byte Range request (null when absent).
async function probeSize(url, signal, stats) {
  stats.requests++;
  const r = await fetchModel(url, { headers: { Range: 'bytes=0-0' }, signal, cache: 'no-store' });
  r.body?.cancel().catch(() => {});
  if (r.status === 404 || r.status === 403 || r.status === 410) return null;
  if (r.status === 206) {
    const cr = contentRange(r.headers);
    if (!cr || cr.total === null) throw new FatalError(`${url}: the server does not expose Content-Range (CORS Access-Control-Expose-Headers), so the file size is unknown.`);
    return checkSize(cr.total, `${url}: the size in Content-Range`);
  }
  if (r.status === 200) {
    const n = Number(r.headers.get('content-length'));
    return n ? checkSize(n, `${url}: Content-Length`) : null;
  }
  throw new FatalError(`${url}: HTTP ${r.status}`);
}

/// The files of a diffusers folder at a URL no catalog describes.
async function probeDiffusers(base, signal, stats) {
  const sizes = async (paths) => Promise.all(paths.map((p) => probeSize(base + p, signal, stats)));
  const small = await sizes(DIFFUSERS_FILES.map(([p]) => p));
  const files = [];
  DIFFUSERS_FILES.forEach(([path, required], i) => {
    if (small[i] !== null) files.push({ path, size: small[i] });
    else if (required) throw new FatalError(`${base} is neither a webdiffusion package (no manifest.json) nor a diffusers folder (no ${path}).`);
  });
  for (const [stem, preferHalf] of DIFFUSERS_WEIGHTS) {
    const [plain, half] = await sizes([`${stem}.safetensors`, `${stem}.fp16.safetensors`]);
    if (plain === null && half === null) throw new FatalError(`${base} has no ${stem}.safetensors (nor .fp16.safetensors); only safetensors weights are supported.`);
    const useHalf = half !== null && (plain === null || preferHalf);
    files.push(useHalf ? { path: `${stem}.fp16.safetensors`, size: half } : { path: `${stem}.safetensors`, size: plain });
  }
  return files;
}

/// `{kind, files: [{path, size?, sha256?}], manifest?}` for an entry: a package when
/// `<base>manifest.json` exists, else the entry's own list or a probe.
export async function resolveFiles(entry, signal, stats) {
  if (entry.format !== 'diffusers') {
    const where = `${entry.url}manifest.json`;
    stats.requests++;
    const r = await fetchModel(where, { signal, cache: 'no-store' });
    if (r.ok) {
      const bytes = new Uint8Array(await r.arrayBuffer());
      stats.bytesFetched += bytes.length;
      let m;
      try {
        m = JSON.parse(new TextDecoder().decode(bytes));
      } catch (e) {
        throw new FatalError(`${entry.url}manifest.json is not JSON: ${e.message}`);
      }
      if (m.format !== 'webdiffusion-package' || ![1, 2].includes(m.version) || !Array.isArray(m.shards)) {
        throw new FatalError(`${entry.url}manifest.json is not a webdiffusion package (version 1 or 2).`);
      }
      const sha256 = hex(await crypto.subtle.digest('SHA-256', bytes));
      // A size that is not a number would make the chunk count NaN and the download wait
      // forever; a path with '..' would fetch (and cache) something outside the package.
      const shards = m.shards.map((x, i) => checkListed(x, `${where}: shards[${i}]`, 'file', true));
      checkUnique(shards, `${where}: shards`, 'file', new Set(['manifest.json']));
      return { kind: 'package', files: [{ path: 'manifest.json', size: bytes.length, sha256, bytes }, ...shards] };
    }
    if (r.status !== 404 && r.status !== 403) throw new FatalError(`${entry.url}manifest.json: HTTP ${r.status}`);
  }
  if (Array.isArray(entry.files) && entry.files.length) {
    const where = `${entry.name || entry.id} (catalog): files`;
    const files = entry.files.map((f, i) => checkListed(f, `${where}[${i}]`, 'path', false));
    checkUnique(files, where, 'path');
    return { kind: 'diffusers', files };
  }
  return { kind: 'diffusers', files: await probeDiffusers(entry.url, signal, stats) };
}

// ---- the download --------------------------------------------------------------------------

/// Downloads `entry` ({id, name, url ending in '/', files?, format?}) unless it is cached, and
/// returns its model record. Options: chunkSize, parallel, tries, signal (AbortSignal),
/// onProgress({phase, done, total, speed, eta, file, requests, bytesFetched, bytesFromCache}).
export async function downloadModel(entry, opts = {}) {
  // What is still to store, for the quota message; download() keeps it current.
  const left = { bytes: () => entry.bytes || 0 };
  try {
    return await download(entry, opts, left);
  } catch (e) {
    // A write can fail for quota anywhere (a file record, the manifest, the model record); the
    // visitor needs the sizes either way, not a bare QuotaExceededError.
    if (store.isQuotaError(e) && !e.quota) throw await store.quotaError(Math.max(0, left.bytes()), entry.name || entry.id);
    throw e;
  }
}

async function download(entry, opts, left) {
  const cached = await store.getModel(entry.id);
  if (cached) return { record: cached, stats: { requests: 0, bytesFetched: 0, bytesFromCache: cached.bytes } };

  const chunkSize = opts.chunkSize || DEFAULT_CHUNK;
  const parallel = opts.parallel || PARALLEL;
  const tries = opts.tries || TRIES;
  const ctrl = new AbortController();
  const signal = ctrl.signal;
  if (opts.signal) {
    if (opts.signal.aborted) throw abortError();
    opts.signal.addEventListener('abort', () => ctrl.abort(), { once: true });
  }
  const stats = { requests: 0, bytesFetched: 0, bytesFromCache: 0 };
  checkHost(entry.url);

  let resolved;
  try {
    resolved = await resolveFiles(entry, signal, stats);
  } catch (e) {
    throw describeNetworkError(e, entry, signal);
  }
  const id = entry.id;
  left.bytes = () => resolved.files.reduce((n, f) => n + (f.size ?? 0), 0) || entry.bytes || 0;

  // Files of an earlier, different list (a re-published package) would only waste space.
  const wanted = new Set(resolved.files.map((f) => f.path));
  for (const rec of await store.listFiles(id)) {
    if (!wanted.has(rec.path)) await store.deleteFileChunks(id, rec.path);
  }

  const files = [];
  for (const f of resolved.files) {
    let rec = await store.getFile(id, f.path);
    // A pinned hash (catalog or manifest) names the bytes; a digest a server once sent, or an
    // older pin, gives way to it. Stored bytes of another hash are of another file.
    if (rec && f.sha256 && rec.sha256 && rec.sha256 !== f.sha256) {
      await store.deleteFileChunks(id, f.path);
      rec = null;
    }
    const file = {
      path: f.path,
      url: entry.url + f.path,
      size: rec ? rec.size : (f.size ?? null),
      sha256: f.sha256 || rec?.sha256 || null,
      shaSource: f.sha256 ? 'catalog' : rec?.shaSource || null,
      // The version (strong ETag, else Last-Modified) the stored chunks are of: sent as
      // If-Range, so a file changed on the server is never finished with other bytes.
      validator: rec?.validator || null,
      recordedValidator: rec?.validator || null,
      chunkSize: rec ? rec.chunkSize : chunkSize,
      present: rec ? await store.chunkIndices(id, f.path) : new Set(),
      // Verified before a pin existed: verified again against it.
      complete: !!rec?.complete && (!f.sha256 || rec.sha256 === f.sha256),
      gen: 0,
      restarts: 0,
      refetches: 0,
      lock: Promise.resolve(),
      recorded: !!rec,
    };
    if (file.complete) stats.bytesFromCache += file.size;
    else if (file.size !== null) {
      for (const i of file.present) stats.bytesFromCache += chunkLength(file, i);
    }
    files.push(file);
    if (f.bytes && !file.complete) {
      // The manifest was fetched whole to detect the package; store those bytes, not a refetch.
      file.size = f.bytes.length;
      file.chunkSize = Math.max(file.chunkSize, file.size);
      await record(file);
      await store.putChunk(id, file.path, 0, new Blob([f.bytes]));
      file.present = new Set([0]);
    }
  }

  const totalKnown = () => files.reduce((s, f) => s + (f.size ?? 0), 0);
  const doneBytes = () => {
    let n = 0;
    for (const v of inFlight.values()) n += v;
    for (const f of files) {
      if (f.complete) n += f.size;
      else for (const i of f.present) n += chunkLength(f, i);
    }
    return n;
  };
  const remaining = totalKnown() - stats.bytesFromCache;
  const est = await store.storageEstimate();
  if (est.quota && remaining > est.quota - est.usage) throw await store.quotaError(remaining, entry.name || id);

  // ---- progress
  const inFlight = new Map();
  left.bytes = () => totalKnown() - doneBytes();
  const samples = [];
  let lastPost = 0;
  let phase = 'download';
  let current = '';
  const progress = (force = false) => {
    const now = performance.now();
    if (!opts.onProgress || (!force && now - lastPost < 100)) return;
    lastPost = now;
    samples.push([now, stats.bytesFetched]);
    while (samples.length > 2 && now - samples[0][0] > 5000) samples.shift();
    const [t0, b0] = samples[0];
    const speed = now - t0 > 250 ? ((stats.bytesFetched - b0) * 1000) / (now - t0) : 0;
    // Until every size is known (files listed without one), the catalog's estimate is better.
    const total = files.some((f) => f.size === null) ? Math.max(totalKnown(), entry.bytes || 0) : totalKnown();
    const done = Math.min(total, doneBytes());
    opts.onProgress({
      phase, done, total, speed, eta: speed > 0 ? (total - done) / speed : null, file: current,
      filesDone: files.filter((f) => f.complete).length, files: files.length, ...stats,
    });
  };

  // ---- scheduling
  const queue = [];
  let failure = null;
  // Off once a host's CORS preflight refused If-Range (it is not a safelisted header): a
  // change then still shows as another validator on the 206, one chunk later.
  let ifRange = true;
  let wake;
  let woken = new Promise((r) => (wake = r));
  const notify = () => {
    wake();
    woken = new Promise((r) => (wake = r));
  };
  const fail = (e) => {
    if (!failure) failure = e;
    ctrl.abort();
    notify();
  };
  const locked = (file, fn) => (file.lock = file.lock.then(fn, fn));

  function chunkCount(file) {
    return file.size === null ? 1 : Math.max(1, Math.ceil(file.size / file.chunkSize));
  }
  function chunkLength(file, i) {
    return Math.min(file.chunkSize, file.size - i * file.chunkSize);
  }
  function record(file) {
    file.recorded = true;
    file.recordedValidator = file.validator;
    return store.putFile({
      modelId: id, path: file.path, size: file.size, chunkSize: file.chunkSize,
      sha256: file.sha256, shaSource: file.shaSource, validator: file.validator, complete: file.complete,
    });
  }
  function enqueueMissing(file) {
    const n = file.size === null ? 1 : chunkCount(file);
    for (let i = 0; i < n; i++) if (!file.present.has(i)) queue.push({ file, index: i, gen: file.gen });
    notify();
  }
  // Drops everything stored of a file and starts it over (new size, new bytes on the server,
  // or a failed verification).
  async function restart(file, size) {
    file.gen++;
    await store.deleteFileChunks(id, file.path);
    file.present = new Set();
    file.recorded = false;
    file.validator = null; // the new version's comes with its first answer
    if (size !== undefined) file.size = size;
    if (file.size !== null) await record(file);
    enqueueMissing(file);
  }

  async function verify(file) {
    phase = 'verify';
    current = file.path;
    progress(true);
    const blob = await store.getFileBlob(id, file.path).catch(() => null);
    let ok = !!blob && blob.size === file.size;
    let why = `${blob ? blob.size : 'missing'} bytes instead of ${file.size}`;
    if (ok && file.sha256) {
      const got = await sha256Blob(blob, signal, () => progress());
      ok = got === file.sha256;
      why = `sha256 ${got.slice(0, 12)}… instead of ${file.sha256.slice(0, 12)}…`;
    }
    phase = 'download';
    if (ok) {
      file.complete = true;
      await record(file);
      notify();
      return;
    }
    if (file.refetches >= 1) {
      await locked(file, () => store.deleteFileChunks(id, file.path)); // never keep bad bytes
      throw new FatalError(`${file.path} is corrupt after downloading it twice (${why}); the server's copy may be damaged.`);
    }
    file.refetches++;
    console.warn(`webdiffusion: ${file.path} failed verification (${why}); downloading it again.`);
    await locked(file, () => restart(file));
  }

  // One chunk, with retries and back-off; network errors and 5xx are retried, 4xx are not.
  async function runTask(task) {
    const { file, index } = task;
    const start = index * file.chunkSize;
    // Chunk 0 always asks a whole chunk: its response tells the file's true size, so a catalog
    // size that is off costs no extra request for the (common) one-chunk files.
    const end = index === 0 || file.size === null ? start + file.chunkSize : start + chunkLength(file, index);
    const key = {};
    let lastError = null;
    for (let attempt = 0; attempt < tries; attempt++) {
      if (attempt) await sleep(BACKOFF_MS * 2 ** (attempt - 1), signal);
      if (task.gen !== file.gen) return;
      current = file.path;
      try {
        await fetchChunk(file, start, end, key);
        return;
      } catch (e) {
        inFlight.delete(key);
        // Quota is not a network hiccup: trying again would only fail again, slowly.
        if (e instanceof FatalError || e.fatal || store.isQuotaError(e) || signal.aborted) throw e;
        lastError = e;
        console.warn(`webdiffusion: ${file.path} bytes ${start}-${end - 1}, try ${attempt + 1}/${tries}: ${e.message}`);
      }
    }
    throw new FatalError(`Downloading ${file.path} failed ${tries} times: ${lastError.message}`);
  }

  async function fetchChunk(file, start, end, key) {
    const gen = file.gen;
    const headers = { Range: `bytes=${start}-${end - 1}` };
    const asked = ifRange && file.validator;
    if (asked) headers['If-Range'] = file.validator;
    stats.requests++;
    let r;
    try {
      r = await fetchModel(file.url, { headers, signal, cache: 'no-store' });
    } catch (e) {
      if (asked && e instanceof TypeError && ifRange && !signal.aborted) {
        ifRange = false;
        console.warn(`webdiffusion: ${file.url} with If-Range failed (${e.message}); trying without it (the host's CORS may not allow it).`);
      }
      throw e;
    }
    if (gen !== file.gen) {
      r.body?.cancel().catch(() => {}); // the file was started over meanwhile
      return;
    }
    let total = null;
    if (r.status === 206) {
      const cr = contentRange(r.headers);
      if (cr && cr.start !== start) throw new Error(`the server sent bytes from ${cr.start}, not ${start}`);
      total = cr ? cr.total : file.size;
      if (total === null) throw new FatalError(`${file.url}: the server does not expose Content-Range (CORS Access-Control-Expose-Headers), so the file size is unknown.`);
    } else if (r.status === 200) {
      // Without Content-Length (a compressed or chunked reply) the body's own length tells.
      total = Number(r.headers.get('content-length')) || file.size;
    } else if (r.status === 416) {
      total = -1; // our idea of the size is wrong; learn it from chunk 0 again
    } else {
      r.body?.cancel().catch(() => {});
      const e = new (r.status >= 500 || r.status === 429 || r.status === 408 ? Error : FatalError)(`${file.url}: HTTP ${r.status}`);
      throw e;
    }
    if (total > MAX_FILE_BYTES) {
      r.body?.cancel().catch(() => {});
      checkSize(total, `${file.url}: the size the server gives`);
    }
    // Another version than the stored chunks are of: a 200 where If-Range was sent (the
    // server's way of saying so), or a different validator on any answer.
    const version = validatorOf(r.headers);
    if (file.validator && total !== -1 && (r.status === 200 && asked ? version !== file.validator : version && version !== file.validator)) {
      r.body?.cancel().catch(() => {});
      return changed(file, gen, r.status === 206 ? total : null, `it changed on the server (${file.validator} is now ${version || 'unnamed'})`);
    }
    if (r.status === 200 && start !== 0) {
      r.body?.cancel().catch(() => {});
      throw new FatalError(`${file.url}: the server ignores HTTP Range requests.`);
    }
    if (!file.validator && version) file.validator = version;
    const digest = reprDigest(r.headers);
    if (digest && file.shaSource === 'server' && file.sha256 !== digest && total !== -1) {
      // The server's file changed since we started (or resumed) it.
      r.body?.cancel().catch(() => {});
      return changed(file, gen, total, `its content changed on the server`);
    }
    if (total === -1 || (file.size !== null && total !== file.size && !(start === 0 && total <= file.chunkSize))) {
      r.body?.cancel().catch(() => {});
      return changed(file, gen, total === -1 ? null : total, `the server has ${total === -1 ? 'another' : total} bytes, not ${file.size}`);
    }
    let want = total ? Math.min(end, total) - start : end - start;
    const parts = [];
    let got = 0;
    const reader = r.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const take = Math.min(value.length, want - got);
      if (take > 0) parts.push(take === value.length ? value : value.subarray(0, take));
      got += value.length;
      stats.bytesFetched += value.length;
      inFlight.set(key, Math.min(got, want));
      progress();
      if (got >= want && r.status === 200 && (!total || total > want)) {
        reader.cancel().catch(() => {}); // a server without Range: take chunk 0, drop the rest
        break;
      }
    }
    inFlight.delete(key);
    if (!total) {
      if (got >= want) throw new FatalError(`${file.url}: the server ignores HTTP Range requests and sends no size.`);
      total = want = got;
    }
    if (got < want || (r.status === 206 && got !== want)) throw new Error(`got ${got} bytes instead of ${want}`);
    const index = start / file.chunkSize;
    await locked(file, async () => {
      if (gen !== file.gen) return;
      const learned = file.size === null;
      let dirty = !file.recorded || file.validator !== file.recordedValidator;
      if (file.size !== total) {
        file.size = total; // chunk 0 of a file whose listed size was off (see above)
        dirty = true;
      }
      if (digest && !file.sha256) {
        file.sha256 = digest;
        file.shaSource = 'server';
        dirty = true;
      }
      // The file record (size, chunk size) goes before its first chunk, so a resumed download
      // cuts the file exactly as this one did.
      if (dirty) await record(file);
      try {
        await store.putChunk(id, file.path, index, new Blob(parts));
      } catch (e) {
        if (store.isQuotaError(e)) throw await store.quotaError(totalKnown() - doneBytes(), entry.name || id);
        throw e;
      }
      file.present.add(index);
      if (learned) enqueueMissing(file);
    });
    progress();
    if (file.present.size === chunkCount(file) && !file.complete && !file.verifying) {
      file.verifying = true;
      verify(file).catch(fail).finally(() => {
        file.verifying = false;
        notify();
      });
    }
  }

  async function changed(file, gen, size, why) {
    await locked(file, async () => {
      if (gen !== file.gen) return;
      if (file.restarts >= 2) throw new FatalError(`${file.path} keeps changing on the server (${why}); try again later.`);
      file.restarts++;
      console.warn(`webdiffusion: ${file.path}: ${why}; starting it over.`);
      if (file.shaSource === 'server') {
        file.sha256 = null;
        file.shaSource = null;
      }
      await restart(file, size ?? null);
    });
    return 'restarted';
  }

  const allDone = () => files.every((f) => f.complete);
  async function runner() {
    while (!failure && !allDone()) {
      const task = queue.shift();
      if (!task) {
        await woken;
        continue;
      }
      const { file, index, gen } = task;
      if (gen !== file.gen || file.present.has(index) || index >= chunkCount(file)) continue;
      try {
        await runTask(task);
      } catch (e) {
        fail(e);
      }
      notify();
    }
  }

  for (const f of files) {
    if (f.complete) continue;
    if (f.size !== null && !f.recorded) await record(f);
    if (f.size !== null && f.present.size === chunkCount(f)) {
      f.verifying = true;
      verify(f).catch(fail).finally(() => {
        f.verifying = false;
        notify();
      });
    } else enqueueMissing(f);
  }
  progress(true);
  await Promise.all(Array.from({ length: parallel }, runner));
  if (failure) throw describeNetworkError(failure, entry, opts.signal);

  const record_ = {
    id,
    name: entry.name || id,
    url: entry.url,
    kind: resolved.kind,
    files: files.map((f) => ({ path: f.path, size: f.size, ...(f.sha256 ? { sha256: f.sha256 } : {}) })),
    bytes: totalKnown(),
    completed: new Date().toISOString(),
    entry: { ...entry, files: undefined },
  };
  await store.putModel(record_);
  phase = 'done';
  progress(true);
  return { record: record_, stats };
}

/// A network failure in words a visitor can act on.
export function describeNetworkError(e, entry, signal) {
  if (signal?.aborted || e?.name === 'AbortError') return abortError();
  if (e instanceof TypeError) {
    const offline = typeof navigator !== 'undefined' && navigator.onLine === false;
    return new Error(offline
      ? `You are offline and ${entry.name || entry.id} is not (fully) cached yet; connect to download it.`
      : `Could not reach ${new URL(entry.url).host} (${e.message}). Check the connection; the server must allow cross-origin requests (CORS).`);
  }
  return e;
}
