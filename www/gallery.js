// The gallery: every finished image with its PNG (parameters included) and a thumbnail, in
// IndexedDB, so it survives reloads and works offline.

import * as store from './store.js';

const $ = (id) => document.getElementById(id);

async function thumbnail(image) {
  const size = 128;
  const scale = Math.min(1, size / Math.max(image.width, image.height));
  const src = document.createElement('canvas');
  src.width = image.width;
  src.height = image.height;
  src.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(image.rgba.buffer, image.rgba.byteOffset, image.width * image.height * 4), image.width, image.height), 0, 0);
  if (scale === 1) return new Promise((ok) => src.toBlob(ok, 'image/png'));
  const dst = document.createElement('canvas');
  dst.width = Math.round(image.width * scale);
  dst.height = Math.round(image.height * scale);
  const ctx = dst.getContext('2d');
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(src, 0, 0, dst.width, dst.height);
  return new Promise((ok) => dst.toBlob(ok, 'image/webp', 0.85));
}

/// Stores a finished image with what made it (the caller redraws the gallery).
export async function addToGallery(model, req, m, png) {
  const thumb = await thumbnail(m.image);
  await store.galleryAdd({
    created: new Date().toISOString(),
    modelId: model.id,
    modelName: model.name,
    request: { ...req, seed: m.seed },
    width: m.image.width,
    height: m.image.height,
    ms: m.ms,
    parameters: m.parameters,
    png,
    thumb,
  });
}

let galleryUrls = [];
/// Draws the stored images, newest first; `onPick(item)` when one is clicked.
export async function renderGallery(onPick) {
  let items = [];
  try {
    items = await store.galleryList();
  } catch (e) {
    console.warn('webdiffusion: gallery', e);
  }
  galleryUrls.forEach((u) => URL.revokeObjectURL(u));
  galleryUrls = [];
  const box = $('gallery');
  if (!items.length) {
    const p = document.createElement('p');
    p.className = 'hint small';
    p.textContent = 'Nothing yet.';
    box.replaceChildren(p);
    return;
  }
  box.replaceChildren(...items.map((it) => {
    const fig = document.createElement('figure');
    const img = document.createElement('img');
    const url = URL.createObjectURL(it.thumb || it.png);
    galleryUrls.push(url);
    img.src = url;
    img.alt = it.request.prompt;
    img.title = `${it.request.prompt}\nseed ${it.request.seed} · ${it.modelName}`;
    if (it.width < 256) img.classList.add('pixelated');
    img.onclick = () => onPick(it);
    const cap = document.createElement('figcaption');
    cap.textContent = it.request.prompt;
    const del = document.createElement('button');
    del.type = 'button';
    del.textContent = '×';
    del.title = 'Delete this image';
    del.setAttribute('aria-label', 'Delete this image');
    del.onclick = async () => {
      await store.galleryDelete(it.id);
      await renderGallery(onPick);
    };
    fig.append(img, cap, del);
    return fig;
  }));
}
