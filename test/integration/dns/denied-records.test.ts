// An allowed answer may carry, beside its chain, records of names the sandbox's policy denies: the
// glue address of a denied name server in the additional section, the NS of a denied zone in the
// authority section, an MX, SRV or HTTPS record whose target is a denied host (with that host's
// address hints). The sandbox would learn the denied host's addresses without asking for it and
// connect to them without a name. The listener withholds those records and keeps the rest of the
// message valid: the counts dig reads, the SOA of a negative answer, the EDNS OPT record.
// The upstream is a real UDP DNS server on loopback serving every section as recorded
// (test/helpers/recorded-dns.ts); dig asks the daemon's listener.

import type { Answer } from 'dns-packet';
import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { startRecordedDns, type RecordedReply } from '../../helpers/recorded-dns.ts';
import { action, field } from '../../helpers/log-line.ts';

/** Sandbox A denies `*.denied.test` (and `denied.test`, and the apex `denied-apex.test` alone); C denies nothing. */
const A = '127.0.0.2';
const C = '127.0.0.4';
/** Sandbox R denies what A denies, in report-only mode. */
const R = '127.0.0.5';

/** SVCB/HTTPS RDATA (RFC 9460 §2.2): SvcPriority, an uncompressed TargetName, an ipv4hint (key 4). */
function httpsRdata(priority: number, target: string, hint: string): Buffer {
  const labels = target === '.' ? [] : target.split('.');
  const name = Buffer.concat([...labels.map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])), Buffer.from([0])]);
  const head = Buffer.alloc(2);
  head.writeUInt16BE(priority);
  const param = Buffer.from([0, 4, 0, 4, ...hint.split('.').map(Number)]);
  return Buffer.concat([head, name, param]);
}

const soa = (zone: string): Answer =>
  ({
    name: zone,
    type: 'SOA',
    ttl: 60,
    data: { mname: 'ns.denied.test', rname: 'hostmaster.allowed.test', serial: 1, refresh: 60, retry: 60, expire: 60, minimum: 30 },
  }) as Answer;

/** By question name and type. */
const ZONE: Record<string, RecordedReply> = {
  'www.allowed.test A': {
    answers: [{ name: 'www.allowed.test', type: 'A', ttl: 60, data: '198.18.1.30' }],
    authorities: [
      { name: 'allowed.test', type: 'NS', ttl: 60, data: 'ns.denied.test' },
      { name: 'allowed.test', type: 'NS', ttl: 60, data: 'ns.ok.test' },
      { name: 'denied.test', type: 'NS', ttl: 60, data: 'ns.ok.test' },
    ],
    additionals: [
      { name: 'ns.denied.test', type: 'A', ttl: 60, data: '198.18.1.31' },
      { name: 'api.denied.test', type: 'AAAA', ttl: 60, data: '2001:db8::31' },
      { name: 'ns.ok.test', type: 'A', ttl: 60, data: '198.18.1.32' },
    ],
  },
  'mail.allowed.test MX': {
    answers: [
      { name: 'mail.allowed.test', type: 'MX', ttl: 60, data: { preference: 10, exchange: 'mx.denied.test' } },
      { name: 'mail.allowed.test', type: 'MX', ttl: 60, data: { preference: 20, exchange: 'mx.ok.test' } },
    ],
    additionals: [
      { name: 'mx.denied.test', type: 'A', ttl: 60, data: '198.18.1.33' },
      { name: 'mx.ok.test', type: 'A', ttl: 60, data: '198.18.1.34' },
    ],
  },
  '_xmpp._tcp.allowed.test SRV': {
    answers: [
      { name: '_xmpp._tcp.allowed.test', type: 'SRV', ttl: 60, data: { priority: 1, weight: 1, port: 5222, target: 'chat.denied.test' } },
      { name: '_xmpp._tcp.allowed.test', type: 'SRV', ttl: 60, data: { priority: 2, weight: 1, port: 5222, target: 'chat.ok.test' } },
    ],
  },
  // dns-packet names type 65 (HTTPS) by number.
  'svc.allowed.test UNKNOWN_65': {
    answers: [
      { name: 'svc.allowed.test', type: 'UNKNOWN_65', ttl: 60, data: httpsRdata(1, 'edge.denied.test', '198.18.1.35') } as unknown as Answer,
      { name: 'svc.allowed.test', type: 'UNKNOWN_65', ttl: 60, data: httpsRdata(2, '.', '198.18.1.36') } as unknown as Answer,
    ],
  },
  // Names that are no host names: a wildcard owner, a label with a byte no host name has, a
  // CNAME target under the denied zone that is no host name either.
  'odd.allowed.test A': {
    answers: [{ name: 'odd.allowed.test', type: 'A', ttl: 60, data: '198.18.1.40' }],
    additionals: [
      { name: '*.denied.test', type: 'A', ttl: 60, data: '198.18.1.41' },
      { name: 'a b.Denied.test', type: 'A', ttl: 60, data: '198.18.1.42' },
      { name: '*.ok.test', type: 'A', ttl: 60, data: '198.18.1.43' },
    ],
  },
  'via-odd.allowed.test A': {
    answers: [
      { name: 'via-odd.allowed.test', type: 'CNAME', ttl: 60, data: 'edge!.denied.test' },
      { name: 'edge!.denied.test', type: 'A', ttl: 60, data: '198.18.1.44' },
    ],
  },
  'chain.allowed.test A': {
    answers: [
      { name: 'chain.allowed.test', type: 'CNAME', ttl: 60, data: 'edge.denied.test' },
      { name: 'edge.denied.test', type: 'A', ttl: 60, data: '198.18.1.45' },
    ],
  },
  'gone.allowed.test A': { rcode: 'NXDOMAIN', authorities: [soa('allowed.test')] },
  // NODATA for a name allowed under an apex the sandbox denies (denied_domains `denied-apex.test`).
  'api.denied-apex.test AAAA': {
    authorities: [{ ...soa('denied-apex.test'), ttl: 30 } as Answer, { name: 'denied-apex.test', type: 'NS', ttl: 60, data: 'ns.denied-apex.test' }],
  },
};

