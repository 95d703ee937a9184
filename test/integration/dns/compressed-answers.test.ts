// The listener writes its answers again (dns-packet encodes them), and dns-packet writes every name
// whole, where the upstream pointed each repeated owner at its first (RFC 1035 §4.1.4). A client
// without EDNS(0), glibc's stub by default, takes 512 octets over UDP: an ordinary answer of a
// CDN's (a CNAME to a long name, eight AAAA records of it) fit as the upstream wrote it and came
// back truncated, sending every such lookup to TCP, where a sandbox holds 16 connections. dig
// +noedns is that client.

import { describe, expect, it } from 'vitest';
import type { Answer } from 'dns-packet';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { startRecordedDns } from '../../helpers/recorded-dns.ts';

const A = '127.0.0.2';
const EDGE = 'www.example.allowed.test.edge-1234.cdn-provider.test';
const aaaa = Array.from({ length: 8 }, (_, i) => `2001:db8:40::${i + 1}`);
const CHAIN: Answer[] = [
  { name: 'www.example.allowed.test', type: 'CNAME', ttl: 60, data: EDGE },
  ...aaaa.map((data): Answer => ({ name: EDGE, type: 'AAAA', ttl: 60, data })),
];

describe.skipIf(!haveDig)('answers written again for a client without EDNS(0)', () => {
  const dns = dnsDaemonPerBlock(
    () => startRecordedDns({ 'www.example.allowed.test': CHAIN }),
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000 },
      sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } }],
    }),
  );

  it('fit in 512 octets with their repeated names compressed, as the upstream sent them', async () => {
    // +ignore: a truncated answer is shown as it came, not asked again over TCP.
    const out = await digFrom(dns.port, A, '+noedns', '+ignore', 'www.example.allowed.test', 'AAAA');
    expect(out).toMatch(/status: NOERROR/);
    expect(out).not.toMatch(/flags:[^;]*\btc\b/);
    const got = [...out.matchAll(/\s\d+\s+IN\s+AAAA\s+(\S+)/g)].map((m) => m[1]);
    expect(got).toEqual(aaaa);
    expect(out).toMatch(new RegExp(`^www\\.example\\.allowed\\.test\\.\\s+60\\s+IN\\s+CNAME\\s+${EDGE.replaceAll('.', '\\.')}\\.$`, 'm'));
    // With the client's case kept in the question (RFC 1035 §7.3), and the same records over TCP.
    const mixed = await digFrom(dns.port, A, '+noedns', '+ignore', 'WWW.Example.Allowed.TEST', 'AAAA');
    expect(mixed).toMatch(/;WWW\.Example\.Allowed\.TEST\.\s+IN\s+AAAA/);
    expect([...mixed.matchAll(/\s\d+\s+IN\s+AAAA\s+(\S+)/g)].map((m) => m[1])).toEqual(aaaa);
    const tcp = await digFrom(dns.port, A, '+tcp', 'www.example.allowed.test', 'AAAA');
    expect([...tcp.matchAll(/\s\d+\s+IN\s+AAAA\s+(\S+)/g)].map((m) => m[1])).toEqual(aaaa);
  });
});

// The upstream of a name whose zone a sandbox serves is the sandbox's own: its labels may hold a
// dot. dns-packet reads the label `a.` before `zzz…` as the name `a..zzz…` and writes it back as
// `a` and an empty label, which ends the name: compressOwners then took the next labels for the
// record's type and length and walked out of the message, growing its label list until no array
// could hold more (seconds of the event loop every sandbox's queries and connections share, on
// every query for the name).
describe.skipIf(!haveDig)('an answer whose labels would not be written back as read', () => {
  const B = '127.0.0.3';

  const label = (s: string): Buffer => Buffer.concat([Buffer.from([Buffer.byteLength(s, 'latin1')]), Buffer.from(s, 'latin1')]);
  const wire = (labels: readonly string[]): Buffer => Buffer.concat([...labels.map(label), Buffer.from([0])]);
  /** 41 A records, the first owned by `a.` `zzz…` under the name asked: 1,1xx octets as dns-packet writes them. */
  const hostile = (id: number, question: Buffer): Buffer => {
    const owners = [
      wire(['a.', 'z'.repeat(20), 'evil', 'allowed', 'test']),
      ...Array.from({ length: 40 }, (_, i) => wire([`n${i}`, 'evil', 'allowed', 'test'])),
    ];
    const rr = (o: Buffer): Buffer => Buffer.concat([o, Buffer.from([0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 9])]);
    return Buffer.concat([
      Buffer.from([id >> 8, id & 0xff, 0x81, 0x80, 0, 1, 0, owners.length, 0, 0, 0, 0]),
      question,
      Buffer.from([0, 1, 0, 1]),
      ...owners.map(rr),
    ]);
  };

  const dns = dnsDaemonPerBlock(
    () =>
      startRecordedDns((q) => {
        if (q.name !== 'evil.allowed.test') return { answers: [{ name: q.question.name, type: 'A', ttl: 60, data: '198.18.0.7' }] };
        return hostile(q.id, wire(q.question.name.split('.')));
      }),
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000 },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } },
        { id: 'sb-b', sources: [B], network: { mode: 'block-all', egress: { allowed_domains: ['*.other.test'] } } },
      ],
    }),
  );

  it('is refused (SERVFAIL), and another sandbox is answered at once', async () => {
    const evil = await digFrom(dns.port, A, '+noedns', '+ignore', 'evil.allowed.test', 'A');
    expect(evil).toMatch(/status: SERVFAIL/);
    const t = performance.now();
    const other = await digFrom(dns.port, B, '+noedns', 'www.other.test', 'A');
    expect(other).toMatch(/status: NOERROR/);
    expect(other).toMatch(/\sIN\s+A\s+198\.18\.0\.7/);
    expect(performance.now() - t).toBeLessThan(1000);
  });
});
