// `npm run demo` as a user runs it: it shows an allowed and a refused connection with their log
// lines, exits 0, and leaves none of its namespaces behind (it names them; other rigs may come
// and go on the machine meanwhile).

import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { rigUnavailableReason } from '../helpers/netns-rig.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const skip = rigUnavailableReason();
if (skip) console.warn(`npm run demo test skipped: ${skip}`);

const namespaces = (): string[] =>
  spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .stdout.split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter((n) => n !== '');

describe.skipIf(skip !== null)('npm run demo', () => {
  it('shows curl allowed and refused, with the log line of each, and cleans up', () => {
    const r = spawnSync('npm', ['run', '-s', 'demo'], { cwd: ROOT, encoding: 'utf8', timeout: 180_000, killSignal: 'SIGKILL' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('$ curl https://allowed.test/');
    // A summary, then the log line itself in ECS fields (docs/logs.md).
    expect(r.stdout).toMatch(/egressd: allow allowed\.test → 198\.18\.1\.2:443, allow-rule/);
    expect(r.stdout).toMatch(/its log line .*: \{.*"domain":"allowed\.test".*"egressd":\{"verdict":"allow"/);
    expect(r.stdout).toMatch(/tlsv1 alert access denied/);
    expect(r.stdout).toMatch(/egressd: refuse denied\.test → 198\.18\.1\.3:443, default-block/);
    expect(r.stdout).toMatch(/its log line .*: \{.*"domain":"denied\.test".*"egressd":\{"verdict":"refuse"/);
    const named = /namespaces (\S+), (\S+), (\S+) \(removed at the end\)/.exec(r.stdout);
    expect(named, r.stdout).not.toBeNull();
    const ours = named!.slice(1);
    // While it ran, they existed (the demo's curl ran in the first); now none is left.
    expect(ours.every((n) => /^eg[0-9a-z]{7}-(sbx|rtr|net)$/.test(n))).toBe(true);
    expect(namespaces().filter((n) => ours.includes(n))).toEqual([]);
  }, 200_000);
});
