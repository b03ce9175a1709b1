// Single-file checkpoints (`.safetensors` in the original SD layout, as civitai and A1111 users
// have them): picked, dropped anywhere on the page, or given by URL. The worker converts the
// file while reading it (convert.js → the wasm Converter maps the original names to diffusers')
// into the package form in IndexedDB; a local file is read in place and never leaves the device.
// The configs, tokenizer and scheduler come from a base model the catalog offers
// (`checkpointBase`): only its small files are fetched.

import { checkOrigin } from './origins.js';

const $ = (id) => document.getElementById(id);

const CHECKPOINT = /\.safetensors$/i;

/// A catalog-like entry for checkpoint `source` ({file: File} or {url}) over `base` (an entry
/// with `checkpointBase`); `prediction`: '' (the file's metadata, else the base's), `epsilon` or
/// `v_prediction`.
export function checkpointEntry(source, base, prediction = '') {
  if (!base || !base.checkpointBase) throw new Error('Choose the base model the checkpoint was trained from.');
  if (!['', 'epsilon', 'v_prediction'].includes(prediction)) throw new Error(`Unknown prediction type ${prediction}`);
  let checkpoint;
  let id;
  if (source.file) {
    const f = source.file;
    if (!CHECKPOINT.test(f.name)) throw new Error(`${f.name} is not a .safetensors checkpoint (.ckpt pickles are never opened: they can run code).`);
    checkpoint = { file: f, name: f.name, size: f.size, lastModified: f.lastModified };
    id = `file:${f.name}:${f.size}:${f.lastModified}`;
  } else {
    let u;
    try {
      u = new URL(source.url, location.href);
    } catch {
      throw new Error(`Not a URL: ${source.url}`);
    }
    checkOrigin(u.href, location.origin);
    const name = decodeURIComponent(u.pathname.split('/').pop() || '');
    if (!CHECKPOINT.test(name)) throw new Error(`${u.href} does not name a .safetensors file.`);
    checkpoint = { url: u.href, name };
    id = `ckpt:${u.href}`;
  }
  // Converting against another base or prediction type makes another model.
  id += `|${base.id}|${prediction || 'auto'}`;
  const display = checkpoint.name.replace(CHECKPOINT, '');
  return {
    id,
    name: display,
    kind: 'checkpoint',
    checkpoint,
    base,
    prediction: prediction || undefined,
    url: checkpoint.url,
    quant: base.quant && base.quant !== 'none' ? base.quant : 'q4_0',
    defaults: base.defaults,
    examplePrompt: base.examplePrompt,
    source: checkpoint.file ? 'A file on this device' : new URL(checkpoint.url).host,
    description: `${display}, a ${base.checkpointBase} single-file checkpoint${checkpoint.file ? ' from this device (converted here; it is never uploaded)' : ''}, with the configs of ${base.name}.`,
  };
}

/// Wires the checkpoint panel. `bases()`: entries with `checkpointBase`; `add(entry)`: loads it.
export function wireCheckpoints({ bases, add, onError }) {
  const fill = () => {
    const select = $('ckpt-base');
    const current = select.value;
    select.replaceChildren(...bases().map((e) => {
      const o = document.createElement('option');
      o.value = e.id;
      o.textContent = `${e.checkpointBase} (configs of ${e.name})`;
      return o;
    }));
    if (current && bases().some((e) => e.id === current)) select.value = current;
  };
  const use = (source) => {
    try {
      const base = bases().find((e) => e.id === $('ckpt-base').value);
      const entry = checkpointEntry(source, base, $('ckpt-prediction').value);
      return add(entry);
    } catch (e) {
      onError(e);
      return null;
    }
  };
  $('ckpt-file').onchange = () => {
    const f = $('ckpt-file').files[0];
    if (f) use({ file: f });
    $('ckpt-file').value = '';
  };
  $('ckpt-add').onclick = () => {
    const url = $('ckpt-url').value.trim();
    if (url) use({ url });
  };
  // A checkpoint dropped anywhere on the page: its bytes are read where they are.
  const hasFiles = (ev) => ev.dataTransfer && Array.from(ev.dataTransfer.types || []).includes('Files');
  document.addEventListener('dragover', (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    ev.dataTransfer.dropEffect = 'copy';
    $('ckpt-drop').classList.add('over');
  });
  document.addEventListener('dragleave', (ev) => {
    if (!ev.relatedTarget) $('ckpt-drop').classList.remove('over');
  });
  document.addEventListener('drop', (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    $('ckpt-drop').classList.remove('over');
    // Images are img2img's (init-image.js); anything else but a .safetensors is named as such.
    const files = Array.from(ev.dataTransfer.files);
    if (files.some((x) => x.type.startsWith('image/'))) return;
    const f = files.find((x) => CHECKPOINT.test(x.name)) || files[0];
    if (!f) return;
    $('checkpoints').open = true;
    use({ file: f });
  });
  return { refresh: fill };
}
