// What the Hugging Face Hub knows about each file of a repo, as its API lists it
// (`/api/models/<repo>/tree/main`): the git blob oid, the size and, for files stored in Git LFS,
// the LFS pointer's sha256 oid and size. Shared by the synthetic-repo writer (which computes the
// hashes while writing and saves them in DIR/.hf-tree.json) and the HF stand-in (which serves
// them, and hashes any folder that has no such file, e.g. tests/fixtures/tiny-sd1).

import { createHash } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import { join, relative, sep } from 'node:path';

export const TREE_FILE = '.hf-tree.json';

// The patterns of the .gitattributes every new Hub repo starts with (the weight formats), plus
// the Hub's rule that a file over 10 MB must be in LFS.
const LFS_EXT = /\.(safetensors|bin|ckpt|pt|pth|onnx|msgpack|h5|pb|tflite|ot|pkl|pickle|npy|npz|gguf|model|joblib|zip|tar|gz|7z|arrow|parquet|wasm)$/;
export const isLfs = (path, size) => LFS_EXT.test(path) || size > 10 * 1000 * 1000;

/// The LFS pointer file git stores in place of a large file.
export const lfsPointer = (sha256, size) => `version https://git-lfs.github.com/spec/v1\noid sha256:${sha256}\nsize ${size}\n`;

/// A git blob id: sha1 of `blob <len>\0` + content. Takes a hash already fed with the content.
export function gitBlobOid(content) {
  const buf = typeof content === 'string' ? Buffer.from(content) : content;
  return createHash('sha1').update(`blob ${buf.length}\0`).update(buf).digest('hex');
}

/// Incremental hashes of one file being written or read: sha256 always, the git blob sha1 too
/// (its `blob <size>\0` prefix needs the size up front).
export function fileHasher(size) {
  const sha256 = createHash('sha256');
  const sha1 = createHash('sha1').update(`blob ${size}\0`);
  return {
    update(chunk) {
      sha256.update(chunk);
      sha1.update(chunk);
    },
    entry(path) {
      return treeEntry(path, size, sha256.digest('hex'), sha1.digest('hex'));
    },
  };
}

/// One file's record: {path, size, oid, sha256, lfs?}.
export function treeEntry(path, size, sha256, blobOid) {
  if (!isLfs(path, size)) return { path, size, oid: blobOid, sha256 };
  const pointer = lfsPointer(sha256, size);
  return { path, size, oid: gitBlobOid(pointer), sha256, lfs: { oid: sha256, size, pointerSize: Buffer.byteLength(pointer) } };
}

/// Every regular file under `dir` (relative, '/'-separated, sorted), skipping dot-folders and
/// our own listing file. Symbolic links are followed (a fixture that shares another's folders,
/// as tests/fixtures/tiny-sd1-inpaint does, is served as the full repo Hugging Face would hold).
export async function walk(dir) {
  const out = [];
  async function visit(d, depth = 0) {
    if (depth > 16) throw new Error(`${d}: folders nested too deep (a symbolic link loop?)`);
    for (const e of await fs.readdir(d, { withFileTypes: true })) {
      const full = join(d, e.name);
      const kind = e.isSymbolicLink() ? await fs.stat(full) : e;
      if (kind.isDirectory()) {
        if (!e.name.startsWith('.')) await visit(full, depth + 1);
      } else if (kind.isFile() && e.name !== TREE_FILE) out.push(relative(dir, full).split(sep).join('/'));
    }
  }
  await visit(dir);
  return out.sort();
}

async function hashFile(dir, path, size) {
  const h = fileHasher(size);
  await new Promise((ok, fail) => createReadStream(join(dir, path)).on('data', (d) => h.update(d)).on('end', ok).on('error', fail));
  return h.entry(path);
}

/// The listing of `dir`: DIR/.hf-tree.json where it matches the files on disk (same paths and
/// sizes), else hashed now. Returns {repo (as saved, or null), commit, files: [entry], hashed:
/// how many files were hashed now}.
export async function readOrBuildTree(dir) {
  let saved = null;
  try {
    saved = JSON.parse(await fs.readFile(join(dir, TREE_FILE), 'utf8'));
  } catch {
    saved = null;
  }
  const known = new Map((saved?.files || []).map((f) => [f.path, f]));
  const files = [];
  let hashed = 0;
  for (const path of await walk(dir)) {
    const { size } = await fs.stat(join(dir, path));
    const k = known.get(path);
    if (k && k.size === size && k.sha256) files.push(treeEntry(path, size, k.sha256, k.oid)); // an LFS entry's oid is rebuilt from sha256
    else {
      files.push(await hashFile(dir, path, size));
      hashed++;
    }
  }
  // A stable fake commit id: the same files give the same revision, as a real commit would.
  const commit = saved?.commit && hashed === 0 ? saved.commit : createHash('sha1').update(JSON.stringify(files.map((f) => [f.path, f.oid]))).digest('hex');
  return { repo: saved?.repo || null, commit, files, hashed };
}

/// The Hub's tree entries for `prefix` ('' = root): files and the directories among them,
/// all levels when `recursive`, else only direct children. Sorted as the Hub does (by path).
export function treeListing(files, prefix = '', recursive = false) {
  const pre = prefix ? `${prefix.replace(/\/+$/, '')}/` : '';
  const dirs = new Map();
  const out = [];
  for (const f of files) {
    if (!f.path.startsWith(pre)) continue;
    const rest = f.path.slice(pre.length);
    const parts = rest.split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = pre + parts.slice(0, i).join('/');
      if (!recursive && i > 1) break;
      if (!dirs.has(d)) dirs.set(d, createHash('sha1'));
      dirs.get(d).update(`${f.path}\0${f.oid}\n`);
    }
    if (!recursive && parts.length > 1) continue;
    const e = { type: 'file', oid: f.oid, size: f.size, path: f.path };
    if (f.lfs) e.lfs = { ...f.lfs };
    out.push(e);
  }
  for (const [path, h] of dirs) out.push({ type: 'directory', oid: h.digest('hex'), size: 0, path });
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}
