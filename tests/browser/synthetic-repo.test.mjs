// The synthetic-repo writer (tools/bench/synthetic-repo.mjs) reproduces the published layouts:
// tensor lists derived from configs equal the published ones, planned files have the published
// byte sizes, the tokenizer vocab has the published sha256; a mid-arch repo written to a temp
// folder parses as safetensors with finite values and is served with matching hashes by the
// HF stand-in. No browser; a few seconds (the mid-arch repo is 0.23 GB).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './harness.mjs';
import { checkPublished, tensorsFromConfigs } from '../../tools/bench/arch-tensors.mjs';
import { isComplete, planFile, publishedVocab, weightFiles, writeRepo, writeWeights } from '../../tools/bench/synthetic-repo.mjs';
import { startHfStandin } from '../../tools/bench/hf-standin.mjs';

const tmp = mkdtempSync(join(tmpdir(), 'webdiffusion-synthetic-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const sha256 = (b) => createHash('sha256').update(b).digest('hex');
const published = (m) => JSON.parse(readFileSync(join(ROOT, 'tools/bench/published', m, 'files.json'), 'utf8')).files;

test('tensor lists derived from configs equal every published tensors.json, in order', () => {
  for (const r of checkPublished()) {
    assert.deepEqual(r.diff, [], `${r.model} ${r.component}`);
    assert.ok(r.sameOrder, `${r.model} ${r.component} in state_dict order`);
  }
});

test('planned weight files have the published byte sizes (fp16 and fp32)', () => {
  // SD 1.5 Inpainting publishes no fp32 .safetensors; its 9-channel conv_in is the whole
  // difference to SD 1.5 (28,800 bytes in the U-Net).
  // SDXL-Turbo: its four fp16 files (two text encoders), sizes from their Git-LFS pointers.
  for (const [model, dir, fp32, count] of [['sd-turbo', 'stabilityai__sd-turbo', true, 6], ['sd15', 'stable-diffusion-v1-5__stable-diffusion-v1-5', true, 6],
    ['sd15-inpainting', 'stable-diffusion-v1-5__stable-diffusion-inpainting', false, 3], ['sdxl-turbo', 'stabilityai__sdxl-turbo', false, 4]]) {
    const files = published(dir);
    const planned = weightFiles(model, { fp32 });
    assert.equal(planned.length, count, model);
    for (const f of planned) {
      assert.equal(planFile(f).size, files[f.path].bytes, `${model} ${f.path}`);
    }
  }
  const conv = weightFiles('sd15-inpainting').find((f) => f.component === 'unet').tensors.find((t) => t.name === 'conv_in.weight');
  assert.deepEqual(conv.shape, [320, 9, 3, 3]);
});

test('tokenizer/vocab.json is the published file byte for byte', () => {
  const v = publishedVocab();
  assert.equal(v.length, 1059962);
  assert.equal(sha256(v), 'e089ad92ba36837a0d31433e555c8f45fe601ab5c221d4f607ded32d9f7a4349');
});

/// The header of a safetensors file and a reader of its data region.
function readSafetensors(path) {
  const fd = openSync(path, 'r');
  const len = Buffer.alloc(8);
  readSync(fd, len, 0, 8, 0);
  const n = Number(len.readBigUInt64LE(0));
  const head = Buffer.alloc(n);
  readSync(fd, head, 0, n, 8);
  const data = (start, bytes) => {
    const b = Buffer.alloc(bytes);
    readSync(fd, b, 0, bytes, 8 + n + start);
    return b;
  };
  return { header: JSON.parse(head.toString()), headerBytes: n, data, close: () => closeSync(fd) };
}

test('a mid-arch repo: valid safetensors, the derived tensors, finite fp16 values, deterministic, served with its hashes', async () => {
  const out = join(tmp, 'mid-arch');
  const r = writeRepo('mid-arch', out, { seed: 7, log: () => {} });
  assert.ok(isComplete(out, 'mid-arch', { seed: 7 }));
  assert.ok(!isComplete(out, 'mid-arch', { seed: 8 }), 'another seed is another repo');
  for (const c of r.checks) assert.doesNotMatch(c.status, /DIFFERS|OTHER/, c.path);
  const lists = tensorsFromConfigs(join(ROOT, 'tests/fixtures/mid-arch'), { positionIds: true });
  const paths = { text_encoder: 'text_encoder/model.fp16.safetensors', unet: 'unet/diffusion_pytorch_model.fp16.safetensors', vae: 'vae/diffusion_pytorch_model.fp16.safetensors' };
  for (const [component, path] of Object.entries(paths)) {
    const full = join(out, path);
    const st = readSafetensors(full);
    try {
      assert.equal(st.headerBytes % 8, 0, 'padded header');
      const { __metadata__: meta, ...tensors } = st.header;
      assert.deepEqual(meta, { format: 'pt' });
      const names = Object.keys(tensors);
      assert.deepEqual(names.slice().sort(), lists[component].map((t) => t.name).sort());
      let end = 0;
      // Laid out by dtype (I64 first) then name, back to back.
      const order = Object.entries(tensors).sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0]);
      for (const [name, t] of order) {
        assert.equal(t.data_offsets[0], end, name);
        end = t.data_offsets[1];
        const want = lists[component].find((x) => x.name === name);
        assert.deepEqual(t.shape, want.shape, name);
        assert.equal(t.dtype, want.dtype || 'F16', name);
      }
      assert.equal(8 + st.headerBytes + end, statSync(full).size);
      const floats = order.filter(([, t]) => t.dtype === 'F16').map(([n]) => n);
      assert.deepEqual(floats, floats.slice().sort(), 'floats sorted by name');
      if (component === 'text_encoder') {
        const p = tensors['text_model.embeddings.position_ids'];
        assert.equal(order[0][0], 'text_model.embeddings.position_ids', 'I64 first');
        const ids = st.data(p.data_offsets[0], 77 * 8);
        for (let i = 0; i < 77; i++) assert.equal(ids.readBigInt64LE(i * 8), BigInt(i));
      }
      // Every f16 value: exponent 8..11 (0.0078 <= |x| < 0.125), so never Inf/NaN/denormal.
      const firstFloat = tensors[floats[0]].data_offsets[0];
      const sample = st.data(firstFloat, Math.min(end - firstFloat, 8 << 20));
      const h = new Uint16Array(sample.buffer, sample.byteOffset, sample.length >> 1);
      let bad = 0;
      let neg = 0;
      for (const x of h) {
        const e = (x >> 10) & 31;
        if (e < 8 || e > 11) bad++;
        neg += x >> 15;
      }
      assert.equal(bad, 0, `${path}: values out of range`);
      assert.ok(Math.abs(neg / h.length - 0.5) < 0.01, 'random signs');
    } finally {
      st.close();
    }
  }
  // Same seed, same bytes (a returning-visit benchmark compares pixels across runs).
  const vaeFile = weightFiles('mid-arch').find((f) => f.path === paths.vae);
  const again = writeWeights(join(tmp, 'again'), vaeFile, 7);
  assert.equal(again.sha256, r.files.find((f) => f.path === paths.vae).sha256);
  assert.notEqual(writeWeights(join(tmp, 'other'), vaeFile, 8).sha256, again.sha256, 'the seed matters');

  // The stand-in takes the saved listing (no hashing at start) and its sha256 matches the bytes.
  const hf = await startHfStandin({ dir: out });
  try {
    assert.equal(hf.hashedAtStart, 0);
    assert.equal(hf.repo, 'webdiffusion/mid-arch');
    const list = await (await fetch(hf.treeUrl)).json();
    const vae = list.find((e) => e.path === paths.vae);
    const bytes = Buffer.from(await (await fetch(hf.resolveBase + paths.vae)).arrayBuffer());
    assert.equal(vae.lfs.oid, sha256(bytes));
    assert.equal(vae.size, bytes.length);
    const vocab = list.find((e) => e.path === 'tokenizer/vocab.json');
    assert.equal(vocab.lfs, undefined, 'a 1 MB json file is a regular git file');
  } finally {
    await hf.close();
  }
});
