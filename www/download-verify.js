// Verification of downloaded bytes before anything uses them: a stored file's size, then its
// sha256. The hash is the engine's own incremental SHA-256 (the wasm `Sha256`, the one that
// checks package shards), so the page carries no hash code of its own and hashes as the loader
// does.

import init, { Sha256 } from './pkg/webdiffusion.js';
import * as store from './store.js';
import { abortError } from './download-net.js';

/// Bytes read from a blob at a time, so a 1.7 GB U-Net is never in memory whole.
export const HASH_SLICE = 8 << 20;
/// Bytes handed to the wasm per call: each call copies them into the engine's memory, which
/// never shrinks, so hashing grows it by this much at most.
const HASH_FEED = 1 << 20;

let ready = null;

/// The engine's module, instantiated once. The worker has done so before any download; a page
/// that imports download.js alone (the hostile-downloads test) has not.
export function engineReady() {
  ready ??= init().catch((e) => {
    ready = null;
    throw e;
  });
  return ready;
}

/// Lower-case hex sha256 of `parts` (an iterable or async iterable of Uint8Arrays).
async function hashParts(parts) {
  await engineReady();
  const h = new Sha256();
  try {
    for await (const part of parts) {
      for (let o = 0; o < part.length; o += HASH_FEED) h.update(part.subarray(o, o + HASH_FEED));
    }
    return h.hex();
  } finally {
    h.free(); // wasm memory, which no garbage collector sees in time
  }
}

/// sha256 of bytes already in memory (a manifest fetched whole).
export const sha256Bytes = (bytes) => hashParts([bytes]);

/// sha256 of `blob`, read in HASH_SLICE slices; `signal` is checked before each, and
/// `onBytes(n)` told after each is hashed.
export function sha256Blob(blob, signal, onBytes = () => {}) {
  return hashParts((async function* slices() {
    for (let o = 0; o < blob.size; o += HASH_SLICE) {
      if (signal?.aborted) throw abortError();
      const part = new Uint8Array(await blob.slice(o, o + HASH_SLICE).arrayBuffer());
      yield part;
      onBytes(part.length);
    }
  })());
}

/// Whether what model `id` stores for `file` ({path, size, sha256?}) is that file: its size,
/// then its sha256 where one is known. `{ok, why}`, `why` saying what differs.
export async function checkStored(id, file, signal, onBytes) {
  const blob = await store.getFileBlob(id, file.path).catch(() => null);
  if (!blob || blob.size !== file.size) return { ok: false, why: `${blob ? blob.size : 'missing'} bytes instead of ${file.size}` };
  if (!file.sha256) return { ok: true, why: null };
  const got = await sha256Blob(blob, signal, onBytes);
  return { ok: got === file.sha256, why: `sha256 ${got.slice(0, 12)}… instead of ${file.sha256.slice(0, 12)}…` };
}
