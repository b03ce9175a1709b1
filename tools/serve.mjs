#!/usr/bin/env node
// A small static server for the app and for tests: HTTP Range, ETag/If-None-Match, CORS and
// correct MIME types (application/wasm), like the CDNs weights come from. Loopback only.
//
//   node tools/serve.mjs --port 8080 --mount /=www --mount /pkg=pkg --mount /models=models
//   (faults for manual tests: --cut-after PATH:BYTES[:TIMES[:FROM]] --corrupt PATH:OFFSET[:TIMES])
//
// As the tests' CDN stand-in it also counts requests and bytes per path (`server.stats`,
// `server.resetStats()`) and injects faults (`cutAfter`, `corrupt`; see `serve`), and it sends
// `Repr-Digest` (RFC 9530, sha-256 of the whole file) so a client can verify files that no
// catalog lists a hash for. No dependencies, so the README's serve command needs nothing but Node.

import { createServer } from 'node:http';
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync, promises as fs } from 'node:fs';
import { extname, join, normalize, resolve, sep } from 'node:path';

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.txt': 'text/plain; charset=utf-8',
  '.safetensors': 'application/octet-stream',
  '.bin': 'application/octet-stream',
};

// Hashing a multi-GB file would stall its first request for seconds; real models carry their
// hashes in the catalog or package manifest anyway.
const DIGEST_LIMIT = 256 << 20;

// `PATH:N[:TIMES[:FROM]]` (CLI form of a fault; TIMES may be Infinity).
function parseFault(text, key) {
  const [path, n, times, from] = text.split(':');
  return { path, [key]: Number(n), times: times ? Number(times) : 1, from: from ? Number(from) : 0 };
}

export function parseArgs(argv) {
  const opts = { port: 8080, host: '127.0.0.1', mounts: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--port') opts.port = Number(argv[++i]);
    else if (a === '--mount') {
      const [url, dir] = argv[++i].split('=');
      opts.mounts.push({ url: url.endsWith('/') ? url : url + '/', dir: resolve(dir) });
    } else if (a === '--cut-after') (opts.cutAfter ||= []).push(parseFault(argv[++i], 'bytes'));
    else if (a === '--corrupt') (opts.corrupt ||= []).push(parseFault(argv[++i], 'offset'));
    else if (a === '--quiet') opts.quiet = true;
    else throw new Error(`unknown argument ${a}`);
  }
  // Longest prefix first so /pkg/ wins over /.
  opts.mounts.sort((a, b) => b.url.length - a.url.length);
  return opts;
}

// A mount whose index.html carries a Content-Security-Policy meta tag is the app: its scripts get
// the same policy as a header, because a dedicated worker takes its policy from its script's
// response, not from the page's meta tag (and the model worker is what fetches weights).
function appPolicy(dir) {
  try {
    const html = readFileSync(join(dir, 'index.html'), 'utf8');
    return /<meta http-equiv="Content-Security-Policy" content="([^"]*)"/.exec(html)?.[1] || null;
  } catch {
    return null;
  }
}

function inside(dir, full) {
  return full === dir || full.startsWith(dir + sep);
}

// The file a URL path names, or null. A malformed percent-encoding, a NUL, a `../` escape or a
// symlink leading out of the mount all answer null (404): nothing outside a mount is served.
async function resolvePath(mounts, urlPath) {
  for (const m of mounts) {
    if (urlPath === m.url.slice(0, -1) || urlPath.startsWith(m.url)) {
      let rel;
      try {
        rel = decodeURIComponent(urlPath.slice(m.url.length));
      } catch {
        return null;
      }
      if (rel.includes('\0')) return null;
      if (rel === '' || rel.endsWith('/')) rel += 'index.html';
      const full = normalize(join(m.dir, rel));
      if (!inside(m.dir, full)) return null;
      try {
        const [real, root] = await Promise.all([fs.realpath(full), fs.realpath(m.dir)]);
        return inside(root, real) ? { path: real, mount: m } : null;
      } catch {
        return null;
      }
    }
  }
  return null;
}

/// The byte range a `Range` header asks of a file of `size` bytes (RFC 9110 §14.2):
/// `{start, end}` (inclusive), `'unsatisfiable'` (416), or null when the header is to be ignored
/// and the whole file sent — an unknown unit, several ranges (we do not send multipart) or a
/// ranges-specifier that does not parse.
export function parseRange(header, size) {
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (!m || (m[1] === '' && m[2] === '')) return null;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(m[1]);
  if (m[2] !== '' && Number(m[2]) < start) return null;
  if (start >= size) return 'unsatisfiable';
  return { start, end: m[2] === '' ? size - 1 : Math.min(size - 1, Number(m[2])) };
}

