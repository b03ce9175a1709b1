// Model entries outside the catalog's own: a diffusers folder or package by URL, and the plain
// form of any entry the worker gets (postMessage clones data, not the page's objects).

import { checkOrigin } from './origins.js';

export function customEntry(url) {
  let u;
  try {
    u = new URL(url, location.href);
  } catch {
    throw new Error(`Not a URL: ${url}`);
  }
  checkOrigin(u.href, location.origin);
  if (!u.pathname.endsWith('/')) u.pathname += '/';
  const href = u.href;
  const name = href.replace(/^https?:\/\//, '').replace(/\/resolve\/main\/$/, '').replace(/^huggingface\.co\//, '');
  return {
    id: `url:${href}`, name, url: href, quant: 'q4_0', source: new URL(href).host,
    description: `A model from ${href}. Its size is known once the download starts.`,
  };
}

export function workerEntry(e) {
  // Only what the worker needs, as plain data.
  const { id, name, url, mirrors, files, format, defaults, quant, examplePrompt, description, source, license, bytes, kind, checkpoint, prediction, lowMemory } = e;
  const plain = JSON.parse(JSON.stringify({ id, name, url, mirrors, files, format, defaults, quant, examplePrompt, description, source, license, bytes, kind, checkpoint, prediction, lowMemory }));
  if (e.base) plain.base = workerEntry(e.base);
  return plain;
}
