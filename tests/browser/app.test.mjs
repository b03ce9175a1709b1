// The product page end to end in headless Chromium (WebGPU on SwiftShader): the bundled demo
// model streams from a CDN stand-in on another origin into IndexedDB, loads in the worker and
// generates the native CLI's image; then offline from the cache; a cut download resumes; a
// corrupted chunk is caught; cancel stops within a step while the page stays responsive.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ARTIFACTS, ROOT, diffWithPng, launchBrowser, newProfile, openPage, serveApp, serveCdn } from './harness.mjs';
import { cliBinary } from './native.mjs';

const MODEL = 'shapes-demo';
const CHUNK = 1 << 20; // small chunks, so one file spans several
const UNET = `${MODEL}/unet/diffusion_pytorch_model.safetensors`;
const REQUEST = { prompt: 'a blue square on the left', negativePrompt: '', steps: 2, guidance: 7.5, width: 64, height: 64, scheduler: 'ddim', seed: 4321 };
// SwiftShader and lavapipe round transcendentals differently; the U-Net and VAE in f32 stay
// within one 8-bit level of each other (the same bound as the fixture test in models.test.mjs).
const PIXEL_TOLERANCE = 1;

const pageUrl = (app, cdn, extra = '') => `${app}?cdn=${encodeURIComponent(cdn)}&chunk=${CHUNK}&model=${MODEL}${extra}`;
const ready = (page) => page.waitForFunction(() => window.webdiffusion && window.webdiffusion.state.ready, null, { timeout: 120_000 });
const load = (page) => page.evaluate((id) => window.webdiffusion.load(id).then(() => null, (e) => String(e.message || e)), MODEL);
const rgbaOf = (page) => page.evaluate(() => window.webdiffusion.state.lastImage);

function nativeImage() {
  mkdirSync(ARTIFACTS, { recursive: true });
  const out = join(ARTIFACTS, 'app-native.png');
  execFileSync(cliBinary(), ['generate', '--model', join(ROOT, 'models', MODEL), '--prompt', REQUEST.prompt, '--negative-prompt', '',
    '--steps', String(REQUEST.steps), '--guidance', String(REQUEST.guidance), '--scheduler', REQUEST.scheduler, '--width', '64',
    '--height', '64', '--seed', String(REQUEST.seed), '--precision', 'f32', '--out', out], { stdio: 'pipe' });
  return out;
}

const sha256 = (path) => createHash('sha256').update(readFileSync(path)).digest('hex');

// Tests 1 and 2 share a profile: the second is the returning, offline visitor.
const profile = newProfile();
let firstImage = null;
let firstVisitUrl = null;

test('first visit: download the demo model from the CDN, generate the native CLI image', { timeout: 600_000 }, async () => {
  const nativePng = nativeImage();
  const { server: app, url } = await serveApp();
  const { server: cdn, url: cdnUrl } = await serveCdn();
  const browser = await launchBrowser(profile);
  try {
    const { page, logs } = await openPage(browser);
    const t0 = Date.now();
    firstVisitUrl = pageUrl(url, cdnUrl);
    await page.goto(firstVisitUrl);
    await ready(page);
    assert.equal(await load(page), null, logs.join('\n'));
    const s = await page.evaluate(() => window.webdiffusion.state);
    const fetched = s.download.bytesFetched;
    const onDisk = ['unet/diffusion_pytorch_model.safetensors', 'text_encoder/model.safetensors', 'vae/diffusion_pytorch_model.safetensors']
      .reduce((n, f) => n + statSync(join(ROOT, 'models', MODEL, f)).size, 0);
    assert.ok(fetched >= onDisk, `fetched ${fetched} bytes, the weights alone are ${onDisk}`);
    assert.equal(s.download.bytesFromCache, 0, 'a fresh profile has nothing cached');
    // Right after loading, the worker builds the pipelines a default-size generation needs.
    await page.waitForFunction(() => window.webdiffusion.state.prepared, null, { timeout: 60_000 });
    const prepared = await page.evaluate(() => window.webdiffusion.state.prepared);
    assert.ok(prepared.pipelines >= 10 && prepared.width === 64, JSON.stringify(prepared));
    console.log(`prepared after loading: ${prepared.pipelines} pipelines in ${prepared.ms.toFixed(0)} ms`);
    const g = await page.evaluate((r) => window.webdiffusion.generate(r), REQUEST);
    assert.equal(g.cancelled, false);
    const coldMs = Date.now() - t0;
    firstImage = await rgbaOf(page);
    const steps = await page.evaluate(() => window.webdiffusion.state.steps);
    assert.deepEqual(steps, [[0, 2], [1, 2]], 'one progress event per step');
    const d = await diffWithPng(page, `/artifacts/${nativePng.split('/').pop()}`);
    assert.deepEqual(d.size, [64, 64]);
    console.log(`first visit: cold start to first image ${(coldMs / 1000).toFixed(1)} s (download ${s.timings.downloadMs} ms, GPU load ${s.timings.loadMs} ms), ` +
      `${s.download.requests} requests, ${fetched} bytes, wasm heap after load ${s.wasmHeapBytes} bytes; browser vs native max pixel difference ${d.max}/255`);
    assert.ok(d.max <= PIXEL_TOLERANCE, `browser and native images differ by ${d.max}/255`);
    await page.screenshot({ path: join(ARTIFACTS, 'app-first-visit.png'), fullPage: true });
    // The service worker must own the page before we go offline.
    await page.evaluate(() => navigator.serviceWorker.ready.then(() => null));
  } finally {
    await browser.close();
    app.close();
    cdn.close();
  }
});

