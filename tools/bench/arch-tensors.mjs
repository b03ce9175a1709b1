#!/usr/bin/env node
// The tensor list (names and shapes, in state_dict order) that diffusers/transformers save for
// an SD-1/SD-2 style pipeline, derived from its three config.json files. The synthetic-repo
// writer needs it for architectures that exist only as configs (tests/fixtures/mid-arch); for
// the published models it reads tests/fixtures/published/*/tensors.json instead.
//
// Covered: CLIPTextModel and CLIPTextModelWithProjection (SDXL's text_encoder_2);
// UNet2DConditionModel with CrossAttnDownBlock2D / DownBlock2D / UNetMidBlock2DCrossAttn /
// UpBlock2D / CrossAttnUpBlock2D (conv or linear projections, LCM's time_cond_proj_dim, SDXL's
// text_time add_embedding and per-level transformer_layers_per_block); AutoencoderKL with the
// modern attention names. Anything else is rejected rather than guessed.
//
//   node tools/bench/arch-tensors.mjs --check             # equals every published tensors.json
//   node tools/bench/arch-tensors.mjs --configs tests/fixtures/mid-arch [--position-ids]

import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

// A small builder: `p('x').t('weight', [..])` appends `x.weight`.
function list() {
  const out = [];
  const scope = (prefix) => ({
    t(name, shape, extra = {}) {
      out.push({ name: prefix + name, shape, ...extra });
      return this;
    },
    p: (sub) => scope(`${prefix}${sub}.`),
  });
  return { out, root: scope('') };
}

const linear = (s, outF, inF, bias = true) => {
  s.t('weight', [outF, inF]);
  if (bias) s.t('bias', [outF]);
};
const norm = (s, c) => s.t('weight', [c]).t('bias', [c]);
const conv = (s, outC, inC, k) => s.t('weight', [outC, inC, k, k]).t('bias', [outC]);

export function clipTensors(c, { positionIds = false } = {}) {
  const { out, root } = list();
  const h = c.hidden_size;
  const tm = root.p('text_model');
  tm.p('embeddings.token_embedding').t('weight', [c.vocab_size, h]);
  tm.p('embeddings.position_embedding').t('weight', [c.max_position_embeddings, h]);
  // A persistent buffer in transformers < 4.31 (SD 1.5 and SD 2.x files carry it).
  if (positionIds) tm.p('embeddings').t('position_ids', [1, c.max_position_embeddings], { dtype: 'I64' });
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const l = tm.p(`encoder.layers.${i}`);
    for (const n of ['k_proj', 'v_proj', 'q_proj', 'out_proj']) linear(l.p(`self_attn.${n}`), h, h);
    norm(l.p('layer_norm1'), h);
    linear(l.p('mlp.fc1'), c.intermediate_size, h);
    linear(l.p('mlp.fc2'), h, c.intermediate_size);
    norm(l.p('layer_norm2'), h);
  }
  norm(tm.p('final_layer_norm'), h);
  if ((c.architectures || []).includes('CLIPTextModelWithProjection')) linear(root.p('text_projection'), c.projection_dim, h, false);
  return out;
}

function resnet(s, inC, outC, temb) {
  norm(s.p('norm1'), inC);
  conv(s.p('conv1'), outC, inC, 3);
  if (temb) linear(s.p('time_emb_proj'), outC, temb);
  norm(s.p('norm2'), outC);
  conv(s.p('conv2'), outC, outC, 3);
  if (inC !== outC) conv(s.p('conv_shortcut'), outC, inC, 1);
}

function transformer2d(s, ch, cross, linearProj, depth = 1) {
  norm(s.p('norm'), ch);
  const proj = (x) => (linearProj ? linear(x, ch, ch) : conv(x, ch, ch, 1));
  proj(s.p('proj_in'));
  for (let d = 0; d < depth; d++) {
    const b = s.p(`transformer_blocks.${d}`);
    norm(b.p('norm1'), ch);
    for (const [attn, kv] of [['attn1', ch], ['attn2', cross]]) {
      const a = b.p(attn);
      linear(a.p('to_q'), ch, ch, false);
      linear(a.p('to_k'), ch, kv, false);
      linear(a.p('to_v'), ch, kv, false);
      linear(a.p('to_out.0'), ch, ch);
      norm(b.p(attn === 'attn1' ? 'norm2' : 'norm3'), ch);
    }
    linear(b.p('ff.net.0.proj'), ch * 8, ch); // GEGLU: value and gate
    linear(b.p('ff.net.2'), ch, ch * 4);
  }
  proj(s.p('proj_out'));
}

function reject(c, key, ok) {
  if (c[key] !== undefined && c[key] !== null && !ok(c[key])) throw new Error(`unet config ${key}=${JSON.stringify(c[key])} is not supported`);
}

