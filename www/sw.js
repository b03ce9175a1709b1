// The service worker: keeps the app shell (page, scripts, wasm, catalog) so the page opens with
// no network after one visit. Model weights never pass through here — they live in IndexedDB,
// written by download.js — and neither do Range requests or other origins.
//
// Network first, cache as the fallback: online visitors always get matching files (the wasm
// glue and the wasm binary must come from the same build, and so must app.js and worker.js),
// offline ones the last complete set. Bump VERSION when the list changes.

const VERSION = 4;
const CACHE = `webdiffusion-shell-v${VERSION}`;
const SHELL = [
  './',
  'index.html',
  'style.css',
  'app.js',
  'worker.js',
  'store.js',
  'download.js',
  'convert.js',
  'convert-pool.js',
  'convert-worker.js',
  'catalog.json',
  'selftest.html',
  'selftest.js',
  'bench.html',
  'bench.js',
  'pkg/webdiffusion.js',
  'pkg/webdiffusion_bg.wasm',
];
// A stalled network (captive portal, "lie-fi") should not hold the page longer than this.
const NETWORK_TIMEOUT_MS = 4000;

const shellUrls = () => new Set(SHELL.map((p) => new URL(p, self.registration.scope).href));

self.addEventListener('install', (ev) => {
  ev.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    // One by one, so a missing optional file (no self-test page) does not void the rest.
    await Promise.all(SHELL.map((p) => cache.add(new Request(p, { cache: 'reload' })).catch((e) => {
      console.warn(`webdiffusion sw: could not cache ${p}: ${e.message}`);
    })));
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
    if (res.ok && res.status === 200) await cache.put(key, res.clone());
    return res;
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
