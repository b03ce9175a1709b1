// img2img's starting image: picked, dropped anywhere on the page, pasted, or a result taken as
// input. It is kept as the visitor gave it and fitted to the generation's size only when one
// starts (cover: scaled to fill and centre-cropped; contain: scaled to fit on white; stretch),
// so changing the size or the fit never compounds resampling. The pixels go to the worker as
// RGB bytes; the engine encodes them with the VAE (loaded on the first img2img request).
// Modes: img2img (all of it redrawn by strength), inpaint (the area painted in the mask editor,
// mask-editor.js), outpaint (the canvas extended by the chosen sides; the engine fills and
// inpaints the new border). Inpainting puts the original back over a blurred seam.

import { maskBytes, maskCanvas, resetMask, wireMaskEditor } from './mask-editor.js';

const $ = (id) => document.getElementById(id);

/// Draws `src` into a `width` × `height` context with the chosen fit (`pad`: the colour of
/// what `contain` leaves around it).
function place(ctx, src, width, height, fit, pad) {
  const [sw, sh] = [src.width, src.height];
  if (fit === 'stretch' || (sw === width && sh === height)) {
    ctx.drawImage(src, 0, 0, width, height);
  } else if (fit === 'contain') {
    ctx.fillStyle = pad;
    ctx.fillRect(0, 0, width, height);
    const s = Math.min(width / sw, height / sh);
    const [w, h] = [sw * s, sh * s];
    ctx.drawImage(src, (width - w) / 2, (height - h) / 2, w, h);
  } else {
    const s = Math.max(width / sw, height / sh);
    const [w, h] = [width / s, height / s];
    ctx.drawImage(src, (sw - w) / 2, (sh - h) / 2, w, h, 0, 0, width, height);
  }
}

/// The mask a `width` × `height` generation uses (the painted area, fitted as the image is; a
/// `contain` border is redrawn too), or null outside inpainting.
export function maskFor(width, height) {
  if (!source || $('init-mode').value !== 'inpaint') return null;
  const bytes = maskBytes(width, height, (ctx) => place(ctx, maskCanvas(), width, height, $('init-fit').value, '#f08'));
  return { bytes, width, height };
}

let source = null; // an ImageBitmap or canvas at its own size
let onError = () => {};

export const hasInitImage = () => source !== null;

/// The request's `initImage` for a width × height generation — `{rgb, strength, maskBlur}`, with
/// `mask` (inpaint) or `outpaint` ([left, right, up, down]) by mode — or null without an image.
export function initImageFor(width, height) {
  if (!source) return null;
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d');
  place(ctx, source, width, height, $('init-fit').value, '#fff');
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i];
    rgb[j + 1] = rgba[i + 1];
    rgb[j + 2] = rgba[i + 2];
  }
  const init = { rgb, strength: Number($('init-strength').value), maskBlur: Number($('mask-blur').value) };
  const mode = $('init-mode').value;
  if (mode === 'inpaint') {
    init.mask = maskFor(width, height).bytes;
    if (!init.mask.some((v) => v)) throw new Error('Paint the area to redraw on the image first (or choose img2img).');
  } else if (mode === 'outpaint') {
    const by = Number($('outpaint-by').value);
    init.outpaint = ['left', 'right', 'up', 'down'].map((side) => ($(`outpaint-${side}`).checked ? by : 0));
    if (!init.outpaint.some((v) => v)) throw new Error('Choose a side to extend the image on.');
  }
  return init;
}

function show() {
  const preview = $('init-preview');
  $('init-clear').hidden = !source;
  preview.hidden = !source;
  $('init-info').textContent = source ? `${source.width}×${source.height}; fitted to the image size when generating.` : 'No image: text to image.';
  if (!source) return;
  preview.width = source.width;
  preview.height = source.height;
  preview.getContext('2d').drawImage(source, 0, 0);
}

function showMode() {
  const mode = $('init-mode').value;
  $('mask-canvas').hidden = !source || mode !== 'inpaint';
  $('mask-tools').hidden = mode !== 'inpaint';
  $('outpaint-tools').hidden = mode !== 'outpaint';
}

/// Sets the starting image from a Blob (a file, a paste) or a canvas.
export async function setInitImage(from) {
  if (from instanceof Blob) {
    if (from.type && !from.type.startsWith('image/')) throw new Error(`${from.name || 'The file'} is not an image.`);
    // Pixels as stored: no colour-space conversion, no premultiplied alpha, so a PNG gives the
    // engine the bytes the command line's --init-image reads.
    source = await createImageBitmap(from, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  } else {
    const copy = document.createElement('canvas');
    copy.width = from.width;
    copy.height = from.height;
    copy.getContext('2d').drawImage(from, 0, 0);
    source = copy;
  }
  $('img2img').open = true;
  resetMask(source.width, source.height);
  show();
  showMode();
}

export function clearInitImage() {
  source = null;
  show();
  showMode();
}

/// Wires the panel; `error(e)` shows a failure; `result()` is the canvas of the last image.
export function wireInitImage(error, result) {
  onError = error;
  const use = (blob) => setInitImage(blob).catch(onError);
  $('init-file').onchange = () => {
    const f = $('init-file').files[0];
    $('init-file').value = '';
    if (f) use(f);
  };
  $('init-clear').onclick = clearInitImage;
  $('init-strength').oninput = () => { $('init-strength-value').textContent = Number($('init-strength').value).toFixed(2); };
  $('use-as-input').onclick = () => setInitImage(result()).catch(onError);
  $('init-mode').onchange = () => {
    // diffusers' defaults: img2img keeps some of the image (0.8), inpainting redraws (1).
    $('init-strength').value = $('init-mode').value === 'img2img' ? '0.8' : '1';
    $('init-strength').dispatchEvent(new Event('input'));
    showMode();
  };
  wireMaskEditor(() => {
    const w = Number($('width').value);
    const h = Number($('height').value);
    return maskFor(w, h);
  });
  // An image dropped anywhere (checkpoints and LoRAs take .safetensors; see checkpoint.js).
  document.addEventListener('drop', (ev) => {
    const f = Array.from(ev.dataTransfer?.files || []).find((x) => x.type.startsWith('image/'));
    if (!f) return;
    ev.preventDefault();
    use(f);
  });
  document.addEventListener('paste', (ev) => {
    const f = Array.from(ev.clipboardData?.files || []).find((x) => x.type.startsWith('image/'));
    if (f) use(f);
  });
  show();
  showMode();
}
