// How the page sees an image take shape: the built-in preview (a linear map of the latents at
// 1/8 size, free), or TAESD (madebyollin/taesd, a 10 MB tiny autoencoder fetched once) for a
// full-size preview every step, and optionally for the final image (much faster than the VAE,
// a little softer).

import { workerEntry } from './entries.js';

const $ = (id) => document.getElementById(id);

/// What a generation asks of TAESD, with `entry` (the catalog's `taesd`), or null for nothing:
/// previews, the final decode, img2img's encode (`initImage`: whether the request has one).
export function taesdRequest(entry, initImage = false) {
  const previews = $('preview-decoder').value === 'taesd';
  const finalDecode = $('final-decoder').value === 'taesd';
  const encode = initImage && $('init-encoder').value === 'taesd';
  if (!previews && !finalDecode && !encode) return null;
  return { entry: entry ? workerEntry(entry) : null, previews, finalDecode, encode };
}
