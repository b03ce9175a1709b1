// Faults in the page, end to end, in one session on the demo model:
// - the engine traps (the wasm build's `testTrap` hook panics, as an engine bug would): the request
//   fails with a clear message, the page replaces the worker, reloads the model from IndexedDB and
//   the next generation gives the same pixels as before the trap;
// - the GPU device is destroyed mid-generation (`testLoseDevice`): a new device, the model again
//   from the cache, the generation retried once, same pixels;
// - the worker's thread hangs, or a request never ends: the watchdog replaces the worker;
// - out-of-range form values are brought inside the form's limits, non-numbers refused;
// - a prompt with ’ and CJK makes a PNG that keeps it as typed (iTXt);
// - A1111's prompt syntax in the page: the token count beside the prompt (`3/75`, `80/150`, the
//   literal reading's cut), BREAK chunks, a weight that changes the image;
// - all of it under the page's Content-Security-Policy with no violation; `?cdn=` links to
//   plain-http or unknown hosts are not followed without asking.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, openPage, serveApp, serveCdn } from './harness.mjs';

const MODEL = 'shapes-demo';
const REQUEST = { prompt: 'a blue square on the left', negativePrompt: '', steps: 1, guidance: 1, width: 64, height: 64, scheduler: 'euler', seed: 99 };
const UNICODE = 'a cat’s blue square — 富士山 🦊';

let app;
let cdn;
let browser;
let page;
let logs;
let baseline;
let url;

const errorOf = (fn, arg) => page.evaluate(([f, a]) => window.webdiffusion[f](a).then(() => null, (e) => String(e.message || e)), [fn, arg]);
const generate = (r) => page.evaluate((q) => window.webdiffusion.generate(q).then((g) => ({ ...g, rgba: window.webdiffusion.state.lastImage.rgba })), r);
const restarted = (n) => page.waitForFunction((k) => window.webdiffusion.state.restarts === k && window.webdiffusion.state.modelLoaded, n, { timeout: 300_000 });

