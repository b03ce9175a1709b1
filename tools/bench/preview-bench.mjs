#!/usr/bin/env node
// What a live preview costs per step in the page: the built-in map (latents → RGB at 1/8 size
// on the CPU) against TAESD (a full-size decode on the GPU every step). tiny-sd1's U-Net keeps
// the step itself cheap, so the difference is the preview. Headless Chromium (SwiftShader).
//
//   node tools/bench/preview-bench.mjs --taesd DIR [--size 256] [--steps 4]
//
// DIR: a TAESD folder (config.json + diffusion_pytorch_model.safetensors); for the real cost use
// the published layout, e.g. random weights written by diffusers' AutoencoderTiny() defaults.

import { launchBrowser, openPage, serveApp } from '../../tests/browser/harness.mjs';
import { serve } from '../serve.mjs';

const o = { size: 256, steps: 4 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const k = argv[i].replace(/^--/, '');
  if (!['taesd', 'size', 'steps'].includes(k)) throw new Error(`unknown argument ${argv[i]}`);
  o[k] = k === 'taesd' ? argv[++i] : Number(argv[++i]);
}
if (!o.taesd) throw new Error('usage: preview-bench.mjs --taesd DIR [--size PX] [--steps N]');

const { server, url } = await serveApp();
const taesd = await serve({ host: '127.0.0.1', port: 0, mounts: [{ url: '/taesd/', dir: o.taesd }] });
const browser = await launchBrowser();
try {
  const { page, logs } = await openPage(browser);
  await page.goto(`${url}?sw=0`);
  await page.waitForFunction(() => window.webdiffusion?.state.ready, null, { timeout: 120_000 });
  const entry = { id: 'tiny-sd1', name: 'tiny-sd1', url: `${url}fixtures/tiny-sd1/`, format: 'diffusers', quant: 'none' };
  const err = await page.evaluate((e) => window.webdiffusion.loadEntry(e, { quant: 'none' }).then(() => null, (x) => String(x.message || x)), entry);
  if (err) throw new Error(`${err}\n${logs.join('\n')}`);
  await page.evaluate((u) => {
    window.webdiffusion.taesdEntry = { id: 'taesd-bench', name: 'TAESD', url: u, format: 'diffusers', component: 'taesd',
      files: [{ path: 'config.json' }, { path: 'diffusion_pytorch_model.safetensors' }] };
  }, `http://127.0.0.1:${taesd.address().port}/taesd/`);
  const request = { prompt: 'a red circle', negativePrompt: '', steps: o.steps, guidance: 7.5, width: o.size, height: o.size, scheduler: 'euler', seed: 1 };
  const rows = [];
  // TAESD twice: the first run also fetches and loads it.
  for (const preview of ['map', 'taesd', 'taesd', 'map']) {
    await page.selectOption('#preview-decoder', preview);
    const t0 = Date.now();
    const g = await page.evaluate((r) => window.webdiffusion.generate(r).then((x) => x, (e) => ({ error: String(e.message || e) })), request);
    if (g.error) throw new Error(g.error);
    const perStep = await page.evaluate(() => document.getElementById('gen-text').textContent);
    rows.push({ preview, wallS: (Date.now() - t0) / 1000, status: perStep, size: await page.evaluate(() => window.webdiffusion.state.lastPreview) });
  }
  console.log(`live preview cost, tiny-sd1 at ${o.size}², ${o.steps} steps, guidance 7.5 (SwiftShader)`);
  for (const r of rows) console.log(`| ${r.preview} | ${r.size.width}×${r.size.height} | ${r.wallS.toFixed(1)} s | ${r.status} |`);
} finally {
  await browser.close();
  server.close();
  taesd.close();
}
