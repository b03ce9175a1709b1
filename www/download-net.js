// What every part of a download (and convert.js) shares about servers: the origin rule on each
// request, the errors that end a download, and reading the headers a ranged answer carries.

import { checkOrigin } from './origins.js';

/// A failure that trying again would not mend (a refused listing, a 4xx, bytes that stay
/// corrupt): the chunk scheduler's retries and back-off end at it.
export class FatalError extends Error {}

// download.js runs in the page's worker, whose location is the page's origin.
const pageOrigin = () => globalThis.location?.origin;

/// fetch() for anything of a model: a host origins.js refuses is never asked, and bytes a
/// redirect brought from one are not used.
export async function fetchModel(url, init) {
  checkOrigin(url, pageOrigin());
  const r = await fetch(url, init);
  if (r.redirected) {
    try {
      checkOrigin(r.url, pageOrigin());
    } catch (e) {
      r.body?.cancel().catch(() => {});
      throw e;
    }
  }
  return r;
}

/// Throws unless the model's host may serve weights (before its first request).
export const checkHost = (url) => checkOrigin(url, pageOrigin());

export const sleep = (ms, signal) => new Promise((ok, fail) => {
  const t = setTimeout(ok, ms);
  signal?.addEventListener('abort', () => {
    clearTimeout(t);
    fail(abortError());
  }, { once: true });
});

export function abortError() {
  const e = new Error('Download cancelled.');
  e.name = 'AbortError';
  return e;
}

const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');

/// `Repr-Digest: sha-256=:BASE64:` (RFC 9530) as hex, or null.
export function reprDigest(headers) {
  const m = /sha-256=:([A-Za-z0-9+/=]+):/.exec(headers.get('repr-digest') || '');
  if (!m) return null;
  try {
    return hex(Uint8Array.from(atob(m[1]), (c) => c.charCodeAt(0)));
  } catch {
    return null;
  }
}

/// What names a file's version for If-Range (RFC 9110 §13.1.5): a strong ETag, else
/// Last-Modified. A weak ETag may not be used, and none at all leaves nothing to compare.
export function validatorOf(headers) {
  const etag = headers.get('etag');
  if (etag && !etag.startsWith('W/')) return etag;
  return headers.get('last-modified') || null;
}

export function contentRange(headers) {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(headers.get('content-range') || '');
  return m ? { start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? null : Number(m[3]) } : null;
}

/// A network failure in words a visitor can act on.
export function describeNetworkError(e, entry, signal) {
  if (signal?.aborted || e?.name === 'AbortError') return abortError();
  if (e instanceof TypeError) {
    const offline = typeof navigator !== 'undefined' && navigator.onLine === false;
    return new Error(offline
      ? `You are offline and ${entry.name || entry.id} is not (fully) cached yet; connect to download it.`
      : `Could not reach ${new URL(entry.url).host} (${e.message}). Check the connection; the server must allow cross-origin requests (CORS).`);
  }
  return e;
}
