#!/usr/bin/env node
// The real-size browser benchmark: a synthetic repo with a published model's layout, served by
// the Hugging Face stand-in, loaded through the product page's custom-URL field in headless
// Chromium (fresh profile), one seeded image; then every server stopped, the same profile
// relaunched (a returning visitor: app from the service worker, model from IndexedDB), the
// same image again. Prints one table and writes JSON.
//
//   node tools/bench/browser-bench.mjs --model sd-turbo|sdxl-turbo|sd15|sd15-inpainting|mid-arch|tiny|tiny-inpaint
//        [--keep-repo DIR] [--json FILE] [--timeout-min N] [--quant q4_0|q8_0|none]
//        [--steps N] [--size PX] [--guidance G] [--scheduler S] [--seed N] [--chunk BYTES]
//        [--mode img2img|inpaint] [--init PNG] [--strength S] (start from an image: PNG, or one
//        drawn by the page's canvas; inpaint paints a stroke through the mask editor's pointer
//        events; the inpainting presets inpaint by default)
//        [--repo org/name] (the stand-in's repo name)  [--pkg DIR] (another wasm build; tools/bench/stub-pkg with --quant none runs the driver
//        against a stub engine, for checking the driver itself without a build)
//
// `tiny` serves tests/fixtures/tiny-sd1 as it is (a smoke test of the driver in a minute);
// `tiny-inpaint` its 9-channel inpainting sibling.
// Needs the wasm build in pkg/ (scripts/build-wasm.sh) and Chromium (CHROMIUM=path to override).
//
// What it relies on in the page (www/app.js, worker.js): window.webdiffusion.state (ready,
// loading, modelLoaded, lastError, lastImage.rgba as base64, wasmHeapBytes, download) and
// generate(request); the DOM ids custom / custom-url / custom-add / quant / model / load /
// model-status / download-text; the worker's messages (download*, loading*, loaded, done),
// observed by wrapping window.Worker before the page runs; a returning visitor's page loading
// its last cached model by itself (localStorage webdiffusion.lastModel).

import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ARTIFACTS, ROOT, launchBrowser, newProfile, openPage, paintStroke, serveApp } from '../../tests/browser/harness.mjs';
import { startHfStandin } from './hf-standin.mjs';
import { MODELS, isComplete, writeRepo } from './synthetic-repo.mjs';
import { sampleRss } from './rss.mjs';

const PRESETS = {
  'sd-turbo': { request: { steps: 1, guidance: 0, scheduler: 'euler-a', size: 512 }, timeoutMin: 60 },
  'sdxl-turbo': { request: { steps: 1, guidance: 0, scheduler: 'euler-a', size: 512 }, timeoutMin: 120 },
  sd15: { request: { steps: 1, guidance: 7.5, scheduler: 'dpm++2m-karras', size: 512 }, timeoutMin: 60 },
  'sd15-inpainting': { request: { steps: 1, guidance: 7.5, scheduler: 'dpm++2m-karras', size: 512 }, timeoutMin: 60, mode: 'inpaint' },
  'mid-arch': { request: { steps: 2, guidance: 7.5, scheduler: 'ddim', size: 128 }, timeoutMin: 20 },
  tiny: { request: { steps: 2, guidance: 7.5, scheduler: 'ddim', size: 64 }, timeoutMin: 5, dir: 'tests/fixtures/tiny-sd1', repo: 'webdiffusion/tiny-sd1' },
  'tiny-inpaint': { request: { steps: 2, guidance: 7.5, scheduler: 'ddim', size: 64 }, timeoutMin: 5, dir: 'tests/fixtures/tiny-sd1-inpaint', repo: 'webdiffusion/tiny-sd1-inpaint', mode: 'inpaint' },
};

