// img2img in the page (www/init-image.js → worker.js → Model.loadEncoder + generate's
// initImage): a PNG picked in the img2img panel gives the CLI's `--init-image` image within
// 1/255; "Use as input" makes the finished image the next start, pixel for pixel; a dropped or
// pasted image becomes the start too. Several images
// per prompt: seeds s, s+1, … (A1111's order) run as one batch, each in the gallery.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ARTIFACTS, ROOT, diffWithPng, launchBrowser, openPage, serveApp } from './harness.mjs';
import { cliBinary } from './native.mjs';

const MODEL = join(ROOT, 'tests/fixtures/tiny-sd1');
const REQUEST = { prompt: 'a blue square', negativePrompt: '', steps: 4, guidance: 7.5, width: 64, height: 64, scheduler: 'euler', seed: 11 };
const STRENGTH = 0.6;

const cli = (extra, out) => execFileSync(cliBinary(), ['generate', '--model', MODEL, '--negative-prompt', '', '--guidance', '7.5', '--scheduler', 'euler',
  '--width', '64', '--height', '64', '--precision', 'f32', ...extra, '--out', join(ARTIFACTS, out)], { stdio: 'pipe' });

test('img2img from a picked PNG is the CLI\'s --init-image image; a result can be the next input', { timeout: 600_000 }, async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  cli(['--prompt', 'a red circle', '--steps', '3', '--seed', '3'], 'img2img-init.png');
  cli(['--prompt', REQUEST.prompt, '--steps', '4', '--seed', '11', '--init-image', join(ARTIFACTS, 'img2img-init.png'), '--strength', String(STRENGTH)], 'img2img-native.png');
  const { server, url } = await serveApp();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    await page.goto(`${url}?sw=0`);
    await page.waitForFunction(() => window.webdiffusion && window.webdiffusion.state.ready, null, { timeout: 120_000 });
    const entry = { id: 'tiny-sd1', name: 'tiny-sd1', url: `${url}fixtures/tiny-sd1/`, format: 'diffusers', quant: 'none' };
    const err = await page.evaluate((e) => window.webdiffusion.loadEntry(e, { quant: 'none' }).then(() => null, (x) => String(x.message || x)), entry);
    assert.equal(err, null, logs.join('\n'));

    await page.click('#img2img summary');
    await page.setInputFiles('#init-file', join(ARTIFACTS, 'img2img-init.png'));
    await page.waitForSelector('#init-preview:not([hidden])');
    await page.$eval('#init-strength', (el, v) => { el.value = String(v); el.dispatchEvent(new Event('input')); }, STRENGTH);
    const g = await page.evaluate((r) => window.webdiffusion.generate(r).then((x) => x, (e) => ({ error: String(e.message || e) })), REQUEST);
    assert.equal(g.error, undefined, logs.join('\n'));
    const diff = (await diffWithPng(page, '/artifacts/img2img-native.png')).max;
    console.log(`img2img (strength ${STRENGTH}): page vs CLI max pixel difference ${diff}/255`);
    assert.ok(diff <= 1, `page and CLI img2img differ by ${diff}/255`);

    // The finished image as the next input: the panel holds exactly its pixels.
    await page.click('#use-as-input');
    const same = await page.evaluate(() => {
      const px = (id) => { const c = document.getElementById(id); return c.getContext('2d').getImageData(0, 0, c.width, c.height).data; };
      const [a, b] = [px('init-preview'), px('output')];
      return a.length === b.length && a.every((v, i) => v === b[i]);
    });
    assert.ok(same, 'the starting image is the result, pixel for pixel');
    // A dropped image and a pasted one become the start too (the PNG as bytes in the page).
    for (const how of ['drop', 'paste']) {
      await page.click('#init-clear');
      await page.waitForSelector('#init-preview', { state: 'hidden' });
      const dt = await page.evaluateHandle(async () => {
        const blob = await (await fetch('/artifacts/img2img-init.png')).blob();
        const d = new DataTransfer();
        d.items.add(new File([blob], 'start.png', { type: 'image/png' }));
        return d;
      });
      if (how === 'drop') {
        await page.dispatchEvent('body', 'dragover', { dataTransfer: dt });
        await page.dispatchEvent('body', 'drop', { dataTransfer: dt });
      } else {
        await page.evaluate((d) => document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: d, bubbles: true })), dt);
      }
      await page.waitForSelector('#init-preview:not([hidden])');
      assert.match(await page.textContent('#init-info'), /^64×64/, `${how}: the image is the start`);
    }
    await page.click('#use-as-input');
    const first = await page.evaluate(() => window.webdiffusion.state.lastImage.rgba);
    const again = await page.evaluate((r) => window.webdiffusion.generate(r).then((x) => x, (e) => ({ error: String(e.message || e) })), REQUEST);
    assert.equal(again.error, undefined);
    assert.notEqual(await page.evaluate(() => window.webdiffusion.state.lastImage.rgba), first, 'another start gives another image');
  } finally {
    await browser.close();
    server.close();
  }
});

