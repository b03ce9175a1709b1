#!/usr/bin/env node
// Two wasm builds, alternated, on bench.html in headless Chromium: the same architecture (a
// config folder, weights synthetic), one fresh browser per run, so a kernel change is measured
// against its parent on the same machine at the same moment (CPU adapters share the cores with
// everything else; run-to-run spread here is about ±15 %).
//
//   node tools/bench/pkg-ab.mjs --a DIR --b DIR [--pairs 2] [--config models/shapes-demo]
//        [--quant f32] [--size 64] [--steps 6] [--limits default]
//
// Prints each run's warm U-Net step median and the ratio of the medians (b / a).

import { join } from 'node:path';
import { ROOT, launchBrowser, openPage } from '../../tests/browser/harness.mjs';
import { serve } from '../serve.mjs';

function parseArgs(argv) {
  const o = { pairs: 2, config: 'models/shapes-demo', quant: 'f32', size: 64, steps: 6, limits: 'default' };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, '');
    if (!(k in o) && k !== 'a' && k !== 'b') throw new Error(`unknown argument ${argv[i]}`);
    o[k] = ['pairs', 'size', 'steps'].includes(k) ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!o.a || !o.b) throw new Error('--a DIR and --b DIR name the two wasm-bindgen output folders');
  return o;
}

const median = (v) => [...v].sort((x, y) => x - y)[Math.floor(v.length / 2)];

async function runOnce(pkg, o) {
  const server = await serve({
    host: '127.0.0.1',
    port: 0,
    mounts: [
      { url: '/pkg/', dir: pkg },
      { url: '/cfg/', dir: join(ROOT, o.config) },
      { url: '/', dir: join(ROOT, 'www') },
    ],
  });
  const url = `http://127.0.0.1:${server.address().port}/`;
  const browser = await launchBrowser();
  try {
    const { page, logs } = await openPage(browser);
    const q = new URLSearchParams({ config: `${url}cfg/`, quant: o.quant, size: o.size, steps: o.steps, limits: o.limits, autorun: '1' });
    await page.goto(`${url}bench.html?${q}`);
    await page.waitForFunction(() => window.webdiffusion && window.webdiffusion.done, null, { timeout: 600_000 });
    const { report, error } = await page.evaluate(() => ({ report: window.webdiffusion.report, error: window.webdiffusion.error }));
    if (error) throw new Error(`${pkg}: ${error}\n${logs.join('\n')}`);
    const unet = report.stages.find((s) => s.stage === 'unet_step');
    return { warm: unet.ms, steps: unet.step_ms, adapter: report.adapter };
  } finally {
    await browser.close();
    server.close();
  }
}

const o = parseArgs(process.argv.slice(2));
const runs = { a: [], b: [] };
for (let i = 0; i < o.pairs; i++) {
  for (const side of i % 2 ? ['b', 'a'] : ['a', 'b']) {
    const r = await runOnce(o[side], o);
    runs[side].push(r.warm);
    console.log(`${side} (${o[side]}) run ${i + 1}: warm U-Net step ${r.warm.toFixed(0)} ms; every step ${r.steps.map((s) => s.toFixed(0)).join(', ')}`);
  }
}
const [ma, mb] = [median(runs.a), median(runs.b)];
console.log(`median warm step: a ${ma.toFixed(0)} ms, b ${mb.toFixed(0)} ms; b / a = ${(mb / ma).toFixed(2)}`);
