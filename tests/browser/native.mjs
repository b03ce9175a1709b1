// The native CLI, for tests that compare the browser with it.

import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './harness.mjs';

/// The newest build of the CLI (`cargo test` builds the debug one).
export function cliBinary() {
  const bin = process.env.WEBDIFFUSION_BIN || ['release', 'debug']
    .map((p) => join(ROOT, 'target', p, 'webdiffusion'))
    .filter(existsSync)
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
  assert.ok(bin, 'build the CLI first (cargo build)');
  return bin;
}
