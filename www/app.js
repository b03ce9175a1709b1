// The page: model catalog and cache, prompt form, progress, live preview, result and gallery.
// The GPU work happens in worker.js; this file only talks to it and draws.
//
// URL parameters (tests and sharing): ?model=<id> preselects a catalog model, &autoload=1 loads
// it at once (downloading if needed), &cdn=<base url> replaces the catalog's CDN base for
// relative model URLs, &chunk=<bytes> sets the download chunk size, &sw=0 skips the service worker.
//
// Test hooks on window.webdiffusion: `state` (see below), `load(id)`, `generate(request)`,
// `cancel()`, `catalog`, `loadEntry(entry)`, `addEntry(entry)` (offered, not loaded),
// `taesdEntry` (replaces the catalog's TAESD).

import * as store from './store.js';
import { addToGallery, renderGallery } from './gallery.js';
import { enforceLimits, fillSchedulers, randomSeed, readForm, setForm } from './form.js';
import { catalogHosts, refuseOrigin } from './origins.js';
import { wireCheckpoints } from './checkpoint.js';
import { customEntry, workerEntry } from './entries.js';
import { activeLoras, wireLoras } from './loras.js';
import { initImageFor, maskFor, wireInitImage } from './init-image.js';
import { fmtTime, message, notice, toBase64 } from './ui.js';
import { taesdRequest } from './previews.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const LAST_MODEL = 'webdiffusion.lastModel';
const FORM = 'webdiffusion.form';

const state = {
  ready: false, // the worker has a GPU device
  modelLoaded: false,
  model: null, // {id, name, sizeStep, quant, info, ...} of the loaded model
  generating: false,
  loading: false,
  lastPreview: null, // {width, height} of the last step's preview (TAESD's are full size)
  lastImage: null, // {width, height, rgba: base64, seed, parameters, loras: [[name, strength]] merged}
  lastError: null,
  steps: [], // [[index, total]] of the current or last generation
  download: { requests: 0, bytesFetched: 0, bytesFromCache: 0 }, // of the last load
  // downloadMs/loadMs: the last load's download and GPU load (read + upload) in the worker;
  // firstImageMs: performance.now() when the first image of this page view was done.
  timings: { downloadMs: null, loadMs: null, firstImageMs: null },
  prepared: null, // {pipelines, ms, width, height}: built by the worker after the last load
  wasmHeapBytes: null, // wasm linear memory after the last load or image (it only grows: the peak)
  info: null, // adapter info from the engine
  f16Fallback: null,
  recoveries: 0,
  restarts: 0, // workers replaced after the engine trapped
};
const api = {
  state, load, generate, cancel, catalog: [], loadEntry,
  addEntry: (entry) => { customEntries.set(entry.id, entry); renderModelSelect(); },
  maskFor,
  // Test hooks: faults the engine cannot be made to have on purpose.
  testTrap: () => call('testTrap'),
  testHang: (ms) => call('testHang', { ms }),
  testStall: () => call('testStall'),
  testLoseDevice: () => call('testLoseDevice'),
  setWatchdog: (limits) => Object.assign(watchdog, limits),
};
window.webdiffusion = api;

// ---- small helpers -----------------------------------------------------------------------

const fmtBytes = store.formatBytes;

function setStatus(text, isError = false) {
  $('model-status').textContent = text;
  $('model-status').classList.toggle('error', isError);
}

function fail(where, e) {
  state.lastError = message(e);
  console.error(`webdiffusion: ${where}:`, e);
  return state.lastError;
}

// ---- the worker --------------------------------------------------------------------------

let worker = null;
let nextId = 1;
const pending = new Map(); // id -> {resolve, reject, onEvent}
const FINAL = new Set(['ready', 'models', 'loaded', 'done', 'cancelled', 'deleted', 'tokens', 'error']);

// The watchdog: a worker whose thread is stuck stops its once-a-second `alive`; one that waits
// forever on something (a GPU map that never completes) keeps beating but reports no progress.
// Either way, with requests waiting, it is replaced as a trapped one is. Progress may be slow
// (a 512² step on a software GPU takes minutes), so that limit is long. Tests shorten both.
const watchdog = { silenceMs: 60_000, progressMs: 15 * 60_000, lastHeard: 0, lastProgress: 0, timer: null };