function newStats() {
  return { requests: 0, bytes: 0, paths: {}, log: [] };
}

// Faults are lists (a single object is accepted) and are consumed in place, so `times` counts
// down across requests; `times: Infinity` never runs out.
function asList(f) {
  if (!f) return [];
  return (Array.isArray(f) ? f : [f]).map((x) => ({ times: 1, ...x }));
}

/// Shared state of one server: request/byte counts and the fault lists.
export function createState(opts = {}) {
  return {
    stats: newStats(),
    faults: { cutAfter: asList(opts.cutAfter), corrupt: asList(opts.corrupt) },
    digests: new Map(),
  };
}

async function fileDigest(state, path, stat) {
  if (stat.size > DIGEST_LIMIT) return null;
  const key = `${path}\0${stat.size}\0${stat.mtimeMs}`;
  let p = state.digests.get(key);
  if (!p) {
    p = new Promise((ok, fail) => {
      const h = createHash('sha256');
      createReadStream(path).on('data', (d) => h.update(d)).on('end', () => ok(h.digest('base64'))).on('error', fail);
    });
    state.digests.set(key, p);
  }
  return p;
}

function record(state, entry) {
  const s = state.stats;
  s.requests++;
  const p = (s.paths[entry.path] ||= { requests: 0, bytes: 0, ranges: [] });
  p.requests++;
  if (entry.range) p.ranges.push(entry.range);
  if (s.log.length < 100_000) s.log.push(entry);
  return (n) => {
    entry.bytes += n;
    p.bytes += n;
    s.bytes += n;
  };
}

export function handler(mounts, log = () => {}, state = createState()) {
  const handle = respond(mounts, log, state);
  // An exception in one request must not take the server (the app's, or the tests' CDN) down.
  return (req, res) =>
    handle(req, res).catch((e) => {
      log(req, 500);
      if (!res.headersSent) res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`${e && e.message}\n`);
      else res.destroy();
    });
}

function respond(mounts, log, state) {
  return async (req, res) => {
    res.setHeader('Access-Control-Allow-Origin', '*');
    res.setHeader('Access-Control-Allow-Headers', 'Range, If-Range, If-None-Match');
    // Without these a cross-origin page cannot read a Range response's total size or our digest.
    res.setHeader('Access-Control-Expose-Headers', 'Content-Length, Content-Range, ETag, Accept-Ranges, Repr-Digest');
    if (req.method === 'OPTIONS') {
      res.writeHead(204).end();
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405).end();
      return;
    }
    let url;
    try {
      url = new URL(req.url, 'http://localhost');
    } catch {
      log(req, 400);
      res.writeHead(400, { 'Content-Type': 'text/plain' }).end('bad request target\n');
      return;
    }
    const entry = { method: req.method, path: url.pathname, range: req.headers.range || null, status: 0, bytes: 0 };
    const count = record(state, entry);
    const reply = (status) => {
      entry.status = status;
      log(req, status);
    };
    const found = await resolvePath(mounts, url.pathname);
    const path = found && found.path;
    let stat;
    try {
      stat = path && (await fs.stat(path));
    } catch {
      stat = null;
    }
    if (!stat || !stat.isFile()) {
      reply(404);
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
      return;
    }
    const etag = `"${stat.size.toString(16)}-${Math.floor(stat.mtimeMs).toString(16)}"`;
    res.setHeader('ETag', etag);
    res.setHeader('Accept-Ranges', 'bytes');
    res.setHeader('Content-Type', MIME[extname(path)] || 'application/octet-stream');
    res.setHeader('Cache-Control', 'no-cache');
    res.setHeader('Last-Modified', new Date(stat.mtimeMs).toUTCString());
    if (found.mount.csp === undefined) found.mount.csp = appPolicy(found.mount.dir);
    if (found.mount.csp && /\.(m?js|html)$/.test(path)) res.setHeader('Content-Security-Policy', found.mount.csp);
    if (req.headers['if-none-match'] === etag) {
      reply(304);
      res.writeHead(304).end();
      return;
    }
    let start = 0;
    let end = stat.size - 1;
    let status = 200;
    // If-Range (RFC 9110 §13.1.5): the range only while the file is still the version the client
    // has the first part of; otherwise the whole new file, so two versions never mix.
    const ifRange = req.headers['if-range'];
    const current = !ifRange || ifRange === etag || (!ifRange.startsWith('"') && !ifRange.startsWith('W/') && Date.parse(ifRange) === Math.floor(stat.mtimeMs / 1000) * 1000);
    const range = current && req.headers.range && parseRange(req.headers.range, stat.size);
    if (range === 'unsatisfiable') {
      reply(416);
      res.writeHead(416, { 'Content-Range': `bytes */${stat.size}` }).end();
      return;
    }
    if (range) {
      ({ start, end } = range);
      status = 206;
      res.setHeader('Content-Range', `bytes ${start}-${end}/${stat.size}`);
    }
    try {
      const digest = await fileDigest(state, path, stat);
      if (digest) res.setHeader('Repr-Digest', `sha-256=:${digest}:`);
    } catch {
      // A file that vanished mid-request fails below, where the body is read.
    }
    res.setHeader('Content-Length', end - start + 1);
    res.writeHead(status);
    reply(status);
    if (req.method === 'HEAD' || stat.size === 0) {
      res.end();
      return;
    }
    sendBody(state, url.pathname, path, start, end, res, count);
  };
}

