// TAESD in the page (www/previews.js → worker.js → Model.loadTaesd / setTaesdUse): with the live
// preview set to TAESD every step's preview is a full-size image instead of the 1/8-size map,
// TAESD's files are fetched once and stored (not offered as a model); with the final image set
// to TAESD the result is the CLI's `--taesd DIR --decoder taesd` image within 1/255.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ARTIFACTS, ROOT, diffWithPng, launchBrowser, openPage, serveApp } from './harness.mjs';
import { cliBinary } from './native.mjs';

const MODEL = join(ROOT, 'tests/fixtures/tiny-sd1');
const TAESD = join(ROOT, 'tests/fixtures/tiny-taesd');
const REQUEST = { prompt: 'a red circle', negativePrompt: '', steps: 3, guidance: 7.5, width: 64, height: 64, scheduler: 'euler', seed: 21 };

test('TAESD previews at full size and a fast final decode equal to the CLI\'s', { timeout: 600_000 }, async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  execFileSync(cliBinary(), ['generate', '--model', MODEL, '--prompt', REQUEST.prompt, '--negative-prompt', '', '--steps', '3', '--guidance', '7.5',
    '--scheduler', 'euler', '--width', '64', '--height', '64', '--seed', '21', '--precision', 'f32', '--taesd', TAESD, '--decoder', 'taesd',
    '--out', join(ARTIFACTS, 'taesd-native.png')], { stdio: 'pipe' });
  const { server, url } = await serveApp();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    await page.goto(`${url}?sw=0`);
    await page.waitForFunction(() => window.webdiffusion && window.webdiffusion.state.ready, null, { timeout: 120_000 });
    const entry = { id: 'tiny-sd1', name: 'tiny-sd1', url: `${url}fixtures/tiny-sd1/`, format: 'diffusers', quant: 'none' };
    assert.equal(await page.evaluate((e) => window.webdiffusion.loadEntry(e, { quant: 'none' }).then(() => null, (x) => String(x.message || x)), entry), null, logs.join('\n'));
    await page.evaluate((u) => {
      window.webdiffusion.taesdEntry = { id: 'taesd', name: 'tiny TAESD', url: u, format: 'diffusers', component: 'taesd',
        files: [{ path: 'config.json' }, { path: 'diffusion_pytorch_model.safetensors' }] };
    }, `${url}fixtures/tiny-taesd/`);
    const gen = () => page.evaluate((r) => window.webdiffusion.generate(r).then((x) => x, (e) => ({ error: String(e.message || e) })), REQUEST);

    await page.selectOption('#preview-decoder', 'map');
    assert.equal((await gen()).error, undefined, logs.join('\n'));
    assert.deepEqual(await page.evaluate(() => window.webdiffusion.state.lastPreview), { width: 8, height: 8 }, 'the built-in preview is at latent size');

    await page.selectOption('#preview-decoder', 'taesd');
    await page.selectOption('#final-decoder', 'taesd');
    const g = await gen();
    assert.equal(g.error, undefined, logs.join('\n'));
    assert.deepEqual(await page.evaluate(() => window.webdiffusion.state.lastPreview), { width: 64, height: 64 }, 'TAESD previews are full size');
    const diff = (await diffWithPng(page, '/artifacts/taesd-native.png')).max;
    console.log(`TAESD final decode: page vs CLI max pixel difference ${diff}/255`);
    assert.ok(diff <= 1, `page and CLI TAESD images differ by ${diff}/255`);
    // Stored once, and not offered as a model to load.
    const listed = await page.evaluate(() => [...document.getElementById('model').options].map((o) => o.value));
    assert.ok(!listed.includes('taesd'), `TAESD is not in the model list: ${listed}`);
    const stored = await page.evaluate(async () => {
      const db = await new Promise((ok) => { const r = indexedDB.open('webdiffusion'); r.onsuccess = () => ok(r.result); });
      return new Promise((ok) => { const r = db.transaction('models').objectStore('models').get('taesd'); r.onsuccess = () => ok(!!r.result); });
    });
    assert.ok(stored, 'TAESD is kept in IndexedDB');
  } finally {
    await browser.close();
    server.close();
  }
});