function watch() {
  if (watchdog.timer) return;
  watchdog.timer = setInterval(() => {
    if (!pending.size || restarting) return;
    const now = performance.now();
    const secs = (ms) => `${Math.round(ms / 1000)} s`;
    if (now - watchdog.lastHeard > watchdog.silenceMs) restartWorker(`it did not answer for ${secs(now - watchdog.lastHeard)}`);
    else if (now - watchdog.lastProgress > watchdog.progressMs) restartWorker(`it made no progress for ${secs(now - watchdog.lastProgress)}`);
  }, Math.min(1000, watchdog.silenceMs / 4));
}

function startWorker() {
  worker = new Worker(new URL('worker.js', import.meta.url), { type: 'module' });
  watchdog.lastHeard = watchdog.lastProgress = performance.now();
  worker.onmessage = (ev) => onWorkerMessage(ev.data);
  worker.onerror = (ev) => {
    // A module that fails to load (missing /pkg build, a syntax error) lands here, not in onmessage.
    ev.preventDefault();
    const text = `The GPU worker failed: ${ev.message || 'it could not start (is the wasm build in /pkg/?)'}`;
    fail('worker', text);
    notice('worker', text, 'error');
    for (const p of pending.values()) p.reject(new Error(text));
    pending.clear();
  };
}

/// The engine trapped: its worker is unusable. Every request still waiting on it fails with the
/// reason, a new worker starts, and the model that was loaded comes back from the cache, so the
/// next request works.
let restarting = null;
function restartWorker(reason) {
  if (restarting) return restarting;
  const text = `The engine stopped (${reason}); it is being restarted.`;
  worker?.terminate();
  worker = null;
  state.ready = false;
  for (const p of pending.values()) p.reject(Object.assign(new Error(text), { trapped: true }));
  pending.clear();
  const last = state.model;
  state.model = null;
  state.modelLoaded = false;
  state.restarts++;
  notice('trap', `${text} Reloading the model from this device…`, 'info');
  restarting = (async () => {
    // Let the failed request's own handler finish (it clears the busy flags) first.
    await new Promise((r) => setTimeout(r, 0));
    await initWorker();
    updateButtons();
    if (last && isCached(last.id)) await load(last.id, { quant: last.quant });
    notice('trap', `The engine was restarted (${reason})${last && isCached(last.id) ? '; the model was reloaded from this device' : ''}.`, 'info');
  })().catch((e) => {
    notice('trap', `The engine could not be restarted: ${fail('restart', e)}`, 'error');
  }).finally(() => {
    restarting = null;
    updateButtons();
  });
  return restarting;
}

function onWorkerMessage(m) {
  watchdog.lastHeard = performance.now();
  if (m.type === 'alive') return;
  watchdog.lastProgress = watchdog.lastHeard;
  if (m.type === 'trapped' || m.trapped) restartWorker(`an internal error: ${m.message}`);
  if (m.type === 'recovering') {
    state.recoveries++;
    notice('lost', `The GPU device was lost (${m.reason}). Starting a new one and reloading the model…`);
  } else if (m.type === 'recovered') {
    notice('lost', 'The GPU device was lost and has been recovered: the model was reloaded and the request retried once.', 'info');
  }
  if (m.type === 'prepared') state.prepared = { pipelines: m.pipelines, ms: m.ms, width: m.width, height: m.height };
  const p = pending.get(m.id);
  if (!p) {
    if (m.type === 'error') notice('worker', fail(m.op, m.message), 'error');
    return;
  }
  if (!FINAL.has(m.type)) {
    p.onEvent?.(m);
    return;
  }
  pending.delete(m.id);
  if (m.type === 'error') {
    const e = new Error(m.message);
    e.op = m.op;
    e.lost = m.lost;
    e.loaded = m.loaded;
    p.reject(e);
  } else p.resolve(m);
}

function call(type, data = {}, onEvent = null) {
  if (!worker) return Promise.reject(new Error('The GPU worker is not running.'));
  const id = nextId++;
  return new Promise((resolve, reject) => {
    if (!pending.size) watchdog.lastProgress = performance.now();
    pending.set(id, { resolve, reject, onEvent });
    worker.postMessage({ type, id, ...data });
    watch();
  });
}

// ---- catalog and cache -------------------------------------------------------------------

let catalog = { models: [] };
let cdnBase = '';
let cachedRecords = [];
const customEntries = new Map();

