// `egressd iptables --new-connections-per-source` against a real kernel, in the rig's namespaces:
// a source opening connections faster than the rate gets the excess reset, while another source on
// the same interface, in the same moment, is served in full; both backends, both families.

import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAIN, NODE } from '../helpers/e2e-daemon.ts';
import { createRig, type Rig, rigUnavailableReason } from '../helpers/netns-rig.ts';
import { routerRules } from '../helpers/router-rules.ts';
import { startCatcher, stopCatcher } from '../helpers/port-catcher.ts';

const PORTS = { http: 29080, tls: 29443, tcp: 29001 };
const TARGET = { 4: '198.18.1.2', 6: '2001:db8:0:2::2' } as const;

// Opens argv[2] connections at once from argv[1] (a bind address) to argv[3]:argv[4], and prints
// how they ended: "caught" (the catcher's answer came back), "reset" (refused or reset), or the error.
const BURST_CLIENT = `
const net = require('node:net');
const [from, count, host, port] = process.argv.slice(1);
const outcomes = {};
const one = () => new Promise((done) => {
  const s = net.connect({ host, port: Number(port), localAddress: from });
  let got = '';
  let ended = false;
  // 'close' follows 'error': the first word is the outcome.
  const end = (o) => { if (ended) return; ended = true; outcomes[o] = (outcomes[o] || 0) + 1; s.destroy(); done(); };
  s.setTimeout(8000, () => end('timeout'));
  s.on('data', (d) => { got += d; });
  s.on('close', () => end(got.startsWith('caught') ? 'caught' : 'closed'));
  s.on('error', (e) => end(e.code === 'ECONNREFUSED' || e.code === 'ECONNRESET' ? 'reset' : e.code || e.message));
});
Promise.all(Array.from({ length: Number(count) }, one)).then(() => console.log(JSON.stringify(outcomes)));
`;

