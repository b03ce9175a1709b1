// The Hugging Face stand-in (tools/bench/hf-standin.mjs) answers as huggingface.co does:
// small files directly, LFS files with a 302 to a second (CDN) origin carrying X-Linked-Size /
// X-Linked-Etag, HTTP Range and CORS on both, the API's file listing with git and LFS oids.
// Served: tests/fixtures/tiny-sd1 as it is (hashed at start). No browser needed; seconds.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './harness.mjs';
import { startHfStandin } from '../../tools/bench/hf-standin.mjs';
import { lfsPointer, walk } from '../../tools/bench/hub-listing.mjs';

const DIR = join(ROOT, 'tests/fixtures/tiny-sd1');
const REPO = 'webdiffusion/tiny-sd1';
const UNET = 'unet/diffusion_pytorch_model.safetensors';
const CONFIG = 'scheduler/scheduler_config.json';
const sha256 = (b) => createHash('sha256').update(b).digest('hex');
const blobOid = (b) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
const file = (p) => readFileSync(join(DIR, p));
const exposed = (r) => (r.headers.get('access-control-expose-headers') || '').toLowerCase().split(/\s*,\s*/);

let hf;
before(async () => {
  hf = await startHfStandin({ dir: DIR, repo: REPO });
});
after(() => hf.close());

