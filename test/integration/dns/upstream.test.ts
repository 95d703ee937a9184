// The DNS listener's forwarder (src/dns/upstream.ts) against a DNS server of our own on loopback:
// a retry over TCP (RFC 7766 §5) holds one of the process's few places (net/query-sockets.ts), so
// one whose query is already answered must let its place go at once, not hold it to the deadline.

import { describe, expect, it, onTestFinished } from 'vitest';
import { Forwarder } from '../../../src/dns/upstream.ts';
import { QuerySockets } from '../../../src/net/query-sockets.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { secondHoldsFirst } from '../../helpers/tcp-dns.ts';

describe('Forwarder', () => {
  it('lets the place of a retry over TCP go once another retry of the same query has answered', async () => {
    const dns = await DnsTestServer.start('127.0.0.1', 0, { tcp: true });
    onTestFinished(() => dns.close());
    // Both attempts (at 0 and at half the timeout) come back truncated; the TCP side answers the
    // first retry only once the second has come, and never the second.
    dns.set('big.test', { kind: 'answer', a: ['192.0.2.50'], ttl: 60, truncate: true });
    const tcp = secondHoldsFirst(dns, (q) => [{ type: 'A', name: q.name, ttl: 60, data: '192.0.2.50' }]);
    const sockets = new QuerySockets({ tcpMax: 4 });
    onTestFinished(() => sockets.close());
    const forwarder = new Forwarder({ servers: [dns.server], timeoutMs: 1000, sockets });
    onTestFinished(() => forwarder.close());
    const r = await forwarder.query('big.test', 'A', false, false, 'a');
    expect(r).toMatchObject({ ok: true });
    expect(tcp.connections).toBe(2);
    // The second retry is no use now: its place is free and its connection closed.
    expect(sockets.tcpInUse).toBe(0);
    await tcp.allClosed();
  });
});
