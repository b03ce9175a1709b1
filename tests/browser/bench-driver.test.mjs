// The real-size browser benchmark's driver (tools/bench/browser-bench.mjs) end to end on the
// tiny fixture, against the stub engine (tools/bench/stub-pkg: same API as the wasm build, no
// GPU work), so the driver's page flow — custom URL through the HF stand-in, cold visit,
// every server stopped, returning visit from the service worker and IndexedDB — keeps working
// as the page changes. Its timings are not the engine's. One Chromium, a few seconds.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './harness.mjs';

test('the benchmark driver: cold visit through the HF stand-in, returning visit with every server stopped', { timeout: 300_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'webdiffusion-bench-driver-'));
  const json = join(dir, 'bench.json');
  try {
    let out = '';
    try {
      out = execFileSync(process.execPath, ['tools/bench/browser-bench.mjs', '--model', 'tiny', '--pkg', 'tools/bench/stub-pkg', '--quant', 'none', '--timeout-min', '3', '--json', json],
        { cwd: ROOT, encoding: 'utf8', stdio: 'pipe', timeout: 280_000 });
    } catch (e) {
      assert.fail(`the driver failed (${e.status}):\n${e.stdout}\n${e.stderr}`);
    }
    const r = JSON.parse(readFileSync(json, 'utf8'));
    assert.equal(r.ok, true, out);
    assert.equal(r.checks.samePixels, true);
    assert.equal(r.checks.returningWeightRequests, 0);
    // The stub cannot quantize, so this runs with quant none: the returning visit then loads
    // by the model picker (the page's own resume would use q4_0, the URL model's default).
    assert.equal(r.returning.resumedByPage, false);
    assert.equal(r.returning.model.quant, 'none');
    assert.equal(r.first.model.quant, 'none');
    // The first visit went through the 302 to the CDN origin for every weight file.
    const weights = ['text_encoder/model.fp16.safetensors', 'unet/diffusion_pytorch_model.safetensors', 'vae/diffusion_pytorch_model.safetensors']
      .reduce((n, f) => n + statSync(join(ROOT, 'tests/fixtures/tiny-sd1', f)).size, 0);
    assert.ok(r.server.cdn.weightBytes >= weights, `CDN bytes ${r.server.cdn.weightBytes} < ${weights}`);
    assert.ok(r.server.hub.byStatus[302] >= 3);
    assert.ok(r.first.storage.usage >= weights, 'IndexedDB holds the weights');
    assert.ok(r.first.phases.downloadS > 0 && r.first.phases.afterDownloadS >= 0);
    assert.ok(r.first.phases.segments.some((s) => s.key === 'worker:loaded'));
    assert.ok(r.first.rss.peakBytes > 50e6 && r.returning.rss.peakBytes > 50e6, 'RSS sampled');
    assert.match(r.first.generate.pixelsSha256, /^[0-9a-f]{64}$/);
    assert.match(out, /same pixels as the first visit\s+yes/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
