// Faults in the page, end to end: the engine traps in the middle of a session (the wasm build's
// `testTrap` hook panics, as an engine bug would): the request fails with a clear message, the
// page replaces the worker, reloads the model from IndexedDB and the next generation works and
// gives the same pixels as before the trap. And a prompt with ’ and CJK makes an image whose
// PNG keeps the prompt as typed (iTXt).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, openPage, serveApp, serveCdn } from './harness.mjs';

const MODEL = 'shapes-demo';
const REQUEST = { prompt: 'a blue square on the left', negativePrompt: '', steps: 1, guidance: 1, width: 64, height: 64, scheduler: 'euler', seed: 99 };
const UNICODE = 'a cat’s blue square — 富士山 🦊';

test('a trapped engine is replaced, the model reloaded from the cache, and the next request works', { timeout: 600_000 }, async () => {
  const { server: app, url } = await serveApp();
  const { server: cdn, url: cdnUrl } = await serveCdn();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    await page.goto(`${url}?sw=0&cdn=${encodeURIComponent(cdnUrl)}&model=${MODEL}`);
    await page.waitForFunction(() => window.webdiffusion && window.webdiffusion.state.ready, null, { timeout: 120_000 });
    assert.equal(await page.evaluate((id) => window.webdiffusion.load(id).then(() => null, (e) => String(e.message || e)), MODEL), null, logs.join('\n'));
    const before = await page.evaluate((r) => window.webdiffusion.generate(r).then(() => window.webdiffusion.state.lastImage.rgba), REQUEST);

    const err = await page.evaluate(() => window.webdiffusion.testTrap().then(() => null, (e) => String(e.message || e)));
    assert.ok(err && /internal error/.test(err) && /testTrap/.test(err) && /restarted/.test(err), `the trap is reported: ${err}`);
    await page.waitForFunction(() => window.webdiffusion.state.restarts === 1 && window.webdiffusion.state.modelLoaded, null, { timeout: 300_000 });
    const s = await page.evaluate(() => window.webdiffusion.state);
    assert.equal(s.download.bytesFetched, 0, 'the model came back from IndexedDB');
    const after = await page.evaluate((r) => window.webdiffusion.generate(r).then(() => window.webdiffusion.state.lastImage.rgba), REQUEST);
    assert.equal(after, before, 'the same request after the restart gives the same pixels');

    const g = await page.evaluate((r) => window.webdiffusion.generate(r), { ...REQUEST, prompt: UNICODE });
    assert.ok(g.parameters.startsWith(UNICODE), `the parameters keep the prompt: ${g.parameters}`);
    const png = await page.evaluate(async () => Array.from(new Uint8Array(await (await fetch(document.getElementById('download-png').href)).arrayBuffer())));
    const text = Buffer.from(png).toString('utf8');
    assert.ok(text.includes('iTXt') && text.includes(UNICODE), 'the PNG holds the prompt as UTF-8 (iTXt)');
  } finally {
    await browser.close();
    app.close();
    cdn.close();
  }
});
