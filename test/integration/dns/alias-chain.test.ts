// An answer for a name the sandbox may reach whose CNAME or DNAME chain runs through a name its
// policy denies: the listener must not hand over the denied name's addresses under the allowed
// one, or the DNS memory would judge a nameless connection to them by the allowed name (a
// stratum miner behind an always-deny `*.pool.test`, reached through an allowed name's CNAME).
// The upstream is a real UDP DNS server on loopback serving the chains as recorded (dns-packet
// encodes them); dig asks the daemon's listener.

import { connect, createServer, type AddressInfo } from 'node:net';
import type { Answer } from 'dns-packet';
import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { action, field } from '../../helpers/log-line.ts';
import { startRecordedDns } from '../../helpers/recorded-dns.ts';

const A = '127.0.0.2';
const B = '127.0.0.3';
const C = '127.0.0.4';

/** Answer sections by question name, whatever the type asked; NXDOMAIN for any other name. */
const ZONE: Record<string, Answer[]> = {
  'alias.allowed.test': [
    { name: 'alias.allowed.test', type: 'CNAME', ttl: 60, data: 'x.pool.test' },
    { name: 'x.pool.test', type: 'A', ttl: 60, data: '127.0.0.1' },
  ],
  'deep.allowed.test': [
    { name: 'deep.allowed.test', type: 'CNAME', ttl: 60, data: 'hop.cdn.test' },
    { name: 'hop.cdn.test', type: 'CNAME', ttl: 60, data: 'y.pool.test' },
    { name: 'y.pool.test', type: 'A', ttl: 60, data: '198.18.1.21' },
  ],
  'www.dn.allowed.test': [
    { name: 'dn.allowed.test', type: 'DNAME', ttl: 60, data: 'pool.test' },
    { name: 'www.dn.allowed.test', type: 'CNAME', ttl: 60, data: 'www.pool.test' },
    { name: 'www.pool.test', type: 'A', ttl: 60, data: '198.18.1.22' },
  ],
  'cdn.allowed.test': [
    { name: 'cdn.allowed.test', type: 'CNAME', ttl: 60, data: 'edge.cdn.test' },
    { name: 'edge.cdn.test', type: 'A', ttl: 60, data: '198.18.1.23' },
  ],
  'mirror.other.test': [
    { name: 'mirror.other.test', type: 'CNAME', ttl: 60, data: 'files.blocked.test' },
    { name: 'files.blocked.test', type: 'A', ttl: 60, data: '198.18.1.24' },
  ],
};

describe.skipIf(!haveDig)('an alias chain through a denied name', () => {
  const dns = dnsDaemonPerBlock(
    () => startRecordedDns(ZONE),
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000 },
      overlays: { alwaysDeny: [{ name: 'miners', domains: ['*.pool.test'] }] },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } },
        { id: 'sb-b', sources: [B], network: { mode: 'allow-all', egress: { denied_domains: ['*.blocked.test'] } } },
        { id: 'sb-c', sources: [C], network: { mode: 'allow-all' } },
      ],
    }),
  );

  const dig = (from: string, ...args: string[]): Promise<string> => digFrom(dns.port, from, ...args);

  it('answers NXDOMAIN when a CNAME, a CNAME after another hop, or a DNAME leads to a denied name, and the nameless connection to its address stays refused', async () => {
    const pool = createServer((s) => {
      s.on('error', () => {});
      s.end('mining.notify\n');
    });
    await new Promise<void>((r) => pool.listen(0, '127.0.0.1', r));
    try {
      dns.egressd.route(A, '127.0.0.1', (pool.address() as AddressInfo).port);
      for (const name of ['alias.allowed.test', 'deep.allowed.test', 'www.dn.allowed.test']) {
        const out = await dig(A, name, 'A');
        expect(out, name).toMatch(/status: NXDOMAIN/);
        expect(out, name).toMatch(/ANSWER: 0,/);
      }
      const greet = (): Promise<string> =>
        new Promise((resolve) => {
          const s = connect({ host: '127.0.0.1', port: dns.egressd.port('tcp'), localAddress: A });
          let got = '';
          s.on('data', (b) => (got += b.toString()));
          s.on('error', () => {});
          s.on('close', () => resolve(got));
        });
      expect(await greet()).toBe('');
    } finally {
      pool.close();
    }
    const line = await dns.egressd.waitForLog((l) => action(l) === 'dns-query' && field(l, 'dns.question.name') === 'alias.allowed.test');
    expect(line).toMatchObject({ event: { reason: 'deny-rule' }, egressd: { sandbox: 'sb-a', verdict: 'refuse' } });
    expect(field(line, 'rule.name')).toBe('alias "x.pool.test": always-deny "miners": denied_domains "*.pool.test"');
    const res = await fetch(`${dns.egressd.adminUrl}/api/v1/sandboxes/sb-a/effective`, { headers: { authorization: 'Bearer test-token' } });
    expect(((await res.json()) as { dns_remembered: unknown[] }).dns_remembered).toEqual([]);
  });

  it("judges the chain by each sandbox's own policy, the cached answer too", async () => {
    expect(await dig(B, 'mirror.other.test', 'A')).toMatch(/status: NXDOMAIN/);
    expect(await dig(C, 'mirror.other.test', 'A', '+short')).toBe('files.blocked.test.\n198.18.1.24\n');
    expect(dns.upstream.asked.filter((q) => q === 'mirror.other.test A')).toHaveLength(1);
  });

  it('answers a chain through names the policy merely does not name (a CDN)', async () => {
    expect(await dig(A, 'cdn.allowed.test', 'A', '+short')).toBe('edge.cdn.test.\n198.18.1.23\n');
  });
});
