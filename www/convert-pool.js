// Conversion helpers (convert-worker.js) for the model worker: one per core up to MAX_WORKERS,
// each a wasm instance of its own. `run(job)` sends a converter job to the least loaded helper
// and resolves with its result; the caller completes results in job order.

const MAX_WORKERS = 4;

export class ConvertPool {
  /// `size` helpers; `factory` makes one (tests pass their own).
  constructor(size, factory = () => new Worker(new URL('convert-worker.js', import.meta.url), { type: 'module' })) {
    this.factory = factory;
    this.helpers = [];
    this.nextId = 1;
    for (let i = 0; i < size; i++) this.helpers.push(this.spawn());
  }

  /// One helper per core, leaving none to this thread (it only fetches and stores).
  static forThisDevice() {
    const cores = (typeof navigator !== 'undefined' && navigator.hardwareConcurrency) || 1;
    const n = Math.max(1, Math.min(MAX_WORKERS, cores));
    try {
      return new ConvertPool(n);
    } catch (e) {
      console.warn(`webdiffusion: no conversion workers (${e.message}); converting on one thread.`);
      return null;
    }
  }

  get size() {
    return this.helpers.length;
  }

  spawn() {
    const h = { worker: this.factory(), pending: new Map() };
    h.worker.onmessage = (ev) => {
      const { id, out, error, fatal } = ev.data;
      const p = h.pending.get(id);
      if (!p) return;
      h.pending.delete(id);
      if (error) p.reject(new Error(`converting ${p.name}: ${error}`));
      else p.resolve(out);
      if (fatal) this.replace(h, `a conversion worker trapped (${error})`);
    };
    h.worker.onerror = (ev) => {
      ev.preventDefault?.();
      this.replace(h, `a conversion worker failed: ${ev.message || 'unknown error'}`);
    };
    return h;
  }

  /// A dead helper's jobs fail (the conversion stops with their error) and a fresh one takes its
  /// place for the next conversion.
  replace(h, why) {
    const i = this.helpers.indexOf(h);
    if (i < 0) return;
    h.worker.terminate();
    for (const p of h.pending.values()) p.reject(new Error(why));
    h.pending.clear();
    this.helpers[i] = this.spawn();
  }

  /// `job`: `{name, from, to, bytes}` from `Converter.jobs()`.
  run(job) {
    const h = this.helpers.reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      h.pending.set(id, { resolve, reject, name: job.name });
      h.worker.postMessage({ id, bytes: job.bytes, from: job.from, to: job.to, name: job.name }, [job.bytes.buffer]);
    });
  }

  close() {
    for (const h of this.helpers) {
      h.worker.terminate();
      for (const p of h.pending.values()) p.reject(new Error('the conversion workers were closed'));
    }
    this.helpers = [];
  }
}