async function loadCatalog() {
  try {
    const r = await fetch('catalog.json');
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    catalog = await r.json();
  } catch (e) {
    notice('catalog', `The model catalog could not be loaded (${message(e)}). Cached models still work.`, 'error');
    catalog = { models: [] };
  }
  for (const m of catalog.models) m.listedUrl = m.url;
  const listedBase = new URL(catalog.cdn || 'models/', location.href).href;
  setCdnBase(listedBase);
  const wanted = params.get('cdn');
  if (wanted) cdnDecision = decideCdn(wanted, listedBase);
}

let cdnDecision = Promise.resolve();

function setCdnBase(base) {
  cdnBase = base.endsWith('/') ? base : `${base}/`;
  for (const m of catalog.models) {
    m.url = new URL(m.listedUrl, cdnBase).href;
    if (!m.url.endsWith('/')) m.url += '/';
  }
  api.catalog = catalog.models;
}

// `?cdn=` comes from a link anyone can craft; a model's bytes are trusted input to the engine, so
// another host replaces the catalog's only if it is one the catalog already names, the page's own
// origin, a local server for a local page (development and tests), or the visitor says so.
async function decideCdn(wanted, listedBase) {
  let u;
  try {
    u = new URL(wanted, location.href);
  } catch {
    notice('cdn', `Ignored ?cdn=${wanted}: not a URL.`, 'error');
    return;
  }
  const why = refuseOrigin(u.href, location.origin);
  if (why) {
    notice('cdn', `Ignored ?cdn=${wanted}: ${why}.`, 'error');
    return;
  }
  const loopback = (h) => ['127.0.0.1', 'localhost'].includes(h);
  const known = u.origin === location.origin || catalogHosts(catalog, listedBase).has(u.host) ||
    (loopback(location.hostname) && loopback(u.hostname));
  if (known || (await askNotice('cdn', `This link asks to download the catalog's models from ${u.host} instead of the catalog's own host. Only accept if you trust ${u.host}.`, `Use ${u.host}`))) {
    setCdnBase(u.href);
    renderModelSelect();
  }
}

/// A notice with a choice; resolves true when accepted, false when dismissed.
function askNotice(key, text, accept) {
  notice(key, text);
  const el = document.querySelector(`.notice[data-key="${key}"]`);
  return new Promise((ok) => {
    const button = (label, answer, cls) => {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = cls;
      b.textContent = label;
      b.onclick = () => {
        notice(key, null);
        ok(answer);
      };
      return b;
    };
    el.append(' ', button(accept, true, 'secondary'), ' ', button('No', false, 'secondary'));
  });
}

function entries() {
  const list = [...catalog.models];
  for (const r of cachedRecords) {
    if (r.entry?.component) continue; // TAESD and the like: parts of a model, not models
    if (!list.some((e) => e.id === r.id)) list.push({ ...(r.entry || {}), id: r.id, name: r.name, url: r.url, bytes: r.bytes });
  }
  for (const e of customEntries.values()) if (!list.some((x) => x.id === e.id)) list.push(e);
  return list;
}

const findEntry = (id) => entries().find((e) => e.id === id) || null;
const isCached = (id) => cachedRecords.some((r) => r.id === id);

async function refreshCache() {
  try {
    cachedRecords = await store.listModels();
  } catch (e) {
    cachedRecords = [];
    notice('idb', `This browser does not let the page store models (IndexedDB: ${message(e)}). Private windows often block it.`, 'error');
  }
  renderModelSelect();
  renderCached();
  renderStorage();
}

let checkpoints = null;

function renderModelSelect() {
  checkpoints?.refresh();
  const select = $('model');
  const current = select.value;
  select.replaceChildren(...entries().map((e) => {
    const o = document.createElement('option');
    o.value = e.id;
    const size = e.bytes ? ` · ${fmtBytes(e.bytes)}` : '';
    o.textContent = `${e.name}${size}${isCached(e.id) ? ' · on this device' : ''}`;
    return o;
  }));
  const want = current || params.get('model') || localStorage.getItem(LAST_MODEL) || catalog.default;
  if (want && findEntry(want)) select.value = want;
  onModelSelected();
}

function onModelSelected() {
  const e = findEntry($('model').value);
  if (!e) {
    $('model-note').textContent = 'No model available.';
    return;
  }
  const where = e.source ? `Source: ${e.source}` : '';
  const size = e.bytes ? `Download: ${fmtBytes(e.bytes)}` : '';
  const license = e.license ? `License: ${e.license}` : '';
  $('model-note').textContent = [e.description, [where, size, license].filter(Boolean).join(' · ')].filter(Boolean).join(' ');
  $('quant').value = e.quant || 'none';
  updateButtons();
}

