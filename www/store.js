// The local cache in IndexedDB: model weights as chunk Blobs, per-file and per-model records,
// and the gallery. Used by the worker (models) and the page (gallery, storage estimate).
//
// A model is whole only when its record exists in `models`: download.js writes it last, after
// every file has been verified, so a download cut short (tab closed, quota, crash) can never be
// mistaken for a usable model — its chunks stay in `chunks` and the next download resumes them.

const DB_NAME = 'webdiffusion';
// 2: the `loras` store.
const DB_VERSION = 2;

let dbPromise = null;

function open() {
  if (!dbPromise) {
    dbPromise = new Promise((ok, fail) => {
      const req = indexedDB.open(DB_NAME, DB_VERSION);
      req.onupgradeneeded = () => {
        const db = req.result;
        const create = (name, opts) => { if (!db.objectStoreNames.contains(name)) db.createObjectStore(name, opts); };
        // key [modelId, path, chunkIndex] -> Blob. Array keys sort element-wise, so one key range
        // covers a file ([id, path, 0]..[id, path, Infinity]) or a whole model ([id]..[id, []]).
        create('chunks');
        create('files', { keyPath: ['modelId', 'path'] });
        create('models', { keyPath: 'id' });
        create('gallery', { keyPath: 'id', autoIncrement: true });
        // {id (the file's stem, as <lora:id:…> names it), name, size, blob, strength, on, url?}
        create('loras', { keyPath: 'id' });
      };
      req.onsuccess = () => {
        const db = req.result;
        // Another tab upgrading the schema must not be blocked by us.
        db.onversionchange = () => {
          db.close();
          dbPromise = null;
        };
        ok(db);
      };
      req.onerror = () => fail(req.error);
      req.onblocked = () => fail(new Error('The model cache is held open by another webdiffusion tab with an older version; close it and reload.'));
    }).catch((e) => {
      dbPromise = null;
      throw e;
    });
  }
  return dbPromise;
}

const req2p = (req) => new Promise((ok, fail) => {
  req.onsuccess = () => ok(req.result);
  req.onerror = () => fail(req.error);
});

/// Runs `body(stores...)` in one transaction; resolves with its result once the transaction has
/// committed (not merely when the request succeeded), so callers never see data that could still
/// be rolled back. Quota failures often arrive only as the transaction's abort.
async function tx(names, mode, body) {
  const db = await open();
  return new Promise((ok, fail) => {
    const t = db.transaction(names, mode);
    let result;
    let failed = null;
    t.oncomplete = () => ok(result);
    // A quota failure at commit aborts the transaction with its own error (t.error) and fails
    // every pending request with a plain AbortError; reading that as the cause would pass a full
    // disk off as a cancelled download.
    t.onabort = () => fail((t.error && (!failed || failed.name === 'AbortError') ? t.error : failed) || new Error('IndexedDB transaction aborted'));
    t.onerror = (ev) => {
      failed ||= ev.target.error;
    };
    let pending;
    try {
      // Synchronously: requests must be placed while the transaction is active.
      pending = Promise.resolve(body(...names.map((n) => t.objectStore(n))));
    } catch (e) {
      pending = Promise.reject(e);
    }
    pending.then((r) => {
      result = r;
    }, (e) => {
      failed = e;
      try {
        t.abort();
      } catch {
        // already finished
      }
    });
  });
}

const fileRange = (modelId, path) => IDBKeyRange.bound([modelId, path, 0], [modelId, path, Infinity]);
const modelRange = (modelId) => IDBKeyRange.bound([modelId], [modelId, []]);

export function isQuotaError(e) {
  return !!e && (e.name === 'QuotaExceededError' || e.name === 'NS_ERROR_DOM_QUOTA_REACHED' || e.quota === true);
}

const fmt = (b) => (b >= 1e9 ? `${(b / 1e9).toFixed(2)} GB` : `${(b / 1e6).toFixed(1)} MB`);
export const formatBytes = fmt;

/// The error a full disk or quota turns into: what was needed against what the browser allows.
export async function quotaError(neededBytes, what = 'the model') {
  const { usage, quota } = await storageEstimate();
  const known = quota ? `; this site uses ${fmt(usage)} of the ${fmt(quota)} the browser allows` : '';
  const e = new Error(`Not enough storage for ${what}: ${fmt(neededBytes)} still to store${known}. Free space by deleting cached models (or other site data), then try again.`);
  e.name = 'QuotaError';
  e.quota = true;
  return e;
}

export async function storageEstimate() {
  const s = navigator.storage;
  const est = s && s.estimate ? await s.estimate().catch(() => ({})) : {};
  const persisted = s && s.persisted ? await s.persisted().catch(() => false) : false;
  return { usage: est.usage || 0, quota: est.quota || 0, persisted };
}

/// Asks once per browser profile (the answer sticks) that our cache survive storage pressure:
/// evicting a 2 GB model silently would cost the user the whole download again.
export async function requestPersistence() {
  const s = navigator.storage;
  if (!s || !s.persist || !s.persisted) return false;
  if (await s.persisted()) return true;
  try {
    if (localStorage.getItem('webdiffusion.persistAsked')) return false;
    localStorage.setItem('webdiffusion.persistAsked', '1');
  } catch {
    // no localStorage (private mode): ask anyway
  }
  return s.persist().catch(() => false);
}

