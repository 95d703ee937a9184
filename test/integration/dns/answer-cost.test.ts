// A large answer costs the DNS listener work on every query that gets it (each record judged,
// remembered, aged and encoded again, over UDP too before it is truncated), on the event loop every
// sandbox shares. A sandbox that runs the authoritative server of a name it may resolve can make
// that answer 64 KiB of A records; the rate limit must count such an answer by its records, not
// as one query, or a 40-byte query buys ~15 ordinary queries' work. The upstream is a real UDP
// server on loopback; the client reads the whole answer over TCP.

import { connect } from 'node:net';
import * as packet from 'dns-packet';
import type { Answer } from 'dns-packet';
import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { startRecordedDns } from '../../helpers/recorded-dns.ts';

const A = '127.0.0.2';
const B = '127.0.0.3';
/** 1,900 A records (~61 KB as dns-packet writes them, uncompressed): 30 tokens at 64 records a token. */
const BIG = 1900;

const big: Answer[] = Array.from({ length: BIG }, (_, i) => ({ name: 'big.allowed.test', type: 'A', ttl: 300, data: `198.18.${i >> 8}.${i & 255}` }));

describe('the DNS rate limit and large answers', () => {
  const dns = dnsDaemonPerBlock(
    () =>
      startRecordedDns({
        'big.allowed.test': big,
        'small.allowed.test': [{ name: 'small.allowed.test', type: 'A', ttl: 300, data: '198.18.9.1' }],
      }),
    (upstream) => ({
      // One token a second: the few the test takes to run refill no query's worth of these.
      dns: { servers: [upstream.server], timeoutMs: 2000, limits: { perSecond: 1, burst: 64 } },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } },
        { id: 'sb-b', sources: [B], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } },
      ],
    }),
  );

  it("charges a sandbox a token per 64 records of an answer, refusing past its burst, and leaves another sandbox's tokens alone", async () => {
    const ask = (from: string, name: string, id: number): Promise<packet.DecodedPacket> => tcpQuery(from, dns.port, name, id);
    // Burst 64: the first answer takes 30 (34 left), the second 30 (4 left); the third is refused.
    const first = await ask(A, 'big.allowed.test', 1);
    expect([rcode(first), first.answers?.length]).toEqual(['NOERROR', BIG]);
    const second = await ask(A, 'big.allowed.test', 2);
    expect([rcode(second), second.answers?.length]).toEqual(['NOERROR', BIG]);
    const third = await ask(A, 'big.allowed.test', 3);
    expect([rcode(third), third.answers?.length]).toEqual(['REFUSED', 0]);
    // The 4 tokens left answer ordinary queries: the bucket counts records, not the sandbox.
    expect(rcode(await ask(A, 'small.allowed.test', 4))).toBe('NOERROR');
    // The answer was cached on the way; another sandbox pays for it from its own bucket.
    const other = await ask(B, 'big.allowed.test', 5);
    expect([rcode(other), other.answers?.length]).toEqual(['NOERROR', BIG]);
    expect(dns.upstream.asked.filter((q) => q === 'big.allowed.test A')).toHaveLength(1);
    const m = await (await fetch(`${dns.egressd.adminUrl}/metrics`)).text();
    expect(m).toMatch(/egressd_dns_queries_total\{verdict="rate-limited",type="A"\} 1\b/);
    const line = await dns.egressd.waitForLog((l) => JSON.stringify(l).includes('"rate-limited"'));
    expect(line).toMatchObject({ egressd: { sandbox: 'sb-a', verdict: 'refuse' }, dns: { question: { name: 'big.allowed.test' } } });
  });
});

