#!/usr/bin/env node
// Writes a synthetic diffusers repo with a published model's file layout: the same file names,
// every tensor's name, shape and dtype, the same safetensors header layout and byte sizes —
// random (finite, deterministic) values. For real-size benchmarks of the download/convert/load
// path without downloading gigabytes of actual weights.
//
//   node tools/bench/synthetic-repo.mjs --model sd-turbo|sd15|sd15-inpainting|mid-arch --out DIR
//        [--fp32] (also the fp32 weight files)  [--seed N]  [--quiet]
//
// Sources (all in the repo, nothing read from outside it):
//   tools/bench/published/<org>__<repo>/   files.json (published file list and sizes) and the
//                                          small config files, copied from shared/models/
//   tests/fixtures/published/<org>__<repo>/tensors.json   per-component tensor lists
//   tools/reference/clip-tokenizer/        CLIP vocab/merges (vocab re-serialized the way the
//                                          published tokenizer/vocab.json is: same sha256)
//   tests/fixtures/mid-arch/               configs of a ~100M-parameter SD-1.5-shaped model; its
//                                          tensor list is derived by arch-tensors.mjs
// Also writes DIR/.hf-tree.json (what the Hub API lists per file: git oid, size, LFS sha256),
// last, so its presence marks a complete repo. Prints a size check against files.json.

import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tensorsFromConfigs } from './arch-tensors.mjs';
import { TREE_FILE, fileHasher } from './hub-listing.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const GENERATOR = 1; // bump when the bytes written for the same inputs change

export const MODELS = {
  'sd-turbo': { repo: 'stabilityai/sd-turbo', published: 'stabilityai__sd-turbo' },
  'sdxl-turbo': { repo: 'stabilityai/sdxl-turbo', published: 'stabilityai__sdxl-turbo' },
  sd15: { repo: 'stable-diffusion-v1-5/stable-diffusion-v1-5', published: 'stable-diffusion-v1-5__stable-diffusion-v1-5' },
  // SD 1.5's layout (its small files, position_ids in the text encoder, modern fp16 files) with
  // the narrower configs of tests/fixtures/mid-arch: the CI-sized real-layout model.
  'mid-arch': { repo: 'webdiffusion/mid-arch', published: 'stable-diffusion-v1-5__stable-diffusion-v1-5', configs: 'tests/fixtures/mid-arch' },
  // SD 1.5 Inpainting: its own small files and file list; its tensors are SD 1.5's but for the
  // U-Net's conv_in, which reads 9 channels (latents, mask, masked-image latents), as its
  // unet/config.json says (in_channels 9). The published fp16 U-Net is 28,800 bytes (320·5·3·3
  // fp16) larger than SD 1.5's, with the same header size: the sizes check says so.
  'sd15-inpainting': {
    repo: 'stable-diffusion-v1-5/stable-diffusion-inpainting',
    published: 'stable-diffusion-v1-5__stable-diffusion-inpainting',
    tensors: 'stable-diffusion-v1-5__stable-diffusion-v1-5',
    shapes: { unet: { 'conv_in.weight': [320, 9, 3, 3] } },
  },
};

const DTYPE_BYTES = { F16: 2, BF16: 2, F32: 4, I64: 8 };
// safetensors orders its Dtype enum like this and lays tensors out by dtype descending.
const DTYPE_RANK = ['BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'F64', 'I64', 'U64'];

/// The published tokenizer/vocab.json bytes (json.dumps(indent=2, sort_keys=True) + '\n', which
/// reproduces its sha256 e089ad92…) from our compact copy of the same vocabulary.
export function publishedVocab() {
  const text = readFileSync(join(ROOT, 'tools/reference/clip-tokenizer/vocab.json'), 'utf8');
  const entries = [];
  const re = /("(?:[^"\\]|\\.)*"):\s*(\d+)/g; // keeps file order; JSON.parse would reorder "0".."9"
  for (let m; (m = re.exec(text));) entries.push([JSON.parse(m[1]), Number(m[2])]);
  entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return Buffer.from(`{\n${entries.map(([k, v]) => `  ${JSON.stringify(k)}: ${v}`).join(',\n')}\n}\n`);
}

