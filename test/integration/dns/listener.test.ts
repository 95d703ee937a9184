// The DNS listener in the whole daemon on loopback, asked by dig (a real client) and forwarding
// to a test upstream that counts what reaches it: only names the sandbox may reach are
// forwarded; everything else is answered here; malformed and unserved queries get the RFC's
// code; truncation sends dig to TCP; answers are cached; a flood is limited per sandbox.

import { createSocket } from 'node:dgram';
import { connect, createServer, type AddressInfo } from 'node:net';
import * as packet from 'dns-packet';
import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { action, field } from '../../helpers/log-line.ts';

const A = '127.0.0.2';
const B = '127.0.0.3';
const C = '127.0.0.4';

describe.skipIf(!haveDig)('the DNS listener', () => {
  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start();
      upstream.set('allowed.test', { kind: 'answer', a: ['198.18.1.10'], aaaa: ['2001:db8:2::10'], ttl: 60 });
      upstream.set('many.allowed.test', { kind: 'answer', a: Array.from({ length: 60 }, (_, i) => `198.18.1.${i + 2}`), ttl: 60 });
      upstream.set('cached.allowed.test', { kind: 'answer', a: ['198.18.1.11'], ttl: 60 });
      upstream.set('blocked.test', { kind: 'answer', a: ['198.18.1.13'], ttl: 60 });
      upstream.set('svc.test', { kind: 'answer', a: ['127.0.0.1'], ttl: 60 });
      return upstream;
    },
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000, limits: { perSecond: 1, burst: 20 } },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test', '*.allowed.test'] } } },
        { id: 'sb-b', sources: [B], network: { mode: 'allow-all', egress: { denied_domains: ['blocked.test'] } } },
        { id: 'sb-c', sources: [C], network: { mode: 'block-all', egress: { allowed_domains: ['svc.test'] } } },
      ],
    }),
  );

  const dig = (from: string, ...args: string[]): Promise<string> => digFrom(dns.port, from, ...args);

  it('resolves an allowed name and answers NXDOMAIN for another without asking the upstream', async () => {
    expect(await dig(A, 'allowed.test', 'A', '+short')).toBe('198.18.1.10\n');
    expect(await dig(A, 'ALLOWED.test.', 'AAAA', '+short')).toBe('2001:db8:2::10\n');
    const out = await dig(A, 'data-1234.attacker.test', 'A');
    expect(out).toMatch(/status: NXDOMAIN/);
    expect(dns.upstream.queries.some((q) => q.name.includes('attacker'))).toBe(false);
    // allow-all with a deny rule: the denied name is never resolved, others are.
    expect(await dig(B, 'blocked.test', 'A')).toMatch(/status: NXDOMAIN/);
    expect(dns.upstream.count('blocked.test', 'A')).toBe(0);
    expect(await dig(B, 'allowed.test', 'A', '+short')).toBe('198.18.1.10\n');
    const line = await dns.egressd.waitForLog((l) => action(l) === 'dns-query' && field(l, 'dns.question.name') === 'data-1234.attacker.test');
    expect(line).toMatchObject({
      event: { outcome: 'failure', reason: 'not-allowed' },
      dns: { question: { type: 'A' } },
      network: { transport: 'udp', protocol: 'dns' },
      egressd: { sandbox: 'sb-a', verdict: 'refuse' },
    });
    expect(typeof field(line, 'source.ip')).toBe('string');
  });

  it('answers over TCP, and a truncated UDP answer sends dig to TCP (RFC 7766)', async () => {
    expect((await dig(A, '+tcp', 'allowed.test', 'A', '+short')).trim()).toBe('198.18.1.10');
    const out = await dig(A, '+noedns', '+ignore', 'many.allowed.test', 'A');
    expect(out).toMatch(/flags: qr tc/);
    const full = await dig(A, '+noedns', 'many.allowed.test', 'A', '+short');
    expect(full.trim().split('\n')).toHaveLength(60);
  });

  it('answers from the cache the second time', async () => {
    await dig(A, 'cached.allowed.test', 'A', '+short');
    await dig(A, 'cached.allowed.test', 'A', '+short');
    expect(dns.upstream.count('cached.allowed.test', 'A')).toBe(1);
  });

  it('answers FORMERR, NOTIMP and BADVERS as the RFCs say', async () => {
    expect(await dig(A, '+edns=1', '+noednsnegotiation', 'allowed.test', 'A')).toMatch(/status: BADVERS/);
    expect(await dig(A, '-c', 'CH', 'version.bind', 'TXT')).toMatch(/status: NOTIMP/);
    const two = packet.encode({
      type: 'query',
      id: 7,
      questions: [
        { name: 'allowed.test', type: 'A' },
        { name: 'allowed.test', type: 'AAAA' },
      ],
    });
    expect(rcode(await udp(A, dns.port, two))).toBe('FORMERR');
    const notify = packet.encode({ type: 'query', id: 8, flags: 4 << 11, questions: [{ name: 'allowed.test', type: 'SOA' }] });
    expect(rcode(await udp(A, dns.port, notify))).toBe('NOTIMP');
    // A label holding a dot would be judged as one name and resolved as another.
    const dotted = Buffer.concat([Buffer.from([0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]), Buffer.from('\x0ex.allowed.test\x04test\x00\x00\x01\x00\x01', 'latin1')]);
    expect(rcode(await udp(A, dns.port, dotted))).toBe('FORMERR');
    expect(dns.upstream.queries.some((q) => q.name.startsWith('x.allowed'))).toBe(false);
  });

  it('judges a server-first connection that carries no name by the name the sandbox resolved to its address', async () => {
    const banner = createServer((s) => {
      s.on('error', () => {});
      s.end('220 hello\r\n');
    });
    await new Promise<void>((r) => banner.listen(0, '127.0.0.1', r));
    try {
      dns.egressd.route(C, '127.0.0.1', (banner.address() as AddressInfo).port);
      const greet = (): Promise<string> =>
        new Promise((resolve) => {
          const s = connect({ host: '127.0.0.1', port: dns.egressd.port('tcp'), localAddress: C });
          let got = '';
          s.on('data', (b) => (got += b.toString()));
          s.on('error', () => {});
          s.on('close', () => resolve(got));
        });
      // Not resolved yet: judged by address, which block-all refuses.
      expect(await greet()).toBe('');
      expect(await dig(C, 'svc.test', 'A', '+short')).toBe('127.0.0.1\n');
      expect(await greet()).toBe('220 hello\r\n');
      const line = await dns.egressd.waitForLog(
        (l) => action(l) === 'connection' && field(l, 'egressd.sandbox') === 'sb-c' && field(l, 'egressd.verdict') === 'allow',
      );
      expect(line).toMatchObject({ egressd: { dns_names: ['svc.test'], matched_by: 'dns' }, rule: { name: 'dns "svc.test": allowed_domains "svc.test"' } });
      expect(field(line, 'destination.domain')).toBeUndefined();
      const res = await fetch(`${dns.egressd.adminUrl}/api/v1/dns/remembered?top=5`, { headers: { authorization: 'Bearer test-token' } });
      expect(await res.json()).toMatchObject({ top: expect.arrayContaining([{ sandbox: 'sb-c', addresses: 1 }]) });
    } finally {
      banner.close();
    }
  });

  it('refuses a flood past the burst while another sandbox resolves', async () => {
    let refused = 0;
    for (let i = 0; i < 40; i++) {
      const r = await udp(
        A,
        dns.port,
        packet.encode({ type: 'query', id: i, flags: packet.RECURSION_DESIRED, questions: [{ name: 'cached.allowed.test', type: 'A' }] }),
      );
      if (rcode(r) === 'REFUSED') refused++;
    }
    expect(refused).toBeGreaterThan(10);
    expect(await dig(B, 'allowed.test', 'A', '+short')).toBe('198.18.1.10\n');
    const m = await (await fetch(`${dns.egressd.adminUrl}/metrics`)).text();
    expect(m).toMatch(/egressd_dns_queries_total\{verdict="rate-limited",type="A"\} \d+/);
  });
});

/** The response code dns-packet reads from a message (its type definitions omit the field). */
function rcode(msg: Buffer): string | undefined {
  return (packet.decode(msg) as { rcode?: string }).rcode;
}

function udp(from: string, port: number, msg: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    const timer = setTimeout(() => {
      s.close();
      reject(new Error('no answer within 2 s'));
    }, 2000);
    s.on('message', (m) => {
      clearTimeout(timer);
      s.close();
      resolve(m);
    });
    s.bind(0, from, () => s.send(msg, port, '127.0.0.1'));
  });
}