// Opens argv[2] connections at once from argv[1] to argv[3]:53 (the rig's dnsmasq, which says
// nothing first) and prints how many connected and how many were reset.
const CONNECT_CLIENT = `
const net = require('node:net');
const [from, count, host] = process.argv.slice(1);
const outcomes = {};
const one = () => new Promise((done) => {
  const s = net.connect({ host, port: 53, localAddress: from });
  let ended = false;
  const end = (o) => { if (ended) return; ended = true; outcomes[o] = (outcomes[o] || 0) + 1; s.destroy(); done(); };
  s.setTimeout(8000, () => end('timeout'));
  s.on('connect', () => end('connected'));
  s.on('error', (e) => end(e.code === 'ECONNREFUSED' || e.code === 'ECONNRESET' ? 'reset' : e.code || e.message));
});
Promise.all(Array.from({ length: Number(count) }, one)).then(() => console.log(JSON.stringify(outcomes)));
`;

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e iptables --new-connections-per-source tests skipped: ${skip}`);

describe.skipIf(skip !== null)('egressd iptables --new-connections-per-source on a live kernel', () => {
  let rig: Rig;
  let catcher: ChildProcess;

  beforeAll(async () => {
    rig = await createRig();
    catcher = await startCatcher(rig, 'router', [PORTS.http, PORTS.tls, PORTS.tcp]);
  });
  afterAll(async () => {
    await rig?.execIn('router', NODE, [MAIN, 'iptables', '--remove'], { timeoutMs: 30_000 });
    await stopCatcher(catcher);
    await rig?.teardown();
  });

  const apply = async (backend: string, extra: string[], dns: string[] = []): Promise<void> => {
    const args = ['--apply', '--backend', backend, '--mode', 'host', '--interface', rig.sandboxIf, '--dns-port', 'off', ...dns];
    const ports = ['--http-port', String(PORTS.http), '--tls-port', String(PORTS.tls), '--tcp-port', String(PORTS.tcp)];
    const r = await rig.execIn('router', NODE, [MAIN, 'iptables', ...args, ...ports, ...extra], { timeoutMs: 30_000 });
    expect(r.code, r.stderr).toBe(0);
  };
  const burst = async (from: string, count: number, family: 4 | 6): Promise<Record<string, number>> => {
    const r = await rig.execIn('sandbox', NODE, ['-e', BURST_CLIENT, from, String(count), TARGET[family], '443'], { timeoutMs: 30_000 });
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as Record<string, number>;
  };
  const conntrackEntries = async (): Promise<number> => {
    const r = await rig.execIn('router', 'cat', ['/proc/sys/net/netfilter/nf_conntrack_count']);
    expect(r.code, r.stderr).toBe(0);
    return Number(r.stdout.trim());
  };
  const source = (family: 4 | 6, second = false): string =>
    family === 4 ? (second ? rig.sandbox2V4 : rig.sandboxV4) : second ? rig.sandbox2V6 : rig.sandboxV6;

  describe.each(['iptables', 'nft'] as const)('with the %s backend', (backend) => {
    it.each([4, 6] as const)('over IPv%s, without the flag, refuses none of 40 connections opened at once', async (family) => {
      await apply(backend, []);
      expect(await burst(source(family), 40, family)).toEqual({ caught: 40 });
    });

    it.each([4, 6] as const)(
      'over IPv%s, at 5/s burst 5, resets some of 40 connections one source opens at once, and none of another source in the same moment',
      async (family) => {
        await apply(backend, ['--new-connections-per-source', '5/s', '--new-connections-burst', '5']);
        const entriesBefore = await conntrackEntries();
        const [flood, other] = await Promise.all([burst(source(family), 40, family), burst(source(family, true), 5, family)]);
        expect(Object.keys(flood).sort()).toEqual(['caught', 'reset']);
        // A reset SYN was never confirmed: only the connections served hold an entry (in
        // TIME_WAIT now), not the 45 opened.
        expect((await conntrackEntries()) - entriesBefore).toBeLessThanOrEqual(flood['caught']! + other['caught']!);
        // The burst, and what the rate refilled while the 40 SYNs went out.
        expect(flood['caught']).toBeGreaterThanOrEqual(5);
        expect(flood['reset']).toBeGreaterThanOrEqual(20);
        expect(other).toEqual({ caught: 5 });
      },
    );

    // hashlimit shares a table among rules of one name and keeps the settings of the rule that
    // made it: a re-apply's rule, loaded while the old one still holds the table, would get the old rate.
    it.each([4, 6] as const)('over IPv%s, applying again with a higher rate serves what the lower one reset', async (family) => {
      await apply(backend, ['--new-connections-per-source', '5', '--new-connections-burst', '5']);
      expect((await burst(source(family), 40, family))['reset']).toBeGreaterThan(0);
      await apply(backend, ['--new-connections-per-source', '1000', '--new-connections-burst', '100']);
      expect(await burst(source(family), 40, family)).toEqual({ caught: 40 });
    });

    // A --dns-server's port 53 is forwarded, not redirected to a listener: the limit is in the tcp chain.
    it.each([4, 6] as const)('over IPv%s, with --dns-port off, resets the excess of 40 connections to a --dns-server too', async (family) => {
      const server = family === 4 ? rig.dnsServer : rig.dnsServerV6;
      const connect = async (from: string, count: number): Promise<Record<string, number>> => {
        const r = await rig.execIn('sandbox', NODE, ['-e', CONNECT_CLIENT, from, String(count), server], { timeoutMs: 30_000 });
        expect(r.code, r.stderr).toBe(0);
        return JSON.parse(r.stdout) as Record<string, number>;
      };
      await apply(backend, ['--new-connections-per-source', '5', '--new-connections-burst', '5'], ['--dns-server', server]);
      const entriesBefore = await conntrackEntries();
      const [flood, other] = await Promise.all([connect(source(family), 40), connect(source(family, true), 5)]);
      const seen = JSON.stringify({ flood, other });
      expect(Object.keys(flood).sort(), seen).toEqual(['connected', 'reset']);
      expect((await conntrackEntries()) - entriesBefore, seen).toBeLessThanOrEqual(flood['connected']! + other['connected']!);
      expect(flood['reset'], seen).toBeGreaterThanOrEqual(20);
      expect(other, seen).toEqual({ connected: 5 });
    });

    it('applying again with the same limit adds nothing, and --remove takes the limit out with the rest', async () => {
      await apply(backend, ['--new-connections-per-source', '5', '--new-connections-burst', '5']);
      const list = (): Promise<string> => routerRules(rig);
      const once = await list();
      expect(once).toMatch(backend === 'nft' ? /limit rate over 5\/second/ : /--hashlimit-above 5\/sec/);
      await apply(backend, ['--new-connections-per-source', '5', '--new-connections-burst', '5']);
      expect(await list()).toBe(once);
      const r = await rig.execIn('router', NODE, [MAIN, 'iptables', '--remove'], { timeoutMs: 30_000 });
      expect(r.code, r.stderr).toBe(0);
      expect(await list()).not.toMatch(/hashlimit|new_tcp_per_source|egressd/i);
    });
  });
});