function renderCached() {
  const ul = $('cached');
  if (!cachedRecords.length) {
    const li = document.createElement('li');
    li.textContent = 'No models stored yet.';
    ul.replaceChildren(li);
    return;
  }
  ul.replaceChildren(...cachedRecords.map((r) => {
    const li = document.createElement('li');
    const label = document.createElement('span');
    label.textContent = `${r.name} — ${fmtBytes(r.bytes)}${state.model && state.model.id === r.id ? ' (loaded)' : ''}`;
    const del = document.createElement('button');
    del.className = 'danger';
    del.type = 'button';
    del.textContent = 'Delete this model';
    del.disabled = state.loading || state.generating;
    del.onclick = () => deleteModel(r).catch((e) => setStatus(fail('delete', e), true));
    li.append(label, del);
    return li;
  }));
}

async function renderStorage() {
  const { usage, quota, persisted } = await store.storageEstimate();
  $('storage').textContent = quota
    ? `This site stores ${fmtBytes(usage)}; the browser allows up to ${fmtBytes(quota)}. ${persisted ? 'Storage is persistent (the browser will not evict it).' : 'The browser may evict it when the disk runs low.'}`
    : 'This browser does not report its storage use.';
}

async function deleteModel(r) {
  if (!confirm(`Delete ${r.name} (${fmtBytes(r.bytes)}) from this device? It would have to be downloaded again.`)) return;
  if (worker && state.ready) await call('delete', { modelId: r.id });
  else await store.deleteModel(r.id);
  if (state.model && state.model.id === r.id) {
    state.model = null;
    state.modelLoaded = false;
    setStatus('The model was deleted; load one to generate.');
  }
  await refreshCache();
  updateButtons();
}

// ---- loading -----------------------------------------------------------------------------

/// Loads a model described by a catalog-like entry (tests: mirrors, formats).
function loadEntry(entry, opts = {}) {
  customEntries.set(entry.id, entry);
  renderModelSelect();
  return load(entry.id, opts);
}

/// Loads a model by catalog id (or a custom base URL), downloading what is not cached.
/// Resolves with the worker's `loaded` message; rejects with the error shown on the page.
async function load(idOrUrl = $('model').value, opts = {}) {
  if (state.loading || state.generating) throw new Error('Busy: wait for the current download or generation.');
  let entry = findEntry(idOrUrl);
  if (!entry && /^[a-z][a-z0-9+.-]*:/i.test(idOrUrl)) {
    entry = customEntry(idOrUrl);
    customEntries.set(entry.id, entry);
    renderModelSelect();
  }
  if (!entry) throw new Error(`Unknown model ${idOrUrl}`);
  if ($('model').value !== entry.id) {
    $('model').value = entry.id;
    onModelSelected();
  }
  const quant = opts.quant || $('quant').value || entry.quant || 'none';
  state.loading = true;
  state.modelLoaded = false;
  state.lastError = null;
  state.download = { requests: 0, bytesFetched: 0, bytesFromCache: 0 };
  updateButtons();
  renderCached();
  const cached = isCached(entry.id);
  setStatus(cached ? `Loading ${entry.name} from this device…` : `Downloading ${entry.name}…`);
  $('download').hidden = false;
  $('download-bar').value = 0;
  $('download-text').textContent = '';
  try {
    if (!state.ready) await initWorker();
    const chunk = Number(params.get('chunk')) || undefined;
    // A local checkpoint's File goes as itself (structured clone: a handle, not the bytes).
    const file = entry.checkpoint && entry.checkpoint.file;
    const m = await call('load', { entry: workerEntry(entry), file, quant, chunkSize: chunk }, onLoadEvent);
    if (m.type === 'cancelled') {
      throw Object.assign(new Error('Download stopped. What was fetched is kept; loading again resumes it.'), { name: 'AbortError', loaded: m.loaded });
    }
    state.model = m.model;
    state.modelLoaded = true;
    state.download = m.download;
    state.timings.downloadMs = m.downloadMs;
    state.timings.loadMs = m.ms;
    state.wasmHeapBytes = m.wasmHeapBytes;
    localStorage.setItem(LAST_MODEL, entry.id);
    applyModelDefaults(entry, m.model);
    countTokens();
    const fetched = m.download.bytesFetched
      ? `, ${fmtBytes(m.download.bytesFetched)} downloaded from ${m.download.host || 'the network'}`
      : ', from this device';
    setStatus(`${m.model.name} is ready (${(m.ms / 1000).toFixed(1)} s to load${fetched}; ${quantName(m.model.quant)}).`);
    $('download').hidden = true;
    return m;
  } catch (e) {
    const text = fail('load', e);
    // A failed download leaves the previous model on the GPU, still usable.
    state.modelLoaded = !!(state.model && e.loaded === state.model.id);
    if (!state.modelLoaded) state.model = null;
    setStatus(state.modelLoaded ? `${text} (${state.model.name} is still loaded.)` : text, e.name !== 'AbortError');
    throw e;
  } finally {
    state.loading = false;
    await refreshCache();
    updateButtons();
  }
}

