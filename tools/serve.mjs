#!/usr/bin/env node
// A small static server for the app and for tests: HTTP Range, ETag/If-None-Match, CORS and
// correct MIME types (application/wasm), like the CDNs weights come from. Loopback only.
//
//   node tools/serve.mjs --port 8080 --mount /=www --mount /pkg=pkg
//
// No dependencies, so the README's serve command needs nothing but Node.

import { createServer } from 'node:http';
import { createReadStream, promises as fs } from 'node:fs';
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

export function parseArgs(argv) {
  const opts = { port: 8080, host: '127.0.0.1', mounts: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--port') opts.port = Number(argv[++i]);
    else if (a === '--mount') {
      const [url, dir] = argv[++i].split('=');
      opts.mounts.push({ url: url.endsWith('/') ? url : url + '/', dir: resolve(dir) });
    } else throw new Error(`unknown argument ${a}`);
  }
  // Longest prefix first so /pkg/ wins over /.
  opts.mounts.sort((a, b) => b.url.length - a.url.length);
  return opts;
}

function resolvePath(mounts, urlPath) {
  for (const m of mounts) {
    if (urlPath === m.url.slice(0, -1) || urlPath.startsWith(m.url)) {
      let rel = decodeURIComponent(urlPath.slice(m.url.length));
      if (rel === '' || rel.endsWith('/')) rel += 'index.html';
      const full = normalize(join(m.dir, rel));
      if (full !== m.dir && !full.startsWith(m.dir + sep)) return null; // no ../ escapes
      return full;
    }
  }
  return null;
}

export function handler(mounts, log = () => {}) {
  return async (req, res) => {
    res.setHeader('Access-Control-Allow-Origin', '*');
    res.setHeader('Access-Control-Allow-Headers', 'Range, If-None-Match');
    res.setHeader('Access-Control-Expose-Headers', 'Content-Length, Content-Range, ETag, Accept-Ranges');
    if (req.method === 'OPTIONS') {
      res.writeHead(204).end();
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405).end();
      return;
    }
    const url = new URL(req.url, 'http://localhost');
    const path = resolvePath(mounts, url.pathname);
    let stat;
    try {
      stat = path && (await fs.stat(path));
    } catch {
      stat = null;
    }
    if (!stat || !stat.isFile()) {
      log(req, 404);
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
      return;
    }
    const etag = `"${stat.size.toString(16)}-${Math.floor(stat.mtimeMs).toString(16)}"`;
    res.setHeader('ETag', etag);
    res.setHeader('Accept-Ranges', 'bytes');
    res.setHeader('Content-Type', MIME[extname(path)] || 'application/octet-stream');
    res.setHeader('Cache-Control', 'no-cache');
    if (req.headers['if-none-match'] === etag) {
      log(req, 304);
      res.writeHead(304).end();
      return;
    }
    let start = 0;
    let end = stat.size - 1;
    let status = 200;
    const range = req.headers.range;
    if (range) {
      const m = /^bytes=(\d*)-(\d*)$/.exec(range);
      if (!m || (m[1] === '' && m[2] === '')) {
        res.writeHead(416, { 'Content-Range': `bytes */${stat.size}` }).end();
        return;
      }
      if (m[1] === '') {
        start = Math.max(0, stat.size - Number(m[2]));
      } else {
        start = Number(m[1]);
        if (m[2] !== '') end = Math.min(end, Number(m[2]));
      }
      if (start > end || start >= stat.size) {
        log(req, 416);
        res.writeHead(416, { 'Content-Range': `bytes */${stat.size}` }).end();
        return;
      }
      status = 206;
      res.setHeader('Content-Range', `bytes ${start}-${end}/${stat.size}`);
    }
    res.setHeader('Content-Length', end - start + 1);
    res.writeHead(status);
    log(req, status);
    if (req.method === 'HEAD' || stat.size === 0) {
      res.end();
      return;
    }
    createReadStream(path, { start, end }).pipe(res);
  };
}

export function serve(opts, log) {
  return new Promise((ok) => {
    const server = createServer(handler(opts.mounts, log));
    server.listen(opts.port, opts.host, () => ok(server));
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const opts = parseArgs(process.argv.slice(2));
  const server = await serve(opts, (req, status) => console.log(status, req.method, req.url));
  const { port } = server.address();
  console.log(`serving ${opts.mounts.map((m) => `${m.url} -> ${m.dir}`).join(', ')}`);
  console.log(`open http://${opts.host}:${port}/`);
}
