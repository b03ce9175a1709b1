// The self-test page (selftest.html): opens the GPU through our wasm runtime, shows what the
// device offers and checks the core kernels against the CPU. `window.webdiffusion` exposes the
// outcome to tests.

import init, { Engine } from './pkg/webdiffusion.js';

const $ = (id) => document.getElementById(id);
const state = { info: null, results: null, error: null, done: false };
window.webdiffusion = state;

function setStatus(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

function showInfo(info) {
  const mib = (b) => `${Math.round(b / 2 ** 20)} MiB`;
  const rows = [
    ['Adapter', info.adapter_name || '(not disclosed by the browser)'],
    ['Backend', info.backend],
    ['shader-f16', info.shader_f16 ? 'yes' : 'no (f32 kernels)'],
    ['Max storage binding', mib(info.max_storage_binding)],
    ['Max buffer size', mib(info.max_buffer_size)],
    ['Workgroup storage', `${info.max_workgroup_storage} bytes`],
  ];
  const table = $('info');
  table.replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement('tr');
    for (const text of [k, v]) {
      const td = document.createElement('td');
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
  table.hidden = false;
}

function showResults(results) {
  const body = $('results').querySelector('tbody');
  body.replaceChildren(...results.map((r) => {
    const tr = document.createElement('tr');
    const cells = [r.name, r.dtype, r.max_abs_err.toExponential(2), r.tolerance.toExponential(0), r.passed ? 'pass' : 'FAIL'];
    cells.forEach((text, i) => {
      const td = document.createElement('td');
      td.textContent = text;
      if (i === 4) td.className = r.passed ? 'pass' : 'fail';
      tr.append(td);
    });
    return tr;
  }));
  $('results').hidden = false;
}

async function runSelfTest(engine) {
  $('rerun').disabled = true;
  setStatus('Running the kernel self-test…');
  const t0 = performance.now();
  const results = await engine.selfTest();
  state.results = results;
  showResults(results);
  const failed = results.filter((r) => !r.passed).length;
  const ms = Math.round(performance.now() - t0);
  setStatus(failed ? `${failed} check(s) failed.` : `All ${results.length} checks passed in ${ms} ms.`, failed > 0);
  $('rerun').disabled = false;
}

async function main() {
  if (!navigator.gpu) {
    throw new Error('This browser has no WebGPU. Use Chrome or Edge 113+, Safari 26+, or Firefox 141+ on Windows.');
  }
  await init();
  const engine = await Engine.create(false, true);
  state.info = engine.info();
  showInfo(state.info);
  $('rerun').onclick = () => runSelfTest(engine).catch(fail);
  await runSelfTest(engine);
}

function fail(e) {
  state.error = String(e && e.message ? e.message : e);
  setStatus(state.error, true);
}

main().catch(fail).finally(() => { state.done = true; });
