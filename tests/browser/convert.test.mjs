// A diffusers repo added by URL and served like Hugging Face (tools/bench/hf-standin.mjs: 302 to
// a CDN origin, Range, the API's sha256 listing) is converted while it streams (www/convert.js):
// IndexedDB ends up holding exactly the package `webdiffusion convert` writes, never the
// source files; a download cut mid-file resumes from its checkpoint after a reload; a corrupt
// byte is caught by the file's sha256 from the API; a gone host falls back to a mirror.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, launchBrowser, openPage, serveApp, storedModel as stored } from './harness.mjs';
import { cliBinary } from './native.mjs';
import { startHfStandin } from '../../tools/bench/hf-standin.mjs';

const MODEL_DIR = join(ROOT, 'tests/fixtures/tiny-sd1');
const UNET = 'unet/diffusion_pytorch_model.safetensors';
const CHUNK = 1 << 16; // so one file spans many requests and checkpoints (every 8 chunks)
const REQUEST = { prompt: 'a red circle', negativePrompt: '', steps: 2, guidance: 7.5, width: 64, height: 64, scheduler: 'euler', seed: 11 };

const ready = (page) => page.waitForFunction(() => window.webdiffusion && window.webdiffusion.state.ready, null, { timeout: 120_000 });
const load = (page, url, quant = 'q4_0') => page.evaluate(([u, q]) => window.webdiffusion.load(u, { quant: q }).then(() => null, (e) => String(e.message || e)), [url, quant]);

/// The package `webdiffusion convert` writes for the fixture.
function nativePackage(dir = MODEL_DIR, quant = 'q4_0') {
  const out = mkdtempSync(join(tmpdir(), 'webdiffusion-convert-'));
  execFileSync(cliBinary(), ['convert', '--model', dir, '--out', out, '--quant', quant], { stdio: 'pipe' });
  return JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8'));
}

// tiny-sdxl also has text_encoder_2/ and tokenizer_2/, which the page finds in the Hub listing;
// it streams into q3_0, SDXL's default (the wasm's 3-bit fit against the native one).
const STREAMED = [
  ['tiny-sd1', 'q4_0', ['unet/diffusion_pytorch_model.safetensors', 'text_encoder/model.fp16.safetensors', 'vae/diffusion_pytorch_model.safetensors']],
  ['tiny-sdxl', 'q3_0', ['unet/diffusion_pytorch_model.fp16.safetensors', 'text_encoder/model.fp16.safetensors',
    'text_encoder_2/model.fp16.safetensors', 'vae/diffusion_pytorch_model.fp16.safetensors']],
];
for (const [model, quant, weights] of STREAMED) {
  test(`${model}: a repo served like Hugging Face is converted while it streams into exactly the ${quant} package convert writes`, { timeout: 600_000 }, async () => {
    const dir = join(ROOT, 'tests/fixtures', model);
    const native = nativePackage(dir, quant);
    assert.ok(Object.values(native.tensors).some((t) => t.dtype === quant), `the ${quant} package holds ${quant} tensors`);
    const hf = await startHfStandin({ dir, repo: `test/${model}` });
    const { server: app, url } = await serveApp();
    const browser = await launchBrowser();
    try {
      const { page, logs } = await openPage(browser);
      await page.goto(`${url}?sw=0&chunk=${CHUNK}`);
      await ready(page);
      assert.equal(await load(page, hf.resolveBase, quant), null, logs.join('\n'));
      const s = await page.evaluate(() => window.webdiffusion.state);
      const { sizes, manifest } = await stored(page, `url:${hf.resolveBase}`);
      assert.ok(manifest, 'a package manifest is stored');
      assert.deepEqual(JSON.parse(manifest), native, 'the streamed conversion equals `webdiffusion convert` (every tensor and shard sha256)');
      assert.deepEqual(Object.keys(sizes).filter((p) => p.endsWith('.safetensors')), [], 'no source weights are stored');
      const source = weights.reduce((n, f) => n + statSync(join(dir, f)).size, 0);
      assert.ok(s.download.bytesFetched >= source, `fetched ${s.download.bytesFetched} of ${source} source bytes`);
      assert.ok(s.download.workers >= 1, `quantized by conversion workers (${s.download.workers})`);
      const g = await page.evaluate((r) => window.webdiffusion.generate(r), REQUEST);
      assert.equal(g.cancelled, false);
      console.log(`${model} streamed conversion: ${Object.values(sizes).reduce((a, b) => a + b, 0)} bytes stored for ${source} source bytes, ` +
        `download+convert ${s.timings.downloadMs} ms, load ${s.timings.loadMs} ms, wasm heap ${s.wasmHeapBytes}`);
    } finally {
      await browser.close();
      app.close();
      await hf.close();
    }
  });
}

