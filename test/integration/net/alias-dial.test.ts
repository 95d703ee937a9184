// A connection presenting an allowed name whose CNAME chain runs through a name a deny rule names:
// the DNS listener refuses that answer (dns/service.ts, test/integration/dns/alias-chain.test.ts),
// and the data path must hold the same line for a sandbox that resolved the name some other way
// (its own resolver, DoH, an address it kept): egressd resolves the name itself to dial it
// (`upstream.dial: resolved`), and that chain is judged before any byte goes upstream. The
// upstream DNS server is a real UDP server on loopback serving the chains as recorded.

import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import type { Answer } from 'dns-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { field, isConnection } from '../../helpers/log-line.ts';
import { startRecordedDns } from '../../helpers/recorded-dns.ts';

const A = '127.0.0.2';
const B = '127.0.0.3';
const C = '127.0.0.4';
/** Where every chain ends: the origin below. */
const HOST = '127.0.0.1';

const ZONE: Record<string, Answer[]> = {
  'alias.allowed.test': [
    { name: 'alias.allowed.test', type: 'CNAME', ttl: 60, data: 'x.pool.test' },
    { name: 'x.pool.test', type: 'A', ttl: 60, data: HOST },
  ],
  'deep.allowed.test': [
    { name: 'deep.allowed.test', type: 'CNAME', ttl: 60, data: 'hop.cdn.test' },
    { name: 'hop.cdn.test', type: 'CNAME', ttl: 60, data: 'Y.Pool.Test' },
    { name: 'y.pool.test', type: 'A', ttl: 60, data: HOST },
  ],
  'cdn.allowed.test': [
    { name: 'cdn.allowed.test', type: 'CNAME', ttl: 60, data: 'edge.cdn.test' },
    { name: 'edge.cdn.test', type: 'A', ttl: 60, data: HOST },
  ],
  // A DNAME (RFC 6672 §2) maps dn.other.test's names under mirror.test; the CNAME is its synthesis.
  'www.dn.other.test': [
    { name: 'dn.other.test', type: 'DNAME', ttl: 60, data: 'mirror.test' },
    { name: 'www.dn.other.test', type: 'CNAME', ttl: 60, data: 'www.mirror.test' },
    { name: 'www.mirror.test', type: 'A', ttl: 60, data: HOST },
  ],
  'api.dn.other.test': [
    { name: 'dn.other.test', type: 'DNAME', ttl: 60, data: 'mirror.test' },
    { name: 'api.dn.other.test', type: 'CNAME', ttl: 60, data: 'api.mirror.test' },
    { name: 'api.mirror.test', type: 'A', ttl: 60, data: HOST },
  ],
  'mirror.other.test': [
    { name: 'mirror.other.test', type: 'CNAME', ttl: 60, data: 'files.blocked.test' },
    { name: 'files.blocked.test', type: 'A', ttl: 60, data: HOST },
  ],
};

/** `name` → hop1.chain.test → … → hop`n`.chain.test → HOST: a chain of n aliases, none of them denied. */
function longChain(name: string, n: number): Answer[] {
  const hop = (i: number): string => `hop${i}.${name.split('.')[0]}.chain.test`;
  const out: Answer[] = [{ name, type: 'CNAME', ttl: 60, data: hop(1) }];
  for (let i = 1; i < n; i++) out.push({ name: hop(i), type: 'CNAME', ttl: 60, data: hop(i + 1) });
  out.push({ name: hop(n), type: 'A', ttl: 60, data: HOST });
  return out;
}
ZONE['twelve.other.test'] = longChain('twelve.other.test', 12);
ZONE['thirteen.other.test'] = longChain('thirteen.other.test', 13);
ZONE['shared13.other.test'] = longChain('shared13.other.test', 13);

