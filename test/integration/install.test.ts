// The README's install step, done for real: `npm install --global` of the checkout (what
// `npm link` does, into a prefix of the test's own) puts an `egressd` on that PATH that runs.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');
const prefix = mkdtempSync(join(tmpdir(), 'egressd-prefix-'));
afterAll(() => rmSync(prefix, { recursive: true, force: true }));

describe('installing the egressd command', () => {
  it('npm install --global puts a working egressd on the PATH', () => {
    const npm = spawnSync('npm', ['install', '--global', '--prefix', prefix, '--no-audit', '--no-fund', ROOT], { encoding: 'utf8', timeout: 120_000 });
    expect(npm.status, npm.stderr).toBe(0);
    const env = { PATH: `${join(prefix, 'bin')}:/usr/bin:/bin` };
    const help = spawnSync('egressd', ['--help'], { encoding: 'utf8', env, timeout: 60_000 });
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/^Usage: egressd <command> \[options\]/);
    const sub = spawnSync('egressd', ['sandbox', 'ls', '--help'], { encoding: 'utf8', env, timeout: 60_000 });
    expect(sub.stdout).toMatch(/^Usage: egressd sandbox ls /);
  }, 240_000);
});
