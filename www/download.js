// Downloads a model's files into the IndexedDB store (store.js) and writes its record last, so
// a half-downloaded model never loads. The parts: download-plan.js resolves an entry to its
// files and checks every size, path and hash a listing gives; download-chunks.js fetches them
// in resumable, parallel Range chunks (If-Range, retries, progress); download-verify.js checks
// each file's size and sha256 (the engine's own) before it counts as complete. This file opens
// what an earlier visit stored and runs the parts in turn; what other files and tests import
// is exported from here.

import * as store from './store.js';
import { abortError, checkHost, describeNetworkError } from './download-net.js';
import { resolveFiles } from './download-plan.js';
import { ChunkScheduler, DEFAULT_CHUNK, chunkLength, recordFile } from './download-chunks.js';

export {
  FatalError, abortError, checkHost, contentRange, describeNetworkError, fetchModel, sleep, validatorOf,
} from './download-net.js';
export { checkSize, resolveFiles } from './download-plan.js';
export { DEFAULT_CHUNK } from './download-chunks.js';

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

  const ctrl = new AbortController();
  if (opts.signal) {
    if (opts.signal.aborted) throw abortError();
    opts.signal.addEventListener('abort', () => ctrl.abort(), { once: true });
  }
  const stats = { requests: 0, bytesFetched: 0, bytesFromCache: 0 };
  checkHost(entry.url);

  let resolved;
  try {
    resolved = await resolveFiles(entry, ctrl.signal, stats);
  } catch (e) {
    throw describeNetworkError(e, entry, ctrl.signal);
  }
  const id = entry.id;
  left.bytes = () => resolved.files.reduce((n, f) => n + (f.size ?? 0), 0) || entry.bytes || 0;

  // Files of an earlier, different list (a re-published package) would only waste space.
  const wanted = new Set(resolved.files.map((f) => f.path));
  for (const rec of await store.listFiles(id)) {
    if (!wanted.has(rec.path)) await store.deleteFileChunks(id, rec.path);
  }
  const files = [];
  for (const f of resolved.files) files.push(await openFile(entry, f, opts.chunkSize || DEFAULT_CHUNK, stats));

  const remaining = files.reduce((s, f) => s + (f.size ?? 0), 0) - stats.bytesFromCache;
  const est = await store.storageEstimate();
  if (est.quota && remaining > est.quota - est.usage) throw await store.quotaError(remaining, entry.name || id);

  const chunks = new ChunkScheduler({
    id, name: entry.name || id, files, stats, ctrl, parallel: opts.parallel, tries: opts.tries,
    estimate: entry.bytes || 0, onProgress: opts.onProgress,
  });
  left.bytes = () => chunks.totalKnown() - chunks.doneBytes();
  await chunks.run();
  if (chunks.failure) throw describeNetworkError(chunks.failure, entry, opts.signal);

  const record = {
    id,
    name: entry.name || id,
    url: entry.url,
    kind: resolved.kind,
    files: files.map((f) => ({ path: f.path, size: f.size, ...(f.sha256 ? { sha256: f.sha256 } : {}) })),
    bytes: chunks.totalKnown(),
    completed: new Date().toISOString(),
    entry: { ...entry, files: undefined },
  };
  await store.putModel(record);
  chunks.phase = 'done';
  chunks.progress(true);
  return { record, stats };
}

/// The download state of listed file `f` ({path, size?, sha256?, bytes?}), from what an earlier
/// visit stored of it; what is stored counts in `stats.bytesFromCache`.
async function openFile(entry, f, chunkSize, stats) {
  const id = entry.id;
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
    gen: 0, // bumped when the file starts over: answers to older requests are dropped
    restarts: 0,
    refetches: 0,
    lock: Promise.resolve(),
    recorded: !!rec,
  };
  if (file.complete) stats.bytesFromCache += file.size;
  else if (file.size !== null) {
    for (const i of file.present) stats.bytesFromCache += chunkLength(file, i);
  }
  if (f.bytes && !file.complete) {
    // The manifest was fetched whole to detect the package; store those bytes, not a refetch.
    file.size = f.bytes.length;
    file.chunkSize = Math.max(file.chunkSize, file.size);
    await recordFile(id, file);
    await store.putChunk(id, file.path, 0, new Blob([f.bytes]));
    file.present = new Set([0]);
  }
  return file;
}
