// img2img in the page (www/init-image.js → worker.js → Model.loadEncoder + generate's
// initImage): a PNG picked in the img2img panel gives the CLI's `--init-image` image within
// 1/255; "Use as input" makes the finished image the next start, pixel for pixel.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ARTIFACTS, ROOT, launchBrowser, openPage, serveApp } from './harness.mjs';
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
    const diff = await page.evaluate(async () => {
      const img = window.webdiffusion.state.lastImage;
      const rgba = Uint8Array.from(atob(img.rgba), (c) => c.charCodeAt(0));
      const bitmap = await createImageBitmap(await (await fetch('/artifacts/img2img-native.png')).blob());
      const ctx = new OffscreenCanvas(bitmap.width, bitmap.height).getContext('2d');
      ctx.drawImage(bitmap, 0, 0);
      const native = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
      let max = 0;
      for (let i = 0; i < native.length; i++) if (i % 4 !== 3) max = Math.max(max, Math.abs(native[i] - rgba[i]));
      return max;
    });
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
    const first = await page.evaluate(() => window.webdiffusion.state.lastImage.rgba);
    const again = await page.evaluate((r) => window.webdiffusion.generate(r).then((x) => x, (e) => ({ error: String(e.message || e) })), REQUEST);
    assert.equal(again.error, undefined);
    assert.notEqual(await page.evaluate(() => window.webdiffusion.state.lastImage.rgba), first, 'another start gives another image');
  } finally {
    await browser.close();
    server.close();
  }
});