// An answer read from the upstream was paid for in work before its cost is known. Refused for want
// of tokens, it took only its query's one: a sandbox serving itself 64 KiB answers and asking a new
// name of its zone each time had one read for every token (1 to 5 ms each: at the default 500 a
// second, more than the event loop has), refused each time.
describe('the DNS rate limit and large answers of names never asked before', () => {
  const dns = dnsDaemonPerBlock(
    () =>
      startRecordedDns((q) => ({
        answers: Array.from({ length: BIG }, (_, i): Answer => ({ name: q.question.name, type: 'A', ttl: 300, data: `198.18.${i >> 8}.${i & 255}` })),
      })),
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 2000, limits: { perSecond: 1, burst: 64 } },
      sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } }],
    }),
  );

  it('owes the cost of one it had read and could not pay: the next new name is refused before the upstream is asked', async () => {
    // Burst 64: 30 and 30 (4 left); the third takes its query's token, is read, and owes 29.
    for (const [id, name] of [
      [1, 'n1.allowed.test'],
      [2, 'n2.allowed.test'],
    ] as const) {
      const r = await tcpQuery(A, dns.port, name, id);
      expect([rcode(r), r.answers?.length]).toEqual(['NOERROR', BIG]);
    }
    expect(rcode(await tcpQuery(A, dns.port, 'n3.allowed.test', 3))).toBe('REFUSED');
    expect(rcode(await tcpQuery(A, dns.port, 'n4.allowed.test', 4))).toBe('REFUSED');
    expect(dns.upstream.asked).toEqual(['n1.allowed.test A', 'n2.allowed.test A', 'n3.allowed.test A']);
  });
});

// The work of an answer grows with its names too: each is written label by label, and read
// suffix by suffix when it must be compressed to fit. 240 owners of 253 characters (60 KB, 4 to 5
// ms a query over UDP, measured) cost 4 tokens by their records, as 240 A records of one short owner.
describe('the DNS rate limit and an answer of long names', () => {
  const owner = (i: number): string => `${Array.from({ length: 118 }, (_, j) => String.fromCharCode(97 + ((i * 7 + j) % 26))).join('.')}.long.allowed.test`;
  const long: Answer[] = Array.from({ length: 240 }, (_, i) => ({ name: owner(i), type: 'A', ttl: 300, data: '198.18.0.1' }));

  const dns = dnsDaemonPerBlock(
    () => startRecordedDns({ 'long.allowed.test': long }),
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 2000, limits: { perSecond: 1, burst: 64 } },
      sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } }],
    }),
  );

  it('charges a token per 2,048 characters of the names, where that is more than by records', async () => {
    // 240 × 253 characters: 30 tokens. Burst 64: two answers (4 left), then refused.
    expect(long.reduce((n, r) => n + r.name.length, 0)).toBe(240 * 253);
    for (const id of [1, 2]) {
      const r = await tcpQuery(A, dns.port, 'long.allowed.test', id);
      expect([rcode(r), r.answers?.length]).toEqual(['NOERROR', 240]);
    }
    expect(rcode(await tcpQuery(A, dns.port, 'long.allowed.test', 3))).toBe('REFUSED');
  });
});

describe('the DNS rate limit and an answer costing more than the burst', () => {
  const dns = dnsDaemonPerBlock(
    () => startRecordedDns({ 'big.allowed.test': big }),
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 2000, limits: { perSecond: 1, burst: 8 } },
      sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } }],
    }),
  );

  it('answers it from a full bucket, taking all of it', async () => {
    const first = await tcpQuery(A, dns.port, 'big.allowed.test', 1);
    expect([rcode(first), first.answers?.length]).toEqual(['NOERROR', BIG]);
    expect(rcode(await tcpQuery(A, dns.port, 'big.allowed.test', 2))).toBe('REFUSED');
  });
});

/** The response code dns-packet reads from a message (its type definitions omit the field). */
function rcode(p: packet.DecodedPacket): string | undefined {
  return (p as { rcode?: string }).rcode;
}

/** One query over TCP from `from` (RFC 1035 §4.2.2 framing), the whole answer read. */
function tcpQuery(from: string, port: number, name: string, id: number): Promise<packet.DecodedPacket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: from });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no answer for ${name} within 5 s`));
    }, 5000);
    let buf = Buffer.alloc(0);
    s.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    s.on('connect', () => s.write(packet.streamEncode({ type: 'query', id, flags: packet.RECURSION_DESIRED, questions: [{ name, type: 'A', class: 'IN' }] })));
    s.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length < 2 || buf.length < 2 + buf.readUInt16BE(0)) return;
      clearTimeout(timer);
      s.destroy();
      resolve(packet.decode(buf.subarray(2, 2 + buf.readUInt16BE(0))));
    });
  });
}
