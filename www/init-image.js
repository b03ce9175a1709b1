// img2img's starting image: picked, dropped anywhere on the page, pasted, or a result taken as
// input. It is kept as the visitor gave it and fitted to the generation's size only when one
// starts (cover: scaled to fill and centre-cropped; contain: scaled to fit on white; stretch),
// so changing the size or the fit never compounds resampling. The pixels go to the worker as
// RGB bytes; the engine encodes them with the VAE (loaded on the first img2img request).

const $ = (id) => document.getElementById(id);

let source = null; // an ImageBitmap or canvas at its own size
let onError = () => {};

export const hasInitImage = () => source !== null;

/// `{rgb, strength}` for a width × height generation, or null without an image.
export function initImageFor(width, height) {
  if (!source) return null;
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d');
  const fit = $('init-fit').value;
  const [sw, sh] = [source.width, source.height];
  if (fit === 'stretch' || (sw === width && sh === height)) {
    ctx.drawImage(source, 0, 0, width, height);
  } else if (fit === 'contain') {
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, width, height);
    const s = Math.min(width / sw, height / sh);
    const [w, h] = [sw * s, sh * s];
    ctx.drawImage(source, (width - w) / 2, (height - h) / 2, w, h);
  } else {
    const s = Math.max(width / sw, height / sh);
    const [w, h] = [width / s, height / s];
    ctx.drawImage(source, (sw - w) / 2, (sh - h) / 2, w, h, 0, 0, width, height);
  }
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i];
    rgb[j + 1] = rgba[i + 1];
    rgb[j + 2] = rgba[i + 2];
  }
  return { rgb, strength: Number($('init-strength').value) };
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
  show();
}

export function clearInitImage() {
  source = null;
  show();
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
}
