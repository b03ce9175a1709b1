// Downloads from hosts that lie, change or are not allowed (www/download.js in the page; quota
// and conversion through the app's worker): a manifest with a size that is no number fails at
// once naming the field; a resumed download asks If-Range for the version its chunks are of, and
// a file changed between visits is fetched again whole instead of mixed (also from a host whose
// CORS refuses If-Range); a pinned hash beats a digest a server once sent; the engine's sha256
// (www/download-verify.js) hashes a blob of several slices as node does, and bytes that stay
// corrupt are never kept; a plain-http host is refused before any request; a full quota ends in
// the sizes message with no model recorded; a streamed conversion (www/convert.js) asks for one
// version of each file, across a resume.
//
// The weights host is a small server of this file's own: it must answer If-Range as a CDN does
// (200 with the whole file for a stale validator), change a file between visits, and say in its
// CORS preflight whether it allows If-Range.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ARTIFACTS, ROOT, launchBrowser, openPage, serveApp } from './harness.mjs';

const MB = 1 << 20;
const sha256 = (b) => createHash('sha256').update(b).digest('hex');

/// The weights host on 127.0.0.1 (or `host`): files from memory, single Range requests,
/// If-Range, a strong ETag per version. `refuse(entry)` answers 404 for matching requests (a
/// download cut short); `allowIfRange` is what its CORS preflight allows.
function startHost(host = '127.0.0.1') {
  const files = new Map();
  let version = 0;
  const h = {
    log: [],
    allowIfRange: true,
    refuse: null,
    redirects: new Map(),
    put(path, bytes) {
      files.set(path, { bytes: Buffer.from(bytes), etag: `"v${++version}"` });
    },
    etag: (path) => files.get(path).etag,
    requests: (path) => h.log.filter((e) => e.method === 'GET' && e.path === path),
  };
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    res.setHeader('Access-Control-Allow-Origin', '*');
    res.setHeader('Access-Control-Expose-Headers', 'Content-Range, Content-Length, ETag');
    if (req.method === 'OPTIONS') {
      h.log.push({ method: 'OPTIONS', path, asked: req.headers['access-control-request-headers'] || '' });
      res.setHeader('Access-Control-Allow-Headers', h.allowIfRange ? 'Range, If-Range' : 'Range');
      res.writeHead(204).end();
      return;
    }
    const range = req.headers.range || null;
    const m = /^bytes=(\d+)-(\d+)$/.exec(range || '');
    const e = { method: req.method, path, range, start: m ? Number(m[1]) : 0, ifRange: req.headers['if-range'] || null, status: 0, t0: performance.now() };
    h.log.push(e);
    res.on('finish', () => {
      e.t1 = performance.now();
    });
    const reply = (status, headers = {}, body = undefined) => {
      e.status = status;
      res.writeHead(status, headers).end(body);
    };
    if (h.redirects.has(path)) return reply(302, { Location: h.redirects.get(path) });
    const f = files.get(path);
    if (!f || h.refuse?.(e)) return reply(404);
    const len = f.bytes.length;
    // RFC 9110 §13.1.5: a stale validator in If-Range means "send the whole (new) file".
    if (!m || (e.ifRange && e.ifRange !== f.etag)) return reply(200, { ETag: f.etag, 'Content-Length': len }, f.bytes);
    const start = Number(m[1]);
    const end = Math.min(Number(m[2]), len - 1);
    if (start >= len) return reply(416, { 'Content-Range': `bytes */${len}` });
    reply(206, { ETag: f.etag, 'Content-Range': `bytes ${start}-${end}/${len}`, 'Content-Length': end - start + 1 }, f.bytes.subarray(start, end + 1));
  });
  return new Promise((ok, fail) => {
    server.on('error', fail);
    server.listen(0, host, () => {
      h.url = `http://${host}:${server.address().port}/`;
      h.close = () => server.close();
      ok(h);
    });
  });
}

let app;
let host;
let browser;
let page;
let logs;
let blank;

before(async () => {
  app = await serveApp();
  host = await startHost();
  browser = await launchBrowser();
  ({ page, logs } = await openPage(browser));
  // download.js needs only a document of the app's origin, not the app (no GPU, no worker). It
  // is served for real: a page Playwright fulfils has no address space, and Chromium's local
  // network access rules then refuse its requests to the loopback host.
  writeFileSync(join(ARTIFACTS, 'hostile-downloads.html'), '<!doctype html><title>downloads</title>');
  blank = `${app.url}artifacts/hostile-downloads.html`;
  await page.goto(blank);
});

