// bench.html in headless Chromium on WebGPU (SwiftShader) under WebGPU's default limits: the
// mid-size test architecture (tests/fixtures/mid-arch) with synthetic q4_0 weights at 64x64,
// one guided U-Net step. The same figures as `webdiffusion bench`, from the same Rust code.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ARTIFACTS, ROOT, launchBrowser, openPage, serveApp } from './harness.mjs';

const config = (c) => readFileSync(join(ROOT, 'tests/fixtures/mid-arch', c, 'config.json'), 'utf8');

test('bench.html runs a mid-size architecture under default limits', { timeout: 300_000 }, async () => {
  const { server, url } = await serveApp();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    await page.goto(`${url}bench.html`);
    await page.waitForFunction(() => window.webdiffusion && window.webdiffusion.run, null, { timeout: 60_000 });
    const configs = { text_encoder: config('text_encoder'), unet: config('unet'), vae: config('vae') };
    const report = await page.evaluate(
      (configs) => window.webdiffusion.run({ arch: 'mid-arch', configs, quant: 'q4_0', size: 64, steps: 1 }),
      configs,
    );
    const state = await page.evaluate(() => ({ error: window.webdiffusion.error }));
    await page.screenshot({ path: join(ARTIFACTS, 'bench.png'), fullPage: true });
    assert.equal(state.error, null, `page error: ${state.error}\n${logs.join('\n')}`);
    console.log(JSON.stringify(report.stages));
    assert.equal(report.max_storage_binding, 128 * 2 ** 20, 'default limits');
    assert.deepEqual(report.stages.map((s) => s.stage), ['text_encoder', 'unet_step', 'vae_decode']);
    assert.equal(report.stages[1].dispatches, 609, 'the same kernels as natively');
    for (const s of report.stages) {
      assert.ok(s.ms > 0 && s.gflop > 0.1 && s.peak_bytes > 0, JSON.stringify(s));
    }
    assert.ok(report.weights.every(([, bytes]) => bytes > 1e6));
    assert.equal(await page.locator('#results tbody tr').count(), 3, 'the table shows the three stages');
  } finally {
    await browser.close();
    server.close();
  }
});
