// Shared set-up for browser tests: the app served on 127.0.0.1 and headless Chromium with
// WebGPU (SwiftShader), in a fresh profile.

import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from '../../tools/serve.mjs';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const ARTIFACTS = join(ROOT, 'test-artifacts');

/// The app on 127.0.0.1; `pkg` replaces the wasm build folder (the browser benchmark's driver
/// runs against a stub engine with it, tools/bench/stub-pkg).
export async function serveApp({ pkg = join(ROOT, 'pkg') } = {}) {
  const server = await serve({
    host: '127.0.0.1',
    port: 0,
    mounts: [
      { url: '/pkg/', dir: pkg },
      { url: '/fixtures/', dir: join(ROOT, 'tests/fixtures') },
      { url: '/test/', dir: join(ROOT, 'tests/browser/pages') },
      { url: '/artifacts/', dir: ARTIFACTS },
      { url: '/', dir: join(ROOT, 'www') },
    ],
  });
  return { server, url: `http://127.0.0.1:${server.address().port}/` };
}

/// The CDN stand-in: `models/` on its own origin (another port), like Hugging Face is for the
/// page. `opts` go to serve() (fault injection: cutAfter, corrupt).
export async function serveCdn(opts = {}) {
  const server = await serve({ host: '127.0.0.1', port: 0, mounts: [{ url: '/models/', dir: join(ROOT, 'models') }], ...opts });
  return { server, url: `http://127.0.0.1:${server.address().port}/models/` };
}

export const newProfile = () => mkdtempSync(join(tmpdir(), 'webdiffusion-chromium-'));

/// Headless Chromium with WebGPU in `profile` (a fresh one unless given: pass the same one to
/// come back as a returning visitor).
export async function launchBrowser(profile = newProfile()) {
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--enable-unsafe-webgpu',
      '--no-sandbox',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
  mkdirSync(ARTIFACTS, { recursive: true });
  return context;
}

/// A new page whose console output and page errors are collected in `logs` (for failure messages).
export async function openPage(browser) {
  const page = await browser.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  return { page, logs };
}

/// Max per-channel difference between the page's last image and a PNG served at `pngUrl`, and
/// the PNG's size (Infinity when the sizes differ).
export function diffWithPng(page, pngUrl) {
  return page.evaluate(async (url) => {
    const img = window.webdiffusion.state.lastImage;
    const rgba = Uint8Array.from(atob(img.rgba), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(await (await fetch(url)).blob());
    const ctx = new OffscreenCanvas(bitmap.width, bitmap.height).getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    const native = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
    if (bitmap.width !== img.width || bitmap.height !== img.height) return { max: Infinity, size: [bitmap.width, bitmap.height] };
    let max = 0;
    for (let i = 0; i < rgba.length; i++) if (i % 4 !== 3) max = Math.max(max, Math.abs(rgba[i] - native[i]));
    return { max, size: [bitmap.width, bitmap.height] };
  }, pngUrl);
}

/// What IndexedDB holds for model `id`: bytes per stored path, and the manifest's text.
export function storedModel(page, id) {
  return page.evaluate(async (modelId) => {
    const db = await new Promise((ok, fail) => {
      const r = indexedDB.open('webdiffusion');
      r.onsuccess = () => ok(r.result);
      r.onerror = () => fail(r.error);
    });
    const range = IDBKeyRange.bound([modelId], [modelId, []]);
    const t = db.transaction(['chunks'], 'readonly').objectStore('chunks');
    const [keys, blobs] = await Promise.all([t.getAllKeys(range), t.getAll(range)].map((r) => new Promise((ok) => { r.onsuccess = () => ok(r.result); })));
    const sizes = {};
    keys.forEach(([, path], i) => { sizes[path] = (sizes[path] || 0) + blobs[i].size; });
    const mi = keys.findIndex(([, path]) => path === 'manifest.json');
    return { sizes, manifest: mi >= 0 ? await blobs[mi].text() : null };
  }, id);
}

/// A stroke over the element `selector` as a mouse or finger makes it, through its pointer
/// events: down at `from`, `moves` moves along the line, up at `to` (fractions of its box).
export function paintStroke(page, selector, from, to, moves) {
  return page.$eval(selector, (c, { from, to, moves }) => {
    const r = c.getBoundingClientRect();
    const at = ([fx, fy]) => ({ clientX: r.left + fx * r.width, clientY: r.top + fy * r.height, pointerId: 1, bubbles: true, isPrimary: true });
    const along = (i) => [from[0] + ((to[0] - from[0]) * i) / moves, from[1] + ((to[1] - from[1]) * i) / moves];
    c.dispatchEvent(new PointerEvent('pointerdown', at(from)));
    for (let i = 1; i <= moves; i++) c.dispatchEvent(new PointerEvent('pointermove', at(along(i))));
    c.dispatchEvent(new PointerEvent('pointerup', at(to)));
  }, { from, to, moves });
}
