// `egressd iptables --new-dns-flows-per-source` against a real kernel, in the rig's namespaces:
// a source sending DNS queries over UDP from fresh ports faster than the rate gets the excess
// dropped before conntrack keeps an entry for it, while another source on the same interface, in
// the same moment, is answered in full; both backends, both families. The queries go to port 53
// of an address in the internet namespace and are redirected to egressd's DNS listener in the
// router namespace, which answers NXDOMAIN itself (the sandbox may resolve nothing): no upstream
// query adds an entry of its own.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DaemonProcess } from '../helpers/daemon-process.ts';
import { MAIN, NODE, serveIn, writeConfig } from '../helpers/e2e-daemon.ts';
import { createRig, type Rig, rigUnavailableReason } from '../helpers/netns-rig.ts';
import { routerRules } from '../helpers/router-rules.ts';

const PORTS = { http: 29080, tls: 29443, tcp: 29001, dns: 29053 };
const TARGET = { 4: '198.18.1.2', 6: '2001:db8:0:2::2' } as const;

// Sends argv[2] queries at once from argv[1] (a bind address) to argv[3]:53, each from a socket
// of its own (a fresh source port, so a flow of its own), and prints how many were answered and
// how many met silence within 3 s, and the source ports it sent from.
const QUERY_CLIENT = `
const dgram = require('node:dgram');
const [from, count, server] = process.argv.slice(1);
const query = (id) => {
  const labels = ['q' + id, 'flood', 'test'].flatMap((l) => [Buffer.from([l.length]), Buffer.from(l)]);
  return Buffer.concat([Buffer.from([id >> 8, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]), ...labels, Buffer.from([0, 0, 1, 0, 1])]);
};
const outcomes = {};
const ports = [];
const one = (id) => new Promise((done) => {
  const s = dgram.createSocket(server.includes(':') ? 'udp6' : 'udp4');
  let ended = false;
  const end = (o) => { if (ended) return; ended = true; outcomes[o] = (outcomes[o] || 0) + 1; clearTimeout(timer); s.close(); done(); };
  const timer = setTimeout(() => end('silence'), 3000);
  s.on('message', (m) => end(m.readUInt16BE(0) === id ? 'answered' : 'wrong-id'));
  s.on('error', (e) => end(e.code || e.message));
  s.bind(0, from, () => { ports.push(s.address().port); s.send(query(id), 53, server); });
});
Promise.all(Array.from({ length: Number(count) }, (_, i) => one(i + 1))).then(() => console.log(JSON.stringify({ outcomes, ports })));
`;

