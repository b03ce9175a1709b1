// The benchmark page (bench.html): runs `Engine.bench` (src/bench.rs, the same code as
// `webdiffusion bench`) on this browser's GPU and shows the per-stage figures. The GPU is opened
// per run because the limits are part of the run. `window.webdiffusion` exposes the state to
// tests; `window.webdiffusion.run(options)` runs with explicit options (e.g. `configs`).

import init, { Engine } from './pkg/webdiffusion.js';

const $ = (id) => document.getElementById(id);
const state = { report: null, error: null, done: false, running: false, run: null };
window.webdiffusion = state;
const mb = (b) => (b / 1e6).toFixed(1);

function setStatus(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

function show(r) {
  const tiling = r.vae_tiling ? `tiled (${r.vae_tiling.tile} latent px, overlap ${r.vae_tiling.overlap})` : 'whole';
  const weights = r.weights.map(([name, bytes]) => `${name} ${mb(bytes)} MB`).join(', ');
  $('summary').textContent = `${r.arch} ${r.quant} (${r.compute} activations, VAE ${r.vae_compute}), ${r.size}×${r.size}, `
    + `${r.steps} step(s), guidance ${r.guidance} on ${r.adapter}. Limits: binding ${mb(r.max_storage_binding)} MB, `
    + `buffer ${mb(r.max_buffer_size)} MB. Weights: ${weights} (built in ${r.load_s.toFixed(1)} s). `
    + `VAE decode ${tiling}. Peak GPU memory ${mb(r.peak_bytes)} MB.`;
  const body = $('results').querySelector('tbody');
  body.replaceChildren(...r.stages.map((s) => {
    const tr = document.createElement('tr');
    const stage = s.cold ? `${s.stage} (warm median; cold first ${s.cold.ms.toFixed(0)} ms)` : s.stage;
    const cells = [stage, s.ms.toFixed(0), s.gflop.toFixed(1), s.gflops.toFixed(2), s.dispatches, s.submits,
      s.passes, s.bind_groups, s.pipelines_created, mb(s.bytes_written), mb(s.peak_bytes), mb(s.largest_binding), mb(s.largest_buffer)];
    for (const text of cells) {
      const td = document.createElement('td');
      td.textContent = String(text);
      tr.append(td);
    }
    return tr;
  }));
  $('results').hidden = false;
  $('json').textContent = JSON.stringify(r, null, 2);
  $('json').hidden = false;
}

async function run(options, limits) {
  state.running = true;
  state.done = false;
  state.error = null;
  $('run').disabled = true;
  setStatus(`Building ${options.arch || 'the model'} with random weights and running it…`);
  let engine = null;
  try {
    engine = await Engine.create(limits !== 'adapter', true);
    const t0 = performance.now();
    state.report = await engine.bench(options);
    show(state.report);
    setStatus(`Done in ${((performance.now() - t0) / 1000).toFixed(1)} s.`);
  } catch (e) {
    state.error = String(e && e.message ? e.message : e);
    setStatus(`Failed: ${state.error}`, true);
  } finally {
    if (engine) engine.free();
    state.running = false;
    state.done = true;
    $('run').disabled = false;
  }
  return state.report;
}

/// The three config.json texts of a diffusers folder at `base` (the benchmark's `configs`).
export async function fetchConfigs(base) {
  const root = new URL(base.endsWith('/') ? base : `${base}/`, location.href);
  const configs = {};
  for (const c of ['text_encoder', 'unet', 'vae']) {
    const u = new URL(`${c}/config.json`, root);
    const r = await fetch(u);
    if (!r.ok) throw new Error(`${u.href}: HTTP ${r.status}`);
    configs[c] = await r.text();
  }
  return configs;
}

async function formOptions() {
  const budget = Number($('budget').value);
  const folder = $('config').value.trim();
  const o = {
    arch: $('arch').value,
    quant: $('quant').value,
    size: Number($('size').value),
    steps: Number($('steps').value),
    budget: budget > 0 ? budget * 1e6 : 0,
  };
  if (folder) {
    o.configs = await fetchConfigs(folder);
    o.arch = folder; // names the run in the report
  }
  return o;
}

async function runForm() {
  let options;
  try {
    options = await formOptions();
  } catch (e) {
    state.error = `the config folder: ${e.message || e}`;
    state.done = true;
    setStatus(state.error, true);
    return null;
  }
  return run(options, $('limits').value);
}

async function main() {
  try {
    await init();
  } catch (e) {
    state.error = `loading the wasm module: ${e}`;
    state.done = true;
    setStatus(state.error, true);
    return;
  }
  if (!navigator.gpu) {
    state.error = 'this browser has no WebGPU';
    state.done = true;
    setStatus(`${state.error}.`, true);
    return;
  }
  const q = new URLSearchParams(location.search);
  for (const k of ['arch', 'config', 'quant', 'size', 'steps', 'limits', 'budget']) {
    if (q.has(k)) $(k).value = q.get(k);
  }
  state.run = (options, limits = 'default') => run(options, limits);
  $('form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    runForm();
  });
  $('run').disabled = false;
  setStatus('Ready.');
  if (q.get('autorun') === '1') await runForm();
}

main();