test('returning visit with every server stopped: the app and the model come from the caches', { timeout: 600_000 }, async () => {
  assert.ok(firstImage, 'needs the first-visit test');
  // The first visit's URL (same origin), both its servers closed: only the service worker and
  // IndexedDB can answer.
  const browser = await launchBrowser(profile);
  try {
    // First a half-deployed or failing site on the app's origin: every file of the shell answers
    // 404 or 500. The service worker must keep serving its complete cached copy.
    const broken = createServer((req, res) => res.writeHead(req.url.includes('.js') ? 500 : 404).end('broken deploy'));
    await new Promise((ok) => broken.listen(Number(new URL(firstVisitUrl).port), '127.0.0.1', ok));
    try {
      const { page: p, logs: l } = await openPage(browser);
      await p.goto(firstVisitUrl);
      await ready(p);
      assert.equal(await p.evaluate(() => document.title), 'webdiffusion', l.join('\n'));
      await p.close();
    } finally {
      await new Promise((ok) => broken.close(ok));
      broken.closeAllConnections?.();
    }
    const { page, logs } = await openPage(browser);
    const t0 = Date.now();
    await page.goto(firstVisitUrl);
    await ready(page);
    assert.equal(await load(page), null, logs.join('\n'));
    const s = await page.evaluate(() => window.webdiffusion.state);
    assert.equal(s.download.requests, 0, 'no network request for weights');
    await page.evaluate((r) => window.webdiffusion.generate(r), REQUEST);
    const warmMs = Date.now() - t0;
    const again = await rgbaOf(page);
    assert.equal(again.rgba, firstImage.rgba, 'the same seed gives the same image from the cache');
    console.log(`returning visit, offline: page + model from cache to first image ${(warmMs / 1000).toFixed(1)} s (GPU load ${s.timings.loadMs} ms)`);
  } finally {
    await browser.close();
  }
});