function takeFault(list, urlPath, start, applies) {
  const f = list.find((x) => x.times > 0 && urlPath.includes(x.path) && start >= (x.from || 0) && applies(x));
  if (f) f.times--;
  return f;
}

function sendBody(state, urlPath, file, start, end, res, count) {
  const corrupt = takeFault(state.faults.corrupt, urlPath, start, (f) => f.offset >= start && f.offset <= end);
  const cut = takeFault(state.faults.cutAfter, urlPath, start, (f) => f.bytes < end - start + 1);
  let sent = 0;
  const stream = createReadStream(file, { start, end });
  stream.on('error', () => res.destroy());
  res.on('close', () => stream.destroy());
  stream.on('data', (chunk) => {
    const pos = start + sent;
    if (corrupt && corrupt.offset >= pos && corrupt.offset < pos + chunk.length) {
      chunk = Buffer.from(chunk); // the read buffer may be pooled
      chunk[corrupt.offset - pos] ^= 0xff;
    }
    if (cut && sent + chunk.length >= cut.bytes) {
      const part = chunk.subarray(0, cut.bytes - sent);
      stream.destroy();
      count(part.length);
      // Flush what we promised to send, then drop the connection mid-body, as a flaky network does.
      const drop = () => res.socket && res.socket.destroy();
      if (part.length) res.write(part, drop);
      else drop();
      return;
    }
    sent += chunk.length;
    count(chunk.length);
    if (!res.write(chunk)) {
      stream.pause();
      res.once('drain', () => stream.resume());
    }
  });
  stream.on('end', () => res.end());
}

/// Starts the server. Options: `{host, port, mounts: [{url, dir}], cutAfter, corrupt}` where a
/// fault is `{path: substring of the URL path, bytes | offset, times (default 1), from}` or a
/// list (`from`: only responses whose range starts at or after this file offset match):
///   cutAfter — the response body of a matching request is cut (socket destroyed) after `bytes`
///              bytes; only responses longer than that count against `times`.
///   corrupt  — the byte at file offset `offset` is flipped (xor 0xff) in matching responses
///              whose range covers it.
/// Returns the http.Server with `stats` ({requests, bytes, paths: {path: {requests, bytes,
/// ranges}}, log: [{method, path, range, status, bytes}]}), `resetStats()`, and `faults` (the
/// live lists) and `setFaults({cutAfter, corrupt})` to change faults between requests.
export function serve(opts, log) {
  return new Promise((ok) => {
    const state = createState(opts);
    const server = createServer(handler(opts.mounts, log, state));
    Object.defineProperty(server, 'stats', { get: () => state.stats });
    Object.defineProperty(server, 'faults', { get: () => state.faults });
    server.resetStats = () => {
      state.stats = newStats();
    };
    server.setFaults = (f = {}) => {
      state.faults = { cutAfter: asList(f.cutAfter), corrupt: asList(f.corrupt) };
    };
    server.listen(opts.port, opts.host || '127.0.0.1', () => ok(server));
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const opts = parseArgs(process.argv.slice(2));
  const server = await serve(opts, opts.quiet ? undefined : (req, status) => console.log(status, req.method, req.url, req.headers.range || ''));
  const { port } = server.address();
  console.log(`serving ${opts.mounts.map((m) => `${m.url} -> ${m.dir}`).join(', ')}`);
  console.log(`open http://${opts.host}:${port}/`);
}