// ---- models --------------------------------------------------------------------------------

export async function listModels() {
  return tx(['models'], 'readonly', (m) => req2p(m.getAll()));
}

export async function getModel(id) {
  return tx(['models'], 'readonly', (m) => req2p(m.get(id)));
}

/// The last write of a download: from here on the model counts as cached.
export async function putModel(record) {
  return tx(['models'], 'readwrite', (m) => req2p(m.put(record)));
}

/// Removes the record first and everything else in the same transaction, so a crash leaves
/// either the whole model or nothing that claims to be one.
export async function deleteModel(id) {
  return tx(['models', 'files', 'chunks'], 'readwrite', (m, f, c) => {
    m.delete(id);
    f.delete(modelRange(id));
    c.delete(modelRange(id));
  });
}

// ---- files and chunks ----------------------------------------------------------------------

/// Every file record of a model, complete or not.
export async function listFiles(modelId) {
  return tx(['files'], 'readonly', (f) => req2p(f.getAll(modelRange(modelId))));
}

export async function getFile(modelId, path) {
  return tx(['files'], 'readonly', (f) => req2p(f.get([modelId, path])));
}

export async function putFile(record) {
  return tx(['files'], 'readwrite', (f) => req2p(f.put(record)));
}

/// Indices of the chunks of a file already stored.
export async function chunkIndices(modelId, path) {
  const keys = await tx(['chunks'], 'readonly', (c) => req2p(c.getAllKeys(fileRange(modelId, path))));
  return new Set(keys.map((k) => k[2]));
}

export async function hasChunk(modelId, path, index) {
  const n = await tx(['chunks'], 'readonly', (c) => req2p(c.count([modelId, path, index])));
  return n > 0;
}

export async function putChunk(modelId, path, index, blob) {
  return tx(['chunks'], 'readwrite', (c) => req2p(c.put(blob, [modelId, path, index])));
}

/// Drops a file's chunks and marks it incomplete (before fetching it again).
export async function deleteFileChunks(modelId, path) {
  return tx(['files', 'chunks'], 'readwrite', (f, c) => {
    c.delete(fileRange(modelId, path));
    f.delete([modelId, path]);
  });
}

/// Stores several chunks ({path, index, blob}) of a model in one transaction.
export async function putChunks(modelId, chunks) {
  return tx(['chunks'], 'readwrite', (c) => Promise.all(chunks.map((k) => req2p(c.put(k.blob, [modelId, k.path, k.index])))));
}

/// Every stored chunk of a model as {path: [indices]} (files without records included).
export async function chunkMap(modelId) {
  const keys = await tx(['chunks'], 'readonly', (c) => req2p(c.getAllKeys(modelRange(modelId))));
  const out = {};
  for (const [, path, index] of keys) (out[path] ||= []).push(index);
  return out;
}

/// Drops chunks `from` and later of a file (stale pieces after a resumed conversion).
export async function deleteChunksFrom(modelId, path, from) {
  return tx(['chunks'], 'readwrite', (c) => req2p(c.delete(IDBKeyRange.bound([modelId, path, from], [modelId, path, Infinity]))));
}

/// The file as one Blob over its chunk Blobs: nothing is read into memory until someone slices
/// and reads it, which is how a 1.7 GB U-Net loads without ever being whole in memory.
export async function getFileBlob(modelId, path) {
  const [record, chunks] = await tx(['files', 'chunks'], 'readonly', (f, c) =>
    Promise.all([req2p(f.get([modelId, path])), req2p(c.getAll(fileRange(modelId, path)))]));
  if (!record) return null;
  const blob = new Blob(chunks);
  if (blob.size !== record.size) {
    throw new Error(`The cached ${path} is incomplete (${blob.size} of ${record.size} bytes); delete the model and download it again.`);
  }
  return blob;
}

// ---- gallery -------------------------------------------------------------------------------

export async function galleryAdd(item) {
  return tx(['gallery'], 'readwrite', (g) => req2p(g.add(item)));
}

/// Newest first.
export async function galleryList() {
  const items = await tx(['gallery'], 'readonly', (g) => req2p(g.getAll()));
  return items.reverse();
}

export async function galleryGet(id) {
  return tx(['gallery'], 'readonly', (g) => req2p(g.get(id)));
}

export async function galleryDelete(id) {
  return tx(['gallery'], 'readwrite', (g) => req2p(g.delete(id)));
}

// ---- LoRAs ---------------------------------------------------------------------------------

export async function listLoras() {
  return tx(['loras'], 'readonly', (l) => req2p(l.getAll()));
}

export async function getLora(id) {
  return tx(['loras'], 'readonly', (l) => req2p(l.get(id)));
}

export async function putLora(record) {
  return tx(['loras'], 'readwrite', (l) => req2p(l.put(record)));
}

export async function deleteLora(id) {
  return tx(['loras'], 'readwrite', (l) => req2p(l.delete(id)));
}
