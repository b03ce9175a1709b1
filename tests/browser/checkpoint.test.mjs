// Single-file checkpoints in the page (www/checkpoint.js → convert.js → the wasm Converter): a
// local .safetensors chosen with the file picker is converted where it lies into exactly the
// package `webdiffusion convert --model FILE --config BASE` writes, generates the CLI's image,
// and loads again on a returning visit with nothing read or fetched but IndexedDB; one dropped
// on the page (SD 2, OpenCLIP's fused q/k/v) loads and generates too, and by URL; a checkpoint
// of the other family is refused in one line.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ARTIFACTS, ROOT, diffWithPng, launchBrowser, newProfile, openPage, serveApp, storedModel as stored } from './harness.mjs';
import { cliBinary } from './native.mjs';

const FIXTURES = join(ROOT, 'tests/fixtures');
const REQUEST = { prompt: 'a red circle', negativePrompt: '', steps: 2, guidance: 7.5, width: 64, height: 64, scheduler: 'euler', seed: 11 };
const SMALL = ['model_index.json', 'scheduler/scheduler_config.json', 'tokenizer/vocab.json', 'tokenizer/merges.txt',
  'tokenizer/tokenizer_config.json', 'tokenizer/special_tokens_map.json', 'text_encoder/config.json', 'unet/config.json', 'vae/config.json'];

/// A base model entry for the page: the tiny folder served by the app, offered to checkpoints.
const baseEntry = (url, model, family) => ({
  id: `base-${model}`, name: `base ${model}`, url: `${url}fixtures/${model}/`, format: 'diffusers', quant: 'q4_0',
  checkpointBase: family, defaults: { width: 64, height: 64, steps: 2, guidance: 7.5, scheduler: 'euler' },
  files: SMALL.map((path) => ({ path })),
});

const ready = (page) => page.waitForFunction(() => window.webdiffusion && window.webdiffusion.state.ready, null, { timeout: 120_000 });
const settled = (page) => page.waitForFunction(() => !window.webdiffusion.state.loading && (window.webdiffusion.state.modelLoaded || window.webdiffusion.state.lastError), null, { timeout: 300_000 });

test('a local checkpoint picked in the page converts to the CLI\'s package and generates the CLI\'s image, offline on return', { timeout: 600_000 }, async () => {
  const file = join(FIXTURES, 'tiny-sd1-single/model.safetensors');
  const pkg = mkdtempSync(join(tmpdir(), 'webdiffusion-ckpt-'));
  execFileSync(cliBinary(), ['convert', '--model', file, '--config', join(FIXTURES, 'tiny-sd1'), '--out', pkg, '--quant', 'q4_0'], { stdio: 'pipe' });
  const native = JSON.parse(readFileSync(join(pkg, 'manifest.json'), 'utf8'));
  execFileSync(cliBinary(), ['generate', '--model', pkg, '--prompt', REQUEST.prompt, '--negative-prompt', '', '--steps', '2', '--guidance', '7.5',
    '--scheduler', 'euler', '--width', '64', '--height', '64', '--seed', '11', '--precision', 'f32', '--out', join(ARTIFACTS, 'checkpoint-native.png')], { stdio: 'pipe' });
  const { server, url } = await serveApp();
  const profile = newProfile();
  let browser = await launchBrowser(profile);
  try {
    let { page, logs } = await openPage(browser);
    await page.goto(`${url}?sw=0&chunk=65536`);
    await ready(page);
    await page.evaluate((e) => window.webdiffusion.addEntry(e), baseEntry(url, 'tiny-sd1', 'SD 1.x'));
    await page.click('#checkpoints summary');
    await page.selectOption('#ckpt-base', 'base-tiny-sd1');
    await page.setInputFiles('#ckpt-file', file);
    await settled(page);
    let s = await page.evaluate(() => window.webdiffusion.state);
    assert.equal(s.lastError, null, logs.join('\n'));
    assert.equal(s.model.name, 'model');
    assert.equal(s.download.bytesFetched < 4 << 20, true, `only the base's small files are fetched (${s.download.bytesFetched} bytes)`);
    const id = s.model.id;
    const { sizes, manifest } = await stored(page, id);
    assert.deepEqual(JSON.parse(manifest), native, 'the page converts the file into exactly the package the CLI writes');
    assert.deepEqual(Object.keys(sizes).filter((p) => p.endsWith('.safetensors')), [], 'the checkpoint itself is not stored');
    const g = await page.evaluate((r) => window.webdiffusion.generate(r), REQUEST);
    assert.equal(g.cancelled, false);
    const diff = (await diffWithPng(page, '/artifacts/checkpoint-native.png')).max;
    console.log(`local checkpoint: page vs CLI max pixel difference ${diff}/255; ${Object.values(sizes).reduce((a, b) => a + b, 0)} bytes stored`);
    assert.ok(diff <= 1, `page and CLI images differ by ${diff}/255`);
    await browser.close();

    // A returning visit: the model is on this device; nothing is read from the file or fetched.
    browser = await launchBrowser(profile);
    ({ page, logs } = await openPage(browser));
    await page.goto(`${url}?sw=0`);
    await ready(page);
    // A returning visitor starts with the last model, from this device.
    await page.waitForFunction((m) => window.webdiffusion.state.model?.id === m || window.webdiffusion.state.lastError, id, { timeout: 120_000 });
    s = await page.evaluate(() => window.webdiffusion.state);
    assert.equal(s.lastError, null, logs.join('\n'));
    assert.equal(s.download.bytesFetched, 0);
    await page.evaluate((r) => window.webdiffusion.generate(r), REQUEST);
    assert.ok((await diffWithPng(page, '/artifacts/checkpoint-native.png')).max <= 1, 'the cached checkpoint gives the same image');
  } finally {
    await browser.close();
    server.close();
  }
});