const quantName = (q) => ({ none: 'weights as published', q8_0: '8-bit weights', q4_0: '4-bit weights', q3_0: '3-bit U-Net weights' })[q] || q;

function onLoadEvent(m) {
  const bar = $('download-bar');
  const text = $('download-text');
  if (m.type === 'download') {
    state.download = { requests: m.requests, bytesFetched: m.bytesFetched, bytesFromCache: m.bytesFromCache };
    bar.value = m.total ? m.done / m.total : 0;
    if (m.phase === 'mirror') {
      text.textContent = `That host failed (${m.reason}); trying the mirror ${m.host}…`;
      return;
    }
    if (m.phase === 'verify') {
      text.textContent = `Checking ${m.file}…`;
      return;
    }
    const parts = [`${fmtBytes(m.done)} of ${fmtBytes(m.total)}`];
    if (m.phase === 'convert') {
      setStatus(`${m.host === 'this device' ? 'Reading and converting' : 'Downloading and converting'} to ${quantName(m.quant)} (${m.filesDone + (m.done < m.total ? 1 : 0)} of ${m.files} weight files)…`);
      if (m.workers > 1) parts.push(`quantizing on ${m.workers} cores`);
      if (m.unverified?.length) parts.push(`no known sha256 for ${m.unverified.join(', ')}`);
    }
    if (m.speed) parts.push(`${(m.speed / 1e6).toFixed(1)} MB/s`);
    if (m.eta !== null && m.eta !== undefined && m.done < m.total) parts.push(`${fmtTime(m.eta)} left`);
    if (m.bytesFromCache) parts.push(`${fmtBytes(m.bytesFromCache)} already here`);
    text.textContent = parts.join(' · ');
  } else if (m.type === 'loading') {
    setStatus('Loading onto the GPU…');
    bar.value = m.total ? m.done / m.total : 0;
    text.textContent = `Reading weights: ${Math.round((100 * m.done) / (m.total || 1))}%`;
  }
}

function applyModelDefaults(entry, model) {
  const d = { ...(entry.defaults || {}) };
  const info = model.info || {};
  d.width ??= info.defaultWidth;
  d.height ??= info.defaultHeight;
  d.scheduler ??= info.scheduler;
  d.steps ??= info.steps;
  d.guidance ??= info.guidance;
  const step = model.sizeStep || 8;
  for (const k of ['width', 'height']) {
    $(k).step = step;
    $(k).min = step;
  }
  setForm(d);
  if (!$('prompt').value && entry.examplePrompt) $('prompt').value = entry.examplePrompt;
  $('prompt').placeholder = entry.examplePrompt || '';
  $('size-hint').textContent = `Width and height: multiples of ${step} for this model.`;
}

// ---- generation ----------------------------------------------------------------------------