function parseArgs(argv) {
  const o = { model: 'sd-turbo', quant: 'q4_0', seed: 42, prompt: 'a photo of a red fox in the snow' };
  const num = ['timeoutMin', 'steps', 'size', 'guidance', 'seed', 'chunk', 'strength'];
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i].replace(/^--/, '').replace(/-(\w)/g, (_, c) => c.toUpperCase());
    if (!['model', 'keepRepo', 'json', 'quant', 'scheduler', 'prompt', 'pkg', 'repo', 'mode', 'init', ...num].includes(k)) throw new Error(`unknown argument ${argv[i]}`);
    o[k] = num.includes(k) ? Number(argv[++i]) : argv[++i];
  }
  const p = PRESETS[o.model];
  if (!p) throw new Error(`--model is one of ${Object.keys(PRESETS).join(', ')}`);
  o.request = { prompt: o.prompt, negativePrompt: '', seed: o.seed, ...p.request };
  for (const k of ['steps', 'size', 'guidance', 'scheduler']) if (o[k] !== undefined) o.request[k] = o[k];
  o.request.width = o.request.height = o.request.size;
  delete o.request.size;
  o.timeoutMs = (o.timeoutMin || p.timeoutMin) * 60_000;
  o.mode = o.mode || (o.init ? 'img2img' : p.mode);
  if (o.mode && !['img2img', 'inpaint'].includes(o.mode)) throw new Error(`--mode is img2img or inpaint, not ${o.mode}`);
  if (o.init) o.init = resolve(o.init);
  return o;
}

// Runs in the page before its scripts: records every message between page and worker (type,
// phase, small fields, epoch ms) as segments of consecutive same-kind messages, so phases
// (download, verify, convert, loading, …, whatever the worker sends) are timed without knowing
// them in advance.
function hookWorker() {
  const rec = (window.__bench = { segments: [], loaded: [] });
  const small = (m) => {
    const o = {};
    for (const [k, v] of Object.entries(m)) {
      if (v === null || ['number', 'string', 'boolean'].includes(typeof v)) o[k] = v;
      else if (['download', 'timings', 'phases', 'stats'].includes(k)) o[k] = JSON.parse(JSON.stringify(v));
    }
    return o;
  };
  const push = (from, m) => {
    if (!m || typeof m !== 'object') return;
    const key = `${from}:${m.type}${m.phase ? `:${m.phase}` : ''}`;
    const t = performance.timeOrigin + performance.now();
    const last = rec.segments[rec.segments.length - 1];
    if (last && last.key === key) Object.assign(last, { t1: t, n: last.n + 1, last: small(m) });
    else rec.segments.push({ key, t0: t, t1: t, n: 1, first: small(m), last: small(m) });
    if (m.type === 'loaded') rec.loaded.push({ t, ...small(m), model: m.model && { id: m.model.id, kind: m.model.kind, bytes: m.model.bytes, quant: m.model.quant } });
  };
  const Base = window.Worker;
  window.Worker = class extends Base {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (ev) => push('worker', ev.data));
    }
    postMessage(m, ...rest) {
      push('page', m);
      return super.postMessage(m, ...rest);
    }
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const URL_MODEL_QUANT = 'q4_0'; // what app.js gives a model added by URL
const state = (page) => page.evaluate(() => {
  const s = window.webdiffusion?.state;
  if (!s) return null;
  const { lastImage, ...rest } = s;
  return { ...rest, hasImage: !!lastImage, status: document.getElementById('model-status')?.textContent, progress: document.getElementById('download-text')?.textContent };
});