/// Each weight file to write: {path, component, tensors: [{name, shape, dtype}], headerBytes?,
/// fileBytes?} for the fp16 variant (and fp32 with `fp32`).
export function weightFiles(model, { fp32 = false } = {}) {
  const m = MODELS[model];
  if (!m) throw new Error(`unknown model ${model} (one of ${Object.keys(MODELS).join(', ')})`);
  const files = [];
  if (m.configs) {
    // Derived from configs: SD 1.5's file names, fp16 only, sizes follow from the header model.
    const lists = tensorsFromConfigs(join(ROOT, m.configs), { positionIds: true });
    const names = { text_encoder: 'text_encoder/model.fp16.safetensors', unet: 'unet/diffusion_pytorch_model.fp16.safetensors', vae: 'vae/diffusion_pytorch_model.fp16.safetensors' };
    for (const [c, list] of Object.entries(lists)) files.push({ path: names[c], component: c, tensors: list.map((t) => ({ name: t.name, shape: t.shape, dtype: t.dtype || 'F16' })) });
    return files;
  }
  const pub = JSON.parse(readFileSync(join(ROOT, 'tests/fixtures/published', m.tensors || m.published, 'tensors.json'), 'utf8'));
  for (const [c, comp] of Object.entries(pub.components)) {
    const shapes = m.shapes?.[c] || {};
    for (const [variant, key] of [['fp16_file', 'dtype_fp16_file'], ...(fp32 ? [['fp32_file', 'dtype_fp32_file']] : [])]) {
      const f = comp[variant];
      if (!f) continue;
      const tensors = comp.tensors.map((t) => ({ name: (variant === 'fp32_file' && t.name_in_fp32_file) || t.name, shape: shapes[t.name] || t.shape, dtype: t[key] }));
      files.push({ path: f.path, component: c, tensors, headerBytes: f.header_bytes, fileBytes: f.file_bytes });
    }
  }
  return files;
}