test('a conversion cut mid-file resumes from its checkpoint after a reload', { timeout: 600_000 }, async () => {
  const native = nativePackage();
  const size = statSync(join(MODEL_DIR, UNET)).size;
  const cutFrom = 12 * CHUNK; // past the first checkpoint of the U-Net (every 8 chunks)
  const hf = await startHfStandin({ dir: MODEL_DIR, repo: 'test/tiny-sd1', cutAfter: { path: UNET, bytes: 100, from: cutFrom, times: Infinity } });
  const { server: app, url } = await serveApp();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    await page.goto(`${url}?sw=0&chunk=${CHUNK}`);
    await ready(page);
    const err = await load(page, hf.resolveBase);
    assert.ok(err && /unet/i.test(err), `the cut download fails, naming the file: ${err}`);
    hf.setFaults({});
    hf.resetStats();
    await page.reload();
    await ready(page);
    assert.equal(await load(page, hf.resolveBase), null, logs.join('\n'));
    const fetched = await page.evaluate(() => window.webdiffusion.state.download.bytesFetched);
    // The small files (configs, the 1.5 MB tokenizer) are fetched again; of the weights, only
    // the U-Net from its last checkpoint (at most 8 chunks before the cut).
    const small = ['model_index.json', 'scheduler/scheduler_config.json', 'tokenizer/vocab.json', 'tokenizer/merges.txt',
      'tokenizer/tokenizer_config.json', 'tokenizer/special_tokens_map.json', 'text_encoder/config.json', 'unet/config.json', 'vae/config.json']
      .reduce((n, f) => { try { return n + statSync(join(MODEL_DIR, f)).size; } catch { return n; } }, 0);
    const weights = fetched - small;
    assert.ok(weights <= size - cutFrom + 8 * CHUNK, `the resumed visit fetched ${weights} weight bytes; from the cut on the U-Net has ${size - cutFrom}`);
    const { manifest } = await stored(page, `url:${hf.resolveBase}`);
    assert.deepEqual(JSON.parse(manifest), native, 'the resumed conversion equals `webdiffusion convert`');
    console.log(`resumed conversion: ${weights} weight bytes fetched after the reload (U-Net ${size} bytes, cut from ${cutFrom})`);
  } finally {
    await browser.close();
    app.close();
    await hf.close();
  }
});

test('a corrupt byte is caught by the sha256 the Hub API lists, and a gone host falls back to its mirror', { timeout: 600_000 }, async () => {
  const size = statSync(join(MODEL_DIR, UNET)).size;
  const hf = await startHfStandin({ dir: MODEL_DIR, repo: 'test/tiny-sd1', corrupt: { path: UNET, offset: size - 5000, times: Infinity } });
  const { server: app, url } = await serveApp();
  const browser = await launchBrowser();
  try {
    const { page } = await openPage(browser);
    await page.goto(`${url}?sw=0&chunk=${CHUNK}`);
    await ready(page);
    const err = await load(page, hf.resolveBase);
    assert.ok(err && /corrupt/.test(err) && err.includes(UNET), `a corrupt U-Net is refused: ${err}`);
    const { manifest } = await stored(page, `url:${hf.resolveBase}`);
    assert.equal(manifest, null, 'nothing is taken for a whole model');
    hf.setFaults({});
    // A catalog entry whose first host is gone (404) and whose mirror has the files.
    const entry = { id: 'mirrored', name: 'mirrored', url: hf.resolveBase.replace('test/tiny-sd1', 'gone/tiny-sd1'), format: 'diffusers', quant: 'q4_0', mirrors: [hf.resolveBase] };
    const res = await page.evaluate((e) => window.webdiffusion.loadEntry(e).then(() => null, (x) => String(x.message || x)), entry);
    assert.equal(res, null);
    const host = await page.evaluate(() => window.webdiffusion.state.download.host);
    assert.equal(host, new URL(hf.resolveBase).host, 'the page says which host served the files');
  } finally {
    await browser.close();
    app.close();
    await hf.close();
  }
});

test('tiny-sdxl with lowMemory: the text encoders and the U-Net take turns, and make the images loaded whole makes', { timeout: 600_000 }, async () => {
  const dir = join(ROOT, 'tests/fixtures/tiny-sdxl');
  const hf = await startHfStandin({ dir, repo: 'test/tiny-sdxl' });
  const { server: app, url } = await serveApp();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    await page.goto(`${url}?sw=0&chunk=${CHUNK}`);
    await ready(page);
    const entry = (lowMemory) => ({ id: lowMemory ? 'xl-turns' : 'xl-whole', name: 'tiny-sdxl', url: hf.resolveBase, format: 'diffusers', quant: 'q4_0', lowMemory });
    const run = (e) => page.evaluate(async ({ e, request }) => {
      const w = window.webdiffusion;
      await w.loadEntry(e);
      // The page keeps the last image's pixels, base64, in its state.
      const rgba = async (r) => {
        await w.generate(r);
        return Uint8Array.from(atob(w.state.lastImage.rgba), (c) => c.charCodeAt(0));
      };
      const out = { lowMemory: w.state.model && w.state.model.info.lowMemory };
      out.first = Array.from(await rgba(request));
      out.other = Array.from(await rgba({ ...request, prompt: 'a blue square' }));
      return out;
    }, { e, request: { ...REQUEST, steps: 1 } });
    const turns = await run(entry(true));
    assert.equal(turns.lowMemory, true, logs.join('\n'));
    const whole = await run(entry(false));
    assert.equal(whole.lowMemory, false);
    const maxDiff = (a, b) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
    assert.equal(turns.first.length, 64 * 64 * 4);
    // (Reloads and their counts are tested natively: tests/pipeline.rs.)
    console.log(`tiny-sdxl in turns vs whole: ${maxDiff(turns.first, whole.first)}/255, after a prompt change ${maxDiff(turns.other, whole.other)}/255`);
    assert.equal(maxDiff(turns.first, whole.first), 0, 'in turns, the image loaded whole makes');
    assert.equal(maxDiff(turns.other, whole.other), 0, 'after a prompt change too');
    assert.ok(maxDiff(turns.other, turns.first) > 0, 'the prompt matters');
  } finally {
    await browser.close();
    app.close();
    await hf.close();
  }
});