/// Generates one image. `overrides` replaces form fields ({prompt, negativePrompt, steps,
/// guidance, width, height, scheduler, seed}); seed null or absent with "random" ticked picks one.
/// Resolves {cancelled, width, height, seed, ms, parameters}.
async function generate(overrides = {}) {
  if (!state.modelLoaded) throw new Error('Load a model first.');
  if (state.generating || state.loading) throw new Error('Busy: wait for the current download or generation.');
  setForm(overrides);
  const req = { ...readForm(), ...overrides };
  if (req.seed === null || req.seed === undefined || req.seed === '') req.seed = randomSeed();
  if (!Number.isFinite(Number(req.seed))) throw new Error(`Seed: "${req.seed}" is not a number.`);
  req.seed = Math.floor(Math.abs(Number(req.seed))) % 2 ** 53;
  enforceLimits(req, state.model.sizeStep || 8);
  if (!req.prompt) req.prompt = $('prompt').placeholder || '';
  if (!req.negativePrompt) delete req.negativePrompt;
  try {
    localStorage.setItem(FORM, JSON.stringify({ prompt: req.prompt, negativePrompt: req.negativePrompt || '' }));
  } catch {
    // storage full or blocked: remembering the prompt is optional
  }

  state.generating = true;
  // On a phone the image card is screens below the button: bring the live preview into view.
  if (window.innerWidth < 700) $('output-card').scrollIntoView({ block: 'start' });
  state.steps = [];
  lastMsPerStep = 0;
  state.lastError = null;
  updateButtons();
  $('gen-progress').hidden = false;
  $('gen-bar').value = 0;
  $('gen-text').textContent = 'Encoding the prompt…';
  $('gen-text').classList.remove('error');
  $('result-info').textContent = `Seed ${req.seed}`;
  const t0 = performance.now();
  try {
    const init = initImageFor(req.width, req.height);
    const request = init ? { ...req, initImage: init } : req;
    const m = await call('generate', { request, loras: activeLoras(), taesd: taesdRequest(api.taesdEntry || catalog.taesd, !!init) }, onStep);
    if (m.type === 'cancelled') {
      $('gen-text').textContent = `Cancelled after ${state.steps.length} step(s).`;
      return { cancelled: true, seed: req.seed };
    }
    showImage(m.image, false);
    state.lastImage = { width: m.image.width, height: m.image.height, rgba: toBase64(m.image.rgba), seed: m.seed, parameters: m.parameters, loras: m.loras };
    if (m.wasmHeapBytes) state.wasmHeapBytes = m.wasmHeapBytes;
    if (state.timings.firstImageMs === null) state.timings.firstImageMs = performance.now();
    const secs = (performance.now() - t0) / 1000;
    const perStep = lastMsPerStep ? ` · ${(lastMsPerStep / 1000).toFixed(2)} s per step` : '';
    $('gen-text').textContent = `Done in ${secs.toFixed(1)} s${perStep}.`;
    $('gen-bar').value = 1;
    $('result-info').textContent = `Seed ${m.seed} · ${m.image.width}×${m.image.height} · ${req.steps} steps · ${req.scheduler} · ${state.model.name}`;
    const png = new Blob([m.png], { type: 'image/png' });
    setDownload(png, `webdiffusion-${req.seed}.png`);
    // Every image lands in the gallery with its own seed and parameters.
    const images = m.images || [m];
    if (images.length > 1) $('result-info').textContent += ` · ${images.length} images (seeds ${images[0].seed}–${images[images.length - 1].seed}) in the gallery`;
    for (const im of images) {
      const blob = im === images[0] ? png : new Blob([im.png], { type: 'image/png' });
      await addToGallery(state.model, { ...req, seed: im.seed }, { ...im, ms: m.ms }, blob).catch((e) => console.warn('webdiffusion: gallery', e));
    }
    await showGallery();
    return { cancelled: false, width: m.image.width, height: m.image.height, seed: m.seed, ms: m.ms, parameters: m.parameters, seeds: images.map((im) => im.seed) };
  } catch (e) {
    const text = fail('generate', e);
    if (e.loaded !== undefined && !(state.model && e.loaded === state.model.id)) {
      // The worker lost the model (a device loss it could not recover from).
      state.model = null;
      state.modelLoaded = false;
      setStatus('The model is no longer loaded; load it again.', true);
    }
    $('gen-text').textContent = text;
    $('gen-text').classList.add('error');
    throw e;
  } finally {
    state.generating = false;
    updateButtons();
    renderCached();
  }
}

let lastMsPerStep = 0;
function onStep(m) {
  if (m.type === 'loading') {
    // The LoRA set changed (the weights are read again from this device and merged), or the
    // first img2img request loads the VAE encoder.
    $('gen-text').textContent = m.what === 'encoder' ? 'Loading the VAE encoder…'
      : m.what === 'taesd' ? 'Loading TAESD for the previews (10 MB, once)…'
        : `Merging LoRAs into the weights… ${m.total ? Math.round((100 * m.done) / m.total) : 0} %`;
    return;
  }
  if (m.type !== 'step') return;
  if (m.msPerStep !== null && m.msPerStep !== undefined) lastMsPerStep = m.msPerStep;
  state.steps.push([m.index, m.total]);
  $('gen-text').classList.remove('error');
  $('gen-bar').value = (m.index + 1) / m.total;
  const per = m.msPerStep !== null && m.msPerStep !== undefined ? ` · ${(m.msPerStep / 1000).toFixed(2)} s per step` : '';
  $('gen-text').textContent = `Step ${m.index + 1} of ${m.total}${per}`;
  if (m.preview) {
    state.lastPreview = { width: m.preview.width, height: m.preview.height };
    showImage(m.preview, true);
  }
}

