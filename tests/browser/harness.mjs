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
