#!/usr/bin/env node
// A stand-in for Hugging Face, serving a diffusers folder the way huggingface.co serves a repo,
// so the page's real-Hub path (302s, a second origin, no Repr-Digest, hashes only from the API)
// can be tested and benchmarked on loopback:
//
//   hub origin  GET|HEAD /<org>/<repo>/resolve/main/<path>
//                 small files: 200/206 (Range), ETag "<git oid>", X-Repo-Commit, CORS;
//                 LFS files: 302 to the CDN origin (an opaque, signed, expiring URL) with
//                 X-Linked-Size and X-Linked-Etag "<sha256>", as the Hub answers.
//               GET /api/models/<org>/<repo>                     model info with siblings
//               GET /api/models/<org>/<repo>/tree/main[/<dir>][?recursive=true]
//                 [{type:'file', oid, size, path, lfs?: {oid: sha256, size, pointerSize}},
//                  {type:'directory', oid, size: 0, path}]
//               GET /__stats                                      request/byte counts (JSON)
//   cdn origin  GET|HEAD /repos/<aa>/<bb>/<sha256>?Expires=…&Signature=…&Key-Pair-Id=…
//                 bytes with HTTP Range (206 + Content-Range), CORS, its own ETag (not the
//                 sha256: a client cannot learn the hash from the CDN, as with the real one).
//
//   node tools/bench/hf-standin.mjs --dir DIR [--repo org/name] [--port N] [--cdn-port N]
//        [--expires SECONDS] [--verbose]
//
// Programmatic: startHfStandin({dir, repo}) -> {apiUrl, resolveBase, cdnOrigin, treeUrl,
// stats(), resetStats(), setFaults({cutAfter, corrupt}), close()}. Loopback only. The listing
// comes from DIR/.hf-tree.json (synthetic-repo.mjs writes it) or is hashed at start (small
// folders such as tiny-sd1).

import { createServer } from 'node:http';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { extname, join, resolve } from 'node:path';
import { readOrBuildTree, treeListing } from './hub-listing.mjs';

const CORS = {
  'Access-Control-Allow-Origin': '*',
  'Access-Control-Allow-Methods': 'GET, HEAD, OPTIONS',
  'Access-Control-Allow-Headers': 'Range, If-None-Match, If-Range, Authorization, Content-Type',
  'Access-Control-Max-Age': '86400',
};
const HUB_EXPOSE = 'Content-Range, Content-Length, ETag, Accept-Ranges, X-Repo-Commit, X-Linked-Size, X-Linked-Etag, X-Error-Code, X-Error-Message, Location';
const CDN_EXPOSE = 'Content-Range, Content-Length, ETag, Accept-Ranges, Content-Disposition, Last-Modified';
const TYPES = { '.json': 'application/json', '.txt': 'text/plain; charset=utf-8', '.md': 'text/markdown; charset=utf-8' };
const isWeight = (p) => /\.(safetensors|bin|ckpt|gguf)$/.test(p) || /^\/repos\//.test(p);

function newStats() {
  const origin = () => ({ requests: 0, bytes: 0, weightRequests: 0, weightBytes: 0, byStatus: {}, paths: {} });
  return { hub: origin(), cdn: origin(), log: [] };
}

/// `bytes=a-b` | `bytes=a-` | `bytes=-n` -> {start, end} (inclusive), null without a header,
/// 'bad' when unsatisfiable or unparsable (one range only, as the Hub and its CDN handle).
function parseRange(header, size) {
  if (!header) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return 'bad';
  let start;
  let end = size - 1;
  if (m[1] === '') start = Math.max(0, size - Number(m[2]));
  else {
    start = Number(m[1]);
    if (m[2] !== '') end = Math.min(end, Number(m[2]));
  }
  return start > end || start >= size ? 'bad' : { start, end };
}