/// Polls the page until `done(state)` (returns the state) or `failed(state)` / the timeout
/// (throws), printing the page's status line every 15 s.
async function waitFor(page, what, done, failed, timeoutMs) {
  const t0 = Date.now();
  let lastPrint = t0;
  for (;;) {
    const s = await state(page);
    if (s && done(s)) return s;
    if (s && failed(s)) throw new Error(`${what}: ${s.lastError}`);
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: no result after ${Math.round(timeoutMs / 60000)} min (${s?.status} ${s?.progress})`);
    if (Date.now() - lastPrint > 15_000) {
      lastPrint = Date.now();
      console.log(`  ${what} ${((Date.now() - t0) / 1000).toFixed(0)} s: ${s?.status || ''} ${s?.progress || ''}`);
    }
    await sleep(500);
  }
}

/// Gives the page a starting image as a visitor does (the img2img panel's file input: `--init`,
/// or a PNG the page's own canvas draws at the request's size) and, to inpaint, paints a stroke
/// across the middle through the mask editor's pointer events. Returns what was set up.
async function startFromImage(page, o) {
  const { width, height } = o.request;
  await page.click('#img2img summary');
  let file = o.init;
  if (!file) {
    const b64 = await page.evaluate(({ w, h }) => {
      const c = document.createElement('canvas');
      c.width = w;
      c.height = h;
      const g = c.getContext('2d');
      const grad = g.createLinearGradient(0, 0, w, h);
      grad.addColorStop(0, '#1d4e89');
      grad.addColorStop(1, '#f6c85f');
      g.fillStyle = grad;
      g.fillRect(0, 0, w, h);
      g.fillStyle = '#b33';
      g.beginPath();
      g.arc(w * 0.5, h * 0.55, Math.min(w, h) * 0.25, 0, 2 * Math.PI);
      g.fill();
      return c.toDataURL('image/png').split(',')[1];
    }, { w: width, h: height });
    file = { name: 'init.png', mimeType: 'image/png', buffer: Buffer.from(b64, 'base64') };
  }
  await page.setInputFiles('#init-file', file);
  await page.waitForSelector('#init-preview:not([hidden])');
  await page.selectOption('#init-mode', o.mode);
  if (o.strength !== undefined) {
    await page.$eval('#init-strength', (el, v) => { el.value = String(v); el.dispatchEvent(new Event('input')); }, o.strength);
  }
  const out = { mode: o.mode, file: typeof file === 'string' ? file : 'drawn by the page', strength: Number(await page.inputValue('#init-strength')) };
  if (o.mode === 'inpaint') {
    await page.waitForSelector('#mask-canvas:not([hidden])');
    await paintStroke(page, '#mask-canvas', [0.2, 0.4], [0.8, 0.64], 12);
    const painted = await page.evaluate(({ w, h }) => window.webdiffusion.maskFor(w, h).bytes.filter((v) => v).length, { w: width, h: height });
    if (!painted) throw new Error('the stroke painted no mask pixel');
    out.maskFraction = painted / (width * height);
  }
  return out;
}

async function generate(page, request, timeoutMs) {
  const t0 = Date.now();
  const run = page.evaluate((r) => window.webdiffusion.generate(r).then((g) => ({ ok: g }), (e) => ({ error: String(e.message || e) })), request);
  let timer;
  const timeout = new Promise((ok) => {
    timer = setTimeout(() => ok({ error: `generate: no image after ${Math.round(timeoutMs / 60000)} min` }), timeoutMs);
  });
  const r = await Promise.race([run, timeout]);
  clearTimeout(timer);
  if (r.error) throw new Error(r.error);
  const rgba = await page.evaluate(() => window.webdiffusion.state.lastImage.rgba);
  const pixels = Buffer.from(rgba, 'base64');
  return { wallS: (Date.now() - t0) / 1000, workerMs: r.ok.ms, width: r.ok.width, height: r.ok.height, pixelsSha256: createHash('sha256').update(pixels).digest('hex') };
}

const storage = (page) => page.evaluate(async () => {
  const e = await navigator.storage.estimate();
  return { usage: e.usage, indexedDB: e.usageDetails?.indexedDB ?? null, caches: e.usageDetails?.caches ?? null, serviceWorker: e.usageDetails?.serviceWorkerRegistrations ?? null };
});

/// The worker's messages during a generation started at `t0` (epoch ms): seconds until the first
/// step is done (text encoding, for img2img the encoder's load and the encode, then step 1),
/// from there to the last step done, and from it to the result (decode, PNG).
function generatePhases(bench, t0) {
  const seg = bench.segments.filter((s) => s.t1 >= t0);
  const steps = seg.filter((s) => s.key === 'worker:step');
  const done = seg.find((s) => s.key === 'worker:done');
  if (!steps.length || !done) return null;
  const first = Math.min(...steps.map((s) => s.t0));
  const last = Math.max(...steps.map((s) => s.t1));
  return {
    beforeFirstStepS: (first - t0) / 1000,
    stepsS: (last - first) / 1000,
    afterLastStepS: (done.t0 - last) / 1000,
    msPerStep: steps[steps.length - 1].last.msPerStep ?? null,
  };
}

/// Timings from the recorded worker messages: the load request, the last download message
/// (download complete) and the `loaded` reply, in epoch ms.
function phases(bench) {
  const seg = bench.segments;
  const req = [...seg].reverse().find((s) => s.key === 'page:load');
  const from = req ? req.t0 : -Infinity;
  const downloads = seg.filter((s) => s.t0 >= from && s.key.startsWith('worker:download'));
  const loaded = bench.loaded.filter((l) => l.t >= from).pop() || null;
  const downloadEnd = downloads.length ? Math.max(...downloads.map((s) => s.t1)) : null;
  return {
    loadRequestedAt: req?.t0 ?? null,
    downloadEndAt: downloadEnd,
    loadedAt: loaded?.t ?? null,
    downloadS: req && downloadEnd ? (downloadEnd - req.t0) / 1000 : null,
    afterDownloadS: loaded && downloadEnd ? (loaded.t - downloadEnd) / 1000 : null,
    loaded,
    segments: seg.filter((s) => s.t0 >= from).map((s) => ({ ...s, s: (s.t1 - s.t0) / 1000 })),
  };
}

/// One visit: launch with `profile`, open the page, get the model ready (by the custom-URL
/// field on the first visit, by the page's own resume of the last model on a returning one),
/// generate, measure. `origins` are the stand-in's, for counting the browser's requests.
async function visit({ first, profile, url, resolveBase, origins, o }) {
  const rss = sampleRss(profile);
  const browser = await launchBrowser(profile);
  const requests = { hub: 0, cdn: 0, hubWeights: 0 };
  browser.on('request', (r) => {
    const u = new URL(r.url());
    if (u.origin === origins.hub) {
      requests.hub++;
      if (/\.(safetensors|bin)$/.test(u.pathname)) requests.hubWeights++;
    } else if (u.origin === origins.cdn) requests.cdn++;
  });
  await browser.addInitScript(hookWorker);
  const out = { visit: first ? 'first' : 'returning' };
  let logs = [];
  try {
    const opened = await openPage(browser);
    const page = opened.page;
    logs = opened.logs;
    const t0 = Date.now();
    const entryId = `url:${resolveBase}`;
    // A returning page resumes its last model by itself, but with the entry's default quant
    // (q4_0 for a URL model, app.js customEntry), not the one chosen on the first visit: for
    // another quant, name the model in the URL (no resume) and load it as a visitor would.
    const resume = !first && o.quant === URL_MODEL_QUANT;
    await page.goto(first || resume ? url : `${url}${url.includes('?') ? '&' : '?'}model=${encodeURIComponent(entryId)}`);
    await waitFor(page, 'GPU init', (s) => s.ready, (s) => !!s.lastError, 120_000);
    out.initS = (Date.now() - t0) / 1000;
    let clicked = null;
    if (first) {
      await page.click('#custom > summary');
      await page.fill('#custom-url', resolveBase);
      await page.click('#custom-add');
      await page.selectOption('#quant', o.quant);
      const selected = await page.inputValue('#model');
      if (selected !== entryId) throw new Error(`the custom URL selected ${selected}, not ${entryId}`);
      clicked = Date.now();
      await page.click('#load');
    } else {
      // Give the page's own resume a moment to start, else ask as a visitor would.
      const t = Date.now();
      while (resume && Date.now() - t < 10_000 && !(await state(page)).loading && !(await state(page)).modelLoaded) await sleep(200);
      const s = await state(page);
      if (!s.loading && !s.modelLoaded) {
        await page.selectOption('#model', entryId);
        await page.selectOption('#quant', o.quant);
        clicked = Date.now();
        await page.click('#load');
      }
      out.resumedByPage = clicked === null;
    }
    const s = await waitFor(page, first ? 'download + load' : 'load from IndexedDB', (x) => x.modelLoaded && !x.loading, (x) => !x.loading && !!x.lastError && !x.modelLoaded, o.timeoutMs);
    const readyAt = Date.now();
    out.readyS = (readyAt - (clicked ?? t0)) / 1000; // from the click (first) or page open (returning)
    out.pageOpenToReadyS = (readyAt - t0) / 1000;
    out.model = s.model && { id: s.model.id, quant: s.model.quant, bytes: s.model.bytes };
    out.download = s.download;
    out.timings = s.timings;
    out.wasmHeapBytes = s.wasmHeapBytes;
    out.phases = phases(await page.evaluate(() => window.__bench));
    out.storage = await storage(page);
    const loadPeak = rss.peakBetween(clicked ?? t0, readyAt);
    if (o.mode) out.init = await startFromImage(page, o);
    const genAt = Date.now();
    const gen = await generate(page, o.request, o.timeoutMs);
    out.generate = gen;
    out.wasmHeapAfterGenerateBytes = (await state(page)).wasmHeapBytes;
    // What the generation was made of, from the worker's messages (see generatePhases).
    out.generatePhases = generatePhases(await page.evaluate(() => window.__bench), genAt);
    out.generatePeakRssBytes = rss.peakBetween(genAt, Date.now());
    out.storageAfterGenerate = await storage(page);
    if (first) await page.evaluate(() => navigator.serviceWorker.ready.then(() => null)); // the shell is cached
    await page.screenshot({ path: join(ARTIFACTS, `bench-${o.model}-${out.visit}.png`), fullPage: true }).catch(() => {});
    out.requests = requests;
    const r = rss.stop();
    out.rss = { peakBytes: r.peakRss, peakDuringLoadBytes: loadPeak, peakPssBytes: r.peakPss, samples: r.samples.length, peakProcesses: r.peakProcesses };
    return out;
  } catch (e) {
    e.logs = logs;
    throw e;
  } finally {
    rss.stop();
    await browser.close();
  }
}

const gb = (b) => (b === null || b === undefined ? '-' : `${(b / 1e9).toFixed(2)} GB`);
const mib = (b) => (b === null || b === undefined ? '-' : `${(b / 2 ** 20).toFixed(0)} MiB`);
const ms = (x) => (x === null || x === undefined ? '-' : x.toFixed(0));
const sec = (s) => (s === null || s === undefined ? '-' : `${s.toFixed(1)} s`);

const gp = (p) => (p ? `${p.beforeFirstStepS.toFixed(1)} / ${p.stepsS.toFixed(1)} / ${p.afterLastStepS.toFixed(1)} s` : '-');
const top = (rss) => (rss?.peakProcesses || []).slice(0, 3).map((p) => `${p.type} ${gb(p.rss)} (${gb(p.shmem)})`).join(', ') || '-';

function table(r) {
  const [a, b] = [r.first || {}, r.returning || {}];
  const rows = [
    ['download (load click -> last download message)', sec(a.phases?.downloadS), '-'],
    ['download complete -> ready (convert/load)', sec(a.phases?.afterDownloadS), '-'],
    ['worker: download / load ms', `${ms(a.timings?.downloadMs)} / ${ms(a.timings?.loadMs)}`, `${ms(b.timings?.downloadMs)} / ${ms(b.timings?.loadMs)}`],
    ['ready (first: from the click; returning: page open)', sec(a.readyS), sec(b.pageOpenToReadyS)],
    [`generate (${r.request.steps} step(s), ${r.request.width}x${r.request.height}${a.init ? `, ${a.init.mode} at ${a.init.strength}${a.init.maskFraction ? `, ${(100 * a.init.maskFraction).toFixed(0)} % masked` : ''}` : ''})`, sec(a.generate?.wallS), sec(b.generate?.wallS)],
    ['generate: to step 1 done (text, encoder load, encode, step) / steps 2.. / to the result',
      gp(a.generatePhases), gp(b.generatePhases)],
    ['same pixels as the first visit', '', b.generate && a.generate ? (b.generate.pixelsSha256 === a.generate.pixelsSha256 ? 'yes' : 'NO') : '-'],
    ['IndexedDB (storage.estimate)', gb(a.storage?.indexedDB ?? a.storage?.usage), gb(b.storage?.indexedDB ?? b.storage?.usage)],
    ['wasm heap after load / after generating', `${mib(a.wasmHeapBytes)} / ${mib(a.wasmHeapAfterGenerateBytes)}`, `${mib(b.wasmHeapBytes)} / ${mib(b.wasmHeapAfterGenerateBytes)}`],
    ['browser peak RSS (sum; during load; generating)', `${gb(a.rss?.peakBytes)} (${gb(a.rss?.peakDuringLoadBytes)}; ${gb(a.generatePeakRssBytes)})`, `${gb(b.rss?.peakBytes)} (${gb(b.rss?.peakDuringLoadBytes)}; ${gb(b.generatePeakRssBytes)})`],
    ['browser peak PSS', gb(a.rss?.peakPssBytes), gb(b.rss?.peakPssBytes)],
    ['at the peak: largest processes (RSS, of it shared)', top(a.rss), top(b.rss)],
    ['weight requests hub / cdn (servers)', r.server ? `${r.server.hub.weightRequests} / ${r.server.cdn.weightRequests}` : '-', 'stopped'],
    ['requests to hub / cdn (browser)', a.requests ? `${a.requests.hub} / ${a.requests.cdn}` : '-', b.requests ? `${b.requests.hub} / ${b.requests.cdn}` : '-'],
  ];
  const w = Math.max(...rows.map((x) => x[0].length));
  const lines = [`${''.padEnd(w)}  first visit      returning visit`];
  for (const [k, x, y] of rows) lines.push(`${k.padEnd(w)}  ${String(x).padEnd(15)}  ${y}`);
  return lines.join('\n');
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const pkg = o.pkg ? resolve(o.pkg) : join(ROOT, 'pkg');
  for (const f of ['webdiffusion.js', 'webdiffusion_bg.wasm']) {
    if (!existsSync(join(pkg, f))) throw new Error(`${join(pkg, f)} is missing: build the wasm first (bash scripts/build-wasm.sh)`);
  }
  if (o.pkg) console.log(`engine from ${pkg}${/stub-pkg/.test(pkg) ? ' (the STUB: no GPU work, timings are not the engine\'s)' : ''}`);
  const preset = PRESETS[o.model];
  const result = { model: o.model, quant: o.quant, request: o.request, started: new Date().toISOString() };
  let dir;
  let tempRepo = null;
  if (preset.dir) dir = join(ROOT, preset.dir);
  else {
    dir = o.keepRepo ? resolve(o.keepRepo) : (tempRepo = mkdtempSync(join(tmpdir(), `webdiffusion-${o.model}-`)));
    if (isComplete(dir, o.model)) console.log(`reusing the synthetic repo in ${dir}`);
    else {
      console.log(`writing a synthetic ${MODELS[o.model].repo} into ${dir}`);
      const t = Date.now();
      writeRepo(o.model, dir);
      result.repoWriteS = (Date.now() - t) / 1000;
    }
  }
  const profile = newProfile();
  let app = null;
  let hf = null;
  const stop = async () => {
    if (app) {
      app.server.closeAllConnections?.();
      await new Promise((ok) => app.server.close(() => ok()));
      app = null;
    }
    if (hf) {
      result.server = { hub: pick(hf.stats().hub), cdn: pick(hf.stats().cdn) };
      await hf.close();
      hf = null;
    }
  };
  const pick = ({ requests, bytes, weightRequests, weightBytes, byStatus }) => ({ requests, bytes, weightRequests, weightBytes, byStatus });
  try {
    app = await serveApp({ pkg });
    hf = await startHfStandin({ dir, repo: o.repo || preset.repo });
    result.repo = { name: hf.repo, dir, bytes: hf.files.reduce((s, f) => s + f.size, 0) };
    const origins = { hub: hf.apiUrl, cdn: hf.cdnOrigin };
    const { resolveBase } = hf;
    const url = `${app.url}${o.chunk ? `?chunk=${o.chunk}` : ''}`;
    console.log(`first visit: ${url} loads ${resolveBase} (${o.quant})`);
    result.first = await visit({ first: true, profile, url, resolveBase, origins, o });
    await stop(); // every server: only the service worker and IndexedDB can answer now
    console.log('returning visit, every server stopped');
    result.returning = await visit({ first: false, profile, url, resolveBase, origins, o });
    const same = result.returning.generate.pixelsSha256 === result.first.generate.pixelsSha256;
    const weightReqs = result.returning.requests.hub + result.returning.requests.cdn + (result.returning.download?.requests || 0);
    result.checks = { samePixels: same, returningWeightRequests: weightReqs };
    result.ok = same && weightReqs === 0;
  } catch (e) {
    result.error = String(e.stack || e);
    result.logs = (e.logs || []).slice(-60);
    console.error(`benchmark failed: ${e.message}\n${result.logs.join('\n')}`);
    result.ok = false;
  } finally {
    await stop();
    rmSync(profile, { recursive: true, force: true });
    if (tempRepo) rmSync(tempRepo, { recursive: true, force: true });
  }
  result.finished = new Date().toISOString();
  console.log(`\nwebdiffusion browser benchmark: ${o.model} (${result.repo?.name}, ${gb(result.repo?.bytes)}), ${o.quant}, seed ${o.request.seed}`);
  console.log(table(result));
  if (result.checks) console.log(`\nchecks: same pixels ${result.checks.samePixels ? 'yes' : 'NO'}; weight requests on the returning visit ${result.checks.returningWeightRequests}`);
  if (o.json) writeFileSync(o.json, JSON.stringify(result, null, 1));
  process.exitCode = result.ok ? 0 : 1;
}

main().catch((e) => {
  console.error(e.message);
  process.exitCode = 2;
});
