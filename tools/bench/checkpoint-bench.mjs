#!/usr/bin/env node
// The real-size benchmark of users' own files in the page: a single-file checkpoint picked with
// the page's file picker (converted where it lies into the q4_0 package in IndexedDB) over a base
// model's small files served by the Hugging Face stand-in, one image; a kohya LoRA added to the
// page's list, the same image with it merged; then the same profile relaunched (a returning
// visitor: the checkpoint's package from IndexedDB, the LoRA merged again). Prints one table.
//
//   node tools/bench/synthetic-repo.mjs --model sd15 --out /tmp/syn-sd15
//   python tools/bench/synthetic_single_file.py --repo /tmp/syn-sd15 \
//       --out /tmp/syn-sd15-single.safetensors --lora /tmp/syn-sd15-lora.safetensors --rank 32
//   node tools/bench/checkpoint-bench.mjs --repo /tmp/syn-sd15 --file /tmp/syn-sd15-single.safetensors \
//       --lora /tmp/syn-sd15-lora.safetensors [--size 64] [--steps 1] [--json FILE]
//
// Relies on the page's checkpoint panel (#checkpoints, #ckpt-base, #ckpt-file), the LoRA list
// (#loras, #lora-file) and window.webdiffusion (addEntry, state, generate).

import { createHash } from 'node:crypto';
import { statSync, writeFileSync } from 'node:fs';
import { launchBrowser, newProfile, openPage, serveApp } from '../../tests/browser/harness.mjs';
import { startHfStandin } from './hf-standin.mjs';
import { sampleRss } from './rss.mjs';

const o = { size: 64, steps: 1, timeoutMin: 60 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const k = argv[i].replace(/^--/, '').replace(/-(\w)/g, (_, c) => c.toUpperCase());
  if (!['repo', 'file', 'lora', 'size', 'steps', 'json', 'timeoutMin'].includes(k)) throw new Error(`unknown argument ${argv[i]}`);
  o[k] = ['size', 'steps', 'timeoutMin'].includes(k) ? Number(argv[++i]) : argv[++i];
}
if (!o.repo || !o.file) throw new Error('usage: checkpoint-bench.mjs --repo DIR --file CKPT [--lora FILE] [--size PX] [--steps N] [--json FILE]');

const SMALL = ['model_index.json', 'scheduler/scheduler_config.json', 'tokenizer/vocab.json', 'tokenizer/merges.txt',
  'tokenizer/tokenizer_config.json', 'tokenizer/special_tokens_map.json', 'text_encoder/config.json', 'unet/config.json', 'vae/config.json'];