export function unetTensors(c) {
  const levels = c.block_out_channels.length;
  reject(c, 'transformer_layers_per_block', (v) => Number.isInteger(v) || (Array.isArray(v) && v.length === levels));
  reject(c, 'reverse_transformer_layers_per_block', () => false);
  reject(c, 'class_embed_type', () => false);
  reject(c, 'addition_embed_type', (v) => v === 'text_time');
  const depth = (level) => {
    const t = c.transformer_layers_per_block ?? 1;
    return Array.isArray(t) ? t[level] : t;
  };
  reject(c, 'mid_block_type', (v) => v === 'UNetMidBlock2DCrossAttn');
  reject(c, 'only_cross_attention', (v) => v === false);
  const { out, root } = list();
  const b = c.block_out_channels;
  const n = b.length;
  const L = c.layers_per_block;
  const cross = c.cross_attention_dim;
  const lin = !!c.use_linear_projection;
  const temb = c.time_embedding_dim || b[0] * 4;
  conv(root.p('conv_in'), b[0], c.in_channels, c.conv_in_kernel || 3);
  const te = root.p('time_embedding');
  linear(te.p('linear_1'), temb, b[0]);
  if (c.time_cond_proj_dim) linear(te.p('cond_proj'), b[0], c.time_cond_proj_dim, false);
  linear(te.p('linear_2'), temb, temb);
  if (c.addition_embed_type === 'text_time') {
    linear(root.p('add_embedding.linear_1'), temb, c.projection_class_embeddings_input_dim);
    linear(root.p('add_embedding.linear_2'), temb, temb);
  }
  c.down_block_types.forEach((type, i) => {
    const s = root.p(`down_blocks.${i}`);
    const inC = i === 0 ? b[0] : b[i - 1];
    if (type === 'CrossAttnDownBlock2D') for (let j = 0; j < L; j++) transformer2d(s.p(`attentions.${j}`), b[i], cross, lin, depth(i));
    else if (type !== 'DownBlock2D') throw new Error(`down block ${type} is not supported`);
    for (let j = 0; j < L; j++) resnet(s.p(`resnets.${j}`), j === 0 ? inC : b[i], b[i], temb);
    if (i < n - 1) conv(s.p('downsamplers.0.conv'), b[i], b[i], 3);
  });
  const rb = [...b].reverse();
  c.up_block_types.forEach((type, i) => {
    const s = root.p(`up_blocks.${i}`);
    const prev = i === 0 ? rb[0] : rb[i - 1];
    const outC = rb[i];
    const skipIn = rb[Math.min(i + 1, n - 1)];
    if (type === 'CrossAttnUpBlock2D') for (let j = 0; j <= L; j++) transformer2d(s.p(`attentions.${j}`), outC, cross, lin, depth(n - 1 - i));
    else if (type !== 'UpBlock2D') throw new Error(`up block ${type} is not supported`);
    for (let j = 0; j <= L; j++) {
      const skip = j === L ? skipIn : outC;
      resnet(s.p(`resnets.${j}`), (j === 0 ? prev : outC) + skip, outC, temb);
    }
    if (i < n - 1) conv(s.p('upsamplers.0.conv'), outC, outC, 3);
  });
  // down_blocks and up_blocks are registered (empty) before mid_block, so it comes last.
  const top = b[n - 1];
  transformer2d(root.p('mid_block.attentions.0'), top, cross, lin, depth(n - 1));
  for (let j = 0; j < 2; j++) resnet(root.p(`mid_block.resnets.${j}`), top, top, temb);
  norm(root.p('conv_norm_out'), b[0]);
  conv(root.p('conv_out'), c.out_channels, b[0], c.conv_out_kernel || 3);
  return out;
}

function vaeMid(s, ch) {
  const a = s.p('attentions.0');
  norm(a.p('group_norm'), ch);
  for (const n of ['to_q', 'to_k', 'to_v', 'to_out.0']) linear(a.p(n), ch, ch);
  for (let j = 0; j < 2; j++) resnet(s.p(`resnets.${j}`), ch, ch, 0);
}