after(async () => {
  await browser?.close();
  app?.server.close();
  host?.close();
});

/// downloadModel(entry, opts) in the page: {record} or {error, name}; {hung} when it neither
/// finished nor failed within `limitMs`.
function download(entry, opts = {}, limitMs = 20_000) {
  return page.evaluate(async ([e, o, limit]) => {
    const { downloadModel } = await import('/download.js');
    const t0 = performance.now();
    const run = downloadModel(e, o).then((r) => ({ record: r.record }), (x) => ({ error: String(x.message || x), name: x.name }));
    const out = await Promise.race([run, new Promise((ok) => setTimeout(() => ok({ hung: true }), limit))]);
    return { ...out, ms: performance.now() - t0 };
  }, [entry, opts, limitMs]);
}

/// sha256 of what IndexedDB holds for a file of model `id` (null when it holds no whole file).
function storedSha(id, path) {
  return page.evaluate(async ([modelId, p]) => {
    const store = await import('/store.js');
    const blob = await store.getFileBlob(modelId, p).catch(() => null);
    if (!blob) return null;
    return [...new Uint8Array(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()))].map((b) => b.toString(16).padStart(2, '0')).join('');
  }, [id, path]);
}

/// Requests the browser sent before a failed download aborted them can still reach the host a
/// moment later; a visit's log starts after they have.
const settle = () => new Promise((ok) => setTimeout(ok, 300));

const manifest = (shards) => JSON.stringify({ format: 'webdiffusion-package', version: 2, shards });

test('a manifest or catalog with a size that is no number (or a bad path or hash) fails at once, naming the field', { timeout: 60_000 }, async () => {
  const good = { file: 'unet.bin', size: 10, sha256: sha256('x') };
  // [shards, the error]: the first is the one that used to hang (a chunk count of NaN, waited
  // on forever) while its file is right there on the host.
  const cases = [
    [[{ file: 'a.bin', size: 'abc' }], /manifest\.json: shards\[0\]\.size is "abc", expected a whole number of bytes/],
    [[good, { file: 'a.bin' }], /shards\[1\]\.size is missing, expected a whole number/],
    [[good, { file: 'a.bin', size: -1 }], /shards\[1\]\.size is -1/],
    [[good, { file: 'a.bin', size: 2 ** 53 }], /shards\[1\]\.size is 9007199254740992, expected a whole number of bytes \(at most 16 GiB\)/],
    [[good, { file: '../../secret', size: 1 }], /shards\[1\]\.file is "\.\.\/\.\.\/secret", expected a path without empty, "\." or "\.\." segments/],
    [[good, { file: '/etc/passwd', size: 1 }], /shards\[1\]\.file is "\/etc\/passwd", expected a relative path, not an absolute one/],
    [[good, { file: 'https://evil.example/w', size: 1 }], /shards\[1\]\.file .* expected a relative path, not a URL/],
    [[good, { file: 'a\\b', size: 1 }], /shards\[1\]\.file .* expected a path without backslashes/],
    [[good, { file: '', size: 1 }], /shards\[1\]\.file is "", expected a relative file path/],
    [[good, { file: 'a.bin', size: 1, sha256: 'ABC' }], /shards\[1\]\.sha256 is "ABC", expected a sha256/],
    [[good, { file: 'unet.bin', size: 1 }], /shards\[1\]\.file "unet\.bin" is listed twice/],
  ];
  for (const [i, [shards, want]] of cases.entries()) {
    host.put(`/bad${i}/manifest.json`, manifest(shards));
    host.put(`/bad${i}/a.bin`, Buffer.from('some bytes'));
    const r = await download({ id: `bad${i}`, name: `bad${i}`, url: `${host.url}bad${i}/` }, {}, 8000);
    assert.ok(!r.hung, `case ${i} (${JSON.stringify(shards.at(-1))}): the download hangs instead of failing`);
    assert.match(r.error || '', want, `case ${i} (${JSON.stringify(shards.at(-1))})`);
    assert.ok(r.ms < 5000, `case ${i} failed after ${r.ms} ms`);
    assert.equal(host.log.filter((e) => e.path.startsWith(`/bad${i}/`) && !e.path.endsWith('manifest.json')).length, 0, 'no shard is requested');
  }
  // A catalog entry's list is checked the same way.
  const r = await download({ id: 'badcat', name: 'Bad catalog', url: `${host.url}badcat/`, format: 'diffusers', files: [{ path: 'model_index.json', size: '12' }] }, {}, 8000);
  assert.match(r.error || '', /Bad catalog \(catalog\): files\[0\]\.size is "12", expected a whole number of bytes/);
});

