// Samples the resident memory of one Chromium launch: every process whose command line holds
// the profile folder's path (Chromium passes --user-data-dir to its children), plus their
// descendants (crashpad and other helpers that do not carry it), summed, from /proc (Linux).
// The sum counts shared pages once per process, as `ps`-style RSS figures do; PSS (each shared
// page split between its users) is sampled too, less often, as the fairer total.

import { readFileSync, readdirSync } from 'node:fs';

const read = (p) => {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return null; // the process is gone
  }
};
const kbField = (text, name) => {
  const m = text && new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text);
  return m ? Number(m[1]) * 1024 : 0;
};

/// Starts sampling every `intervalMs`; `stop()` returns {peakRss, peakRssAt, peakPss,
/// peakProcesses: [{pid, type, rss, anon, shmem}] at the peak, samples: [[epochMs, rssBytes,
/// processes]]}. `peakBetween(t0, t1)` gives the peak RSS within a window.
export function sampleRss(profileDir, { intervalMs = 250, pssEvery = 4 } = {}) {
  const known = new Map(); // pid -> {ppid, own: cmdline holds the profile path}
  const samples = [];
  let peakRss = 0;
  let peakRssAt = null;
  let peakPss = 0;
  let peakProcesses = [];
  let tick = 0;
  const types = new Map();
  const processType = (pid) => {
    if (!types.has(pid)) {
      const m = /--type=([a-z-]+)/.exec((read(`/proc/${pid}/cmdline`) || '').replace(/\0/g, ' '));
      types.set(pid, m ? m[1] : 'browser');
    }
    return types.get(pid);
  };
  const members = () => {
    const pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number);
    const alive = new Set(pids);
    for (const pid of known.keys()) if (!alive.has(pid)) known.delete(pid);
    for (const pid of pids) {
      if (known.has(pid)) continue;
      const stat = read(`/proc/${pid}/stat`);
      const cmd = read(`/proc/${pid}/cmdline`);
      if (stat === null || cmd === null) continue;
      // The command name (field 2) may hold spaces and parentheses: ppid follows the last ')'.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      known.set(pid, { ppid, own: cmd.includes(profileDir) });
    }
    const inTree = (pid, depth = 0) => {
      const k = known.get(pid);
      return !!k && (k.own || (depth < 32 && inTree(k.ppid, depth + 1)));
    };
    return pids.filter((pid) => inTree(pid));
  };
  const timer = setInterval(() => {
    try {
      const pids = members();
      let rss = 0;
      const each = [];
      for (const pid of pids) {
        const status = read(`/proc/${pid}/status`);
        const r = kbField(status, 'VmRSS');
        rss += r;
        // RssAnon: the process's own memory; RssShmem: shared memory (counted again by every
        // process that maps it, e.g. GPU transfer buffers).
        each.push({ pid, type: processType(pid), rss: r, anon: kbField(status, 'RssAnon'), shmem: kbField(status, 'RssShmem') });
      }
      const now = Date.now();
      samples.push([now, rss, pids.length]);
      if (rss > peakRss) {
        peakRss = rss;
        peakRssAt = now;
        peakProcesses = each.sort((a, b) => b.rss - a.rss);
      }
      if (tick++ % pssEvery === 0) {
        let pss = 0;
        for (const pid of pids) pss += kbField(read(`/proc/${pid}/smaps_rollup`), 'Pss');
        peakPss = Math.max(peakPss, pss);
      }
    } catch {
      // /proc raced with an exiting process; the next tick samples again
    }
  }, intervalMs);
  timer.unref();
  return {
    peakBetween(t0, t1) {
      return samples.filter(([t]) => t >= t0 && t <= t1).reduce((m, [, r]) => Math.max(m, r), 0);
    },
    stop() {
      clearInterval(timer);
      return { peakRss, peakRssAt, peakPss, peakProcesses, samples };
    },
  };
}