function cancel() {
  worker?.postMessage({ type: 'cancel' });
}

function showImage({ width, height, rgba }, preview) {
  const canvas = $('output');
  canvas.width = width;
  canvas.height = height;
  const data = new ImageData(new Uint8ClampedArray(rgba.buffer, rgba.byteOffset, width * height * 4), width, height);
  canvas.getContext('2d').putImageData(data, 0, 0);
  // Previews are tiny latent projections and small demo images would blur: show their pixels.
  canvas.classList.toggle('pixelated', preview || width < 256);
  canvas.classList.remove('empty');
  $('output-empty').hidden = true;
  if (preview) $('use-as-input').hidden = true; // only a finished image is an input
}

let downloadUrl = null;
function setDownload(blob, name) {
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = URL.createObjectURL(blob);
  const a = $('download-png');
  a.href = downloadUrl;
  a.download = name;
  a.hidden = false;
  $('use-as-input').hidden = false;
}

// ---- gallery -------------------------------------------------------------------------------

// Clicking a thumbnail restores its image and settings.
const showGallery = () => renderGallery((it) => restore(it).catch((e) => console.warn('webdiffusion: restore', e)));

/// A gallery image back on the canvas with the settings that made it.
async function restore(it) {
  if (findEntry(it.modelId) && $('model').value !== it.modelId && !state.loading) {
    $('model').value = it.modelId;
    onModelSelected();
  }
  setForm(it.request);
  const bitmap = await createImageBitmap(it.png);
  const canvas = $('output');
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext('2d').drawImage(bitmap, 0, 0);
  canvas.classList.toggle('pixelated', bitmap.width < 256);
  canvas.classList.remove('empty');
  $('output-empty').hidden = true;
  $('result-info').textContent = `Seed ${it.request.seed} · ${it.width}×${it.height} · ${it.request.steps} steps · ${it.request.scheduler} · ${it.modelName} · ${new Date(it.created).toLocaleString()}`;
  setDownload(it.png, `webdiffusion-${it.request.seed}.png`);
  if (state.model && state.model.id !== it.modelId) {
    $('size-hint').textContent = `This image was made with ${it.modelName}; load it to make it again.`;
  }
}

// ---- buttons -------------------------------------------------------------------------------

function updateButtons() {
  const busy = state.loading || state.generating;
  const id = $('model').value;
  const e = findEntry(id);
  const loadedHere = state.model && state.model.id === id && state.modelLoaded;
  $('load').disabled = busy || !e || !navigator.gpu;
  $('load').textContent = loadedHere ? 'Reload' : isCached(id) ? 'Load' : `Download${e && e.bytes ? ` (${fmtBytes(e.bytes)})` : ''} and load`;
  $('load-cancel').hidden = !state.loading;
  $('generate').disabled = busy || !state.modelLoaded;
  $('cancel').disabled = !state.generating;
  $('custom-add').disabled = busy;
}

// A1111's token count beside each prompt (`34/75`; `80/150` takes two chunks), from the loaded
// model's own tokenizer. The worker answers it between generation steps.
let tokenTimer = null;
function countTokens() {
  clearTimeout(tokenTimer);
  tokenTimer = setTimeout(async () => {
    const shown = [$('prompt-tokens'), $('negative-tokens')];
    if (!state.model || !state.modelLoaded || !worker) {
      for (const s of shown) s.textContent = '';
      return;
    }
    try {
      const texts = [$('prompt').value, $('negative').value];
      const syntax = $('prompt-syntax').value;
      const m = await call('tokens', { texts, syntax });
      (m.counts || []).forEach((c, i) => {
        shown[i].dataset.for = `${syntax}\n${texts[i]}`; // what this count is of (tests wait on it)
        const over = c.chunks > c.maxChunks;
        shown[i].textContent = c.dropped ? `${c.count}/${c.target} (${c.dropped} cut)` : `${c.count}/${c.target}`;
        shown[i].classList.toggle('over', over || c.dropped > 0);
        shown[i].title = over ? `Too long: at most ${c.maxChunks * 75} tokens.` : 'tokens / what the chunks hold (75 each)';
      });
    } catch {
      for (const s of shown) s.textContent = '';
    }
  }, 150);
}

