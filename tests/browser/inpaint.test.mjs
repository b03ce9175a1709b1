// Inpainting and outpainting in the page (www/mask-editor.js, init-image.js → the engine's
// initImage.mask / outpaint): a mask painted through the editor's own pointer events on the
// 9-channel tiny inpainting model is the mask the CLI reads from the page's "Save mask" PNG, and
// the page's image is the CLI's `--init-image --mask` image within 1/255; outpainting by 64 px
// grows the image and keeps the original's pixels where the blurred seam does not reach; the
// editor on a 375 px phone screen is saved as a screenshot (test-artifacts/mask-editor-phone.png).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ARTIFACTS, ROOT, launchBrowser, openPage, paintStroke, serveApp } from './harness.mjs';
import { cliBinary } from './native.mjs';

const FIXTURES = join(ROOT, 'tests/fixtures');
const REQUEST = { prompt: 'a blue square', negativePrompt: '', steps: 3, guidance: 7.5, width: 64, height: 64, scheduler: 'euler', seed: 5 };
const cli = (args) => execFileSync(cliBinary(), args, { stdio: 'pipe' });

async function setUp(browser, url, model) {
  const { page, logs } = await openPage(browser);
  await page.goto(`${url}?sw=0`);
  await page.waitForFunction(() => window.webdiffusion && window.webdiffusion.state.ready, null, { timeout: 120_000 });
  const entry = { id: model, name: model, url: `${url}fixtures/${model}/`, format: 'diffusers', quant: 'none' };
  const err = await page.evaluate((e) => window.webdiffusion.loadEntry(e, { quant: 'none' }).then(() => null, (x) => String(x.message || x)), entry);
  assert.equal(err, null, logs.join('\n'));
  await page.click('#img2img summary');
  await page.setInputFiles('#init-file', join(ARTIFACTS, 'inpaint-page-init.png'));
  await page.waitForSelector('#init-preview:not([hidden])');
  return { page, logs };
}

const gen = (page, r) => page.evaluate((q) => window.webdiffusion.generate(q).then((x) => x, (e) => ({ error: String(e.message || e) })), r);
const lastRgba = async (page) => Buffer.from(await page.evaluate(() => window.webdiffusion.state.lastImage.rgba), 'base64');

