// A stand-in for the wasm build (pkg/webdiffusion.js) with the same surface worker.js uses for
// `quant: 'none'` loads — init(), Engine.create/info/lost/load/free, Model.info/generate/free,
// loraTags(), and download.js's diffusersLayout() — and no GPU work: it reads every byte the loader offers
// (so IndexedDB reads are real) and paints an image that depends on the seed and on a hash of
// those bytes. It exists to run the browser benchmark's driver (tools/bench/browser-bench.mjs
// --pkg tools/bench/stub-pkg --quant none) where no wasm build is at hand; its timings say
// nothing about the engine.

const memory = new WebAssembly.Memory({ initial: 17 });

export default async function init() {
  return { memory };
}

const SLICE = 8 << 20;

class Model {
  constructor(digest, name) {
    this.digest = digest;
    this.name = name;
  }

  info() {
    return { name: this.name, defaultWidth: 64, defaultHeight: 64, scheduler: 'ddim', stub: true };
  }

  async generate(request, onStep) {
    for (let i = 0; i < request.steps; i++) {
      await new Promise((r) => setTimeout(r, 10));
      if (onStep(i, request.steps, null) === false) return { cancelled: true };
    }
    const { width, height } = request;
    const rgba = new Uint8Array(width * height * 4);
    let h = (this.digest ^ Math.imul(request.seed >>> 0, 0x9e3779b1)) >>> 0;
    for (let i = 0; i < rgba.length; i++) {
      h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) >>> 0;
      rgba[i] = i % 4 === 3 ? 255 : h >>> 24;
    }
    return { cancelled: false, width, height, rgba, png: new Uint8Array([137, 80, 78, 71]), parameters: `stub seed ${request.seed}` };
  }

  free() {}
}

/// The real build's list (ids and A1111 names), as src/pipeline/schedulers/mod.rs has them.
export function schedulers() {
  return [['ddim', 'DDIM'], ['euler', 'Euler'], ['euler-a', 'Euler a'], ['dpm++2m', 'DPM++ 2M'], ['dpm++2m-karras', 'DPM++ 2M Karras'], ['lcm', 'LCM']]
    .map(([id, name]) => ({ id, name }));
}

/// The real build's layout (src/models/component.rs: SMALL_FILES, and the weights in
/// Component::LOAD_ORDER), which download.js probes a bare folder for.
export function diffusersLayout() {
  const xl = 'text_encoder_2/config.json';
  const files = [['model_index.json', true], ['scheduler/scheduler_config.json', true], ['text_encoder/config.json', true],
    ['unet/config.json', true], ['vae/config.json', true], ['tokenizer/vocab.json', true], ['tokenizer/merges.txt', true],
    ['tokenizer/tokenizer_config.json', false], ['tokenizer/special_tokens_map.json', false], [xl, false],
    ...['vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json'].map((f) => [`tokenizer_2/${f}`, false, xl])]
    .map(([path, required, w]) => ({ path, required, with: w ?? null }));
  const weights = [['vae', 'diffusion_pytorch_model', true], ['text_encoder', 'model', true], ['text_encoder_2', 'model', false], ['unet', 'diffusion_pytorch_model', true]]
    .map(([component, stem, required]) => ({ component, plain: `${component}/${stem}.safetensors`, half: `${component}/${stem}.fp16.safetensors`, config: `${component}/config.json`, required }));
  return { files, weights };
}

/// The real build's incremental SHA-256 is not stood in for: a stub's own would be a second
/// hash the page's downloads could come to depend on. The driver's models (a Hub stand-in's
/// diffusers folder, no pinned hashes, no Repr-Digest) never ask for one.
export class Sha256 {
  constructor() {
    throw new Error('the stub engine has no sha256: run the driver on a model without pinned hashes');
  }
}

/// The real build's test hook: traps the instance.
/// The prompt's `<lora:name:strength>` tags (the stub merges nothing; a tag-free prompt has none).
export function loraTags(prompt) {
  return [...String(prompt).matchAll(/<lora:([^:>]+):([^>]+)>/g)].map((m) => ({ name: m[1], strength: Number(m[2]) }));
}

export function testTrap() {
  throw new WebAssembly.RuntimeError('unreachable (stub testTrap)');
}

export class Engine {
  static async create() {
    return new Engine();
  }

  info() {
    return { adapter_name: 'stub engine (no GPU work)', backend: 'stub', shader_f16: false, max_storage_binding: 128 << 20 };
  }

  lost() {
    return null;
  }

  /// Reads every file the model needs, as the real loader's reads would, and hashes the bytes.
  async load(reader, opts = {}) {
    const paths = ['model_index.json', 'scheduler/scheduler_config.json', 'tokenizer/vocab.json', 'tokenizer/merges.txt',
      'text_encoder/config.json', 'unet/config.json', 'vae/config.json', 'manifest.json'];
    for (const c of ['text_encoder/model', 'unet/diffusion_pytorch_model', 'vae/diffusion_pytorch_model']) {
      paths.push(`${c}.safetensors`, `${c}.fp16.safetensors`);
    }
    let h = 0x811c9dc5;
    for (const p of paths) {
      if (!p.endsWith('.safetensors')) {
        const whole = reader.read(p);
        if (whole) for (let i = 0; i < whole.length; i += 997) h = Math.imul(h ^ whole[i], 0x01000193) >>> 0;
        continue;
      }
      const head = reader.readRange(p, 0, 8);
      if (!head) continue;
      const n = Number(new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true));
      const header = JSON.parse(new TextDecoder().decode(reader.readRange(p, 8, n)));
      const end = Math.max(0, ...Object.values(header).filter((t) => t.data_offsets).map((t) => t.data_offsets[1]));
      for (let o = 0; o < end; o += SLICE) {
        const b = reader.readRange(p, 8 + n + o, Math.min(SLICE, end - o));
        for (let i = 0; i < b.length; i += 4093) h = Math.imul(h ^ b[i], 0x01000193) >>> 0;
      }
    }
    return new Model(h, opts.name || 'stub');
  }

  converter() {
    throw new Error('the stub engine cannot convert while downloading: run the driver with --quant none');
  }

  resumeConverter() {
    return this.converter();
  }

  free() {}
}
