// Inpainting's mask, painted over the starting image: a brush and an eraser (pointer events, so
// a finger works as a mouse does: the canvas takes no scrolling gestures), brush size, invert,
// clear, and "Save mask" (the PNG the command line's --mask reads). The mask lives at the
// starting image's own size and is fitted to the generation's with the image (init-image.js).

const $ = (id) => document.getElementById(id);

let canvas = null; // the mask: opaque where the image is redrawn (shown tinted), transparent elsewhere
let drawing = null; // {x, y} of the last point while a pointer is down

/// Resets the mask to nothing for an image of `width` × `height`.
export function resetMask(width, height) {
  canvas = $('mask-canvas');
  canvas.width = width;
  canvas.height = height;
  canvas.getContext('2d').clearRect(0, 0, width, height);
}

/// The mask as one byte per pixel (255 = redraw) after `draw(ctx)` has placed it on a
/// `width` × `height` canvas; areas `draw` leaves white are redrawn too.
export function maskBytes(width, height, draw) {
  const c = new OffscreenCanvas(width, height);
  const ctx = c.getContext('2d');
  draw(ctx);
  const a = ctx.getImageData(0, 0, width, height).data;
  const out = new Uint8Array(width * height);
  for (let i = 0; i < out.length; i++) out[i] = a[i * 4 + 3] >= 128 ? 255 : 0;
  return out;
}

export const maskCanvas = () => canvas;

/// A grey PNG of mask bytes (what --mask reads: grey stays the same value through PIL's `L`).
export async function maskPng(bytes, width, height) {
  const c = new OffscreenCanvas(width, height);
  const ctx = c.getContext('2d');
  const img = ctx.createImageData(width, height);
  for (let i = 0; i < bytes.length; i++) img.data.set([bytes[i], bytes[i], bytes[i], 255], i * 4);
  ctx.putImageData(img, 0, 0);
  return c.convertToBlob({ type: 'image/png' });
}

function point(ev) {
  const r = canvas.getBoundingClientRect();
  return { x: ((ev.clientX - r.left) / r.width) * canvas.width, y: ((ev.clientY - r.top) / r.height) * canvas.height };
}

function stroke(from, to) {
  const ctx = canvas.getContext('2d');
  const radius = Number($('mask-brush').value);
  ctx.globalCompositeOperation = $('mask-erase').checked ? 'destination-out' : 'source-over';
  ctx.strokeStyle = ctx.fillStyle = '#f08';
  ctx.lineCap = ctx.lineJoin = 'round';
  ctx.lineWidth = 2 * radius;
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x, to.y);
  ctx.stroke();
  ctx.beginPath();
  ctx.arc(to.x, to.y, radius, 0, 2 * Math.PI);
  ctx.fill();
  ctx.globalCompositeOperation = 'source-over';
}

function invert() {
  const ctx = canvas.getContext('2d');
  const img = ctx.getImageData(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < img.data.length; i += 4) {
    const on = img.data[i + 3] >= 128;
    img.data.set(on ? [0, 0, 0, 0] : [255, 0, 136, 255], i);
  }
  ctx.putImageData(img, 0, 0);
}

/// Wires the editor; `currentMask()` gives the bytes a generation would use (for Save mask).
export function wireMaskEditor(currentMask) {
  canvas = $('mask-canvas');
  canvas.addEventListener('pointerdown', (ev) => {
    ev.preventDefault();
    canvas.setPointerCapture?.(ev.pointerId);
    drawing = point(ev);
    stroke(drawing, drawing);
  });
  canvas.addEventListener('pointermove', (ev) => {
    if (!drawing) return;
    ev.preventDefault();
    const p = point(ev);
    stroke(drawing, p);
    drawing = p;
  });
  for (const type of ['pointerup', 'pointercancel', 'pointerleave']) canvas.addEventListener(type, () => { drawing = null; });
  $('mask-clear').onclick = () => canvas.getContext('2d').clearRect(0, 0, canvas.width, canvas.height);
  $('mask-invert').onclick = invert;
  $('mask-brush').oninput = () => { $('mask-brush-value').textContent = `${$('mask-brush').value} px`; };
  $('mask-save').onclick = async () => {
    const m = currentMask();
    if (!m) return;
    const a = document.createElement('a');
    a.href = URL.createObjectURL(await maskPng(m.bytes, m.width, m.height));
    a.download = 'mask.png';
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  };
}