test('a mask painted with pointer events is the CLI\'s --mask, and the image the CLI\'s', { timeout: 600_000 }, async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  cli(['generate', '--model', join(FIXTURES, 'tiny-sd1'), '--prompt', 'a red circle', '--steps', '3', '--seed', '3', '--width', '64', '--height', '64',
    '--precision', 'f32', '--out', join(ARTIFACTS, 'inpaint-page-init.png')]);
  const { server, url } = await serveApp();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await setUp(browser, url, 'tiny-sd1-inpaint');
    await page.selectOption('#init-mode', 'inpaint');
    await page.waitForSelector('#mask-canvas:not([hidden])');
    // A stroke across the canvas as a finger or mouse makes it: down, moves, up.
    await paintStroke(page, '#mask-canvas', [0.25, 0.3], [0.75, 0.6], 10);
    const mask = await page.evaluate(() => Array.from(window.webdiffusion.maskFor(64, 64).bytes));
    const painted = mask.filter((v) => v === 255).length;
    assert.ok(painted > 300 && painted < 3000, `the stroke painted ${painted} of 4096 pixels`);
    assert.ok(mask.every((v) => v === 0 || v === 255), 'binary');
    assert.equal(mask[Math.round(0.3 * 64) * 64 + 16], 255, 'the stroke starts where the pointer went down');
    assert.equal(mask[60 * 64 + 4], 0, 'a far corner is kept');
    // "Save mask": the PNG the CLI reads.
    const png = await page.evaluate(async () => {
      const m = window.webdiffusion.maskFor(64, 64);
      const c = new OffscreenCanvas(64, 64);
      const ctx = c.getContext('2d');
      const img = ctx.createImageData(64, 64);
      m.bytes.forEach((v, i) => img.data.set([v, v, v, 255], i * 4));
      ctx.putImageData(img, 0, 0);
      return Array.from(new Uint8Array(await (await c.convertToBlob({ type: 'image/png' })).arrayBuffer()));
    });
    writeFileSync(join(ARTIFACTS, 'inpaint-page-mask.png'), Buffer.from(png));
    const g = await gen(page, REQUEST);
    assert.equal(g.error, undefined, logs.join('\n'));
    const pageImage = await lastRgba(page);
    cli(['generate', '--model', join(FIXTURES, 'tiny-sd1-inpaint'), '--prompt', REQUEST.prompt, '--negative-prompt', '', '--steps', '3', '--guidance', '7.5',
      '--scheduler', 'euler', '--seed', '5', '--precision', 'f32', '--init-image', join(ARTIFACTS, 'inpaint-page-init.png'),
      '--mask', join(ARTIFACTS, 'inpaint-page-mask.png'), '--out', join(ARTIFACTS, 'inpaint-page-native.png')]);
    const diff = await page.evaluate(async (rgba) => {
      const bitmap = await createImageBitmap(await (await fetch('/artifacts/inpaint-page-native.png')).blob());
      const ctx = new OffscreenCanvas(64, 64).getContext('2d');
      ctx.drawImage(bitmap, 0, 0);
      const n = ctx.getImageData(0, 0, 64, 64).data;
      let max = 0;
      for (let i = 0; i < n.length; i++) if (i % 4 !== 3) max = Math.max(max, Math.abs(n[i] - rgba[i]));
      return max;
    }, Array.from(pageImage));
    console.log(`inpainting: ${painted} pixels painted; page vs CLI max pixel difference ${diff}/255`);
    assert.ok(diff <= 1, `page and CLI inpainting differ by ${diff}/255`);

    // The editor on a phone.
    await page.setViewportSize({ width: 375, height: 740 });
    await page.$eval('#img2img', (d) => d.scrollIntoView());
    await page.screenshot({ path: join(ARTIFACTS, 'mask-editor-phone.png') });
    const box = await page.$eval('#mask-canvas', (c) => { const r = c.getBoundingClientRect(); return { w: r.width, touch: getComputedStyle(c).touchAction }; });
    assert.ok(box.w > 40 && box.w <= 375, `the mask canvas fits the phone (${box.w} px)`);
    assert.equal(box.touch, 'none', 'a finger paints instead of scrolling');
    // A finger's stroke, as the touchscreen sends it (touch events through the browser's input
    // pipeline, which makes the pointer events): it paints, and the page does not scroll.
    const touchBox = await page.$eval('#mask-canvas', (c) => { const r = c.getBoundingClientRect(); return { x: r.left, y: r.top, w: r.width, h: r.height }; });
    const paintedNow = () => page.evaluate(() => window.webdiffusion.maskFor(64, 64).bytes.filter((v) => v === 255).length);
    const beforeTouch = await paintedNow();
    const scrollBefore = await page.evaluate(() => window.scrollY);
    const cdp = await page.context().newCDPSession(page);
    const finger = (fx, fy) => [{ x: touchBox.x + fx * touchBox.w, y: touchBox.y + fy * touchBox.h, radiusX: 4, radiusY: 4, force: 1, id: 7 }];
    await cdp.send('Input.dispatchTouchEvent', { type: 'touchStart', touchPoints: finger(0.1, 0.85) });
    for (let i = 1; i <= 8; i++) await cdp.send('Input.dispatchTouchEvent', { type: 'touchMove', touchPoints: finger(0.1 + 0.05 * i, 0.85 - 0.02 * i) });
    await cdp.send('Input.dispatchTouchEvent', { type: 'touchEnd', touchPoints: [] });
    const afterTouch = await paintedNow();
    assert.ok(afterTouch > beforeTouch + 20, `a finger's stroke paints (${beforeTouch} -> ${afterTouch} pixels)`);
    assert.equal(await page.evaluate(() => window.scrollY), scrollBefore, 'the stroke did not scroll the page');
    // Generating on a phone brings the image card into view.
    await page.evaluate((r) => { window.webdiffusion.generate(r); }, { ...REQUEST, seed: 6 });
    await page.waitForFunction(() => window.webdiffusion.state.steps.length > 0, null, { timeout: 120_000 });
    const top = await page.$eval('#output', (c) => c.getBoundingClientRect().top);
    assert.ok(top >= -5 && top < 740, `the live preview is on screen (top ${top})`);
    await page.waitForFunction(() => !window.webdiffusion.state.generating, null, { timeout: 120_000 });
  } finally {
    await browser.close();
    server.close();
  }
});

test('outpainting by 64 px grows the image and keeps the original outside the seam', { timeout: 600_000 }, async () => {
  const { server, url } = await serveApp();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await setUp(browser, url, 'tiny-sd1');
    await page.selectOption('#init-mode', 'outpaint');
    await page.selectOption('#outpaint-by', '64');
    const g = await gen(page, REQUEST);
    assert.equal(g.error, undefined, logs.join('\n'));
    assert.equal(g.width, 128);
    assert.equal(g.height, 64);
    const out = await lastRgba(page);
    const init = await page.evaluate(async () => {
      const bitmap = await createImageBitmap(await (await fetch('/artifacts/inpaint-page-init.png')).blob());
      const ctx = new OffscreenCanvas(64, 64).getContext('2d');
      ctx.drawImage(bitmap, 0, 0);
      return Array.from(ctx.getImageData(0, 0, 64, 64).data);
    });
    // Seam blur 4 px: weights reach 3 sigma = 12 px into the original.
    let worst = 0;
    for (let y = 0; y < 64; y++) {
      for (let x = 0; x < 64 - 12; x++) {
        for (let c = 0; c < 3; c++) worst = Math.max(worst, Math.abs(out[(y * 128 + x) * 4 + c] - init[(y * 64 + x) * 4 + c]));
      }
    }
    console.log(`outpainting 64 px to the right: 128x64, original pixels outside the seam differ by ${worst}/255`);
    assert.equal(worst, 0, 'the original is kept exactly outside the seam');
    let changed = 0;
    for (let y = 0; y < 64; y++) for (let x = 80; x < 128; x++) if (out[(y * 128 + x) * 4] !== init[(y * 64 + 63) * 4]) changed++;
    assert.ok(changed > 500, `the new border is drawn, not the repeated edge (${changed} pixels differ from it)`);
  } finally {
    await browser.close();
    server.close();
  }
});
