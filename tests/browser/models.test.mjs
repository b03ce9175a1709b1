// The SD networks in a real browser: a tiny fixture's text encoder, U-Net and VAE run through the
// wasm build on WebGPU (SwiftShader, f32), compared with diffusers' reference AND with the native
// build's own outputs (`webdiffusion parity --json` on lavapipe) value by value.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { ARTIFACTS, ROOT, launchBrowser, openPage, serveApp } from './harness.mjs';
import { cliBinary } from './native.mjs';

const MODEL = 'tiny-sd2';
// The f32 bound. Native lavapipe stays under 2e-5 (tests/models.rs); SwiftShader's
// transcendentals (exp, sin/cos) are looser, and its U-Net outputs land around 4e-5.
const TOLERANCE = 1e-4;

function listFiles(dir) {
  return readdirSync(dir).flatMap((name) => {
    const full = join(dir, name);
    return statSync(full).isDirectory() ? listFiles(full) : [full];
  });
}

function nativeOutputs() {
  const json = execFileSync(cliBinary(), ['parity', '--model', join(ROOT, 'tests/fixtures', MODEL), '--json'], { maxBuffer: 64 << 20 });
  return JSON.parse(json);
}

test(`${MODEL} text encoder, U-Net and VAE agree with diffusers and with native`, { timeout: 300_000 }, async () => {
  const native = nativeOutputs();
  const dir = join(ROOT, 'tests/fixtures', MODEL);
  const files = listFiles(dir).map((f) => relative(dir, f)).filter((f) => f !== 'reference.json');
  const { server, url } = await serveApp();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    await page.goto(`${url}test/parity.html?model=${MODEL}&files=${files.join(',')}`);
    await page.waitForFunction(() => window.parity && window.parity.done, null, { timeout: 280_000 });
    const result = await page.evaluate(() => window.parity);
    assert.equal(result.error, undefined, `${result.error}\n${logs.join('\n')}`);
    assert.equal(result.outputs.length, native.length);
    for (const [i, o] of result.outputs.entries()) {
      const n = native[i];
      assert.equal(o.name, n.name);
      assert.deepEqual(o.shape, n.shape);
      let vsNative = 0;
      o.values.forEach((v, j) => { vsNative = Math.max(vsNative, Math.abs(v - n.values[j])); });
      console.log(`${o.name}: browser vs diffusers ${o.max_abs_err.toExponential(2)}, native vs diffusers ${n.max_abs_err.toExponential(2)}, browser vs native ${vsNative.toExponential(2)}`);
      assert.ok(o.max_abs_err <= TOLERANCE, `${o.name}: browser vs diffusers ${o.max_abs_err}`);
      assert.ok(vsNative <= TOLERANCE, `${o.name}: browser vs native ${vsNative}`);
    }
    console.log(`browser parity run: ${Math.round(result.ms)} ms`);
  } finally {
    await browser.close();
    server.close();
  }
});

// tiny-sd1 (one text encoder) and tiny-sdxl (two, the U-Net's added conditioning, the
// zeroed negative of force_zeros_for_empty_prompt, the f32 VAE of force_upcast).
for (const model of ['tiny-sd1', 'tiny-sdxl']) {
  test(`${model}: the same seed gives the same image in the browser as natively`, { timeout: 300_000 }, async () => {
    const dir = join(ROOT, 'tests/fixtures', model);
    const files = listFiles(dir).map((f) => relative(dir, f)).filter((f) => !f.startsWith('pipeline/') && !f.startsWith('reference'));
    mkdirSync(ARTIFACTS, { recursive: true });
    const png = `native-${model}-seed-1234.png`;
    const nativePng = join(ARTIFACTS, png);
    const prompt = 'a red circle on a blue background';
    execFileSync(cliBinary(), ['generate', '--model', dir, '--prompt', prompt, '--steps', '3', '--scheduler', 'euler-a',
      '--guidance', '7.5', '--width', '64', '--height', '64', '--seed', '1234', '--precision', 'f32', '--out', nativePng],
    { stdio: 'pipe' });
    const { server, url } = await serveApp();
    const browser = await launchBrowser();
    try {
      const { page, logs } = await openPage(browser);
      const q = new URLSearchParams({ model, files: files.join(','), prompt, steps: '3', scheduler: 'euler-a', seed: '1234', native: `/artifacts/${png}` });
      await page.goto(`${url}test/generate.html?${q}`);
      await page.waitForFunction(() => window.generation && window.generation.done, null, { timeout: 280_000 });
      const g = await page.evaluate(() => window.generation);
      assert.equal(g.error, undefined, `${g.error}\n${logs.join('\n')}`);
      assert.deepEqual(g.steps, [[0, 3], [1, 3], [2, 3]], 'a progress callback per step');
      assert.ok(g.rgbaMatches, 'RGBA output is the RGB image, opaque');
      console.log(`${model} seed 1234, euler-a, 3 steps: browser vs native max pixel difference ${g.maxDiff}/255`);
      assert.ok(g.maxDiff <= 1, `${model}: browser and native images differ by ${g.maxDiff}/255`);
    } finally {
      await browser.close();
      server.close();
    }
  });
}
