// The page's LoRA list: .safetensors LoRAs (kohya/A1111, PEFT, diffusers) picked, dropped on
// the list or fetched by URL, kept in IndexedDB (`loras` store) with an on switch and a
// strength each. What is on goes with every generation; the worker merges it into the weights
// (reloading the model when the set changes) and reads `<lora:name:strength>` tags in the prompt
// against this list, a tag's strength over the slider's.

import * as store from './store.js';
import { checkOrigin } from './origins.js';

const $ = (id) => document.getElementById(id);
const LORA = /\.safetensors$/i;
// Beyond any LoRA users share (rank 128 on SDXL is ~900 MB); the page holds it in memory to merge.
const MAX_BYTES = 1 << 30;

let records = [];
let onError = () => {};

/// `{id, strength}` of every LoRA that is on with a strength other than 0.
export function activeLoras() {
  return records.filter((r) => r.on && r.strength !== 0).map((r) => ({ id: r.id, strength: r.strength }));
}

/// Adds a LoRA file (a Blob and its file name) to the list, on (a file of the same name keeps
/// its strength).
export async function addLora(blob, name, url = null) {
  if (!LORA.test(name)) throw new Error(`${name} is not a .safetensors LoRA (.pt/.ckpt pickles are never opened: they can run code).`);
  if (blob.size > MAX_BYTES) throw new Error(`${name} is ${blob.size} bytes; LoRAs above ${MAX_BYTES} bytes are refused.`);
  const id = name.replace(LORA, '');
  const old = records.find((r) => r.id === id);
  await store.putLora({ id, name, size: blob.size, blob, url, strength: old ? old.strength : 1, on: true, added: new Date().toISOString() });
  await refresh();
  return id;
}

async function addFromUrl(text) {
  let u;
  try {
    u = new URL(text, location.href);
  } catch {
    throw new Error(`Not a URL: ${text}`);
  }
  checkOrigin(u.href, location.origin);
  const name = decodeURIComponent(u.pathname.split('/').pop() || '');
  if (!LORA.test(name)) throw new Error(`${u.href} does not name a .safetensors file.`);
  const r = await fetch(u.href, { cache: 'no-store' });
  if (!r.ok) throw new Error(`${u.href}: HTTP ${r.status}`);
  const declared = Number(r.headers.get('content-length'));
  if (declared > MAX_BYTES) throw new Error(`${u.href} is ${declared} bytes; LoRAs above ${MAX_BYTES} bytes are refused.`);
  return addLora(await r.blob(), name, u.href);
}

async function update(id, change) {
  // The list the next generation reads changes now, before the store's round trip: a slider
  // released and Generate clicked at once must use the new strength.
  const mine = records.find((x) => x.id === id);
  if (mine) Object.assign(mine, change);
  const r = await store.getLora(id);
  if (!r) return;
  await store.putLora({ ...r, ...change });
}

function render() {
  const ul = $('lora-list');
  if (!records.length) {
    const li = document.createElement('li');
    li.className = 'hint';
    li.textContent = 'No LoRAs yet.';
    ul.replaceChildren(li);
    return;
  }
  ul.replaceChildren(...records.map((r) => {
    const li = document.createElement('li');
    li.className = 'lora';
    li.dataset.id = r.id;
    const on = document.createElement('input');
    on.type = 'checkbox';
    on.checked = r.on;
    on.title = `Use ${r.id} (or write <lora:${r.id}:0.8> in the prompt)`;
    on.onchange = () => update(r.id, { on: on.checked }).catch(onError);
    const label = document.createElement('span');
    label.className = 'lora-name';
    label.textContent = `${r.id} · ${store.formatBytes(r.size)}`;
    const slider = document.createElement('input');
    slider.type = 'range';
    slider.min = '-1';
    slider.max = '2';
    slider.step = '0.05';
    slider.value = String(r.strength);
    slider.setAttribute('aria-label', `${r.id} strength`);
    const value = document.createElement('output');
    value.textContent = r.strength.toFixed(2);
    slider.oninput = () => { value.textContent = Number(slider.value).toFixed(2); };
    slider.onchange = () => update(r.id, { strength: Number(slider.value) }).catch(onError);
    const del = document.createElement('button');
    del.type = 'button';
    del.className = 'danger small';
    del.textContent = 'Remove';
    del.onclick = () => store.deleteLora(r.id).then(refresh).catch(onError);
    li.append(on, label, slider, value, del);
    return li;
  }));
}

export async function refresh() {
  try {
    records = (await store.listLoras()).sort((a, b) => a.id.localeCompare(b.id));
  } catch {
    records = [];
  }
  render();
}

/// Wires the panel; `error(e)` shows a failure.
export function wireLoras(error) {
  onError = error;
  const addFiles = async (files) => {
    for (const f of files) await addLora(f, f.name);
  };
  $('lora-file').onchange = () => {
    const files = Array.from($('lora-file').files);
    $('lora-file').value = '';
    addFiles(files).catch(onError);
  };
  $('lora-add').onclick = () => {
    const url = $('lora-url').value.trim();
    if (url) addFromUrl(url).then(() => { $('lora-url').value = ''; }).catch(onError);
  };
  // Dropped on the list: LoRAs (a drop elsewhere is a checkpoint, see checkpoint.js).
  const zone = $('loras');
  zone.addEventListener('dragover', (ev) => { ev.preventDefault(); ev.stopPropagation(); });
  zone.addEventListener('drop', (ev) => {
    ev.preventDefault();
    ev.stopPropagation();
    addFiles(Array.from(ev.dataTransfer?.files || [])).catch(onError);
  });
  return refresh();
}