export function vaeTensors(c) {
  const { out, root } = list();
  const b = c.block_out_channels;
  const n = b.length;
  const L = c.layers_per_block;
  const lat = c.latent_channels;
  const enc = root.p('encoder');
  conv(enc.p('conv_in'), b[0], c.in_channels, 3);
  for (let i = 0; i < n; i++) {
    if (c.down_block_types[i] !== 'DownEncoderBlock2D') throw new Error(`vae block ${c.down_block_types[i]} is not supported`);
    const s = enc.p(`down_blocks.${i}`);
    for (let j = 0; j < L; j++) resnet(s.p(`resnets.${j}`), j === 0 ? (i === 0 ? b[0] : b[i - 1]) : b[i], b[i], 0);
    if (i < n - 1) conv(s.p('downsamplers.0.conv'), b[i], b[i], 3);
  }
  vaeMid(enc.p('mid_block'), b[n - 1]);
  norm(enc.p('conv_norm_out'), b[n - 1]);
  conv(enc.p('conv_out'), 2 * lat, b[n - 1], 3);
  const dec = root.p('decoder');
  const rb = [...b].reverse();
  conv(dec.p('conv_in'), rb[0], lat, 3);
  // The decoder registers up_blocks before mid_block (an empty ModuleList filled later).
  for (let i = 0; i < n; i++) {
    if (c.up_block_types[i] !== 'UpDecoderBlock2D') throw new Error(`vae block ${c.up_block_types[i]} is not supported`);
    const s = dec.p(`up_blocks.${i}`);
    const prev = i === 0 ? rb[0] : rb[i - 1];
    for (let j = 0; j <= L; j++) resnet(s.p(`resnets.${j}`), j === 0 ? prev : rb[i], rb[i], 0);
    if (i < n - 1) conv(s.p('upsamplers.0.conv'), rb[i], rb[i], 3);
  }
  vaeMid(dec.p('mid_block'), rb[0]);
  norm(dec.p('conv_norm_out'), b[0]);
  conv(dec.p('conv_out'), c.out_channels, b[0], 3);
  conv(root.p('quant_conv'), 2 * lat, 2 * lat, 1);
  conv(root.p('post_quant_conv'), lat, lat, 1);
  return out;
}

const readJson = (p) => JSON.parse(readFileSync(p, 'utf8'));

/// {text_encoder, [text_encoder_2,] unet, vae}: [{name, shape, dtype?}] from a folder with the
/// configs (SDXL's text_encoder_2 where its config is there).
export function tensorsFromConfigs(dir, opts = {}) {
  const out = { text_encoder: clipTensors(readJson(join(dir, 'text_encoder/config.json')), opts) };
  if (existsSync(join(dir, 'text_encoder_2/config.json'))) out.text_encoder_2 = clipTensors(readJson(join(dir, 'text_encoder_2/config.json')), opts);
  out.unet = unetTensors(readJson(join(dir, 'unet/config.json')));
  out.vae = vaeTensors(readJson(join(dir, 'vae/config.json')));
  return out;
}

/// Differences between a derived list and a published one, as text lines (empty when equal).
export function compareLists(ours, published) {
  const key = (t) => `${t.name} ${JSON.stringify(t.shape)}`;
  const a = new Set(ours.map(key));
  const b = new Set(published.map(key));
  return [...[...a].filter((k) => !b.has(k)).map((k) => `+ ${k}`), ...[...b].filter((k) => !a.has(k)).map((k) => `- ${k}`)];
}

/// Checks the derivation against every tests/fixtures/published/*/tensors.json.
export function checkPublished() {
  const base = join(ROOT, 'tests/fixtures/published');
  const report = [];
  for (const model of readdirSync(base).sort()) {
    const pub = readJson(join(base, model, 'tensors.json'));
    const positionIds = pub.components.text_encoder.tensors.some((t) => t.name.endsWith('position_ids'));
    const ours = tensorsFromConfigs(join(base, model), { positionIds });
    for (const c of Object.keys(pub.components)) {
      if (!ours[c]) {
        report.push({ model, component: c, tensors: 0, diff: [`no ${c} derived`], sameOrder: false });
        continue;
      }
      const diff = compareLists(ours[c], pub.components[c].tensors);
      const order = diff.length === 0 && ours[c].every((t, i) => t.name === pub.components[c].tensors[i].name);
      report.push({ model, component: c, tensors: ours[c].length, diff, sameOrder: order });
    }
  }
  return report;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2);
  if (args.includes('--check')) {
    let bad = 0;
    for (const r of checkPublished()) {
      bad += r.diff.length;
      console.log(`${r.diff.length ? 'DIFF' : 'ok  '} ${r.model} ${r.component}: ${r.tensors} tensors${r.sameOrder ? ', same order' : ''}`);
      for (const d of r.diff.slice(0, 20)) console.log(`     ${d}`);
    }
    process.exit(bad ? 1 : 0);
  }
  const i = args.indexOf('--configs');
  if (i < 0) {
    console.error('usage: arch-tensors.mjs --check | --configs DIR [--position-ids]');
    process.exit(2);
  }
  console.log(JSON.stringify(tensorsFromConfigs(args[i + 1], { positionIds: args.includes('--position-ids') }), null, 1));
}
