// Where weights may come from. A model is code-like input (its bytes drive allocations and GPU
// work), so it is fetched only over https — where the bytes are the host's — or from this
// machine (loopback, for a local server) or the page's own origin. Used by the page (custom URLs,
// `?cdn=`) and by the worker (every host a download tries), so no path around it exists.

// [::1] is left out: a CSP source cannot name an IPv6 literal, so the page could not reach it.
const LOOPBACK = new Set(['127.0.0.1', 'localhost']);

/// Why `url` may not be a weights host, or null when it may. `pageOrigin` is the app's own origin.
export function refuseOrigin(url, pageOrigin) {
  let u;
  try {
    u = new URL(url);
  } catch {
    return `not a URL: ${url}`;
  }
  if (u.username || u.password) return `${u.origin}: URLs with credentials are not used`;
  if (u.origin === pageOrigin) return null;
  if (u.protocol === 'https:') return null;
  if (u.protocol === 'http:' && (LOOPBACK.has(u.hostname) || u.hostname.endsWith('.localhost'))) return null;
  if (u.protocol === 'http:') return `${u.host}: weights are fetched only over https (or from this machine), not plain http`;
  return `${u.protocol} URLs cannot be a model's address (use https://…)`;
}

/// Throws the refusal as an error naming the URL.
export function checkOrigin(url, pageOrigin) {
  const why = refuseOrigin(url, pageOrigin);
  if (why) throw Object.assign(new Error(`Refused model address: ${why}`), { name: 'OriginError', fatal: true });
}

/// The hosts a catalog lists (its models' URLs and mirrors, resolved against its CDN base): a
/// `?cdn=` link may point at one of these, or at the page's origin, without asking.
export function catalogHosts(catalog, base) {
  const hosts = new Set();
  const add = (u) => {
    try {
      hosts.add(new URL(u, base).host);
    } catch {
      // An unparsable catalog URL is reported where it is used.
    }
  };
  if (catalog.cdn) add(catalog.cdn);
  for (const m of catalog.models || []) {
    add(m.url);
    for (const x of Array.isArray(m.mirrors) ? m.mirrors : []) add(x);
  }
  return hosts;
}