/// The safetensors header (8-byte length excluded) and data layout of a file: tensors sorted by
/// dtype (I64 first) then name, `__metadata__` first, JSON space-padded to a multiple of 8 —
/// or to exactly `headerBytes`, the published header's size, where the list gives one.
export function planFile(file) {
  const sorted = [...file.tensors].sort((a, b) => DTYPE_RANK.indexOf(b.dtype) - DTYPE_RANK.indexOf(a.dtype) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  let offset = 0;
  const parts = ['"__metadata__":{"format":"pt"}'];
  const layout = [];
  for (const t of sorted) {
    const n = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    if (!DTYPE_BYTES[t.dtype]) throw new Error(`${file.path}: ${t.name} has dtype ${t.dtype}`);
    parts.push(`${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":${JSON.stringify(t.shape)},"data_offsets":[${offset},${offset + n}]}`);
    layout.push({ ...t, start: offset, bytes: n });
    offset += n;
  }
  let json = `{${parts.join(',')}}`;
  const natural = json.length;
  if (file.headerBytes === undefined) json += ' '.repeat((8 - (json.length % 8)) % 8);
  else {
    // Files written before safetensors 0.3 have an unpadded header (not a multiple of 8).
    if (json.length > file.headerBytes) throw new Error(`${file.path}: our header is ${json.length} B, the published one ${file.headerBytes} B`);
    json += ' '.repeat(file.headerBytes - json.length);
  }
  return { header: Buffer.from(json), naturalHeader: natural, layout, dataBytes: offset, size: 8 + json.length + offset };
}

// ---- random values -----------------------------------------------------------------------

/// xorshift128 seeded through splitmix32 from (seed, path): fast, deterministic, and each file
/// independent of the others (so --fp32 does not change the fp16 files).
function rng(seed, path) {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (const ch of Buffer.from(path)) h = Math.imul(h ^ ch, 0x01000193) >>> 0;
  const split = () => {
    h = (h + 0x9e3779b9) >>> 0;
    let z = h;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0 || 1;
  };
  const s = Uint32Array.of(split(), split(), split(), split());
  return s;
}

/// Fills `words` with random floats of `dtype`, |x| < 0.125, never NaN/Inf/denormal:
/// F16: sign + mantissa random, exponent 8..11 (2^-7..2^-4); F32: exponent 120..123.
function fillFloats(words, dtype, s) {
  let [x, y, z, w] = s;
  const n = words.length;
  if (dtype === 'F16' || dtype === 'BF16') {
    const bf = dtype === 'BF16';
    for (let i = 0; i < n; i++) {
      const t = x ^ (x << 11);
      x = y; y = z; z = w;
      w = (w ^ (w >>> 19) ^ t ^ (t >>> 8)) >>> 0;
      // Two halves per word. bf16: exponent 8 bits (120..123), 7 mantissa bits.
      words[i] = bf
        ? ((w & 0x807f807f) | ((((w >>> 7) & 0x00030003) + 0x00780078) << 7)) >>> 0
        : ((w & 0x83ff83ff) | ((((w >>> 10) & 0x00030003) + 0x00080008) << 10)) >>> 0;
    }
  } else if (dtype === 'F32') {
    for (let i = 0; i < n; i++) {
      const t = x ^ (x << 11);
      x = y; y = z; z = w;
      w = (w ^ (w >>> 19) ^ t ^ (t >>> 8)) >>> 0;
      words[i] = ((w & 0x807fffff) | ((120 + ((w >>> 23) & 3)) << 23)) >>> 0;
    }
  } else throw new Error(`no random fill for ${dtype}`);
  s[0] = x; s[1] = y; s[2] = z; s[3] = w;
}

const BLOCK = 16 << 20;

/// Writes one safetensors file; returns its Hub entry (sizes and hashes computed on the way).
export function writeWeights(out, file, seed) {
  const plan = planFile(file);
  const full = join(out, file.path);
  mkdirSync(dirname(full), { recursive: true });
  const hasher = fileHasher(plan.size);
  const fd = openSync(full, 'w');
  try {
    const put = (buf) => {
      hasher.update(buf);
      for (let o = 0; o < buf.length;) o += writeSync(fd, buf, o, buf.length - o);
    };
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(plan.header.length));
    put(len);
    put(plan.header);
    const s = rng(seed, file.path);
    const block = Buffer.alloc(BLOCK);
    const words = new Uint32Array(block.buffer, block.byteOffset, BLOCK / 4);
    // The layout is one I64 run (position_ids = 0..n-1) then one float dtype to the end, so the
    // floats are written as one random stream, block by block.
    let i = 0;
    for (; i < plan.layout.length && plan.layout[i].dtype === 'I64'; i++) {
      const t = plan.layout[i];
      const b = Buffer.alloc(t.bytes);
      for (let k = 0; k < t.bytes / 8; k++) b.writeBigInt64LE(BigInt(k % t.shape[t.shape.length - 1]), k * 8);
      put(b);
    }
    const floats = plan.layout.slice(i);
    const dtype = floats[0]?.dtype;
    if (floats.some((t) => t.dtype !== dtype)) throw new Error(`${file.path}: mixed float dtypes`);
    let left = floats.reduce((a, t) => a + t.bytes, 0);
    while (left > 0) {
      const n = Math.min(left, BLOCK);
      fillFloats(n === BLOCK ? words : words.subarray(0, Math.ceil(n / 4)), dtype, s);
      put(block.subarray(0, n));
      left -= n;
    }
  } finally {
    closeSync(fd);
  }
  return { ...hasher.entry(file.path), plan };
}

function copySmall(out, path, bytes) {
  const full = join(out, path);
  mkdirSync(dirname(full), { recursive: true });
  writeFileSync(full, bytes);
  const h = fileHasher(bytes.length);
  h.update(bytes);
  return h.entry(path);
}

function listSmall(dir, prefix = '') {
  const out = [];
  for (const e of readdirSync(join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...listSmall(dir, rel));
    else if (rel !== 'files.json') out.push(rel);
  }
  return out;
}

