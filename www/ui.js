// Small page helpers with no state of their own: formatting and the notice bar.

const $ = (id) => document.getElementById(id);

export function fmtTime(s) {
  if (s === null || !Number.isFinite(s)) return '';
  if (s < 90) return `${Math.max(1, Math.round(s))} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
export const message = (e) => (e && e.message ? e.message : String(e));

export function toBase64(u8) {
  let s = '';
  for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
  return btoa(s);
}

export function notice(key, text, kind = 'warn') {
  let el = document.querySelector(`.notice[data-key="${key}"]`);
  if (!text) {
    el?.remove();
    return;
  }
  if (!el) {
    el = document.createElement('p');
    el.dataset.key = key;
    $('notices').append(el);
  }
  el.className = `notice ${kind}`;
  el.textContent = text;
}