test('small files come from the hub origin with CORS, ETag = git oid, Range', async () => {
  const r = await fetch(hf.resolveBase + CONFIG);
  assert.equal(r.status, 200);
  const body = Buffer.from(await r.arrayBuffer());
  assert.deepEqual(body, file(CONFIG));
  assert.equal(r.headers.get('access-control-allow-origin'), '*');
  for (const h of ['content-range', 'content-length', 'etag']) assert.ok(exposed(r).includes(h), `exposes ${h}`);
  assert.equal(r.headers.get('etag'), `"${blobOid(file(CONFIG))}"`);
  assert.match(r.headers.get('x-repo-commit'), /^[0-9a-f]{40}$/);
  const part = await fetch(hf.resolveBase + CONFIG, { headers: { Range: 'bytes=0-0' } });
  assert.equal(part.status, 206);
  assert.equal(part.headers.get('content-range'), `bytes 0-0/${file(CONFIG).length}`);
  const head = await fetch(hf.resolveBase + CONFIG, { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(Number(head.headers.get('content-length')), file(CONFIG).length);
});

test('LFS files: 302 to the CDN origin with X-Linked-Size and X-Linked-Etag, CORS on the redirect', async () => {
  const bytes = file(UNET);
  for (const method of ['GET', 'HEAD']) {
    const r = await fetch(hf.resolveBase + UNET, { method, redirect: 'manual' });
    assert.equal(r.status, 302, method);
    const loc = r.headers.get('location');
    assert.ok(loc.startsWith(`${hf.cdnOrigin}/repos/`), loc);
    assert.notEqual(new URL(loc).origin, new URL(hf.apiUrl).origin, 'a second origin');
    assert.match(loc, /Expires=\d+&Signature=[^&]+&Key-Pair-Id=/);
    assert.equal(r.headers.get('x-linked-size'), String(bytes.length));
    assert.equal(r.headers.get('x-linked-etag'), `"${sha256(bytes)}"`);
    assert.equal(r.headers.get('access-control-allow-origin'), '*');
    await r.arrayBuffer();
  }
});

test('the CDN origin serves Range with CORS and an ETag that is not the sha256; bad signatures get 403', async () => {
  const bytes = file(UNET);
  const loc = (await fetch(hf.resolveBase + UNET, { redirect: 'manual' })).headers.get('location');
  const r = await fetch(loc, { headers: { Range: 'bytes=100-199' } });
  assert.equal(r.status, 206);
  assert.equal(r.headers.get('content-range'), `bytes 100-199/${bytes.length}`);
  assert.equal(r.headers.get('content-length'), '100');
  assert.deepEqual(Buffer.from(await r.arrayBuffer()), bytes.subarray(100, 200));
  assert.equal(r.headers.get('access-control-allow-origin'), '*');
  for (const h of ['content-range', 'content-length', 'etag']) assert.ok(exposed(r).includes(h), `exposes ${h}`);
  assert.ok(r.headers.get('etag') && !r.headers.get('etag').includes(sha256(bytes)), r.headers.get('etag'));
  const tail = await fetch(loc, { headers: { Range: 'bytes=-10' } });
  assert.deepEqual(Buffer.from(await tail.arrayBuffer()), bytes.subarray(bytes.length - 10));
  assert.equal((await fetch(loc, { headers: { Range: `bytes=${bytes.length}-` } })).status, 416);
  const whole = await fetch(loc);
  assert.equal(whole.status, 200);
  assert.equal(sha256(Buffer.from(await whole.arrayBuffer())), sha256(bytes));
  // Another first character, always: a signature that already starts with X (1 in 64) stayed valid.
  const forged = loc.replace(/Signature=([^&])/, (_, c) => `Signature=${c === 'X' ? 'Y' : 'X'}`);
  assert.equal((await fetch(forged)).status, 403);
  // If-Range: the same ETag keeps the range, another one gets the whole (changed) file.
  const same = await fetch(loc, { headers: { Range: 'bytes=0-9', 'If-Range': r.headers.get('etag') } });
  assert.equal(same.status, 206);
  await same.arrayBuffer();
  const other = await fetch(loc, { headers: { Range: 'bytes=0-9', 'If-Range': '"something-else"' } });
  assert.equal(other.status, 200);
  assert.equal(Number(other.headers.get('content-length')), bytes.length);
  await other.arrayBuffer();
  // What a browser's fetch does: follow the redirect, keep the Range header.
  const followed = await fetch(hf.resolveBase + UNET, { headers: { Range: 'bytes=0-7' } });
  assert.equal(followed.status, 206);
  assert.ok(followed.redirected);
  assert.equal(Buffer.from(await followed.arrayBuffer()).readBigUInt64LE(0), BigInt(bytes.readBigUInt64LE(0)));
});

test('expired CDN URLs are refused, like signed URLs of the real CDN', async () => {
  const short = await startHfStandin({ dir: DIR, repo: REPO, expiresS: 0 });
  try {
    const loc = (await fetch(short.resolveBase + UNET, { redirect: 'manual' })).headers.get('location');
    assert.equal((await fetch(loc)).status, 403);
  } finally {
    await short.close();
  }
});

test('preflight requests are answered on both origins', async () => {
  const loc = (await fetch(hf.resolveBase + UNET, { redirect: 'manual' })).headers.get('location');
  for (const url of [hf.resolveBase + UNET, loc]) {
    const r = await fetch(url, { method: 'OPTIONS', headers: { Origin: 'http://127.0.0.1:1', 'Access-Control-Request-Method': 'GET', 'Access-Control-Request-Headers': 'range' } });
    assert.equal(r.status, 204);
    assert.equal(r.headers.get('access-control-allow-origin'), '*');
    assert.match(r.headers.get('access-control-allow-headers'), /Range/);
  }
});

test('the API lists every file with its git oid, size and LFS sha256, recursively or by folder', async () => {
  const r = await fetch(hf.treeUrl);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('access-control-allow-origin'), '*');
  const list = await r.json();
  const files = list.filter((e) => e.type === 'file');
  assert.deepEqual(files.map((e) => e.path).sort(), await walk(DIR));
  for (const e of files) {
    const b = file(e.path);
    assert.equal(e.size, b.length, e.path);
    if (e.path.endsWith('.safetensors')) {
      assert.deepEqual(e.lfs, { oid: sha256(b), size: b.length, pointerSize: Buffer.byteLength(lfsPointer(sha256(b), b.length)) }, e.path);
      assert.equal(e.oid, blobOid(Buffer.from(lfsPointer(sha256(b), b.length))), `${e.path}: the oid is the pointer's`);
    } else {
      assert.equal(e.lfs, undefined, e.path);
      assert.equal(e.oid, blobOid(b), e.path);
    }
  }
  const dirs = list.filter((e) => e.type === 'directory').map((e) => e.path);
  for (const d of ['unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler', 'pipeline']) assert.ok(dirs.includes(d), `directory ${d}`);
  const top = await (await fetch(`${hf.apiUrl}/api/models/${REPO}/tree/main`)).json();
  assert.ok(top.every((e) => !e.path.includes('/')), 'non-recursive: direct children only');
  const unet = await (await fetch(`${hf.apiUrl}/api/models/${REPO}/tree/main/unet`)).json();
  assert.deepEqual(unet.map((e) => e.path).sort(), ['unet/config.json', UNET]);
  const info = await (await fetch(`${hf.apiUrl}/api/models/${REPO}`)).json();
  assert.equal(info.id, REPO);
  assert.equal(info.siblings.length, files.length);
});

test('missing files, folders and repos answer as the Hub does', async () => {
  const r = await fetch(hf.resolveBase + 'unet/nope.safetensors');
  assert.equal(r.status, 404);
  assert.equal(r.headers.get('x-error-code'), 'EntryNotFound');
  assert.equal((await fetch(`${hf.apiUrl}/api/models/${REPO}/tree/main/nope`)).status, 404);
  assert.equal((await fetch(`${hf.apiUrl}/someone/else/resolve/main/${CONFIG}`)).status, 401);
  assert.equal((await fetch(`${hf.apiUrl}/${REPO}/resolve/v9/${CONFIG}`)).status, 404);
  assert.equal((await fetch(`${hf.apiUrl}/${REPO}/resolve/${hf.commit}/${CONFIG}`)).status, 200, 'a commit id is a revision too');
});

test('requests and bytes are counted per origin', async () => {
  hf.resetStats();
  const size = statSync(join(DIR, UNET)).size;
  await (await fetch(hf.resolveBase + UNET)).arrayBuffer();
  await (await fetch(hf.resolveBase + CONFIG)).arrayBuffer();
  const s = hf.stats();
  assert.equal(s.hub.requests, 2);
  assert.equal(s.hub.weightRequests, 1);
  assert.equal(s.cdn.requests, 1);
  assert.equal(s.cdn.bytes, size);
  assert.equal(s.cdn.weightBytes, size);
  assert.deepEqual(s.hub.byStatus, { 200: 1, 302: 1 });
  const viaHttp = await (await fetch(`${hf.apiUrl}/__stats`)).json();
  assert.equal(viaHttp.cdn.bytes, size, '/__stats is not counted itself');
});

test('faults: a cut body and a flipped byte, on the CDN origin, counted down', async () => {
  const bytes = file(UNET);
  hf.setFaults({ cutAfter: { path: UNET, bytes: 1000, from: 4096 }, corrupt: { path: UNET, offset: 5000, times: 2 } });
  try {
    const early = Buffer.from(await (await fetch(hf.resolveBase + UNET, { headers: { Range: 'bytes=0-4095' } })).arrayBuffer());
    assert.deepEqual(early, bytes.subarray(0, 4096), 'before `from`: untouched');
    const cut = await fetch(hf.resolveBase + UNET, { headers: { Range: 'bytes=4096-9999' } });
    assert.equal(cut.status, 206);
    await assert.rejects(cut.arrayBuffer(), 'the body is cut');
    // The client may not have seen the dropped keep-alive socket yet: one retry on a network error.
    const again = (init) => fetch(hf.resolveBase + UNET, init).catch(() => fetch(hf.resolveBase + UNET, init));
    const flipped = Buffer.from(await (await again({ headers: { Range: 'bytes=4096-9999' } })).arrayBuffer());
    assert.equal(flipped.length, 5904, 'the cut was used up');
    assert.equal(flipped[5000 - 4096], bytes[5000] ^ 0xff);
    assert.deepEqual(flipped.subarray(0, 5000 - 4096), bytes.subarray(4096, 5000));
    const clean = Buffer.from(await (await fetch(hf.resolveBase + UNET, { headers: { Range: 'bytes=4096-9999' } })).arrayBuffer());
    assert.deepEqual(clean, bytes.subarray(4096, 10000), 'both corruptions used up');
  } finally {
    hf.setFaults({});
  }
});