before(async () => {
  ({ server: app, url } = await serveApp());
  ({ server: cdn } = await serveCdn());
  browser = await launchBrowser();
  ({ page, logs } = await openPage(browser));
  await page.addInitScript(() => {
    window.cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  const cdnUrl = `http://127.0.0.1:${cdn.address().port}/models/`;
  await page.goto(`${url}?sw=0&cdn=${encodeURIComponent(cdnUrl)}&model=${MODEL}`);
  await page.waitForFunction(() => window.webdiffusion && window.webdiffusion.state.ready, null, { timeout: 120_000 });
  assert.equal(await errorOf('load', MODEL), null, logs.join('\n'));
  baseline = await generate(REQUEST);
});

after(async () => {
  await browser?.close();
  app?.close();
  cdn?.close();
});

test('a trapped engine is replaced, the model reloaded from the cache, and the next request works', { timeout: 600_000 }, async () => {
  const err = await errorOf('testTrap');
  assert.ok(err && /internal error/.test(err) && /testTrap/.test(err) && /restarted/.test(err), `the trap is reported: ${err}`);
  await restarted(1);
  const s = await page.evaluate(() => window.webdiffusion.state);
  assert.equal(s.download.bytesFetched, 0, 'the model came back from IndexedDB');
  assert.equal((await generate(REQUEST)).rgba, baseline.rgba, 'the same request after the restart gives the same pixels');
});

test('the GPU device destroyed mid-generation: a new device, the model reloaded, the generation retried once', { timeout: 600_000 }, async () => {
  const steps = { ...REQUEST, steps: 3 };
  const want = await generate(steps);
  const recoveries = await page.evaluate(() => window.webdiffusion.state.recoveries);
  const got = await page.evaluate(async (q) => {
    const api = window.webdiffusion;
    const run = api.generate(q);
    // Strike after the first step has been reported, while the rest is being computed.
    while (api.state.steps.length < 1) await new Promise((r) => setTimeout(r, 5));
    await api.testLoseDevice();
    const g = await run;
    return { ...g, rgba: api.state.lastImage.rgba };
  }, steps);
  assert.equal(await page.evaluate(() => window.webdiffusion.state.recoveries), recoveries + 1, 'one recovery');
  assert.equal(got.cancelled, false);
  assert.equal(got.rgba, want.rgba, 'the retried generation gives the same pixels');
  assert.equal((await generate(REQUEST)).rgba, baseline.rgba, 'the new device keeps working');
});

test('the watchdog replaces a worker that stops answering or never finishes a request', { timeout: 600_000 }, async () => {
  await page.evaluate(() => window.webdiffusion.setWatchdog({ silenceMs: 3000 }));
  const t0 = Date.now();
  const hung = await errorOf('testHang', 60_000);
  assert.ok(Date.now() - t0 < 30_000, `the hang is cut short (${Date.now() - t0} ms)`);
  assert.ok(hung && /did not answer for \d+ s/.test(hung) && /restarted/.test(hung), `a silent worker is reported: ${hung}`);
  await restarted(2);
  assert.equal((await generate(REQUEST)).rgba, baseline.rgba, 'the next request works');

  await page.evaluate(() => window.webdiffusion.setWatchdog({ silenceMs: 60_000, progressMs: 3000 }));
  const stalled = await errorOf('testStall');
  assert.ok(stalled && /no progress for \d+ s/.test(stalled), `a request that never ends is reported: ${stalled}`);
  await restarted(3);
  await page.evaluate(() => window.webdiffusion.setWatchdog({ progressMs: 15 * 60_000 }));
  assert.equal((await generate(REQUEST)).rgba, baseline.rgba, 'and again the next request works');
});

test('form values outside the limits are brought inside them; non-numbers are refused', { timeout: 300_000 }, async () => {
  const step = await page.evaluate(() => window.webdiffusion.state.model.sizeStep);
  const g = await generate({ ...REQUEST, width: 10, height: 70, steps: 1.6, guidance: -3 });
  // The page's minimum side is one size step of the model.
  const side = (v) => Math.max(step, Math.round(v / step) * step);
  assert.deepEqual([g.width, g.height], [side(10), side(70)], 'width up to the minimum, height to the size step');
  assert.match(g.parameters, /Steps: 2,/, 'steps rounded to a whole number');
  assert.match(g.parameters, /CFG scale: 0,/, 'guidance raised to its minimum');
  const hint = await page.evaluate(() => document.getElementById('size-hint').textContent);
  assert.ok(hint.includes(`width 10 → ${side(10)}`), hint);
  for (const [k, v] of [['steps', 'many'], ['guidance', 'NaN'], ['width', ''], ['seed', 'abc']]) {
    const err = await errorOf('generate', { ...REQUEST, [k]: v });
    assert.ok(err && err.includes('is not a number'), `${k} = ${JSON.stringify(v)} is refused: ${err}`);
  }
});

test('a prompt with ’, — , CJK and emoji is kept in the image and its PNG (iTXt)', { timeout: 300_000 }, async () => {
  const g = await generate({ ...REQUEST, prompt: UNICODE });
  assert.ok(g.parameters.startsWith(UNICODE), `the parameters keep the prompt: ${g.parameters}`);
  const png = await page.evaluate(async () => Array.from(new Uint8Array(await (await fetch(document.getElementById('download-png').href)).arrayBuffer())));
  const text = Buffer.from(png).toString('utf8');
  assert.ok(text.includes('iTXt') && text.includes(UNICODE), 'the PNG holds the prompt as UTF-8 (iTXt)');
});

test("A1111's prompt syntax: the token count beside the prompt, BREAK chunks, weights that change the image", { timeout: 300_000 }, async () => {
  const count = async (text) => {
    await page.fill('#prompt', text);
    const syntax = await page.evaluate(() => document.getElementById('prompt-syntax').value);
    await page.waitForFunction((want) => document.getElementById('prompt-tokens').dataset.for === want, `${syntax}\n${text}`, { timeout: 30_000 });
    return page.evaluate(() => document.getElementById('prompt-tokens').textContent);
  };
  assert.equal(await count('a blue square'), '3/75');
  assert.equal(await count('word '.repeat(80)), '80/150', 'a prompt over 75 tokens takes a second chunk');
  await page.selectOption('#prompt-syntax', 'diffusers');
  assert.equal(await count('word '.repeat(80)), '75/75 (5 cut)', 'the literal reading cuts at 75 and says so');
  await page.selectOption('#prompt-syntax', 'a1111');
  // With guidance the negative prompt rides along: 8 steps of CFG make the prompt count.
  const req = { ...REQUEST, steps: 8, guidance: 5 };
  const pixels = (g) => Buffer.from(g.rgba, 'base64');
  const diff = (a, b) => pixels(a).reduce((m, v, i) => Math.max(m, Math.abs(v - pixels(b)[i])), 0);
  const plain = await generate(req);
  // Two identical BREAK chunks: the U-Net attends over 154 tokens holding each key twice (the
  // empty negative prompt padded to two empty chunks), which softmax attention cannot tell from
  // once: the plain image within rounding.
  const twice = await generate({ ...req, prompt: `${req.prompt} BREAK ${req.prompt}` });
  assert.ok(diff(twice, plain) <= 1, `the BREAK-chunked prompt differs by ${diff(twice, plain)}/255`);
  const weighted = await generate({ ...req, prompt: 'a (blue:1.6) square on the left' });
  const literal = await generate({ ...req, prompt: 'a (blue:1.6) square on the left', promptSyntax: 'diffusers' });
  const err = await errorOf('generate', { ...req, prompt: 'a cat <lora:film:0.7>' });
  assert.ok(err && err.includes('<lora:film:0.7>') && err.includes('no LoRA named film'), `a tag naming no listed LoRA is refused, not drawn as words: ${err}`);
  assert.ok(diff(weighted, plain) > 4 && diff(weighted, literal) > 4,
    `a weight changes the image (${diff(weighted, plain)}/255), and not as reading the brackets as text does (${diff(weighted, literal)}/255 apart)`);
});

test("the scheduler list is the engine's; every image lands in the gallery and restores from it", { timeout: 120_000 }, async () => {
  const ids = await page.evaluate(() => [...document.getElementById('scheduler').options].map((o) => o.value));
  assert.deepEqual(ids, ['ddim', 'euler', 'euler-a', 'dpm++2m', 'dpm++2m-karras', 'pndm', 'heun', 'lms', 'lms-karras', 'unipc', 'unipc-karras', 'dpm++sde', 'dpm++sde-karras', 'lcm']);
  const figures = await page.evaluate(() => document.querySelectorAll('#gallery figure img').length);
  assert.ok(figures >= 5, `the session's images are in the gallery (${figures})`);
  await page.evaluate(() => document.getElementById('result-info').replaceChildren());
  await page.click('#gallery figure img');
  await page.waitForFunction(() => document.getElementById('result-info').textContent.startsWith('Seed '));
});

test('the page ran under its Content-Security-Policy without a violation', async () => {
  const meta = await page.evaluate(() => document.querySelector('meta[http-equiv="Content-Security-Policy"]')?.content || '');
  assert.match(meta, /script-src 'self' 'wasm-unsafe-eval'/);
  assert.doesNotMatch(meta, /'unsafe-eval'|'unsafe-inline'/, 'no eval, no inline code');
  const header = (await fetch(`${url}worker.js`)).headers.get('content-security-policy');
  assert.equal(header, meta, "the worker's script carries the page's policy");
  assert.deepEqual(await page.evaluate(() => window.cspViolations), []);
});

test('?cdn= links: plain http to another host is ignored, an unknown https host needs a yes', { timeout: 120_000 }, async () => {
  const other = await browser.newPage();
  try {
    const catalogUrl = async () => other.evaluate(() => window.webdiffusion.catalog.find((m) => m.id === 'shapes-demo').url);
    await other.goto(`${url}?sw=0&model=${MODEL}&cdn=${encodeURIComponent('http://example.invalid/models/')}`);
    await other.waitForFunction(() => window.webdiffusion && document.querySelector('.notice[data-key="cdn"]'));
    assert.match(await other.textContent('.notice[data-key="cdn"]'), /Ignored \?cdn=http:\/\/example\.invalid.*only over https/);
    assert.ok((await catalogUrl()).startsWith(url), 'the catalog keeps its own host');

    await other.goto(`${url}?sw=0&model=${MODEL}&cdn=${encodeURIComponent('https://example.invalid/models/')}`);
    await other.waitForFunction(() => document.querySelector('.notice[data-key="cdn"] button'));
    assert.ok((await catalogUrl()).startsWith(url), 'not before the visitor says yes');
    await other.click('.notice[data-key="cdn"] button:first-of-type');
    assert.ok((await catalogUrl()).startsWith('https://example.invalid/models/'), 'after the yes, the link is followed');
    const refused = await other.evaluate(() => window.webdiffusion.load('ftp://example.invalid/m/').then(() => null, (e) => e.message));
    assert.match(refused, /Refused model address: ftp: URLs cannot be a model's address/);
  } finally {
    await other.close();
  }
});
