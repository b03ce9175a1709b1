// tools/serve.mjs (the app's server and the tests' CDN) against hostile requests: it must answer
// every one and keep serving, never leave its mounts, and treat Range as RFC 9110 says.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { mkdtempSync, mkdirSync, writeFileSync, symlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serve, parseRange } from '../../tools/serve.mjs';

let dir;
let server;
let base;
const BODY = Buffer.from('0123456789abcdef');

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'wd-serve-'));
  mkdirSync(join(dir, 'root'));
  writeFileSync(join(dir, 'root', 'file.bin'), BODY);
  writeFileSync(join(dir, 'secret.txt'), 'outside the mount');
  symlinkSync(join(dir, 'secret.txt'), join(dir, 'root', 'link.txt'));
  symlinkSync(join(dir), join(dir, 'root', 'up'));
  writeFileSync(join(dir, 'root', 'inner.txt'), 'inside');
  symlinkSync(join(dir, 'root', 'inner.txt'), join(dir, 'root', 'alias.txt'));
  server = await serve({ host: '127.0.0.1', port: 0, mounts: [{ url: '/', dir: join(dir, 'root') }] });
  base = `http://127.0.0.1:${server.address().port}`;
});

after(() => {
  server.close();
  rmSync(dir, { recursive: true, force: true });
});

// One raw request line, as a hostile client sends it (fetch would normalize the target).
function raw(target) {
  return new Promise((ok, fail) => {
    const s = connect(server.address().port, '127.0.0.1', () => s.write(`GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
    let text = '';
    s.on('data', (d) => (text += d));
    s.on('end', () => ok(Number(/^HTTP\/1\.1 (\d+)/.exec(text)?.[1])));
    s.on('error', fail);
  });
}

test('malformed percent-encodings, NULs and odd request targets get an answer, and the server lives on', async () => {
  assert.equal(await raw('/%E0%A4%A'), 404);
  assert.equal(await raw('/%'), 404);
  assert.equal(await raw('/file.bin%00.txt'), 404);
  assert.equal(await raw('http://[bad/'), 400);
  assert.equal(await raw('/..%2f..%2fsecret.txt'), 404);
  const r = await fetch(`${base}/file.bin`);
  assert.equal(r.status, 200);
  assert.deepEqual(Buffer.from(await r.arrayBuffer()), BODY);
});

test('symlinks are followed only while they stay inside the mount', async () => {
  assert.equal((await fetch(`${base}/link.txt`)).status, 404);
  assert.equal((await fetch(`${base}/up/secret.txt`)).status, 404);
  const inner = await fetch(`${base}/alias.txt`);
  assert.equal(inner.status, 200);
  assert.equal(await inner.text(), 'inside');
});

test('Range: one byte range is served; unknown units, multi-range and bad syntax are ignored; unsatisfiable is 416', async () => {
  const get = async (range) => {
    const r = await fetch(`${base}/file.bin`, { headers: { Range: range } });
    return { status: r.status, body: Buffer.from(await r.arrayBuffer()).toString(), cr: r.headers.get('content-range') };
  };
  assert.deepEqual(await get('bytes=2-5'), { status: 206, body: '2345', cr: 'bytes 2-5/16' });
  assert.deepEqual(await get('bytes=-3'), { status: 206, body: 'def', cr: 'bytes 13-15/16' });
  assert.deepEqual(await get('bytes=10-99'), { status: 206, body: 'abcdef', cr: 'bytes 10-15/16' });
  for (const ignored of ['items=0-3', 'bytes=0-1,4-5', 'bytes=5-2', 'bytes=x-y', 'bytes=-']) {
    const r = await get(ignored);
    assert.equal(r.status, 200, ignored);
    assert.equal(r.body, BODY.toString(), ignored);
    assert.equal(r.cr, null, ignored);
  }
  for (const unsatisfiable of ['bytes=16-', 'bytes=99999999999999999999-', 'bytes=-0']) {
    const r = await get(unsatisfiable);
    assert.equal(r.status, 416, unsatisfiable);
    assert.equal(r.cr, 'bytes */16', unsatisfiable);
  }
});

test('If-Range: the range while the ETag or date still matches, the whole file once it does not', async () => {
  const first = await fetch(`${base}/file.bin`, { headers: { Range: 'bytes=0-3' } });
  const etag = first.headers.get('etag');
  const modified = first.headers.get('last-modified');
  assert.ok(etag && modified);
  for (const validator of [etag, modified]) {
    const r = await fetch(`${base}/file.bin`, { headers: { Range: 'bytes=4-7', 'If-Range': validator } });
    assert.equal(r.status, 206, validator);
    assert.equal(await r.text(), '4567');
  }
  for (const stale of ['"0-0"', 'Thu, 01 Jan 1970 00:00:00 GMT']) {
    const r = await fetch(`${base}/file.bin`, { headers: { Range: 'bytes=4-7', 'If-Range': stale } });
    assert.equal(r.status, 200, stale);
    assert.equal(await r.text(), BODY.toString());
  }
  const preflight = await fetch(`${base}/file.bin`, { method: 'OPTIONS' });
  assert.match(preflight.headers.get('access-control-allow-headers'), /If-Range/);
});

test('parseRange follows RFC 9110 for the edge cases', () => {
  assert.deepEqual(parseRange('bytes=0-0', 1), { start: 0, end: 0 });
  assert.deepEqual(parseRange('bytes=-100', 10), { start: 0, end: 9 });
  assert.deepEqual(parseRange(' Bytes = 3 - ', 10), { start: 3, end: 9 });
  assert.equal(parseRange('bytes=0-', 0), 'unsatisfiable');
  assert.equal(parseRange('bytes=1-2, 3-4', 10), null);
  assert.equal(parseRange('pages=1-2', 10), null);
});