/** An address as /proc/net/nf_conntrack prints it: IPv6 in eight groups of four digits. */
function procAddress(a: string): string {
  if (!a.includes(':')) return a;
  const [head, tail] = a.split('::') as [string, string | undefined];
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  return [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t].map((g) => g.padStart(4, '0')).join(':');
}

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e iptables --new-dns-flows-per-source tests skipped: ${skip}`);

describe.skipIf(skip !== null)('egressd iptables --new-dns-flows-per-source on a live kernel', () => {
  let rig: Rig;
  let daemon: DaemonProcess;
  let dir: string;

  beforeAll(async () => {
    rig = await createRig();
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-dns-flows-'));
    const config = {
      listen: {
        http: [`0.0.0.0:${PORTS.http}`, `[::]:${PORTS.http}`],
        tls: [`0.0.0.0:${PORTS.tls}`, `[::]:${PORTS.tls}`],
        tcp: [`0.0.0.0:${PORTS.tcp}`, `[::]:${PORTS.tcp}`],
        dns: [`0.0.0.0:${PORTS.dns}`, `[::]:${PORTS.dns}`],
      },
      // egressd's own query limit far above the flood, so that what is not answered is the kernel's doing.
      dns: { servers: [rig.dnsServer], limits: { perSecond: 10_000, burst: 10_000 } },
      protected: { except: ['198.18.0.0/15', '2001:db8::/32'] },
      sandboxes: [
        {
          id: 'sb',
          sources: [rig.sandboxV4, rig.sandbox2V4, rig.sandboxV6, rig.sandbox2V6],
          network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } },
        },
      ],
    };
    daemon = await serveIn(rig, 'router', writeConfig(dir, config));
  });
  afterAll(async () => {
    await rig?.execIn('router', NODE, [MAIN, 'iptables', '--remove'], { timeoutMs: 30_000 });
    await daemon?.stop('SIGTERM');
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  // The DNS listener answers port 53 unless `dns` says otherwise.
  const apply = async (backend: string, extra: string[], dns = ['--dns-port', String(PORTS.dns)]): Promise<void> => {
    const args = ['--apply', '--backend', backend, '--mode', 'host', '--interface', rig.sandboxIf, ...dns];
    const ports = ['--http-port', String(PORTS.http), '--tls-port', String(PORTS.tls), '--tcp-port', String(PORTS.tcp)];
    const r = await rig.execIn('router', NODE, [MAIN, 'iptables', ...args, ...ports, ...extra], { timeoutMs: 30_000 });
    expect(r.code, r.stderr).toBe(0);
  };
  // How the queries ended; `entries` then counts the router's conntrack entries of their flows.
  const queries = async (from: string, count: number, family: 4 | 6, server: string = TARGET[family]): Promise<Record<string, number>> => {
    const r = await rig.execIn('sandbox', NODE, ['-e', QUERY_CLIENT, from, String(count), server], { timeoutMs: 30_000 });
    expect(r.code, r.stderr).toBe(0);
    const { outcomes, ports } = JSON.parse(r.stdout) as { outcomes: Record<string, number>; ports: number[] };
    sent.set(outcomes, { from, server, ports: new Set(ports) });
    return outcomes;
  };
  const sent = new WeakMap<Record<string, number>, { from: string; server: string; ports: Set<number> }>();
  /**
   * The entries the router's conntrack table holds for the flows of one `queries` call, by their
   * whole original tuple: exact where nf_conntrack_count also moves with other flows expiring (30
   * s after the earlier tests' queries). A port an earlier query to the same server used within
   * those 30 s is the same flow, whose datagram is no longer NEW: admitted, and one entry.
   */
  const entries = async (of: Record<string, number>): Promise<number> => {
    const { from, server, ports } = sent.get(of)!;
    const r = await rig.execIn('router', 'cat', ['/proc/net/nf_conntrack']);
    expect(r.code, r.stderr).toBe(0);
    return r.stdout.split('\n').filter((line) => {
      const m = / udp +17 \d+ src=(\S+) dst=(\S+) sport=(\d+) dport=53 /.exec(line);
      return m !== null && m[1] === procAddress(from) && m[2] === procAddress(server) && ports.has(Number(m[3]));
    }).length;
  };
  const conntrackEntries = async (): Promise<number> => {
    const r = await rig.execIn('router', 'cat', ['/proc/sys/net/netfilter/nf_conntrack_count']);
    expect(r.code, r.stderr).toBe(0);
    return Number(r.stdout.trim());
  };
  const source = (family: 4 | 6, second = false): string =>
    family === 4 ? (second ? rig.sandbox2V4 : rig.sandboxV4) : second ? rig.sandbox2V6 : rig.sandboxV6;

  describe.each(['iptables', 'nft'] as const)('with the %s backend', (backend) => {
    it.each([4, 6] as const)('over IPv%s, without the flag, answers all of 40 queries sent at once, each an entry', async (family) => {
      await apply(backend, []);
      const all = await queries(source(family), 40, family);
      expect(all).toEqual({ answered: 40 });
      expect(await entries(all)).toBe(40);
    });

    it.each([4, 6] as const)(
      'over IPv%s, at 5/s burst 5, leaves most of 40 queries one source sends at once unanswered and takes no entry for them, and answers another source in the same moment',
      async (family) => {
        await apply(backend, ['--new-dns-flows-per-source', '5/s', '--new-dns-flows-burst', '5']);
        const before = await conntrackEntries();
        const [flood, other] = await Promise.all([queries(source(family), 40, family), queries(source(family, true), 5, family)]);
        const seen = JSON.stringify({ flood, other });
        expect(Object.keys(flood).sort(), seen).toEqual(['answered', 'silence']);
        // A dropped first datagram was never confirmed: only the flows answered hold an entry.
        expect(await entries(flood), seen).toBe(flood['answered']);
        expect((await conntrackEntries()) - before, seen).toBeLessThanOrEqual(flood['answered']! + other['answered']!);
        // The burst, and what the rate refilled while the 40 queries went out.
        expect(flood['answered'], seen).toBeGreaterThanOrEqual(5);
        expect(flood['silence'] ?? 0, seen).toBeGreaterThanOrEqual(20);
        expect(other, seen).toEqual({ answered: 5 });
      },
    );

    // The same hashlimit trap as --new-connections-per-source's: the table's name carries the settings.
    it.each([4, 6] as const)('over IPv%s, applying again with a higher rate answers what the lower one dropped', async (family) => {
      await apply(backend, ['--new-dns-flows-per-source', '5', '--new-dns-flows-burst', '5']);
      expect((await queries(source(family), 40, family))['silence'] ?? 0).toBeGreaterThan(0);
      await apply(backend, ['--new-dns-flows-per-source', '1000', '--new-dns-flows-burst', '100']);
      expect(await queries(source(family), 40, family)).toEqual({ answered: 40 });
    });

    // With the listener off, the queries go on to the DNS server left reachable (the rig's
    // dnsmasq, in the internet namespace), each a forwarded flow of the router's table.
    it.each([4, 6] as const)('over IPv%s, with --dns-port off, limits the flows to a --dns-server the same way', async (family) => {
      const server = family === 4 ? rig.dnsServer : rig.dnsServerV6;
      const dns = ['--dns-port', 'off', '--dns-server', server];
      await apply(backend, [], dns);
      const all = await queries(source(family), 40, family, server);
      expect(all).toEqual({ answered: 40 });
      expect(await entries(all)).toBe(40);
      await apply(backend, ['--new-dns-flows-per-source', '5', '--new-dns-flows-burst', '5'], dns);
      const [flood, other] = await Promise.all([queries(source(family), 40, family, server), queries(source(family, true), 5, family, server)]);
      const seen = JSON.stringify({ flood, other });
      expect(await entries(flood), seen).toBe(flood['answered']);
      expect(flood['silence'] ?? 0, seen).toBeGreaterThanOrEqual(20);
      expect(other, seen).toEqual({ answered: 5 });
    });

    it('applying again with the same limit adds nothing, and --remove takes the limit out with the rest', async () => {
      const limited = ['--new-dns-flows-per-source', '5', '--new-dns-flows-burst', '5'];
      await apply(backend, limited);
      const list = (): Promise<string> => routerRules(rig);
      const once = await list();
      expect(once).toMatch(backend === 'nft' ? /new_dns_per_source .*limit rate over 5\/second/ : /--hashlimit-name egressd-dns-5-5/);
      await apply(backend, limited);
      expect(await list()).toBe(once);
      const r = await rig.execIn('router', NODE, [MAIN, 'iptables', '--remove'], { timeoutMs: 30_000 });
      expect(r.code, r.stderr).toBe(0);
      expect(await list()).not.toMatch(/hashlimit|new_dns_per_source|egressd/i);
    });
  });
});
