// The listener writes its answers again (dns-packet encodes them), and dns-packet writes every name
// whole, where the upstream pointed each repeated owner at its first (RFC 1035 §4.1.4). A client
// without EDNS(0), glibc's stub by default, takes 512 octets over UDP: an ordinary answer of a
// CDN's (a CNAME to a long name, eight AAAA records of it) fit as the upstream wrote it and came
// back truncated, sending every such lookup to TCP, where a sandbox holds 16 connections. dig
// +noedns is that client.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Answer } from 'dns-packet';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../../helpers/loopback-daemon.ts';
import { startRecordedDns, type RecordedDns } from '../../helpers/recorded-dns.ts';

const A = '127.0.0.2';
const EDGE = 'www.example.allowed.test.edge-1234.cdn-provider.test';
const aaaa = Array.from({ length: 8 }, (_, i) => `2001:db8:40::${i + 1}`);
const CHAIN: Answer[] = [
  { name: 'www.example.allowed.test', type: 'CNAME', ttl: 60, data: EDGE },
  ...aaaa.map((data): Answer => ({ name: EDGE, type: 'AAAA', ttl: 60, data })),
];

describe.skipIf(!haveDig)('answers written again for a client without EDNS(0)', () => {
  let upstream: RecordedDns;
  let d: LoopbackDaemon;
  let port: number;

  beforeAll(async () => {
    upstream = await startRecordedDns({ 'www.example.allowed.test': CHAIN });
    d = await startLoopbackDaemon(
      loopbackConfig({
        dns: { servers: [upstream.server], timeoutMs: 1000 },
        sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } }],
      }),
    );
    port = d.daemon.dnsListeners[0]!.port!;
  });
  afterAll(async () => {
    await d?.stop();
    await upstream?.close();
  });

  it('fit in 512 octets with their repeated names compressed, as the upstream sent them', async () => {
    // +ignore: a truncated answer is shown as it came, not asked again over TCP.
    const out = await digFrom(port, A, '+noedns', '+ignore', 'www.example.allowed.test', 'AAAA');
    expect(out).toMatch(/status: NOERROR/);
    expect(out).not.toMatch(/flags:[^;]*\btc\b/);
    const got = [...out.matchAll(/\s\d+\s+IN\s+AAAA\s+(\S+)/g)].map((m) => m[1]);
    expect(got).toEqual(aaaa);
    expect(out).toMatch(new RegExp(`^www\\.example\\.allowed\\.test\\.\\s+60\\s+IN\\s+CNAME\\s+${EDGE.replaceAll('.', '\\.')}\\.$`, 'm'));
    // With the client's case kept in the question (RFC 1035 §7.3), and the same records over TCP.
    const mixed = await digFrom(port, A, '+noedns', '+ignore', 'WWW.Example.Allowed.TEST', 'AAAA');
    expect(mixed).toMatch(/;WWW\.Example\.Allowed\.TEST\.\s+IN\s+AAAA/);
    expect([...mixed.matchAll(/\s\d+\s+IN\s+AAAA\s+(\S+)/g)].map((m) => m[1])).toEqual(aaaa);
    const tcp = await digFrom(port, A, '+tcp', 'www.example.allowed.test', 'AAAA');
    expect([...tcp.matchAll(/\s\d+\s+IN\s+AAAA\s+(\S+)/g)].map((m) => m[1])).toEqual(aaaa);
  });
});
