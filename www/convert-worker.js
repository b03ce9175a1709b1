// A conversion helper: quantizes slices that the model worker's converter hands out
// (`Converter.jobs`) with `convertSlice`, the same wasm function the converter would have run
// itself, so several cores quantize one download. Holds no model and no GPU.

import init, { convertSlice } from './pkg/webdiffusion.js';

const ready = init();

self.onmessage = async (ev) => {
  const { id, bytes, from, to, name } = ev.data;
  try {
    await ready;
    const out = convertSlice(bytes, from, to, name);
    self.postMessage({ id, out }, [out.buffer]);
  } catch (e) {
    // A trap leaves this instance unusable: say so, and the pool replaces the worker.
    self.postMessage({ id, error: String((e && e.message) || e), fatal: e instanceof WebAssembly.RuntimeError });
  }
};
