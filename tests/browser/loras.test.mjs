// LoRAs in the page (www/loras.js → worker.js → the wasm Engine.load's `loras`): a kohya LoRA
// added with the list's file picker is merged into a q4_0 package's weights before generating.
// At strength 1 the page's image is the CLI's (`generate --model PKG --lora FILE:1`) within
// 1/255; at 0 it is exactly the page's own image without the LoRA; `<lora:kohya:1>` in the
// prompt is the slider at 1, image for image; a tag naming no listed LoRA is refused in one line;
// one added by URL applies too.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ARTIFACTS, ROOT, diffWithPng, launchBrowser, openPage, serveApp } from './harness.mjs';
import { cliBinary } from './native.mjs';

const MODEL = join(ROOT, 'tests/fixtures/tiny-sd1');
const KOHYA = join(MODEL, 'lora/kohya.safetensors');
const REQUEST = { prompt: 'a red circle', negativePrompt: '', steps: 2, guidance: 7.5, width: 64, height: 64, scheduler: 'euler', seed: 11 };

function cli(args) {
  execFileSync(cliBinary(), args, { stdio: 'pipe' });
}

const ready = (page) => page.waitForFunction(() => window.webdiffusion && window.webdiffusion.state.ready, null, { timeout: 120_000 });

test('a LoRA from the page\'s list: 1 is the CLI\'s image, 0 exactly the base image, a prompt tag the slider', { timeout: 600_000 }, async () => {
  const pkg = join(ARTIFACTS, 'lora-pkg');
  rmSync(pkg, { recursive: true, force: true });
  mkdirSync(ARTIFACTS, { recursive: true });
  cli(['convert', '--model', MODEL, '--out', pkg, '--quant', 'q4_0']);
  const gen = (extra, out) => cli(['generate', '--model', pkg, '--prompt', REQUEST.prompt, '--negative-prompt', '', '--steps', '2', '--guidance', '7.5',
    '--scheduler', 'euler', '--width', '64', '--height', '64', '--seed', '11', '--precision', 'f32', ...extra, '--out', join(ARTIFACTS, out)]);
  gen([], 'lora-native-base.png');
  gen(['--lora', `${KOHYA}:1`], 'lora-native-1.png');
  const { server, url } = await serveApp();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    await page.goto(`${url}?sw=0`);
    await ready(page);
    const err = await page.evaluate((u) => window.webdiffusion.load(u, { quant: 'none' }).then(() => null, (e) => String(e.message || e)), `${url}artifacts/lora-pkg/`);
    assert.equal(err, null, logs.join('\n'));
    const generate = async (overrides = {}) => {
      const g = await page.evaluate((r) => window.webdiffusion.generate(r).then((x) => x, (e) => ({ error: String(e.message || e) })), { ...REQUEST, ...overrides });
      const img = await page.evaluate(() => window.webdiffusion.state.lastImage);
      return { ...g, rgba: img && img.rgba, loras: img && img.loras };
    };
    const base = await generate();
    assert.equal(base.error, undefined, logs.join('\n'));
    const baseDiff = (await diffWithPng(page, '/artifacts/lora-native-base.png')).max;
    assert.ok(baseDiff <= 1, `base: page vs CLI ${baseDiff}/255`);

    await page.click('#loras summary');
    await page.setInputFiles('#lora-file', KOHYA);
    await page.waitForSelector('#lora-list li.lora[data-id="kohya"]');
    const one = await generate();
    assert.equal(one.error, undefined, logs.join('\n'));
    assert.deepEqual(one.loras, [['kohya', 1]]);
    const oneDiff = (await diffWithPng(page, '/artifacts/lora-native-1.png')).max;
    console.log(`LoRA at 1: page vs CLI max pixel difference ${oneDiff}/255 (base ${baseDiff}/255)`);
    assert.ok(oneDiff <= 1, `LoRA at 1: page vs CLI ${oneDiff}/255`);
    assert.notEqual(one.rgba, base.rgba, 'the LoRA changes the image');

    // The slider to 0, as a user drags it: the model goes back to its stored weights.
    await page.$eval('#lora-list li.lora[data-id="kohya"] input[type=range]', (el) => {
      el.value = '0';
      el.dispatchEvent(new Event('input'));
      el.dispatchEvent(new Event('change'));
    });
    await page.waitForFunction(() => document.querySelector('#lora-list li.lora[data-id="kohya"] output').textContent === '0.00');
    const zero = await generate();
    assert.deepEqual(zero.loras, []);
    assert.equal(zero.rgba, base.rgba, 'strength 0 is exactly the image without the LoRA');

    const tagged = await generate({ prompt: `${REQUEST.prompt} <lora:kohya:1>` });
    assert.equal(tagged.error, undefined, logs.join('\n'));
    assert.deepEqual(tagged.loras, [['kohya', 1]]);
    assert.equal(tagged.rgba, one.rgba, '<lora:kohya:1> is the slider at 1');

    const missing = await generate({ prompt: `${REQUEST.prompt} <lora:nope:0.5>` });
    assert.match(missing.error || '', /no LoRA named nope/);
    // The model is still there: the next generation works.
    const again = await generate();
    assert.equal(again.error, undefined);
    assert.equal(again.rgba, base.rgba);

    // A LoRA by URL joins the list (switched on) and applies with the next image.
    await page.fill('#lora-url', `${url}fixtures/tiny-sd1/lora/peft.safetensors`);
    await page.click('#lora-add');
    await page.waitForSelector('#lora-list li.lora[data-id="peft"]');
    const peft = await generate();
    assert.equal(peft.error, undefined, logs.join('\n'));
    assert.deepEqual(peft.loras, [['peft', 1]]);
    assert.notEqual(peft.rgba, base.rgba);
  } finally {
    await browser.close();
    server.close();
  }
});
