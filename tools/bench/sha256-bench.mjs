// SHA-256 throughput of the engine's wasm `Sha256` (what the page hashes downloads with) against
// node's native one, over random bytes fed in 1 MiB updates as download-verify.js feeds them.
// Needs pkg/ (scripts/build-wasm.sh). Usage: node tools/bench/sha256-bench.mjs [MiB]
import fs from 'node:fs';
import crypto from 'node:crypto';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const m = await import(pathToFileURL(path.join(root, 'pkg/webdiffusion.js')).href);
await m.default({ module_or_path: fs.readFileSync(path.join(root, 'pkg/webdiffusion_bg.wasm')) });
const mib = Number(process.argv[2] || 256);
const buf = crypto.randomBytes(mib << 20);
let t = performance.now();
const h = new m.Sha256();
for (let o = 0; o < buf.length; o += 1 << 20) h.update(buf.subarray(o, o + (1 << 20)));
const ours = h.hex();
h.free();
const wasm = performance.now() - t;
t = performance.now();
const want = crypto.createHash('sha256').update(buf).digest('hex');
const native = performance.now() - t;
if (ours !== want) throw new Error(`wasm digest ${ours} != ${want}`);
console.log(`node ${process.version}, ${mib} MiB: wasm Sha256 ${(mib / wasm * 1000).toFixed(0)} MiB/s, node:crypto ${(mib / native * 1000).toFixed(0)} MiB/s`);