test('an SD 2 checkpoint dropped on the page loads and generates; one of the other family is refused in one line', { timeout: 600_000 }, async () => {
  const { server, url } = await serveApp();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    await page.goto(`${url}?sw=0`);
    await ready(page);
    await page.evaluate((e) => window.webdiffusion.addEntry(e), baseEntry(url, 'tiny-sd2', 'SD 2.x'));
    // Chosen while the panel is closed, as a returning user's choice stays: the drop opens it.
    await page.evaluate(() => { document.getElementById('ckpt-base').value = 'base-tiny-sd2'; });
    const drop = async (fixture) => {
      // A drop as the browser delivers one: a DataTransfer holding the file, on the page body.
      const dt = await page.evaluateHandle(async (u) => {
        const bytes = await (await fetch(u)).arrayBuffer();
        const d = new DataTransfer();
        d.items.add(new File([bytes], 'my-model.safetensors'));
        return d;
      }, `/fixtures/${fixture}/model.safetensors`);
      await page.dispatchEvent('body', 'dragover', { dataTransfer: dt });
      await page.dispatchEvent('body', 'drop', { dataTransfer: dt });
      await page.waitForFunction(() => window.webdiffusion.state.loading, null, { timeout: 10_000 }).catch(() => {});
      await settled(page);
      return page.evaluate(() => window.webdiffusion.state);
    };
    const s = await drop('tiny-sd2-single');
    assert.equal(s.lastError, null, logs.join('\n'));
    assert.equal(s.model.name, 'my-model');
    assert.equal(await page.evaluate(() => document.getElementById('checkpoints').open), true);
    const g = await page.evaluate((r) => window.webdiffusion.generate(r), REQUEST);
    assert.equal(g.cancelled, false);
    const img = await page.evaluate(() => window.webdiffusion.state.lastImage);
    assert.equal(img.width, 64);

    // The same file by URL: streamed in Range requests (its size from a one-byte answer).
    await page.fill('#ckpt-url', `${url}fixtures/tiny-sd2-single/model.safetensors`);
    await page.click('#ckpt-add');
    await settled(page);
    const byUrl = await page.evaluate(() => window.webdiffusion.state);
    assert.equal(byUrl.lastError, null, logs.join('\n'));
    assert.match(byUrl.model.id, /^ckpt:/);
    const size = statSync(join(FIXTURES, 'tiny-sd2-single/model.safetensors')).size;
    assert.ok(byUrl.download.bytesFetched >= size, `fetched ${byUrl.download.bytesFetched} of ${size}`);

    const bad = await drop('tiny-sd1-single');
    const status = await page.textContent('#model-status');
    assert.match(status, /my-model\.safetensors is SD 1\.x/, status);
    assert.ok(!status.includes('\n'), 'one line');
    assert.ok(bad.lastError, 'the failure is recorded');
  } finally {
    await browser.close();
    server.close();
  }
});
