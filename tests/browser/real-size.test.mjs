// The real-size browser benchmark (tools/bench/browser-bench.mjs), CI-sized: a synthetic
// diffusers repo of the mid-size architecture (0.23 GB of fp16, SD's published layout and
// safetensors headers, random values), served like Hugging Face, added by URL in the page with
// the default q4_0 and the real wasm build: converted while it streams by the conversion
// workers, loaded, used; then a returning visit with every server stopped. The same flow and
// the same checks the SD-Turbo run in BENCHMARKS.md makes, at a size CI can afford.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './harness.mjs';

test('a mid-size repo by URL: converted while streaming, cached small, loaded again offline with the same pixels', { timeout: 900_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'webdiffusion-real-size-'));
  const json = join(dir, 'bench.json');
  try {
    let out = '';
    try {
      out = execFileSync(process.execPath, ['tools/bench/browser-bench.mjs', '--model', 'mid-arch', '--keep-repo', join(dir, 'repo'),
        '--size', '64', '--steps', '1', '--guidance', '0', '--scheduler', 'euler', '--timeout-min', '12', '--json', json],
      { cwd: ROOT, encoding: 'utf8', stdio: 'pipe', timeout: 880_000 });
    } catch (e) {
      assert.fail(`the benchmark failed (${e.status}):\n${e.stdout}\n${e.stderr}`);
    }
    console.log(out.split('\n').filter((l) => !l.startsWith('  ')).join('\n'));
    const r = JSON.parse(readFileSync(json, 'utf8'));
    assert.equal(r.ok, true, out);
    const source = r.repo.bytes;
    assert.ok(source > 200e6, `the repo is the mid-size one (${source} bytes)`);
    assert.equal(r.first.model.quant, 'q4_0');
    assert.ok(r.first.download.workers >= 1, `quantized by conversion workers (${r.first.download.workers})`);
    assert.equal(r.first.download.bytesFetched, source, 'every source byte fetched once');
    // IndexedDB holds the package form (q4_0 matrices, f16 elsewhere), never the fp16 files.
    assert.ok(r.first.storage.indexedDB < 0.5 * source, `IndexedDB ${r.first.storage.indexedDB} of ${source} source bytes`);
    assert.ok(r.first.wasmHeapBytes <= 256 * 2 ** 20, `wasm heap ${r.first.wasmHeapBytes}`);
    assert.equal(r.returning.resumedByPage, true, 'the returning visit loads the model by itself');
    assert.equal(r.checks.returningWeightRequests, 0);
    assert.equal(r.returning.download.bytesFetched, 0);
    assert.equal(r.checks.samePixels, true, 'same seed, same pixels on the returning visit');
    assert.match(out, /same pixels as the first visit\s+yes/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