function wireUp() {
  for (const id of ['prompt', 'negative']) $(id).addEventListener('input', countTokens);
  $('prompt-syntax').onchange = countTokens;
  $('model').onchange = () => onModelSelected();
  $('load').onclick = () => load().catch(() => {});
  $('load-cancel').onclick = () => cancel();
  $('generate').onclick = () => generate().catch(() => {});
  $('cancel').onclick = () => cancel();
  $('seed-random').onchange = () => {
    $('seed').disabled = $('seed-random').checked;
  };
  $('custom-add').onclick = () => {
    try {
      const e = customEntry($('custom-url').value.trim());
      customEntries.set(e.id, e);
      renderModelSelect();
      $('model').value = e.id;
      onModelSelected();
    } catch (err) {
      setStatus(message(err), true);
    }
  };
  checkpoints = wireCheckpoints({
    bases: () => entries().filter((e) => e.checkpointBase),
    add: (entry) => loadEntry(entry).catch(() => {}),
    onError: (e) => setStatus(message(e), true),
  });
  wireLoras((e) => setStatus(message(e), true));
  wireInitImage((e) => setStatus(message(e), true), () => $('output'));
  $('prompt').onkeydown = (ev) => {
    if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey) && !$('generate').disabled) generate().catch(() => {});
  };
  window.addEventListener('online', () => notice('offline', null));
  window.addEventListener('offline', () => notice('offline', 'You are offline. Cached models keep working; downloads resume when you are back online.', 'info'));
}

// ---- start-up ------------------------------------------------------------------------------

async function initWorker() {
  if (!worker) startWorker();
  const m = await call('init');
  state.info = m.info;
  state.f16Fallback = m.f16Fallback;
  fillSchedulers(m.schedulers);
  state.ready = true;
  const i = m.info;
  const f16 = i.shader_f16 ? 'shader-f16' : 'f32 fallback (no shader-f16)';
  $('gpu-info').textContent = `GPU: ${i.adapter_name || 'not disclosed by the browser'} · ${i.backend} · ${f16} · max binding ${fmtBytes(i.max_storage_binding)}`;
  if (m.f16Fallback) {
    notice('f16', 'Your GPU or browser does not offer shader-f16, so webdiffusion runs in f32 instead (automatically). It works, but is slower and needs more GPU memory.', 'info');
  }
  return m;
}

function registerServiceWorker() {
  if (!('serviceWorker' in navigator) || params.get('sw') === '0') return;
  navigator.serviceWorker.register('sw.js').catch((e) => console.warn('webdiffusion: no offline support:', message(e)));
}

async function main() {
  wireUp();
  registerServiceWorker();
  try {
    const saved = JSON.parse(localStorage.getItem(FORM) || 'null');
    if (saved) setForm(saved);
  } catch {
    // a damaged saved form is not worth an error
  }
  if (navigator.onLine === false) notice('offline', 'You are offline. Cached models keep working.', 'info');
  store.requestPersistence().then(renderStorage).catch(() => {});
  await loadCatalog();
  await refreshCache();
  showGallery();
  if (!navigator.gpu) {
    const text = 'This browser has no WebGPU, which webdiffusion needs to run models on your GPU. It is available in Chrome and Edge 113+ (Windows, macOS, ChromeOS; Android 121+), Safari 26+ and Firefox 141+ on Windows. On Linux, Chrome needs chrome://flags/#enable-unsafe-webgpu.';
    notice('nogpu', text, 'error');
    fail('init', text);
    updateButtons();
    return;
  }
  try {
    await initWorker();
  } catch (e) {
    notice('gpu', `Could not open the GPU: ${fail('init', e)}`, 'error');
    updateButtons();
    return;
  }
  updateButtons();
  await cdnDecision;
  const wanted = params.get('model');
  const last = localStorage.getItem(LAST_MODEL);
  if (params.get('autoload') === '1') {
    await load(wanted || $('model').value).catch(() => {});
  } else if (!wanted && last && isCached(last)) {
    // A returning visitor starts where they left off, from the local copy (works offline).
    await load(last).catch(() => {});
  }
}

main().catch((e) => {
  notice('fatal', `The page failed to start: ${fail('main', e)}`, 'error');
});