test('a download cut mid-file resumes without fetching the stored chunks again', { timeout: 600_000 }, async () => {
  const unetSize = statSync(join(ROOT, 'models', UNET)).size;
  const cutFrom = 3 * CHUNK; // chunks 0..2 of the U-Net arrive, every later one is cut
  assert.ok(unetSize > cutFrom + CHUNK, 'the U-Net must span more than four chunks');
  const { server: app, url } = await serveApp();
  const { server: cdn, url: cdnUrl } = await serveCdn({ cutAfter: { path: UNET, bytes: 1000, from: cutFrom, times: Infinity } });
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    await page.goto(pageUrl(url, cdnUrl));
    await ready(page);
    const err = await load(page);
    assert.ok(err && /unet|connection|fetch|network/i.test(err), `the cut download fails with a message: ${err}`);
    const before = cdn.stats.paths[`/models/${UNET}`];
    assert.ok(before.requests > 3, 'the cut chunks were retried');
    // The visitor reloads; the CDN works again.
    cdn.setFaults({});
    cdn.resetStats();
    await page.reload();
    await ready(page);
    assert.equal(await load(page), null, logs.join('\n'));
    const after = cdn.stats.paths[`/models/${UNET}`];
    const starts = after.ranges.map((r) => Number(/bytes=(\d+)-/.exec(r)[1])).sort((a, b) => a - b);
    assert.ok(starts.every((s) => s >= cutFrom), `re-fetched ranges ${after.ranges.join(', ')} must all start at or after ${cutFrom}`);
    assert.equal(after.bytes, unetSize - cutFrom, 'exactly the missing bytes of the U-Net were fetched');
    const s = await page.evaluate(() => window.webdiffusion.state);
    assert.ok(s.download.bytesFromCache >= cutFrom, `bytes from the cache: ${s.download.bytesFromCache}`);
    console.log(`resume: U-Net ${unetSize} B; after the reload ${after.requests} U-Net requests, ${after.bytes} B (stored before: ${cutFrom} B); whole model ${s.download.bytesFetched} B fetched, ${s.download.bytesFromCache} B from cache`);
  } finally {
    await browser.close();
    app.close();
    cdn.close();
  }
});

test('a corrupted chunk is detected, never stored, and fetched again', { timeout: 600_000 }, async () => {
  const offset = CHUNK + 12345; // inside the U-Net's second chunk
  const { server: app, url } = await serveApp();
  const { server: cdn, url: cdnUrl } = await serveCdn({ corrupt: { path: UNET, offset, times: 1 } });
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    await page.goto(pageUrl(url, cdnUrl));
    await ready(page);
    assert.equal(await load(page), null, logs.join('\n'));
    const unet = cdn.stats.paths[`/models/${UNET}`];
    const chunks = Math.ceil(statSync(join(ROOT, 'models', UNET)).size / CHUNK);
    assert.ok(unet.requests > chunks, `the corrupt file was fetched again (${unet.requests} requests for ${chunks} chunks)`);
    // What IndexedDB holds is the CDN's file, byte for byte.
    const stored = await page.evaluate(async ([id, path]) => {
      const store = await import('/store.js');
      const blob = await store.getFileBlob(id, path);
      const digest = await crypto.subtle.digest('SHA-256', await blob.arrayBuffer());
      return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
    }, [MODEL, 'unet/diffusion_pytorch_model.safetensors']);
    assert.equal(stored, sha256(join(ROOT, 'models', UNET)));
    console.log(`corruption at byte ${offset}: detected, ${unet.requests} U-Net requests for ${chunks} chunks, stored copy verified`);
  } finally {
    await browser.close();
    app.close();
    cdn.close();
  }
});

test('cancel stops within one step and the page stays responsive while generating', { timeout: 600_000 }, async () => {
  const { server: app, url } = await serveApp();
  const { server: cdn, url: cdnUrl } = await serveCdn();
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    await page.goto(pageUrl(url, cdnUrl));
    await ready(page);
    assert.equal(await load(page), null, logs.join('\n'));
    await page.evaluate(() => {
      window.longest = 0;
      new PerformanceObserver((l) => l.getEntries().forEach((e) => { window.longest = Math.max(window.longest, e.duration); }))
        .observe({ type: 'longtask', buffered: false });
    });
    const steps = 6;
    const run = page.evaluate((r) => window.webdiffusion.generate(r), { ...REQUEST, steps });
    await page.waitForFunction(() => window.webdiffusion.state.steps.length >= 1, null, { timeout: 300_000, polling: 50 });
    const cancelledAt = await page.evaluate(() => { window.webdiffusion.cancel(); return window.webdiffusion.state.steps.length; });
    const result = await run;
    assert.equal(result.cancelled, true);
    const ran = (await page.evaluate(() => window.webdiffusion.state.steps)).length;
    assert.ok(ran <= cancelledAt + 1, `cancelled after step ${cancelledAt}, ${ran} steps ran`);
    const longest = await page.evaluate(() => window.longest);
    console.log(`cancel: requested after ${cancelledAt} of ${steps} steps, ${ran} ran; the main thread's longest task while generating ${longest} ms`);
    assert.ok(longest < 100, `a ${longest} ms task blocked the page`);
  } finally {
    await browser.close();
    app.close();
    cdn.close();
  }
});