/// A download of one `bytes` file at `path` cut short at `cutAt` (404 from there on), as a first
/// visit that ended (tab closed, network gone) before the file was whole.
async function cutVisit(id, path, bytes, cutAt) {
  host.put(path, bytes);
  host.refuse = (e) => e.path === path && e.start >= cutAt;
  const entry = { id, name: id, url: host.url + path.slice(1, path.lastIndexOf('/') + 1), format: 'diffusers', files: [{ path: path.slice(path.lastIndexOf('/') + 1) }] };
  const first = await download(entry, { chunkSize: MB });
  assert.match(first.error || '', /HTTP 404/, 'the first visit is cut short');
  await settle();
  host.refuse = null;
  return entry;
}

test('a resumed download asks (If-Range) for the version its stored chunks are of', { timeout: 60_000 }, async () => {
  const path = '/resume/w.bin';
  const bytes = randomBytes(4 * MB + 123);
  const entry = await cutVisit('resume', path, bytes, 2 * MB);
  const etag = host.etag(path);
  // After the first answer named the version, later chunks of the same visit already ask for it.
  assert.ok(host.requests(path).some((e) => e.start > 0 && e.ifRange === etag), 'later chunks carry If-Range');
  host.log.length = 0;
  await page.reload();
  const r = await download(entry, { chunkSize: MB });
  assert.ok(r.record, r.error);
  const again = host.requests(path);
  // Chunk 0 came alone (its answer told the size) and is stored; chunks aborted with the cut
  // may be fetched again, each asking for the stored version.
  assert.ok(again.length > 0 && again.every((e) => e.start > 0 && e.ifRange === etag && e.status === 206),
    `every request after the reload resumes with If-Range ${etag}: ${JSON.stringify(again)}`);
  assert.equal(await storedSha('resume', 'w.bin'), sha256(bytes));
});

for (const allowIfRange of [true, false]) {
  test(`a file changed on the server between visits is fetched again, not mixed (${allowIfRange ? 'If-Range' : 'CORS refuses If-Range'})`, { timeout: 60_000 }, async () => {
    host.allowIfRange = allowIfRange;
    const id = `changed-${allowIfRange}`;
    const path = `/${id}/w.bin`;
    const entry = await cutVisit(id, path, randomBytes(4 * MB), 2 * MB);
    const newer = randomBytes(4 * MB); // same size: only the version tells
    host.put(path, newer);
    host.log.length = 0;
    await page.reload();
    const r = await download(entry, { chunkSize: MB }).finally(() => {
      host.allowIfRange = true;
    });
    assert.ok(r.record, `${r.error}\n${logs.join('\n')}`);
    assert.equal(await storedSha(id, 'w.bin'), sha256(newer), 'the stored file is the new version, whole');
    const got = host.requests(path);
    assert.ok(got.some((e) => e.start === 0), `the file was started over: ${JSON.stringify(got)}`);
    if (allowIfRange) assert.ok(got.some((e) => e.ifRange && e.status === 200), 'the stale If-Range got the whole new file');
    else assert.ok(host.log.some((e) => e.method === 'OPTIONS' && /if-range/i.test(e.asked)), 'If-Range was tried');
  });
}

test('a pinned sha256 wins over a digest a server once sent', { timeout: 60_000 }, async () => {
  const bytes = randomBytes(100_000);
  host.put('/pinned/w.bin', bytes);
  // What an earlier visit stored from a server that sent other bytes and a digest of them.
  const other = Buffer.alloc(bytes.length, 7);
  await page.evaluate(async ([size, digest, data]) => {
    const store = await import('/store.js');
    await store.putFile({ modelId: 'pinned', path: 'w.bin', size, chunkSize: size, sha256: digest, shaSource: 'server', complete: true });
    await store.putChunk('pinned', 'w.bin', 0, new Blob([Uint8Array.from(atob(data), (c) => c.charCodeAt(0))]));
  }, [bytes.length, sha256(other), other.toString('base64')]);
  const r = await download({ id: 'pinned', name: 'pinned', url: `${host.url}pinned/`, format: 'diffusers', files: [{ path: 'w.bin', size: bytes.length, sha256: sha256(bytes) }] });
  assert.ok(r.record, r.error);
  assert.equal(r.record.files[0].sha256, sha256(bytes), 'the record names the pinned hash');
  assert.equal(await storedSha('pinned', 'w.bin'), sha256(bytes), 'the pinned bytes are stored');
});

