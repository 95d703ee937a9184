// The README's install step, done for real: its `npm link` and `npm install --global` lines, as
// the README spells them, into a prefix of the test's own, put an `egressd` on that PATH that
// runs, and npm says nothing about egressd's install script (npm 11.16+: "install scripts not yet
// covered by allowScripts", which the README's bare `npm link` printed).

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');
const prefixes: string[] = [];
afterAll(() => {
  for (const p of prefixes) rmSync(p, { recursive: true, force: true });
});

/** The README's commands that install egressd globally, with their flags, as written there. */
function readmeInstallCommands(): string[][] {
  const md = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const section = md.slice(md.indexOf('## Installing the `egressd` command'));
  const link = /^npm link[^#\n]*/m.exec(section)?.[0];
  const global = /`(npm install --global[^`]*)`/.exec(section)?.[1];
  if (link === undefined || global === undefined) throw new Error('README.md: no npm link or npm install --global line under "Installing the egressd command"');
  return [link, global].map((c) => c.trim().split(/\s+/));
}

describe('installing the egressd command', () => {
  it.each(readmeInstallCommands().map((words) => [words.join(' '), words] as const))(
    '"%s" from the README puts a working egressd on the PATH, with no npm warning about its scripts',
    (_, words) => {
      const prefix = mkdtempSync(join(tmpdir(), 'egressd-prefix-'));
      prefixes.push(prefix);
      // npm link has no --prefix of its own: the global prefix is npm's config.
      const args = [...words.slice(1).map((w) => (w === '.' ? ROOT : w)), '--no-audit', '--no-fund'];
      const npm = spawnSync('npm', args, { cwd: ROOT, encoding: 'utf8', timeout: 120_000, env: { ...process.env, NPM_CONFIG_PREFIX: prefix } });
      expect(npm.status, npm.stderr).toBe(0);
      expect(npm.stderr).not.toMatch(/install-scripts|allowScripts/);
      const env = { PATH: `${join(prefix, 'bin')}:/usr/bin:/bin` };
      const help = spawnSync('egressd', ['--help'], { encoding: 'utf8', env, timeout: 60_000 });
      expect(help.status, help.stderr).toBe(0);
      expect(help.stdout).toMatch(/^Usage: egressd <command> \[options\]/);
      const sub = spawnSync('egressd', ['sandbox', 'ls', '--help'], { encoding: 'utf8', env, timeout: 60_000 });
      expect(sub.stdout).toMatch(/^Usage: egressd sandbox ls /);
    },
    240_000,
  );
});
