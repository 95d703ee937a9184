// deploy/systemd/: both units pass `systemd-analyze verify` with no warning at all (verify exits
// 0 on a key it ignores, so its output is checked too), egressd.service keeps the exposure score
// docs/deployment.md gives, and the commands the units run are ones egressd's CLI accepts.

import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseIptablesArgs } from '../../src/cli/iptables/args.ts';
import { DEFAULT_DOCUMENT, parseEndpoint } from '../../src/config/schema.ts';

const ROOT = new URL('../../', import.meta.url);
const read = (p: string): string => readFileSync(new URL(p, ROOT), 'utf8');
const UNITS = ['egressd.service', 'egressd-iptables.service'] as const;

const analyze = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
const missing = analyze.error ? `systemd-analyze is not installed (${(analyze.error as NodeJS.ErrnoException).code}); apt-get install systemd` : null;
if (missing) console.warn(`skipping the systemd unit checks: ${missing}`);

/** The units with /opt/egressd pointing at this checkout and the env file made optional, in a temp dir. */
const dir = mkdtempSync(join(tmpdir(), 'egressd-systemd-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const repo = new URL('.', ROOT).pathname.replace(/\/$/, '');
for (const u of UNITS) {
  writeFileSync(
    join(dir, u),
    read(`deploy/systemd/${u}`)
      .replaceAll('/opt/egressd/', `${repo}/`)
      .replace(/^EnvironmentFile=\//m, 'EnvironmentFile=-/'),
  );
}

/** `Key=value` lines of one section, repeated keys kept in order. */
function directives(text: string, section: string): [string, string][] {
  const out: [string, string][] = [];
  let current = '';
  for (const line of text.split('\n')) {
    const t = line.trim();
    if (t.startsWith('[')) current = t;
    else if (current === `[${section}]` && t && !t.startsWith('#')) {
      const i = t.indexOf('=');
      out.push([t.slice(0, i), t.slice(i + 1)]);
    }
  }
  return out;
}

describe.skipIf(missing !== null)('systemd units under systemd-analyze', () => {
  it('verify accepts both units without a single warning', () => {
    const r = spawnSync('systemd-analyze', ['verify', ...UNITS.map((u) => join(dir, u))], { encoding: 'utf8' });
    expect(r.stderr + r.stdout).toBe('');
    expect(r.status).toBe(0);
  });

  it('verify does catch a broken unit (the check can fail)', () => {
    const bad = join(dir, 'broken.service');
    writeFileSync(bad, readFileSync(join(dir, 'egressd.service'), 'utf8').replace(/^LimitNOFILE=.*$/m, 'LimitNOFILE=lots'));
    const r = spawnSync('systemd-analyze', ['verify', bad], { encoding: 'utf8' });
    expect(r.stderr).toMatch(/LimitNOFILE|resource value/);
  });

  it('egressd.service scores the exposure docs/deployment.md states, at most 2.0', () => {
    const out = execFileSync('systemd-analyze', ['security', '--offline=true', join(dir, 'egressd.service')], { encoding: 'utf8' });
    const score = /Overall exposure level for egressd\.service: ([0-9.]+)/.exec(out)?.[1];
    expect(Number(score)).toBeLessThanOrEqual(2.0);
    expect(read('docs/deployment.md')).toContain(`exposure level ${score}`);
  });
});

describe('what the units run', () => {
  const svc = read('deploy/systemd/egressd.service');
  const ipt = read('deploy/systemd/egressd-iptables.service');
  const service = (t: string): Map<string, string[]> => {
    const m = new Map<string, string[]>();
    for (const [k, v] of directives(t, 'Service')) m.set(k, [...(m.get(k) ?? []), v]);
    return m;
  };

  it('egressd.service restarts on failure, raises LimitNOFILE, drains on SIGTERM longer than the default drain, and needs no capability', () => {
    const s = service(svc);
    expect(s.get('Restart')).toEqual(['on-failure']);
    expect(Number(s.get('LimitNOFILE')![0])).toBeGreaterThanOrEqual(65536);
    expect(s.get('ExecReload')).toEqual(['/bin/kill -HUP $MAINPID']);
    // The default drain, plus the last OTLP export (3 s) and the log's flush: 10 s was once the default.
    const drainS = (DEFAULT_DOCUMENT as { shutdown: { drainMs: number } }).shutdown.drainMs / 1000;
    expect(parseInt(s.get('TimeoutStopSec')![0]!, 10)).toBeGreaterThan(drainS + 3);
    expect(read('deploy/systemd/egressd.service')).toContain(`default ${drainS} s`);
    expect(s.get('CapabilityBoundingSet')).toEqual(['']);
    expect(s.get('ExecStart')).toEqual(['/opt/egressd/bin/egressd serve --config /etc/egressd/config.yaml']);
  });

  it('the rules are applied before egressd starts and removed on stop, with arguments the CLI accepts', () => {
    expect(directives(ipt, 'Unit')).toContainEqual(['Before', 'egressd.service']);
    expect(directives(svc, 'Unit')).toContainEqual(['After', 'network-online.target egressd-iptables.service']);
    const s = service(ipt);
    expect(s.get('Type')).toEqual(['oneshot']);
    expect(s.get('RemainAfterExit')).toEqual(['yes']);
    expect(s.get('ExecStart')).toEqual(['/opt/egressd/bin/egressd iptables --apply $EGRESSD_IPTABLES_ARGS']);
    expect(s.get('ExecStop')).toEqual(['/opt/egressd/bin/egressd iptables --remove']);
    const example = /EGRESSD_IPTABLES_ARGS="([^"]*)"/.exec(read('deploy/systemd/iptables.env.example'))![1]!;
    const applied = parseIptablesArgs(['--apply', ...example.split(' ')]);
    expect(applied.ok).toBe(true);
    // DNS goes to the daemon's default DNS listener; a --dns-server would be ignored beside it
    // (docs/deployment.md).
    const dns = parseEndpoint((DEFAULT_DOCUMENT as { listen: { dns: string[] } }).listen.dns[0]!);
    if (typeof dns === 'string') throw new Error(dns);
    if (applied.ok) expect({ dnsPort: applied.options.dnsPort, dnsServers: applied.options.dnsServers }).toEqual({ dnsPort: dns.port, dnsServers: [] });
    expect(parseIptablesArgs(['--remove']).ok).toBe(true);
  });
});
