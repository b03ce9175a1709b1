// The chunk scheduler: a model's files fetched in HTTP Range chunks, a few at a time, with
// retries, each chunk stored in IndexedDB (store.js) as it arrives so a reload resumes with the
// missing chunks only. Each file's version (strong ETag, else Last-Modified) is stored with its
// chunks and asked for with If-Range, so a file that changed on the server starts over, never
// mixed. A file whose chunks are all stored is verified (download-verify.js) before it counts
// as complete; a failed one is fetched again once.

import * as store from './store.js';
import { FatalError, contentRange, fetchModel, reprDigest, sleep, validatorOf } from './download-net.js';
import { MAX_FILE_BYTES, checkSize } from './download-plan.js';
import { checkStored } from './download-verify.js';

export const DEFAULT_CHUNK = 8 << 20;
export const PARALLEL = 3;
export const TRIES = 4;
const BACKOFF_MS = 500;

/// Chunks `file` is cut into: one while its size is unknown (its answer tells).
export function chunkCount(file) {
  return file.size === null ? 1 : Math.max(1, Math.ceil(file.size / file.chunkSize));
}

export function chunkLength(file, i) {
  return Math.min(file.chunkSize, file.size - i * file.chunkSize);
}

/// Stores `file`'s record (size, chunk size, hash, version) for model `id`.
export function recordFile(id, file) {
  file.recorded = true;
  file.recordedValidator = file.validator;
  return store.putFile({
    modelId: id, path: file.path, size: file.size, chunkSize: file.chunkSize,
    sha256: file.sha256, shaSource: file.shaSource, validator: file.validator, complete: file.complete,
  });
}

/// One download's chunks in flight: `run()` fetches every missing chunk of `files` (as
/// download.js opens them from the store) and verifies each file, and ends when all are
/// complete or one failed (`failure`). `ctrl` aborts every request once one fails.
export class ChunkScheduler {
  /// Options: id (the model's), name (for the quota message), files, stats ({requests,
  /// bytesFetched, bytesFromCache}), ctrl, parallel, tries, estimate (the catalog's byte count,
  /// shown until every size is known), onProgress.
  constructor({ id, name, files, stats, ctrl, parallel, tries, estimate = 0, onProgress = null }) {
    Object.assign(this, { id, name, files, stats, ctrl, estimate, onProgress });
    this.parallel = parallel || PARALLEL;
    this.tries = tries || TRIES;
    this.signal = ctrl.signal;
    this.queue = [];
    this.failure = null;
    // Off once a host's CORS preflight refused If-Range (it is not a safelisted header): a
    // change then still shows as another validator on the 206, one chunk later.
    this.ifRange = true;
    this.inFlight = new Map(); // bytes received so far per request, for progress
    this.samples = [];
    this.lastPost = 0;
    this.phase = 'download';
    this.current = '';
    this.woken = new Promise((r) => (this.wake = r));
  }

  totalKnown() {
    return this.files.reduce((s, f) => s + (f.size ?? 0), 0);
  }

  doneBytes() {
    let n = 0;
    for (const v of this.inFlight.values()) n += v;
    for (const f of this.files) {
      if (f.complete) n += f.size;
      else for (const i of f.present) n += chunkLength(f, i);
    }
    return n;
  }

  /// Posts progress, at most every 100 ms unless `force`d.
  progress(force = false) {
    const now = performance.now();
    if (!this.onProgress || (!force && now - this.lastPost < 100)) return;
    this.lastPost = now;
    const { stats, samples, files } = this;
    samples.push([now, stats.bytesFetched]);
    while (samples.length > 2 && now - samples[0][0] > 5000) samples.shift();
    const [t0, b0] = samples[0];
    const speed = now - t0 > 250 ? ((stats.bytesFetched - b0) * 1000) / (now - t0) : 0;
    // Until every size is known (files listed without one), the catalog's estimate is better.
    const total = files.some((f) => f.size === null) ? Math.max(this.totalKnown(), this.estimate) : this.totalKnown();
    const done = Math.min(total, this.doneBytes());
    this.onProgress({
      phase: this.phase, done, total, speed, eta: speed > 0 ? (total - done) / speed : null, file: this.current,
      filesDone: files.filter((f) => f.complete).length, files: files.length, ...stats,
    });
  }

  /// Wakes every runner waiting for work.
  notify() {
    this.wake();
    this.woken = new Promise((r) => (this.wake = r));
  }

  fail(e) {
    if (!this.failure) this.failure = e;
    this.ctrl.abort();
    this.notify();
  }

  /// Runs `fn` after every earlier locked step of `file` (its record, chunks and restarts).
  locked(file, fn) {
    return (file.lock = file.lock.then(fn, fn));
  }

  record(file) {
    return recordFile(this.id, file);
  }

  enqueueMissing(file) {
    const n = file.size === null ? 1 : chunkCount(file);
    for (let i = 0; i < n; i++) if (!file.present.has(i)) this.queue.push({ file, index: i, gen: file.gen });
    this.notify();
  }