test('the engine\'s sha256 hashes a blob of several slices as node does, and a pre-aborted one stops', { timeout: 60_000 }, async () => {
  const bytes = randomBytes((2 << 23) + 4321); // two 8 MiB slices and a part
  host.put('/hash/big.bin', bytes);
  const r = await page.evaluate(async (url) => {
    const { sha256Blob, sha256Bytes, HASH_SLICE } = await import('/download-verify.js');
    const blob = await (await fetch(url)).blob();
    const seen = [];
    const whole = await sha256Blob(blob, new AbortController().signal, (n) => seen.push(n));
    const aborted = new AbortController();
    aborted.abort();
    const stopped = await sha256Blob(blob, aborted.signal).then(() => null, (e) => e.name);
    const small = await sha256Bytes(new TextEncoder().encode('abc'));
    const empty = await sha256Bytes(new Uint8Array(0));
    return { whole, seen, slice: HASH_SLICE, stopped, small, empty };
  }, `${host.url}hash/big.bin`);
  assert.ok(bytes.length > r.slice, 'the blob is larger than one slice');
  assert.equal(r.whole, sha256(bytes));
  assert.deepEqual(r.seen, [r.slice, r.slice, bytes.length - 2 * r.slice], 'progress after each slice');
  assert.equal(r.stopped, 'AbortError');
  assert.equal(r.small, sha256('abc'));
  assert.equal(r.empty, sha256(''));
});

test('a file whose bytes stay corrupt fails its pinned sha256 twice and leaves nothing stored; mended, it downloads', { timeout: 60_000 }, async () => {
  const bytes = randomBytes(9 * MB + 77); // more than one hash slice
  const bad = Buffer.from(bytes);
  bad[8 * MB + 5] ^= 0x40; // in the second hash slice
  host.put('/corrupt/w.bin', bad);
  host.log.length = 0;
  const entry = { id: 'corrupt', name: 'corrupt', url: `${host.url}corrupt/`, format: 'diffusers', files: [{ path: 'w.bin', size: bytes.length, sha256: sha256(bytes) }] };
  const r = await download(entry, { chunkSize: MB });
  assert.match(r.error || '', new RegExp(`w\\.bin is corrupt after downloading it twice \\(sha256 ${sha256(bad).slice(0, 12)}… instead of ${sha256(bytes).slice(0, 12)}…\\)`));
  assert.equal(host.requests('/corrupt/w.bin').length, 2 * Math.ceil(bytes.length / MB), 'fetched twice, whole');
  const left = await page.evaluate(async () => {
    const store = await import('/store.js');
    return { chunks: await store.chunkMap('corrupt'), models: (await store.listModels()).map((m) => m.id) };
  });
  assert.deepEqual(left.chunks, {}, 'no bad bytes kept');
  assert.ok(!left.models.includes('corrupt'), 'no model record');
  host.put('/corrupt/w.bin', bytes);
  const again = await download(entry, { chunkSize: MB });
  assert.ok(again.record, again.error);
  assert.equal(await storedSha('corrupt', 'w.bin'), sha256(bytes));
});

test('a plain-http host that is not this machine is refused before any request, as is a redirect to one', { timeout: 60_000 }, async (t) => {
  const asked = [];
  const onRequest = (req) => asked.push(req.url());
  page.on('request', onRequest);
  const r = await download({ id: 'far', name: 'far', url: 'http://example.invalid/model/' });
  page.off('request', onRequest);
  assert.equal(r.name, 'OriginError', r.error);
  assert.match(r.error, /Refused model address: example\.invalid: weights are fetched only over https/);
  assert.deepEqual(asked.filter((u) => u.includes('example.invalid')), [], 'no request went to the refused host');

  // 127.0.0.2 is this machine too, but not a name origins.js allows: bytes redirected from
  // there are not used.
  const other = await startHost('127.0.0.2').catch(() => null);
  if (!other) {
    t.diagnostic('127.0.0.2 is not available here (not Linux?): the redirect case is skipped');
    return;
  }
  try {
    other.put('/m/manifest.json', manifest([]));
    host.redirects.set('/moved/manifest.json', `${other.url}m/manifest.json`);
    const moved = await download({ id: 'moved', name: 'moved', url: `${host.url}moved/` });
    assert.equal(moved.name, 'OriginError', moved.error);
    assert.match(moved.error, /127\.0\.0\.2/);
  } finally {
    other.close();
  }
});