const REQUEST = { prompt: 'a photo of a red fox in the snow', negativePrompt: '', steps: o.steps, guidance: 7.5, width: o.size, height: o.size, scheduler: 'euler', seed: 42 };
const gb = (b) => (b == null ? '-' : `${(b / 1e9).toFixed(2)} GB`);
const mib = (b) => (b == null ? '-' : `${Math.round(b / 2 ** 20)} MiB`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const state = (page) => page.evaluate(() => {
  const { lastImage, ...s } = window.webdiffusion.state;
  return { ...s, status: document.getElementById('model-status').textContent, progress: document.getElementById('download-text').textContent };
});

async function waitFor(page, what, done, timeoutMs = o.timeoutMin * 60_000) {
  const t0 = Date.now();
  let printed = t0;
  for (;;) {
    const s = await state(page);
    if (done(s)) return s;
    if (s.lastError) throw new Error(`${what}: ${s.lastError}`);
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: nothing after ${timeoutMs / 60000} min`);
    if (Date.now() - printed > 15_000) {
      printed = Date.now();
      console.log(`  ${what} ${((Date.now() - t0) / 1000).toFixed(0)} s: ${s.status} ${s.progress}`);
    }
    await sleep(500);
  }
}

async function generate(page) {
  const t0 = Date.now();
  const g = await page.evaluate((r) => window.webdiffusion.generate(r).then((x) => x, (e) => ({ error: String(e.message || e) })), REQUEST);
  if (g.error) throw new Error(`generate: ${g.error}`);
  const img = await page.evaluate(() => window.webdiffusion.state.lastImage);
  return { wallS: (Date.now() - t0) / 1000, loras: img.loras, sha256: createHash('sha256').update(Buffer.from(img.rgba, 'base64')).digest('hex') };
}

const storage = (page) => page.evaluate(async () => (await navigator.storage.estimate()).usageDetails?.indexedDB ?? null);

async function visit(first, profile, url, base) {
  const rss = sampleRss(profile);
  const browser = await launchBrowser(profile);
  const out = { visit: first ? 'first' : 'returning' };
  try {
    const { page, logs } = await openPage(browser);
    const t0 = Date.now();
    await page.goto(`${url}?sw=0`);
    await waitFor(page, 'GPU init', (s) => s.ready, 120_000);
    if (first) {
      await page.evaluate((e) => window.webdiffusion.addEntry(e), base);
      await page.click('#checkpoints summary');
      await page.selectOption('#ckpt-base', base.id);
      const picked = Date.now();
      await page.setInputFiles('#ckpt-file', o.file);
      const s = await waitFor(page, 'checkpoint', (x) => x.modelLoaded && !x.loading);
      out.readyS = (Date.now() - picked) / 1000;
      out.download = s.download;
    } else {
      // A returning visitor's page loads its last model from IndexedDB by itself.
      await waitFor(page, 'returning load', (x) => x.modelLoaded && !x.loading);
      out.readyS = (Date.now() - t0) / 1000;
    }
    const s = await state(page);
    out.wasmHeapBytes = s.wasmHeapBytes;
    out.indexedDB = await storage(page);
    // The LoRA stays switched on in the list: a returning visit's first image has it.
    if (first || !o.lora) out.generate = await generate(page);
    if (o.lora && first) {
      await page.click('#loras summary');
      await page.setInputFiles('#lora-file', o.lora);
      await page.waitForSelector('#lora-list li.lora');
    }
    if (o.lora) {
      out.withLora = await generate(page);
      out.wasmHeapAfterLora = (await state(page)).wasmHeapBytes;
    }
    void logs;
  } finally {
    await browser.close();
    const r = rss.stop();
    out.peakRss = r.peakRss;
    out.peakPss = r.peakPss;
  }
  return out;
}

const hf = await startHfStandin({ dir: o.repo, repo: 'stable-diffusion-v1-5/stable-diffusion-v1-5' });
const { server, url } = await serveApp();
const base = {
  id: 'bench-sd15', name: 'SD 1.5 (synthetic)', url: hf.resolveBase, format: 'diffusers', quant: 'q4_0', checkpointBase: 'SD 1.x',
  defaults: { width: o.size, height: o.size, steps: o.steps, guidance: 7.5, scheduler: 'euler' }, files: SMALL.map((path) => ({ path })),
};
try {
  const profile = newProfile();
  const a = await visit(true, profile, url, base);
  const b = await visit(false, profile, url, base);
  const rows = [
    ['', 'first visit', 'returning visit'],
    ['checkpoint picked → ready (first) / page open → ready', `${a.readyS.toFixed(1)} s`, `${b.readyS.toFixed(1)} s`],
    ['IndexedDB', gb(a.indexedDB), gb(b.indexedDB)],
    ['wasm heap after load', mib(a.wasmHeapBytes), mib(b.wasmHeapBytes)],
    [`generate ${o.size}², ${o.steps} step(s)`, `${a.generate.wallS.toFixed(1)} s`, b.generate ? `${b.generate.wallS.toFixed(1)} s` : '-'],
    ['generate with the LoRA (merge + reload + generate)', a.withLora ? `${a.withLora.wallS.toFixed(1)} s` : '-', b.withLora ? `${b.withLora.wallS.toFixed(1)} s` : '-'],
    ['wasm heap after the LoRA', mib(a.wasmHeapAfterLora), mib(b.wasmHeapAfterLora)],
    ['browser peak RSS / PSS', `${gb(a.peakRss)} / ${gb(a.peakPss)}`, `${gb(b.peakRss)} / ${gb(b.peakPss)}`],
    ['same pixels as the first visit', '', b.withLora ? `${a.withLora.sha256 === b.withLora.sha256} (LoRA)` : `${a.generate.sha256 === b.generate?.sha256}`],
    ['LoRA changed the image', `${a.withLora ? a.withLora.sha256 !== a.generate.sha256 : '-'}`, ''],
  ];
  console.log(`checkpoint ${o.file} (${gb(statSync(o.file).size)})${o.lora ? `, LoRA ${o.lora} (${(statSync(o.lora).size / 1e6).toFixed(1)} MB)` : ''}`);
  for (const r of rows) console.log(`| ${r.join(' | ')} |`);
  if (o.json) writeFileSync(o.json, JSON.stringify({ first: a, returning: b }, null, 2));
} finally {
  server.close();
  await hf.close();
}