  /// Drops everything stored of a file and starts it over (new size, new bytes on the server,
  /// or a failed verification).
  async restart(file, size) {
    file.gen++;
    await store.deleteFileChunks(this.id, file.path);
    file.present = new Set();
    file.recorded = false;
    file.validator = null; // the new version's comes with its first answer
    if (size !== undefined) file.size = size;
    if (file.size !== null) await this.record(file);
    this.enqueueMissing(file);
  }

  /// Fetches what is missing and verifies what is whole; resolves when done or failed.
  async run() {
    for (const f of this.files) {
      if (f.complete) continue;
      if (f.size !== null && !f.recorded) await this.record(f);
      if (f.size !== null && f.present.size === chunkCount(f)) this.startVerify(f);
      else this.enqueueMissing(f);
    }
    this.progress(true);
    await Promise.all(Array.from({ length: this.parallel }, () => this.runner()));
  }

  async runner() {
    const allDone = () => this.files.every((f) => f.complete);
    while (!this.failure && !allDone()) {
      const task = this.queue.shift();
      if (!task) {
        await this.woken;
        continue;
      }
      const { file, index, gen } = task;
      if (gen !== file.gen || file.present.has(index) || index >= chunkCount(file)) continue;
      try {
        await this.runTask(task);
      } catch (e) {
        this.fail(e);
      }
      this.notify();
    }
  }

  startVerify(file) {
    file.verifying = true;
    this.verify(file).catch((e) => this.fail(e)).finally(() => {
      file.verifying = false;
      this.notify();
    });
  }

  /// Size and sha256 of a file whose chunks are all stored: complete, or fetched once more,
  /// or (the second time) a failure that leaves none of its bytes stored.
  async verify(file) {
    this.phase = 'verify';
    this.current = file.path;
    this.progress(true);
    const { ok, why } = await checkStored(this.id, file, this.signal, () => this.progress());
    this.phase = 'download';
    if (ok) {
      file.complete = true;
      await this.record(file);
      this.notify();
      return;
    }
    if (file.refetches >= 1) {
      await this.locked(file, () => store.deleteFileChunks(this.id, file.path)); // never keep bad bytes
      throw new FatalError(`${file.path} is corrupt after downloading it twice (${why}); the server's copy may be damaged.`);
    }
    file.refetches++;
    console.warn(`webdiffusion: ${file.path} failed verification (${why}); downloading it again.`);
    await this.locked(file, () => this.restart(file));
  }

  /// One chunk, with retries and back-off; network errors and 5xx are retried, 4xx are not.
  async runTask(task) {
    const { file, index } = task;
    const { signal, tries } = this;
    const start = index * file.chunkSize;
    // Chunk 0 always asks a whole chunk: its response tells the file's true size, so a catalog
    // size that is off costs no extra request for the (common) one-chunk files.
    const end = index === 0 || file.size === null ? start + file.chunkSize : start + chunkLength(file, index);
    const key = {};
    let lastError = null;
    for (let attempt = 0; attempt < tries; attempt++) {
      if (attempt) await sleep(BACKOFF_MS * 2 ** (attempt - 1), signal);
      if (task.gen !== file.gen) return;
      this.current = file.path;
      try {
        await this.fetchChunk(file, start, end, key);
        return;
      } catch (e) {
        this.inFlight.delete(key);
        // Quota is not a network hiccup: trying again would only fail again, slowly.
        if (e instanceof FatalError || e.fatal || store.isQuotaError(e) || signal.aborted) throw e;
        lastError = e;
        console.warn(`webdiffusion: ${file.path} bytes ${start}-${end - 1}, try ${attempt + 1}/${tries}: ${e.message}`);
      }
    }
    throw new FatalError(`Downloading ${file.path} failed ${tries} times: ${lastError.message}`);
  }

  /// Bytes `start`..`end` of `file`: one request, its answer checked against the stored
  /// version and size, its bytes stored; the file is verified once its last chunk is in.
  async fetchChunk(file, start, end, key) {
    const gen = file.gen;
    const { r, asked } = await this.request(file, start, end);
    if (gen !== file.gen) {
      r.body?.cancel().catch(() => {}); // the file was started over meanwhile
      return;
    }
    const total = this.totalOf(file, r, start);
    const digest = reprDigest(r.headers);
    const stale = this.staleness(file, r, asked, start, total, digest);
    if (stale) {
      r.body?.cancel().catch(() => {});
      await this.changed(file, gen, stale.size, stale.why);
      return;
    }
    const body = await this.readBody(file, r, start, end, total, key);
    await this.locked(file, () => this.storeChunk(file, gen, start / file.chunkSize, body, digest));
    this.progress();
    if (file.present.size === chunkCount(file) && !file.complete && !file.verifying) this.startVerify(file);
  }