describe.skipIf(!haveDig)('records of denied names beside an allowed answer', () => {
  const dns = dnsDaemonPerBlock(
    () => startRecordedDns(({ name, type }) => ZONE[`${name} ${type}`] ?? { rcode: 'NXDOMAIN' }),
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000 },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'allow-all', egress: { denied_domains: ['denied.test', '*.denied.test', 'denied-apex.test'] } } },
        { id: 'sb-c', sources: [C], network: { mode: 'allow-all' } },
        {
          id: 'sb-r',
          sources: [R],
          reportOnly: true,
          network: { mode: 'allow-all', egress: { denied_domains: ['denied.test', '*.denied.test', 'denied-apex.test'] } },
        },
      ],
    }),
  );

  /** dig's full output: header counts, sections, and the EDNS pseudo-section. */
  const dig = (from: string, name: string, type: string): Promise<string> => digFrom(dns.port, from, name, type);

  it('withholds glue and NS records of denied names, keeps the rest with counts and EDNS intact, and logs what it withheld', async () => {
    const out = await dig(A, 'www.allowed.test', 'A');
    expect(out).toMatch(/status: NOERROR/);
    // dig counts the OPT record in ADDITIONAL.
    expect(out).toMatch(/ANSWER: 1, AUTHORITY: 1, ADDITIONAL: 2/);
    expect(out).toMatch(/; EDNS: version: 0/);
    expect(out).toMatch(/www\.allowed\.test\.\s+\d+\s+IN\s+A\s+198\.18\.1\.30/);
    expect(out).toMatch(/allowed\.test\.\s+\d+\s+IN\s+NS\s+ns\.ok\.test\./);
    expect(out).toMatch(/ns\.ok\.test\.\s+\d+\s+IN\s+A\s+198\.18\.1\.32/);
    expect(out).not.toContain('denied.test');
    expect(out).not.toContain('198.18.1.31');
    expect(out).not.toContain('2001:db8::31');
    const line = await dns.egressd.waitForLog(
      (l) => action(l) === 'dns-query' && field(l, 'dns.question.name') === 'www.allowed.test' && field(l, 'egressd.sandbox') === 'sb-a',
    );
    expect(field(line, 'egressd.verdict')).toBe('allow');
    expect(field(line, 'egressd.dns_withheld')).toEqual(['ns.denied.test', 'denied.test', 'api.denied.test']);
  });

  it('withholds MX, SRV and HTTPS records that point at a denied host, with its address hints and glue', async () => {
    const mx = await dig(A, 'mail.allowed.test', 'MX');
    expect(mx).toMatch(/ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 2/);
    expect(mx).toMatch(/MX\s+20 mx\.ok\.test\./);
    expect(mx).toMatch(/mx\.ok\.test\.\s+\d+\s+IN\s+A\s+198\.18\.1\.34/);
    expect(mx).not.toContain('denied.test');
    expect(mx).not.toContain('198.18.1.33');

    const srv = await dig(A, '_xmpp._tcp.allowed.test', 'SRV');
    expect(srv).toMatch(/ANSWER: 1,/);
    expect(srv).toMatch(/SRV\s+2 1 5222 chat\.ok\.test\./);
    expect(srv).not.toContain('denied.test');

    const https = await dig(A, 'svc.allowed.test', 'HTTPS');
    expect(https).toMatch(/ANSWER: 1,/);
    expect(https).toContain('198.18.1.36');
    expect(https).not.toContain('edge.denied.test');
    expect(https).not.toContain('198.18.1.35');
  });

  it('judges a name that is no host name (a wildcard owner, an odd byte) as a child of the host name above it', async () => {
    const out = await dig(A, 'odd.allowed.test', 'A');
    expect(out).toMatch(/ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 2/);
    expect(out).toContain('198.18.1.40');
    expect(out).toContain('198.18.1.43');
    expect(out).not.toContain('198.18.1.41');
    expect(out).not.toContain('198.18.1.42');
    const line = await dns.egressd.waitForLog(
      (l) => action(l) === 'dns-query' && field(l, 'dns.question.name') === 'odd.allowed.test' && field(l, 'egressd.sandbox') === 'sb-a',
    );
    expect(field(line, 'egressd.dns_withheld')).toEqual(['*.denied.test']);

    const via = await dig(A, 'via-odd.allowed.test', 'A');
    expect(via).toMatch(/status: NXDOMAIN/);
    expect(via).not.toContain('198.18.1.44');
    // A sandbox that denies nothing gets them all.
    expect(await dig(C, 'odd.allowed.test', 'A')).toMatch(/ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 4/);
    expect(await dig(C, 'via-odd.allowed.test', 'A')).toContain('198.18.1.44');
  });

  // RFC 2308 §5: a negative answer without its SOA is not cached, so the stub would ask again
  // each time (each a token of the sandbox's rate limit); the SOA leads to no address.
  it("keeps a negative answer's SOA, even one whose zone a deny rule names", async () => {
    const gone = await dig(A, 'gone.allowed.test', 'A');
    expect(gone).toMatch(/status: NXDOMAIN/);
    expect(gone).toMatch(/AUTHORITY: 1,/);
    expect(gone).toMatch(/allowed\.test\.\s+\d+\s+IN\s+SOA\s+ns\.denied\.test\. hostmaster\.allowed\.test\./);
    const empty = await dig(A, 'api.denied-apex.test', 'AAAA');
    expect(empty).toMatch(/status: NOERROR/);
    expect(empty).toMatch(/ANSWER: 0, AUTHORITY: 1,/);
    expect(empty).toMatch(/denied-apex\.test\.\s+30\s+IN\s+SOA\s/);
    expect(empty).not.toContain('IN\tNS');
  });

  it('judges each sandbox by its own policy, on the answer cached for the other: one that denies nothing gets every record', async () => {
    const out = await dig(C, 'www.allowed.test', 'A');
    expect(out).toMatch(/ANSWER: 1, AUTHORITY: 3, ADDITIONAL: 4/);
    expect(out).toContain('198.18.1.31');
    expect(out).toContain('2001:db8::31');
  });

  // Report-only mode answers everything, and reports what enforcing would have done: the chain
  // refused, the records withheld.
  it('in report-only mode forwards the whole answer, and reports the chain it would refuse and the records it would withhold', async () => {
    const out = await dig(R, 'www.allowed.test', 'A');
    expect(out).toMatch(/ANSWER: 1, AUTHORITY: 3, ADDITIONAL: 4/);
    const line = await dns.egressd.waitForLog(
      (l) => action(l) === 'dns-query' && field(l, 'dns.question.name') === 'www.allowed.test' && field(l, 'egressd.sandbox') === 'sb-r',
    );
    expect(line['log.level']).toBe('info');
    expect(field(line, 'egressd.verdict')).toBe('allow');
    expect(field(line, 'egressd.dns_withheld')).toBeUndefined();
    expect(field(line, 'egressd.dns_would_withhold')).toEqual(['ns.denied.test', 'denied.test', 'api.denied.test']);

    const chain = await dig(R, 'chain.allowed.test', 'A');
    expect(chain).toMatch(/status: NOERROR/);
    expect(chain).toContain('198.18.1.45');
    const chainLine = await dns.egressd.waitForLog(
      (l) => action(l) === 'dns-query' && field(l, 'dns.question.name') === 'chain.allowed.test' && field(l, 'egressd.sandbox') === 'sb-r',
    );
    expect(chainLine['log.level']).toBe('info');
    expect(field(chainLine, 'egressd.verdict')).toBe('would-refuse');
    expect(field(chainLine, 'event.reason')).toBe('report-only');
    expect(field(chainLine, 'rule.name')).toBe('alias "edge.denied.test": denied_domains "*.denied.test"');
    // Enforced, the same chain is refused.
    expect(await dig(A, 'chain.allowed.test', 'A')).toMatch(/status: NXDOMAIN/);
  });
});