test('a full quota while writing ends in the sizes message, through the app, with no model recorded', { timeout: 120_000 }, async () => {
  // A package whose manifest (stored whole, before any shard) is larger than the quota left.
  host.put('/big/manifest.json', JSON.stringify({ format: 'webdiffusion-package', version: 2, shards: [{ file: 'a.bin', size: 5 }], pad: 'x'.repeat(3 * MB) }));
  host.put('/big/a.bin', Buffer.from('hello'));
  // Its own profile: Chromium applies a quota override only to a database opened after it.
  const own = await launchBrowser();
  try {
    const { page: p, logs: l } = await openPage(own);
    const cdp = await own.newCDPSession(p);
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: new URL(app.url).origin, quotaSize: MB });
    await p.goto(`${app.url}?sw=0`);
    await p.waitForFunction(() => window.webdiffusion && window.webdiffusion.state.ready, null, { timeout: 60_000 });
    const entry = { id: 'quota-test', name: 'Quota test', url: `${host.url}big/` };
    const err = await p.evaluate((e) => window.webdiffusion.loadEntry(e, { quant: 'none' }).then(() => null, (x) => String(x.message || x)), entry);
    assert.match(err || '', /^Not enough storage for Quota test: [\d.]+ (MB|GB) still to store/, l.join('\n'));
    const models = await p.evaluate(async () => (await import('/store.js')).listModels());
    assert.deepEqual(models.map((m) => m.id), [], 'no model record');
  } finally {
    await own.close();
  }
});

test('a conversion asks for one version of each file: first request alone, If-Range from the checkpoint, a change starts it over', { timeout: 300_000 }, async () => {
  // tiny-sd1 as a plain diffusers folder (no Hub listing, so no sha256 to tell versions apart).
  const dir = join(ROOT, 'tests/fixtures/tiny-sd1');
  const weights = ['vae/diffusion_pytorch_model.safetensors', 'text_encoder/model.fp16.safetensors', 'unet/diffusion_pytorch_model.safetensors'];
  for (const p of ['model_index.json', 'scheduler/scheduler_config.json', 'tokenizer/vocab.json', 'tokenizer/merges.txt', 'tokenizer/tokenizer_config.json',
    'tokenizer/special_tokens_map.json', 'text_encoder/config.json', 'unet/config.json', 'vae/config.json', ...weights]) {
    host.put(`/tiny/${p}`, readFileSync(join(dir, p)));
  }
  const chunk = 1 << 16;
  const unet = `/tiny/${weights[2]}`;
  const { page: p, logs: l } = await openPage(browser);
  const ready = () => p.waitForFunction(() => window.webdiffusion && window.webdiffusion.state.ready, null, { timeout: 60_000 });
  const load = () => p.evaluate((u) => window.webdiffusion.load(u, { quant: 'q4_0' }).then(() => null, (e) => String(e.message || e)), `${host.url}tiny/`);
  try {
    await p.goto(`${app.url}?sw=0&chunk=${chunk}`);
    await ready();
    host.log.length = 0;
    host.refuse = (e) => e.path === unet && e.start >= 12 * chunk; // past the first checkpoint (8 chunks)
    assert.match(await load() || '', /HTTP 404/, 'the first visit is cut short in the U-Net');
    await settle();
    host.refuse = null;
    for (const w of weights) {
      const [first, second] = host.requests(`/tiny/${w}`).filter((e) => e.range !== 'bytes=0-0');
      assert.ok(second.t0 >= first.t1, `${w}: the second request went out before the first was answered`);
      assert.ok(!first.ifRange && second.ifRange === host.etag(`/tiny/${w}`), `${w}: If-Range from the second request on`);
    }
    const old = host.etag(unet);
    host.put(unet, readFileSync(join(dir, weights[2]))); // a new version (same bytes here)
    host.log.length = 0;
    await p.reload();
    await ready();
    assert.equal(await load(), null, l.join('\n'));
    const resumed = host.requests(unet).filter((e) => e.range !== 'bytes=0-0');
    assert.ok(resumed[0].start > 0 && resumed[0].ifRange === old && resumed[0].status === 200,
      `the resumed U-Net asks If-Range with the checkpoint's validator: ${JSON.stringify(resumed[0])}`);
    assert.ok(resumed.some((e) => e.start === 0), 'the changed U-Net is converted from its start');
    assert.ok(host.requests(`/tiny/${weights[0]}`).some((e) => e.start === 0 && e.range !== 'bytes=0-0'), 'the whole conversion started over');
  } finally {
    await p.close();
  }
});
