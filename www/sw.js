// The service worker: keeps the app shell (page, scripts, wasm, catalog) so the page opens with
// no network after one visit. Model weights never pass through here — they live in IndexedDB,
// written by download.js — and neither do Range requests or other origins.
//
// Network first, cache as the fallback: online visitors always get matching files (the wasm
// glue and the wasm binary must come from the same build, and so must app.js and worker.js),
// offline ones the last complete set. Bump VERSION when the list changes.

const VERSION = 13;
const CACHE = `webdiffusion-shell-v${VERSION}`;
const SHELL = [
  './',
  'index.html',
  'style.css',
  'app.js',
  'worker.js',
  'store.js',
  'download.js',
  'download-net.js',
  'download-plan.js',
  'download-chunks.js',
  'download-verify.js',
  'convert.js',
  'convert-pool.js',
  'convert-worker.js',
  'origins.js',
  'form.js',
  'gallery.js',
  'checkpoint.js',
  'loras.js',
  'entries.js',
  'init-image.js',
  'ui.js',
  'previews.js',
  'mask-editor.js',
  'catalog.json',
  'pkg/webdiffusion.js',
  'pkg/webdiffusion_bg.wasm',
];
// Pages a deployment may leave out; the app works without them.
const OPTIONAL = ['selftest.html', 'selftest.js', 'bench.html', 'bench.js'];
// A stalled network (captive portal, "lie-fi") should not hold the page longer than this.
const NETWORK_TIMEOUT_MS = 4000;

const shellUrls = () => new Set([...SHELL, ...OPTIONAL].map((p) => new URL(p, self.registration.scope).href));

self.addEventListener('install', (ev) => {
  ev.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    // All of the shell or nothing: an install that could not fetch a file fails, so the worker
    // that kept the last complete shell stays in charge (activating this one would delete it,
    // and a page whose wasm and glue come from two builds does not start). addAll refuses
    // non-2xx answers too.
    try {
      await cache.addAll(SHELL.map((p) => new Request(p, { cache: 'reload' })));
    } catch (e) {
      await caches.delete(CACHE);
      throw e;
    }
    await Promise.all(OPTIONAL.map((p) => cache.add(new Request(p, { cache: 'reload' })).catch(() => {})));
    await self.skipWaiting();
  })());
});

self.addEventListener('activate', (ev) => {
  ev.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith('webdiffusion-shell-') && name !== CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', (ev) => {
  const req = ev.request;
  if (req.method !== 'GET' || req.headers.has('range')) return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin) return;
  url.search = ''; // ?model=…&autoload=1 is still the same page
  url.hash = '';
  const key = url.href === self.registration.scope ? new URL('index.html', self.registration.scope).href : url.href;
  if (!shellUrls().has(key)) return;
  ev.respondWith(networkFirst(key));
});

async function networkFirst(key) {
  const cache = await caches.open(CACHE);
  try {
    // Revalidate (ETag -> 304 is cheap) rather than trust the HTTP cache's freshness guess.
    const res = await withTimeout(fetch(key, { cache: 'no-cache' }), NETWORK_TIMEOUT_MS);
    if (res.ok && res.status === 200) {
      await cache.put(key, res.clone());
      return res;
    }
    // A server error or a half-deployed site (404 for a file of the shell) must not replace a
    // working copy: the cached one is a complete, matching set.
    const hit = await cache.match(key);
    return hit || res;
  } catch (e) {
    const hit = await cache.match(key);
    if (hit) return hit;
    throw e;
  }
}

function withTimeout(promise, ms) {
  return new Promise((ok, fail) => {
    const t = setTimeout(() => fail(new Error('network timeout')), ms);
    promise.then((v) => {
      clearTimeout(t);
      ok(v);
    }, (e) => {
      clearTimeout(t);
      fail(e);
    });
  });
}
