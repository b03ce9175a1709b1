// Planning a download: an entry (catalog or custom URL) resolved to the list of files to fetch —
// a package's manifest.json and shards, the catalog's own list, or a diffusers folder probed for
// the files the engine's loader reads. Servers are not trusted: every size, path and hash a
// listing gives is checked here, before any number in it sizes a chunk or a path becomes a URL.

import { diffusersLayout } from './pkg/webdiffusion.js';
import { FatalError, contentRange, fetchModel } from './download-net.js';
import { engineReady, sha256Bytes } from './download-verify.js';

/// The largest file a listing (package manifest, catalog, Hub tree, Content-Range) may claim.
/// The biggest file of a supported model is SDXL's fp32 U-Net (10.27 GB; its fp16 one, 5.14 GB,
/// is what the page fetches); a size beyond 16 GiB is a broken or hostile listing, and refusing
/// it keeps every offset and chunk count exact (far below 2^53).
export const MAX_FILE_BYTES = 2 ** 34;

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

/// The files of a diffusers folder at a URL no catalog describes: the ones the engine's loader
/// reads (wasm `diffusersLayout()`, in its load order), so the page keeps no list of its own.
async function probeDiffusers(base, signal, stats) {
  await engineReady();
  const layout = diffusersLayout();
  const sizes = async (paths) => Promise.all(paths.map((p) => probeSize(base + p, signal, stats)));
  const files = [];
  // Files that come `with` another (SDXL's tokenizer_2 with text_encoder_2's config) are asked
  // for only where that one is there.
  for (const wave of [layout.files.filter((f) => !f.with), layout.files.filter((f) => f.with)]) {
    const asked = wave.filter((f) => !f.with || files.some((g) => g.path === f.with));
    const small = await sizes(asked.map((f) => f.path));
    asked.forEach(({ path, required }, i) => {
      if (small[i] !== null) files.push({ path, size: small[i] });
      else if (required) throw new FatalError(`${base} is neither a webdiffusion package (no manifest.json) nor a diffusers folder (no ${path}).`);
    });
  }
  for (const { plain, half, config, required } of layout.weights) {
    if (!required && !files.some((f) => f.path === config)) continue;
    const [plainSize, halfSize] = await sizes([plain, half]);
    if (plainSize === null && halfSize === null) {
      throw new FatalError(`${base} has no ${plain.replace(/\.safetensors$/, '')}.safetensors (nor .fp16.safetensors); only safetensors weights are supported.`);
    }
    // The page's policy, not the engine's (it loads either): the fp16 variant where there is
    // one, half the bytes, and quantizing or uploading as f16 loses nothing a user can see.
    files.push(halfSize !== null ? { path: half, size: halfSize } : { path: plain, size: plainSize });
  }
  return files;
}

/// A package's manifest.json (its bytes, fetched whole) checked, as the list of its files.
async function packageFiles(base, bytes) {
  const where = `${base}manifest.json`;
  let m;
  try {
    m = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new FatalError(`${base}manifest.json is not JSON: ${e.message}`);
  }
  if (m.format !== 'webdiffusion-package' || ![1, 2].includes(m.version) || !Array.isArray(m.shards)) {
    throw new FatalError(`${base}manifest.json is not a webdiffusion package (version 1 or 2).`);
  }
  // A size that is not a number would make the chunk count NaN and the download wait
  // forever; a path with '..' would fetch (and cache) something outside the package.
  const shards = m.shards.map((x, i) => checkListed(x, `${where}: shards[${i}]`, 'file', true));
  checkUnique(shards, `${where}: shards`, 'file', new Set(['manifest.json']));
  return [{ path: 'manifest.json', size: bytes.length, sha256: await sha256Bytes(bytes), bytes }, ...shards];
}

/// `{kind, files: [{path, size?, sha256?}], manifest?}` for an entry: a package when
/// `<base>manifest.json` exists, else the entry's own list or a probe.
export async function resolveFiles(entry, signal, stats) {
  if (entry.format !== 'diffusers') {
    stats.requests++;
    const r = await fetchModel(`${entry.url}manifest.json`, { signal, cache: 'no-store' });
    if (r.ok) {
      const bytes = new Uint8Array(await r.arrayBuffer());
      stats.bytesFetched += bytes.length;
      return { kind: 'package', files: await packageFiles(entry.url, bytes) };
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
