// The GPU runtime in a real browser: the served page opens WebGPU through our wasm build and
// runs matmul, conv2d and attention against candle compiled to wasm on the CPU.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { ARTIFACTS, launchBrowser, openPage, serveApp } from './harness.mjs';

test('kernel self-test passes in headless Chromium on WebGPU', { timeout: 180_000 }, async () => {
  const { server, url } = await serveApp();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    await page.goto(`${url}selftest.html`);
    await page.waitForFunction(() => window.webdiffusion && window.webdiffusion.done, null, { timeout: 150_000 });
    const state = await page.evaluate(() => window.webdiffusion);
    await page.screenshot({ path: join(ARTIFACTS, 'selftest.png'), fullPage: true });

    assert.equal(state.error, null, `page error: ${state.error}\n${logs.join('\n')}`);
    assert.ok(state.info.backend, 'adapter info reported');
    const names = state.results.map((r) => r.name).join(', ');
    for (const kernel of ['matmul', 'conv2d', 'attention']) {
      assert.ok(state.results.some((r) => r.name.startsWith(kernel)), `${kernel} ran (${names})`);
    }
    for (const r of state.results) {
      console.log(`${r.name} ${r.dtype}: max |err| ${r.max_abs_err.toExponential(2)} (tolerance ${r.tolerance})`);
      assert.ok(r.passed, `${r.name} ${r.dtype}: ${r.max_abs_err} > ${r.tolerance}`);
      assert.ok(Number.isFinite(r.max_abs_err));
    }
    const shown = await page.locator('#results td.pass').count();
    assert.equal(shown, state.results.length, 'every result shown as passed on the page');
  } finally {
    await browser.close();
    server.close();
  }
});