describe('a resolved name whose alias chain runs through a denied name', () => {
  let origin: Server;
  let reached = 0;

  const served = dnsDaemonPerBlock(
    // The chain for either type; the address records only for A (no AAAA here: NODATA's chain).
    () =>
      startRecordedDns(({ name, type }) => {
        const chain = ZONE[name];
        return chain ? { answers: chain.filter((r) => r.type !== 'A' || type === 'A') } : { rcode: 'NXDOMAIN' };
      }),
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000 },
      upstream: { dial: 'resolved', connectTimeoutMs: 1000 },
      overlays: { alwaysDeny: [{ name: 'miners', domains: ['*.pool.test'] }] },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } },
        { id: 'sb-b', sources: [B], network: { mode: 'allow-all', egress: { denied_domains: ['*.blocked.test', 'mirror.test'] } } },
        { id: 'sb-c', sources: [C], network: { mode: 'allow-all' } },
      ],
    }),
  );
  beforeAll(async () => {
    origin = createServer((s) => {
      reached++;
      s.on('error', () => {});
      s.once('data', () => s.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok'));
    });
    origin.listen(0, HOST);
    await once(origin, 'listening');
    const port = (origin.address() as AddressInfo).port;
    for (const from of [A, B, C]) served.egressd.route(from, HOST, port);
  });
  afterAll(async () => {
    origin?.close();
  });

  /** An HTTP request for `host` from `from` (the sandbox resolved it itself); what came back. */
  const request = (from: string, host: string): Promise<string> =>
    new Promise((resolve) => {
      const s = connect({ host: '127.0.0.1', port: served.egressd.port('http'), localAddress: from });
      let got = '';
      const t = setTimeout(() => s.destroy(), 3000);
      s.on('connect', () => s.write(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`));
      s.on('data', (b) => (got += b.toString()));
      s.on('error', () => {});
      s.on('close', () => {
        clearTimeout(t);
        resolve(got);
      });
    });
  const lineFor = (from: string, host: string) =>
    served.egressd.waitForLog((l) => isConnection(l) && field(l, 'source.ip') === from && field(l, 'destination.domain') === host);

  // Twice each: the first connection waits for egressd's own lookup, the second is judged from
  // the address cache it filled.
  it('refuses it, after one hop or two (any case), naming the alias and the rule; the origin is never reached', async () => {
    for (const [host, alias] of [
      ['alias.allowed.test', 'x.pool.test'],
      ['deep.allowed.test', 'y.pool.test'],
    ] as const) {
      const before = reached;
      expect(await request(A, host), host).toMatch(/^HTTP\/1\.1 403 /);
      expect(await request(A, host), host).toMatch(/^HTTP\/1\.1 403 /);
      expect(reached, host).toBe(before);
      const line = await lineFor(A, host);
      expect({ verdict: field(line, 'egressd.verdict'), reason: field(line, 'event.reason'), rule: field(line, 'rule.name') }, host).toEqual({
        verdict: 'refuse',
        reason: 'deny-rule',
        rule: `alias "${alias}": always-deny "miners": denied_domains "*.pool.test"`,
      });
    }
  });

  it('dials a chain through names no rule names (a CDN)', async () => {
    const before = reached;
    expect(await request(A, 'cdn.allowed.test')).toMatch(/^HTTP\/1\.1 200 /);
    expect(reached).toBe(before + 1);
  });

  // The address cache is shared with the DNS listener: sandbox C's answer is there, aliases and
  // all, when sandbox B, whose policy denies the alias, connects with the name.
  it.skipIf(!haveDig)("judges the chain by each sandbox's own policy, from the DNS listener's shared answer too", async () => {
    expect(await digFrom(served.port, C, 'mirror.other.test', 'A', '+short')).toBe(`files.blocked.test.\n${HOST}\n`);
    const asked = served.upstream.asked.length;
    const before = reached;
    expect(await request(B, 'mirror.other.test')).toMatch(/^HTTP\/1\.1 403 /);
    expect(reached).toBe(before);
    // Judged from the listener's entry: nothing asked again.
    expect(served.upstream.asked.slice(asked)).toEqual([]);
    expect(field(await lineFor(B, 'mirror.other.test'), 'rule.name')).toBe('alias "files.blocked.test": denied_domains "*.blocked.test"');
    expect(await request(C, 'mirror.other.test')).toMatch(/^HTTP\/1\.1 200 /);
    expect(reached).toBe(before + 1);
  });

  // Every alias is judged on every connection to the name: a chain longer than resolvers follow
  // (MAX_CHAIN_ALIASES, 12) made each connection cost as many verdicts as the upstream's answer
  // held CNAMEs, from egressd's own lookup and from the DNS listener's shared answer alike.
  it('refuses a name whose chain runs through more aliases than resolvers follow, from its own lookup and from the shared answer', async () => {
    const before = reached;
    expect(await request(C, 'twelve.other.test')).toMatch(/^HTTP\/1\.1 200 /);
    expect(reached).toBe(before + 1);
    expect(await request(C, 'thirteen.other.test')).toMatch(/^HTTP\/1\.1 403 /);
    expect(field(await lineFor(C, 'thirteen.other.test'), 'event.reason')).toBe('dns-failure');
    if (haveDig) {
      // The listener answers the sandbox as its upstream did; it does not hand the chain to the dial.
      expect(await digFrom(served.port, C, 'shared13.other.test', 'A', '+short')).toContain(HOST);
      expect(await request(C, 'shared13.other.test')).toMatch(/^HTTP\/1\.1 403 /);
      expect(field(await lineFor(C, 'shared13.other.test'), 'event.reason')).toBe('dns-failure');
    }
    expect(reached).toBe(before + 1);
  });

  // The listener refuses a chain through a DNAME whose target a deny rule names (alias-chain.test.ts)
  // and the memory judges it (remembered-aliases.test.ts): the dial judges it alike, from its own
  // lookup and from the listener's shared answer.
  it.skipIf(!haveDig)("judges a DNAME's target as an alias of the chain, from egressd's own lookup and the listener's answer", async () => {
    const before = reached;
    expect(await request(B, 'www.dn.other.test')).toMatch(/^HTTP\/1\.1 403 /);
    expect(await request(B, 'www.dn.other.test')).toMatch(/^HTTP\/1\.1 403 /);
    expect(field(await lineFor(B, 'www.dn.other.test'), 'rule.name')).toBe('alias "mirror.test": denied_domains "mirror.test"');
    expect(await digFrom(served.port, C, 'api.dn.other.test', 'A', '+short')).toContain(HOST);
    const asked = served.upstream.asked.length;
    expect(await request(B, 'api.dn.other.test')).toMatch(/^HTTP\/1\.1 403 /);
    expect(served.upstream.asked.slice(asked)).toEqual([]);
    expect(reached).toBe(before);
    expect(await request(C, 'www.dn.other.test')).toMatch(/^HTTP\/1\.1 200 /);
    expect(reached).toBe(before + 1);
  });
});
