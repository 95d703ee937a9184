// Before any test runs (vitest's globalSetup, every project): the addons in native/build and the
// compiled dist/ are brought up to date with the checkout. Tests load the addons in-process and
// in the daemons they spawn, and some run dist/main.js or bin/egressd; both are otherwise built
// only by `npm ci`, so after a `git pull` that changed native/*.c or src/ a test would run the
// old code. Each build does nothing while its stamp matches its inputs' hash (a few ms).

import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..');

export default function setup(): void {
  const pinned = join(ROOT, 'node_modules/.bin/node');
  const node = existsSync(pinned) ? pinned : process.execPath;
  for (const script of ['scripts/build-native.ts', 'scripts/build-js.ts']) {
    execFileSync(node, [join(ROOT, script)], { stdio: ['ignore', 'inherit', 'inherit'] });
  }
}
