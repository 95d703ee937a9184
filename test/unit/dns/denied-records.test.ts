import type { Answer } from 'dns-packet';
import { describe, expect, it } from 'vitest';
import { recordNames, withoutDeniedRecords } from '../../../src/dns/denied-records.ts';
import type { Answered } from '../../../src/dns/message.ts';

/** SVCB/HTTPS RDATA (RFC 9460 §2.2): SvcPriority, then the TargetName's labels and the root. */
const svcb = (target: string): Buffer =>
  Buffer.concat([
    Buffer.from([0, 1]),
    ...(target === '' ? [] : target.split('.')).map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])),
    Buffer.from([0]),
  ]);

const rr = (r: Record<string, unknown>): Answer => ({ ttl: 60, ...r }) as unknown as Answer;

describe('recordNames', () => {
  it('reads the owner and the target a client follows, per type', () => {
    expect(recordNames(rr({ name: 'a.test', type: 'A', data: '198.18.0.1' }))).toEqual(['a.test']);
    expect(recordNames(rr({ name: 'a.test', type: 'CNAME', data: 'b.test' }))).toEqual(['a.test', 'b.test']);
    expect(recordNames(rr({ name: 'a.test', type: 'DNAME', data: 'b.test' }))).toEqual(['a.test', 'b.test']);
    expect(recordNames(rr({ name: 'a.test', type: 'NS', data: 'ns.b.test' }))).toEqual(['a.test', 'ns.b.test']);
    expect(recordNames(rr({ name: 'a.test', type: 'MX', data: { preference: 1, exchange: 'mx.b.test' } }))).toEqual(['a.test', 'mx.b.test']);
    expect(recordNames(rr({ name: '_x._tcp.a.test', type: 'SRV', data: { priority: 1, weight: 1, port: 1, target: 's.b.test' } }))).toEqual([
      '_x._tcp.a.test',
      's.b.test',
    ]);
    expect(recordNames(rr({ name: 'a.test', type: 'NAPTR', data: { replacement: '_sip._udp.b.test' } }))).toEqual(['a.test', '_sip._udp.b.test']);
    expect(recordNames(rr({ name: 'a.test', type: 'UNKNOWN_65', data: svcb('edge.b.test') }))).toEqual(['a.test', 'edge.b.test']);
    expect(recordNames(rr({ name: 'a.test', type: 'UNKNOWN_64', data: svcb('') }))).toEqual(['a.test']);
    // Names that lead to no address are not read.
    expect(recordNames(rr({ name: '1.0.18.198.in-addr.arpa', type: 'PTR', data: 'b.test' }))).toEqual(['1.0.18.198.in-addr.arpa']);
    // An SOA not even by its owner: a negative answer is cached only with it (RFC 2308 §5).
    expect(recordNames(rr({ name: 'b.test', type: 'SOA', data: { mname: 'ns.b.test', rname: 'h.b.test' } }))).toEqual([]);
  });

  it('answers null for SVCB RDATA that does not read to a TargetName', () => {
    expect(recordNames(rr({ name: 'a.test', type: 'UNKNOWN_65', data: Buffer.from([0, 1, 5, 0x61]) }))).toBeNull();
    expect(recordNames(rr({ name: 'a.test', type: 'UNKNOWN_65', data: Buffer.from([0, 1, 0xc0, 0x0c]) }))).toBeNull();
    expect(recordNames(rr({ name: 'a.test', type: 'UNKNOWN_65', data: Buffer.from([0]) }))).toBeNull();
  });
});

describe('withoutDeniedRecords', () => {
  const answered: Answered = {
    rcode: 0,
    authenticData: false,
    answers: [rr({ name: 'www.ok.test', type: 'A', data: '198.18.0.1' })],
    authorities: [rr({ name: 'ok.test', type: 'NS', data: 'ns.bad.test' }), rr({ name: 'ok.test', type: 'NS', data: 'ns.ok.test' })],
    additionals: [
      rr({ name: 'ns.bad.test', type: 'A', data: '198.18.0.2' }),
      rr({ name: 'NS.BAD.TEST', type: 'AAAA', data: '2001:db8::2' }),
      rr({ name: 'x.test', type: 'UNKNOWN_65', data: Buffer.from([0]) }),
    ],
  };
  const denied = (name: string): string | null => (name.toLowerCase().endsWith('bad.test') ? name.toLowerCase() : null);

  it('withholds, in every section, records naming a denied name and those it cannot read; names each denied name once', () => {
    const r = withoutDeniedRecords(answered, denied);
    expect(r.answered.answers).toBe(answered.answers);
    expect(r.answered.authorities).toEqual([answered.authorities[1]]);
    expect(r.answered.additionals).toEqual([]);
    expect(r.withheld).toEqual(['ns.bad.test']);
    expect(r.answered.rcode).toBe(0);
  });

  it('hands back the very answer when nothing is denied', () => {
    const clean = { ...answered, additionals: answered.additionals.slice(0, 2) };
    const r = withoutDeniedRecords(clean, () => null);
    expect(r.answered).toBe(clean);
    expect(r.withheld).toEqual([]);
  });
});