/// Writes the whole repo into `out`; returns {files: [hub entries], checks: [{path, size,
/// published, status}]}. DIR/.hf-tree.json is written last.
export function writeRepo(model, out, { seed = 1, fp32 = false, log = console.log } = {}) {
  const m = MODELS[model];
  const pubDir = join(ROOT, 'tools/bench/published', m.published);
  const published = JSON.parse(readFileSync(join(pubDir, 'files.json'), 'utf8')).files;
  mkdirSync(out, { recursive: true });
  rmSync(join(out, TREE_FILE), { force: true }); // incomplete until rewritten
  const entries = [];
  const small = new Map();
  for (const p of listSmall(pubDir)) small.set(p, readFileSync(join(pubDir, p)));
  // The same BPE files for SDXL's tokenizer_2.
  for (const t of ['tokenizer', ...(published['tokenizer_2/vocab.json'] ? ['tokenizer_2'] : [])]) {
    small.set(`${t}/vocab.json`, publishedVocab());
    small.set(`${t}/merges.txt`, readFileSync(join(ROOT, 'tools/reference/clip-tokenizer/merges.txt')));
  }
  if (m.configs) {
    for (const c of ['text_encoder', 'unet', 'vae']) small.set(`${c}/config.json`, readFileSync(join(ROOT, m.configs, c, 'config.json')));
    for (const p of [...small.keys()]) if (/^(safety_checker|feature_extractor)\//.test(p)) small.delete(p); // no weights for them
  }
  for (const [p, bytes] of [...small].sort()) entries.push(copySmall(out, p, bytes));
  const t0 = Date.now();
  let bytes = 0;
  for (const f of weightFiles(model, { fp32 })) {
    const t = Date.now();
    const e = writeWeights(out, f, seed);
    bytes += e.size;
    log(`  wrote ${f.path}: ${e.size} B, ${f.tensors.length} tensors, header ${e.plan.header.length} B (JSON ${e.plan.naturalHeader} B + spaces), ${((Date.now() - t) / 1000).toFixed(1)} s`);
    delete e.plan;
    entries.push(e);
  }
  entries.sort((a, b) => (a.path < b.path ? -1 : 1));
  const checks = entries.map((e) => {
    const p = m.configs && !/tokenizer\/|scheduler\/|model_index/.test(e.path) ? null : published[e.path];
    const status = !p || p.bytes === null || p.bytes === undefined ? 'no published size'
      : p.bytes !== e.size ? 'SIZE DIFFERS'
        : p.sha256 && !/safetensors$/.test(e.path) ? (p.sha256 === e.sha256 ? 'same size and sha256' : 'same size, OTHER sha256') : 'same size';
    return { path: e.path, size: e.size, published: p?.bytes ?? null, status };
  });
  const commit = createHash('sha1').update(`synthetic ${model} ${seed} ${GENERATOR}\n${entries.map((e) => `${e.path} ${e.oid}`).join('\n')}`).digest('hex');
  writeFileSync(join(out, TREE_FILE), JSON.stringify({ repo: m.repo, model, seed, fp32, generator: GENERATOR, commit, files: entries }, null, 1));
  log(`  ${(bytes / 1e9).toFixed(2)} GB of weights in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const written = new Set(entries.map((e) => e.path));
  const skipped = m.configs ? [] : Object.keys(published).filter((p) => !written.has(p));
  return { repo: m.repo, commit, files: entries, checks, skipped };
}

/// True when `out` holds a complete repo written with these parameters (files as listed).
export function isComplete(out, model, { seed = 1, fp32 = false } = {}) {
  try {
    const t = JSON.parse(readFileSync(join(out, TREE_FILE), 'utf8'));
    if (t.model !== model || t.seed !== seed || !!t.fp32 !== !!fp32 || t.generator !== GENERATOR) return false;
    return t.files.every((f) => existsSync(join(out, f.path)) && statSync(join(out, f.path)).size === f.size);
  } catch {
    return false;
  }
}

function parseArgs(argv) {
  const o = { seed: 1, fp32: false, quiet: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--model') o.model = argv[++i];
    else if (a === '--out') o.out = resolve(argv[++i]);
    else if (a === '--seed') o.seed = Number(argv[++i]);
    else if (a === '--fp32') o.fp32 = true;
    else if (a === '--quiet') o.quiet = true;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.model || !o.out) throw new Error('usage: synthetic-repo.mjs --model sd-turbo|sd15|mid-arch --out DIR [--fp32] [--seed N]');
  return o;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const o = parseArgs(process.argv.slice(2));
  console.log(`writing a synthetic ${MODELS[o.model]?.repo || o.model} into ${o.out}`);
  const r = writeRepo(o.model, o.out, { seed: o.seed, fp32: o.fp32, log: o.quiet ? () => {} : console.log });
  console.log('\nfile                                                  bytes        published    check');
  for (const c of r.checks) console.log(`${c.path.padEnd(52)} ${String(c.size).padStart(12)} ${String(c.published ?? '-').padStart(12)}  ${c.status}`);
  if (r.skipped.length) console.log(`\npublished, not written (not read by the page, or no tensor list): ${r.skipped.join(', ')}`);
  const bad = r.checks.filter((c) => /DIFFERS|OTHER/.test(c.status));
  console.log(bad.length ? `\n${bad.length} file(s) differ from the published sizes/hashes` : '\nevery published size matches');
  process.exit(bad.length ? 1 : 0);
}