test('4 images per prompt: one batch, seeds s..s+3, each its own seed\'s image, each in the gallery', { timeout: 600_000 }, async () => {
  const { server, url } = await serveApp();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    await page.goto(`${url}?sw=0`);
    await page.waitForFunction(() => window.webdiffusion && window.webdiffusion.state.ready, null, { timeout: 120_000 });
    const entry = { id: 'tiny-sd1', name: 'tiny-sd1', url: `${url}fixtures/tiny-sd1/`, format: 'diffusers', quant: 'none' };
    assert.equal(await page.evaluate((e) => window.webdiffusion.loadEntry(e, { quant: 'none' }).then(() => null, (x) => String(x.message || x)), entry), null, logs.join('\n'));
    const gen = (r) => page.evaluate((q) => window.webdiffusion.generate(q).then((x) => x, (e) => ({ error: String(e.message || e) })), r);
    const seed = 70;
    const four = await gen({ ...REQUEST, seed, count: 4 });
    assert.equal(four.error, undefined, logs.join('\n'));
    assert.deepEqual(four.seeds, [seed, seed + 1, seed + 2, seed + 3]);
    const steps = await page.evaluate(() => window.webdiffusion.state.steps);
    assert.deepEqual(steps.map(([, total]) => total), [4, 4, 4, 4], 'one U-Net batch: 4 steps in all, not 16');
    const gallery = await page.evaluate(async () => {
      const db = await new Promise((ok) => { const r = indexedDB.open('webdiffusion'); r.onsuccess = () => ok(r.result); });
      const items = await new Promise((ok) => { const r = db.transaction('gallery').objectStore('gallery').getAll(); r.onsuccess = () => ok(r.result); });
      return Promise.all(items.map(async (it) => ({ seed: it.request.seed, parameters: it.parameters, png: Array.from(new Uint8Array(await it.png.arrayBuffer())) })));
    });
    assert.deepEqual(gallery.map((g) => g.seed), [seed, seed + 1, seed + 2, seed + 3], 'each image is in the gallery with its seed');
    for (const g of gallery) assert.match(g.parameters, new RegExp(`Seed: ${g.seed},`));
    // Image k of the batch is what seed s+k gives alone (the batch only shares the dispatches).
    const decode = (png) => page.evaluate(async (bytes) => {
      const bitmap = await createImageBitmap(new Blob([new Uint8Array(bytes)], { type: 'image/png' }));
      const ctx = new OffscreenCanvas(bitmap.width, bitmap.height).getContext('2d');
      ctx.drawImage(bitmap, 0, 0);
      return Array.from(ctx.getImageData(0, 0, bitmap.width, bitmap.height).data);
    }, png);
    for (const k of [0, 3]) {
      const one = await gen({ ...REQUEST, seed: seed + k, count: 1 });
      assert.equal(one.error, undefined);
      const alone = Array.from(Buffer.from(await page.evaluate(() => window.webdiffusion.state.lastImage.rgba), 'base64'));
      const batched = await decode(gallery[k].png);
      const worst = alone.reduce((m, v, i) => Math.max(m, Math.abs(v - batched[i])), 0);
      console.log(`batch image ${k} (seed ${seed + k}) vs alone: ${worst}/255`);
      assert.ok(worst <= 1, `seed ${seed + k}: batch and alone differ by ${worst}/255`);
    }
  } finally {
    await browser.close();
    server.close();
  }
});