/// Starts both origins on 127.0.0.1 (ports `port` / `cdnPort`, 0 = any). Options: dir, repo
/// (default: the one DIR/.hf-tree.json names), expiresS (lifetime of the signed CDN URLs, 3600;
/// an expired one gets 403 as from the real CDN), log (a function given one line per request),
/// cutAfter / corrupt (faults, below; `setFaults` changes them between requests).
/// Faults, as tools/serve.mjs has them (for resume and verification tests through the Hub's
/// path): `{path: substring of the repo file path, bytes | offset, times (1), from (0)}` or a
/// list; `cutAfter` drops the connection after `bytes` of a matching body longer than that,
/// `corrupt` flips the byte at file offset `offset` in matching bodies that cover it; `from`:
/// only bodies starting at or after that file offset. `times` counts down (Infinity: never).
function asList(f) {
  if (!f) return [];
  return (Array.isArray(f) ? f : [f]).map((x) => ({ times: 1, from: 0, ...x }));
}

function takeFault(list, path, start, applies) {
  const f = list.find((x) => x.times > 0 && path.includes(x.path) && start >= x.from && applies(x));
  if (f) f.times--;
  return f;
}

export async function startHfStandin(opts) {
  const dir = resolve(opts.dir);
  const host = '127.0.0.1'; // loopback only, whatever the caller asks
  const expiresS = opts.expiresS ?? 3600;
  const log = opts.log || (() => {});
  const tree = await readOrBuildTree(dir);
  const repo = opts.repo || tree.repo;
  if (!repo || !/^[\w.-]+\/[\w.-]+$/.test(repo)) throw new Error(`a repo name org/name is needed (got ${repo})`);
  const byPath = new Map(tree.files.map((f) => [f.path, f]));
  const bySha = new Map(tree.files.filter((f) => f.lfs).map((f) => [f.sha256, f]));
  const secret = randomBytes(32);
  const lastModified = new Date(Math.floor(Date.now() / 1000) * 1000).toUTCString(); // as uploaded now
  let stats = newStats();
  let faults = { cutAfter: asList(opts.cutAfter), corrupt: asList(opts.corrupt) };

  // Count a request and return a byte counter for its body.
  function track(origin, req, path) {
    const o = stats[origin];
    const entry = { origin, method: req.method, path, range: req.headers.range || null, status: 0, bytes: 0 };
    o.requests++;
    const p = (o.paths[path] ||= { requests: 0, bytes: 0 });
    p.requests++;
    const weight = isWeight(path);
    if (weight) o.weightRequests++;
    if (stats.log.length < 100_000) stats.log.push(entry);
    return {
      status(s) {
        entry.status = s;
        o.byStatus[s] = (o.byStatus[s] || 0) + 1;
        log(`${origin} ${s} ${req.method} ${path} ${entry.range || ''}`);
      },
      bytes(n) {
        entry.bytes += n;
        p.bytes += n;
        o.bytes += n;
        if (weight) o.weightBytes += n;
      },
    };
  }

  // Status, headers and (a range of) a file or a buffer; HEAD sends headers only.
  function send(req, res, t, status, headers, body) {
    t.status(status);
    res.writeHead(status, headers);
    if (req.method === 'HEAD' || body === undefined) return res.end();
    if (Buffer.isBuffer(body) || typeof body === 'string') {
      const b = Buffer.from(body);
      t.bytes(b.length);
      return res.end(b);
    }
    const { start, end } = body;
    const corrupt = takeFault(faults.corrupt, body.path, start, (x) => x.offset >= start && x.offset <= end);
    const cut = takeFault(faults.cutAfter, body.path, start, (x) => x.bytes < end - start + 1);
    const stream = createReadStream(body.file, { start, end });
    let sent = 0;
    stream.on('error', () => res.destroy());
    res.on('close', () => stream.destroy());
    stream.on('data', (chunk) => {
      const pos = start + sent;
      if (corrupt && corrupt.offset >= pos && corrupt.offset < pos + chunk.length) {
        chunk = Buffer.from(chunk); // the read buffer may be pooled
        chunk[corrupt.offset - pos] ^= 0xff;
      }
      if (cut && sent + chunk.length >= cut.bytes) {
        // What was promised so far, then the connection drops mid-body, as a flaky network's.
        const part = chunk.subarray(0, cut.bytes - sent);
        stream.destroy();
        t.bytes(part.length);
        const drop = () => res.socket && res.socket.destroy();
        if (part.length) res.write(part, drop);
        else drop();
        return;
      }
      sent += chunk.length;
      t.bytes(chunk.length);
      if (!res.write(chunk)) {
        stream.pause();
        res.once('drain', () => stream.resume());
      }
    });
    stream.on('end', () => res.end());
  }

  function sendFile(req, res, t, f, base) {
    const etag = base.ETag;
    if (req.headers['if-none-match'] === etag) return send(req, res, t, 304, base);
    // If-Range: a range of the version the client has, else (another validator) the whole file.
    const ifRange = req.headers['if-range'];
    const stale = ifRange && ifRange !== etag && ifRange !== base['Last-Modified'];
    const r = parseRange(stale ? undefined : req.headers.range, f.size);
    if (r === 'bad') return send(req, res, t, 416, { ...base, 'Content-Range': `bytes */${f.size}` }, '');
    const { start, end } = r || { start: 0, end: f.size - 1 };
    const headers = { ...base, 'Accept-Ranges': 'bytes', 'Content-Length': end - start + 1 };
    if (r) headers['Content-Range'] = `bytes ${start}-${end}/${f.size}`;
    return send(req, res, t, r ? 206 : 200, headers, f.size ? { file: join(dir, f.path), path: f.path, start, end } : '');
  }

  // What CloudFront-signed URLs look like: the object key by hash, an expiry, a signature.
  const signature = (key, expires) => createHmac('sha256', secret).update(`${key}\n${expires}`).digest('base64')
    .replace(/\+/g, '-').replace(/=/g, '_').replace(/\//g, '~');
  function cdnUrl(f) {
    const key = `/repos/${f.sha256.slice(0, 2)}/${f.sha256.slice(2, 4)}/${f.sha256}`;
    const expires = Math.floor(Date.now() / 1000) + expiresS;
    const name = f.path.split('/').pop();
    const q = new URLSearchParams({
      'response-content-disposition': `inline; filename*=UTF-8''${encodeURIComponent(name)}; filename="${name}";`,
      Expires: String(expires), Signature: signature(key, expires), 'Key-Pair-Id': 'K3RPWS32NSSJCE',
    });
    return `${cdnOrigin}${key}?${q}`;
  }

  const errorHeaders = (code, message) => ({ ...CORS, 'Access-Control-Expose-Headers': HUB_EXPOSE, 'Content-Type': 'application/json', 'X-Error-Code': code, 'X-Error-Message': message });

  function hub(req, res) {
    const url = new URL(req.url, 'http://x');
    const path = decodeURIComponent(url.pathname);
    if (req.method === 'OPTIONS') return res.writeHead(204, CORS).end();
    if (path === '/__stats') return res.writeHead(200, { ...CORS, 'Content-Type': 'application/json' }).end(JSON.stringify(publicStats()));
    const t = track('hub', req, path);
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(req, res, t, 405, CORS, '');
    const json = (status, v) => send(req, res, t, status, { ...CORS, 'Access-Control-Expose-Headers': HUB_EXPOSE, 'Content-Type': 'application/json; charset=utf-8' }, JSON.stringify(v));
    const api = /^\/api\/models\/([^/]+\/[^/]+)(?:\/(tree|revision)\/([^/]+)(?:\/(.*))?)?$/.exec(path);
    if (api) {
      const [, name, kind, rev, sub = ''] = api;
      if (name !== repo) return send(req, res, t, 401, errorHeaders('RepoNotFound', 'Repository not found'), JSON.stringify({ error: 'Repository not found' }));
      if (rev && rev !== 'main' && rev !== tree.commit) return send(req, res, t, 404, errorHeaders('RevisionNotFound', `Invalid rev id: ${rev}`), JSON.stringify({ error: `Invalid rev id: ${rev}` }));
      if (kind === 'tree') {
        const recursive = ['1', 'true', 'True'].includes(url.searchParams.get('recursive'));
        const prefix = sub.replace(/\/+$/, '');
        if (prefix && !tree.files.some((f) => f.path.startsWith(`${prefix}/`))) {
          return send(req, res, t, 404, errorHeaders('EntryNotFound', `${prefix} does not exist on "main"`), JSON.stringify({ error: `${prefix} does not exist` }));
        }
        return json(200, treeListing(tree.files, prefix, recursive));
      }
      return json(200, {
        _id: createHash('md5').update(repo).digest('hex').slice(0, 24), id: repo, modelId: repo, author: repo.split('/')[0],
        sha: tree.commit, private: false, disabled: false, gated: false, library_name: 'diffusers',
        tags: ['diffusers', 'safetensors', 'text-to-image'], pipeline_tag: 'text-to-image',
        siblings: tree.files.map((f) => ({ rfilename: f.path })), usedStorage: tree.files.reduce((s, f) => s + f.size, 0),
      });
    }
    const m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    if (!m) return send(req, res, t, 404, errorHeaders('EntryNotFound', 'not found'), '');
    const [, name, rev, file] = m;
    if (name !== repo) return send(req, res, t, 401, errorHeaders('RepoNotFound', 'Repository not found'), '');
    if (rev !== 'main' && rev !== tree.commit) return send(req, res, t, 404, errorHeaders('RevisionNotFound', 'Invalid rev id'), '');
    const f = byPath.get(file);
    if (!f) return send(req, res, t, 404, errorHeaders('EntryNotFound', 'Entry not found'), 'Entry not found');
    const common = { ...CORS, 'Access-Control-Expose-Headers': HUB_EXPOSE, 'X-Repo-Commit': tree.commit, Vary: 'Origin, Accept-Encoding' };
    if (f.lfs) {
      const location = cdnUrl(f);
      const body = `Found. Redirecting to ${location}`;
      return send(req, res, t, 302, {
        ...common, Location: location, ETag: `"${f.oid}"`, 'X-Linked-Size': String(f.size), 'X-Linked-Etag': `"${f.sha256}"`,
        'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(body),
      }, body);
    }
    return sendFile(req, res, t, f, { ...common, ETag: `"${f.oid}"`, 'Content-Type': TYPES[extname(f.path)] || 'application/octet-stream' });
  }

  function cdn(req, res) {
    const url = new URL(req.url, 'http://x');
    if (req.method === 'OPTIONS') return res.writeHead(204, CORS).end();
    const t = track('cdn', req, url.pathname);
    const head = { ...CORS, 'Access-Control-Expose-Headers': CDN_EXPOSE };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(req, res, t, 405, head, '');
    const m = /^\/repos\/[0-9a-f]{2}\/[0-9a-f]{2}\/([0-9a-f]{64})$/.exec(url.pathname);
    const f = m && bySha.get(m[1]);
    const expires = Number(url.searchParams.get('Expires'));
    const denied = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access denied</Message></Error>';
    if (!f || url.searchParams.get('Signature') !== signature(url.pathname, expires) || !(expires * 1000 > Date.now())) {
      return send(req, res, t, 403, { ...head, 'Content-Type': 'text/xml' }, denied);
    }
    return sendFile(req, res, t, f, {
      ...head,
      // S3-style: an md5-looking ETag of the upload, unrelated to the sha256 the Hub lists.
      ETag: `"${createHash('md5').update(`${f.sha256}:${f.size}`).digest('hex')}-${Math.max(1, Math.ceil(f.size / (64 << 20)))}"`,
      'Content-Type': 'binary/octet-stream', 'Content-Disposition': url.searchParams.get('response-content-disposition') || 'inline',
      'Cache-Control': 'public, max-age=604800, immutable', 'X-Cache': 'Hit from cloudfront', 'Last-Modified': lastModified,
    });
  }

  // A copy: {hub, cdn: {requests, bytes, weightRequests, weightBytes, byStatus, paths}, log}.
  const publicStats = () => JSON.parse(JSON.stringify(stats));

  const listen = (handler, port) => new Promise((ok, fail) => {
    // A request that throws (a malformed URL or percent-encoding) gets 400 instead of killing
    // the stand-in, as the real Hub answers it.
    const s = createServer((req, res) => {
      try {
        handler(req, res);
      } catch {
        if (!res.headersSent) res.writeHead(400, CORS).end();
        else res.destroy();
      }
    });
    s.on('error', fail);
    s.listen(port, host, () => ok(s));
  });
  const cdnServer = await listen(cdn, opts.cdnPort || 0);
  const cdnOrigin = `http://${host}:${cdnServer.address().port}`;
  const hubServer = await listen(hub, opts.port || 0);
  const apiUrl = `http://${host}:${hubServer.address().port}`;
  const sockets = new Set();
  for (const s of [hubServer, cdnServer]) {
    s.on('connection', (c) => {
      sockets.add(c);
      c.on('close', () => sockets.delete(c));
    });
  }
  return {
    repo,
    commit: tree.commit,
    files: tree.files,
    hashedAtStart: tree.hashed,
    apiUrl,
    resolveBase: `${apiUrl}/${repo}/resolve/main/`,
    treeUrl: `${apiUrl}/api/models/${repo}/tree/main?recursive=true`,
    cdnOrigin,
    stats: publicStats,
    resetStats() {
      stats = newStats();
    },
    setFaults(f = {}) {
      faults = { cutAfter: asList(f.cutAfter), corrupt: asList(f.corrupt) };
    },
    /// Stops both origins and drops open connections (a stopped server, as the returning-visit
    /// benchmark needs: nothing may answer any more).
    close() {
      for (const c of sockets) c.destroy();
      return Promise.all([hubServer, cdnServer].map((s) => new Promise((ok) => s.close(() => ok()))));
    },
  };
}

function parseArgs(argv) {
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--dir') o.dir = argv[++i];
    else if (a === '--repo') o.repo = argv[++i];
    else if (a === '--port') o.port = Number(argv[++i]);
    else if (a === '--cdn-port') o.cdnPort = Number(argv[++i]);
    else if (a === '--expires') o.expiresS = Number(argv[++i]);
    else if (a === '--verbose') o.log = console.log;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.dir) throw new Error('usage: hf-standin.mjs --dir DIR [--repo org/name] [--port N] [--cdn-port N] [--expires S] [--verbose]');
  return o;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const s = await startHfStandin(parseArgs(process.argv.slice(2)));
  console.log(`Hugging Face stand-in for ${s.repo} (${s.files.length} files, commit ${s.commit.slice(0, 7)}${s.hashedAtStart ? `, ${s.hashedAtStart} hashed at start` : ''})`);
  console.log(`  resolve base  ${s.resolveBase}   (paste into the page's custom URL field)`);
  console.log(`  file listing  ${s.treeUrl}`);
  console.log(`  cdn origin    ${s.cdnOrigin}`);
  console.log(`  counts        ${s.apiUrl}/__stats`);
  const quit = async () => {
    const { hub, cdn } = s.stats();
    console.log(`\nhub: ${hub.requests} requests, ${hub.bytes} B; cdn: ${cdn.requests} requests, ${cdn.bytes} B`);
    await s.close();
    process.exit(0);
  };
  process.on('SIGINT', quit);
  process.on('SIGTERM', quit);
}
