// The prompt form: reading it, filling it, and holding every request to its limits.

const $ = (id) => document.getElementById(id);

// The list comes from the engine when the worker starts; a choice made before that (a saved
// form, a catalog default) waits for it.
export function setScheduler(id) {
  const select = $('scheduler');
  if ([...select.options].some((o) => o.value === id)) select.value = id;
  else select.dataset.want = id;
}

export function fillSchedulers(list) {
  const select = $('scheduler');
  const want = select.dataset.want || select.value;
  select.replaceChildren(...list.map(({ id, name }) => new Option(name, id)));
  if (list.some((s) => s.id === want)) select.value = want;
  delete select.dataset.want;
}

export function setForm(r) {
  for (const k of ['prompt', 'steps', 'guidance', 'width', 'height', 'eta', 'count']) if (r[k] !== undefined && r[k] !== null) $(k).value = r[k];
  if (r.negativePrompt !== undefined) $('negative').value = r.negativePrompt || '';
  if (r.scheduler) setScheduler(r.scheduler);
  if (r.promptSyntax === 'a1111' || r.promptSyntax === 'diffusers') $('prompt-syntax').value = r.promptSyntax;
  if (r.seed !== undefined && r.seed !== null) {
    $('seed').value = r.seed;
    $('seed-random').checked = false;
    $('seed').disabled = false;
  }
}

export function readForm() {
  return {
    prompt: $('prompt').value.trim(),
    negativePrompt: $('negative').value.trim(),
    steps: Number($('steps').value),
    guidance: Number($('guidance').value),
    width: Number($('width').value),
    height: Number($('height').value),
    scheduler: $('scheduler').value,
    eta: Number($('eta').value),
    count: Number($('count').value),
    promptSyntax: $('prompt-syntax').value,
    seed: $('seed-random').checked ? null : Number($('seed').value),
  };
}

export function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

// The form's own min/max/step are the limits for every caller (the form, the URL, the test
// hooks): a value outside them is brought inside with a visible note, one that is not a number is
// refused here rather than deep in the engine.
export function enforceLimits(req, sizeStep) {
  const notes = [];
  const limit = (k, { integer = false, step = 0 } = {}) => {
    const input = $(k);
    const v = Number(req[k]);
    if (req[k] === '' || req[k] === null || !Number.isFinite(v)) throw new Error(`${input.labels[0]?.textContent.trim() || k}: "${req[k]}" is not a number.`);
    const min = Math.max(Number(input.min), step);
    const max = Number(input.max);
    let w = step ? Math.round(v / step) * step : integer ? Math.round(v) : v;
    w = Math.min(max, Math.max(min, w));
    if (w !== v) notes.push(`${k} ${v} → ${w}${step ? ` (multiples of ${step}, ${min}–${max})` : ` (${min}–${max})`}`);
    req[k] = w;
    input.value = w;
  };
  limit('width', { step: sizeStep });
  limit('height', { step: sizeStep });
  limit('steps', { integer: true });
  limit('guidance');
  limit('eta');
  limit('count', { integer: true });
  if (notes.length) $('size-hint').textContent = `Adjusted: ${notes.join('; ')}.`;
}
