// bench.html in headless Chromium on WebGPU (SwiftShader) under WebGPU's default limits: the
// mid-size test architecture (tests/fixtures/mid-arch, given as a config folder URL) with
// synthetic q4_0 weights at 64x64, two guided U-Net steps (the first cold, reported apart).
// The same figures as `webdiffusion bench`, from the same Rust code.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { ARTIFACTS, launchBrowser, openPage, serveApp } from './harness.mjs';

test('bench.html runs a mid-size architecture from its config folder under default limits', { timeout: 300_000 }, async () => {
  const { server, url } = await serveApp();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    // The config folder by URL, as a visitor would give a Hugging Face repo's resolve/main/.
    await page.goto(`${url}bench.html?config=${encodeURIComponent(`${url}fixtures/mid-arch/`)}&quant=q4_0&size=64&steps=2&limits=default&autorun=1`);
    await page.waitForFunction(() => window.webdiffusion && window.webdiffusion.done, null, { timeout: 240_000 });
    const report = await page.evaluate(() => window.webdiffusion.report);
    const state = await page.evaluate(() => ({ error: window.webdiffusion.error }));
    await page.screenshot({ path: join(ARTIFACTS, 'bench.png'), fullPage: true });
    assert.equal(state.error, null, `page error: ${state.error}\n${logs.join('\n')}`);
    console.log(JSON.stringify(report.stages));
    assert.equal(report.max_storage_binding, 128 * 2 ** 20, 'default limits');
    assert.deepEqual(report.stages.map((s) => s.stage), ['text_encoder', 'unet_step', 'vae_decode']);
    const unet = report.stages[1];
    assert.equal(unet.dispatches, 565, 'the same kernels as natively');
    // Per warm step: one compute pass per submit, bind groups reused, no pipeline built.
    assert.equal(unet.passes, unet.submits, JSON.stringify(unet));
    assert.ok(unet.bind_groups <= 0.1 * unet.dispatches, `bind groups created in a warm step: ${unet.bind_groups}`);
    assert.equal(unet.pipelines_created, 0);
    assert.ok(unet.cold && unet.cold.pipelines_created > 10 && unet.cold.bind_groups > unet.bind_groups, JSON.stringify(unet.cold));
    assert.equal(unet.step_ms.length, 2);
    for (const s of report.stages) {
      assert.ok(s.ms > 0 && s.gflop > 0.1 && s.peak_bytes > 0, JSON.stringify(s));
    }
    assert.ok(report.weights.every(([, bytes]) => bytes > 1e6));
    assert.equal(await page.locator('#results tbody tr').count(), 3, 'the table shows the three stages');
    // Chromium's SwiftShader offers `subgroups`, but wgpu 30's WebGPU backend maps no such
    // feature, so the page's device never has them and its norms and softmax reduce through
    // workgroup memory. When a wgpu upgrade changes this, this fails: then check here that
    // the SUBGROUPS variants (`enable subgroups;` in the browser's prelude) compile and agree.
    const caps = await page.evaluate(async () => {
      const m = await import('/pkg/webdiffusion.js');
      await m.default();
      return (await m.Engine.create(true, true)).info();
    });
    assert.equal(caps.subgroups, false, JSON.stringify(caps));
  } finally {
    await browser.close();
    server.close();
  }
});