  /// The ranged request, with If-Range once the file's version is known. `{r, asked}`.
  async request(file, start, end) {
    const headers = { Range: `bytes=${start}-${end - 1}` };
    const asked = this.ifRange && file.validator;
    if (asked) headers['If-Range'] = file.validator;
    this.stats.requests++;
    try {
      return { r: await fetchModel(file.url, { headers, signal: this.signal, cache: 'no-store' }), asked };
    } catch (e) {
      if (asked && e instanceof TypeError && this.ifRange && !this.signal.aborted) {
        this.ifRange = false;
        console.warn(`webdiffusion: ${file.url} with If-Range failed (${e.message}); trying without it (the host's CORS may not allow it).`);
      }
      throw e;
    }
  }

  /// The file's size as the answer gives it (null: unknown; -1: a 416, so ours is wrong). An
  /// answer of no use throws: retried for 5xx, 429 and 408, fatal otherwise.
  totalOf(file, r, start) {
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
      throw new (r.status >= 500 || r.status === 429 || r.status === 408 ? Error : FatalError)(`${file.url}: HTTP ${r.status}`);
    }
    if (total > MAX_FILE_BYTES) {
      r.body?.cancel().catch(() => {});
      checkSize(total, `${file.url}: the size the server gives`);
    }
    return total;
  }

  /// Why the answer is not of the file the stored chunks are of, as `{size, why}` for
  /// `changed` (size: the new one where the answer tells it), or null. The first answer names
  /// the file's version.
  staleness(file, r, asked, start, total, digest) {
    // Another version than the stored chunks are of: a 200 where If-Range was sent (the
    // server's way of saying so), or a different validator on any answer.
    const version = validatorOf(r.headers);
    if (file.validator && total !== -1 && (r.status === 200 && asked ? version !== file.validator : version && version !== file.validator)) {
      return { size: r.status === 206 ? total : null, why: `it changed on the server (${file.validator} is now ${version || 'unnamed'})` };
    }
    if (r.status === 200 && start !== 0) {
      r.body?.cancel().catch(() => {});
      throw new FatalError(`${file.url}: the server ignores HTTP Range requests.`);
    }
    if (!file.validator && version) file.validator = version;
    if (digest && file.shaSource === 'server' && file.sha256 !== digest && total !== -1) {
      // The server's file changed since we started (or resumed) it.
      return { size: total, why: 'its content changed on the server' };
    }
    if (total === -1 || (file.size !== null && total !== file.size && !(start === 0 && total <= file.chunkSize))) {
      return { size: total === -1 ? null : total, why: `the server has ${total === -1 ? 'another' : total} bytes, not ${file.size}` };
    }
    return null;
  }

  /// The chunk's bytes from the answer's body, no more than asked, counted as they arrive.
  /// `{parts, total}`: total is the body's length when the answer gave no size.
  async readBody(file, r, start, end, total, key) {
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
      this.stats.bytesFetched += value.length;
      this.inFlight.set(key, Math.min(got, want));
      this.progress();
      if (got >= want && r.status === 200 && (!total || total > want)) {
        reader.cancel().catch(() => {}); // a server without Range: take chunk 0, drop the rest
        break;
      }
    }
    this.inFlight.delete(key);
    if (!total) {
      if (got >= want) throw new FatalError(`${file.url}: the server ignores HTTP Range requests and sends no size.`);
      total = want = got;
    }
    if (got < want || (r.status === 206 && got !== want)) throw new Error(`got ${got} bytes instead of ${want}`);
    return { parts, total };
  }

  /// Stores chunk `index` (under the file's lock), with the record first where it changed.
  async storeChunk(file, gen, index, { parts, total }, digest) {
    if (gen !== file.gen) return;
    const learned = file.size === null;
    let dirty = !file.recorded || file.validator !== file.recordedValidator;
    if (file.size !== total) {
      file.size = total; // chunk 0 of a file whose listed size was off (see runTask)
      dirty = true;
    }
    if (digest && !file.sha256) {
      file.sha256 = digest;
      file.shaSource = 'server';
      dirty = true;
    }
    // The file record (size, chunk size) goes before its first chunk, so a resumed download
    // cuts the file exactly as this one did.
    if (dirty) await this.record(file);
    try {
      await store.putChunk(this.id, file.path, index, new Blob(parts));
    } catch (e) {
      if (store.isQuotaError(e)) throw await store.quotaError(this.totalKnown() - this.doneBytes(), this.name);
      throw e;
    }
    file.present.add(index);
    if (learned) this.enqueueMissing(file);
  }

  /// Starts `file` over because its answer is of another version (at most twice).
  async changed(file, gen, size, why) {
    await this.locked(file, async () => {
      if (gen !== file.gen) return;
      if (file.restarts >= 2) throw new FatalError(`${file.path} keeps changing on the server (${why}); try again later.`);
      file.restarts++;
      console.warn(`webdiffusion: ${file.path}: ${why}; starting it over.`);
      if (file.shaSource === 'server') {
        file.sha256 = null;
        file.shaSource = null;
      }
      await this.restart(file, size ?? null);
    });
  }
}
