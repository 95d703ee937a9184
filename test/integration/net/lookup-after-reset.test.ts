// A lookup on the wire holds a UDP socket of its own (net/dns-client.ts), a descriptor its waiting
// connection's place in the limits counts (net/query-sockets.ts). A client's reset during the
// lookup ends the connection at once; the lookup, which no one waits on any more, is cancelled
// then too (its socket closed), and so the place is given back at once. Before, the place was
// held until the lookup settled (else a sandbox that resets each connection as soon as its name
// is asked, a new name each time, would hold lookups, and their descriptors, that no limit
// bounds): a sandbox limited to 2 connections then had its names asked 2 at a time, each lookup
// held to dns.timeoutMs. Now none is held past its last waiter.

import { connect } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { udpSockets, within } from '../../helpers/listen.ts';
import { field, isConnection } from '../../helpers/log-line.ts';

const LIMIT = 2;
const ROUNDS = 12;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('lookups of connections that reset, set up on $setup', ({ setup }) => {
  const source = '127.0.5.10';

  const served = dnsDaemonPerBlock(
    () => DnsTestServer.start(),
    (dns) => ({
      dns: { servers: [dns.server], timeoutMs: 30_000 },
      upstream: { dial: 'resolved', connectTimeoutMs: 30_000 },
      limits: { sandbox: { connections: LIMIT } },
      sandboxes: [{ id: 'sb', sources: [source], network: { mode: 'block-all', egress: { allowed_domains: ['*.gone.test'] } } }],
    }),
    { setup },
  );

  it(`a sandbox limited to ${LIMIT} connections that resets as each name is asked holds no lookup on the wire`, async () => {
    const before = udpSockets();
    for (let i = 0; i < ROUNDS; i++) {
      const name = `n${i}-${setup}.gone.test`;
      served.upstream.set(name, { kind: 'silent' });
      served.egressd.route(source, '127.0.0.1', 9);
      const seen = served.egressd.logs.length;
      const s = connect({ host: '127.0.0.1', port: served.egressd.port('http'), localAddress: source });
      let closed = false;
      s.on('error', () => {});
      s.on('close', () => (closed = true));
      onTestFinished(() => void s.destroy());
      s.write(`GET / HTTP/1.0\r\nHost: ${name}\r\n\r\n`);
      // Until the name is asked, or the connection was refused at the sandbox's limit.
      for (let j = 0; j < 200 && !closed && !served.upstream.queries.some((q) => q.name === name) && !served.egressd.logs.slice(seen).some(isConnection); j++)
        await sleep(10);
      s.resetAndDestroy();
      await sleep(50);
    }
    const lookups = udpSockets() - before;
    const asked = new Set(served.upstream.queries.map((q) => q.name).filter((n) => n.endsWith(`-${setup}.gone.test`))).size;
    const lines = served.egressd.logs.filter((l) => isConnection(l) && field(l, 'source.ip') === source).map((l) => `${String(field(l, 'egressd.end'))}`);
    console.log(JSON.stringify({ setup, asked, lookupSockets: lookups, open: served.egressd.daemon.limits.snapshot().open, ends: lines }));
    // Each reset gave its place back at once (every round admitted, its name asked), and left no
    // lookup behind: none holds a socket, far below the limit.
    expect(await within(5_000, () => udpSockets() - before <= 0), 'lookups still on the wire').toBe(true);
    expect({ namesAsked: asked, udpSocketsHeld: Math.max(0, udpSockets() - before) }).toEqual({ namesAsked: ROUNDS, udpSocketsHeld: 0 });
  }, 60_000);
});
