// A lookup on the wire holds a UDP socket of its own (net/dns-client.ts), a descriptor its waiting
// connection's place in the limits counts (net/query-sockets.ts). A client's reset during the
// lookup ends the connection at once, but its place is held until the lookup settles: else a
// sandbox that resets each connection as soon as its name is asked, a new name each time, holds
// lookups (and their descriptors) that no limit bounds. Found by a review of the client-reset
// change: a sandbox limited to 2 connections had 12 lookups on the wire, with no place held.

import { execFileSync } from 'node:child_process';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../../helpers/loopback-daemon.ts';
import { field, isConnection } from '../../helpers/log-line.ts';

const LIMIT = 2;
const ROUNDS = 12;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** This process's UDP sockets. */
function udpSockets(): number {
  const out = execFileSync('ss', ['-Huanp'], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.includes(`pid=${process.pid},`)).length;
}

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('lookups of connections that reset, set up on $setup', ({ setup }) => {
  let dns: DnsTestServer;
  let d: LoopbackDaemon;
  const source = '127.0.5.10';

  beforeAll(async () => {
    dns = await DnsTestServer.start();
    d = await startLoopbackDaemon(
      loopbackConfig({
        dns: { servers: [dns.server], timeoutMs: 30_000 },
        upstream: { dial: 'resolved', connectTimeoutMs: 30_000 },
        limits: { sandbox: { connections: LIMIT } },
        sandboxes: [{ id: 'sb', sources: [source], network: { mode: 'block-all', egress: { allowed_domains: ['*.gone.test'] } } }],
      }),
      { setup },
    );
  });
  afterAll(async () => {
    await d?.stop();
    await dns?.close();
  });

  it(`a sandbox limited to ${LIMIT} connections holds at most ${LIMIT} lookups on the wire`, async () => {
    const before = udpSockets();
    for (let i = 0; i < ROUNDS; i++) {
      const name = `n${i}-${setup}.gone.test`;
      dns.set(name, { kind: 'silent' });
      d.route(source, '127.0.0.1', 9);
      const seen = d.logs.length;
      const s = connect({ host: '127.0.0.1', port: d.port('http'), localAddress: source });
      let closed = false;
      s.on('error', () => {});
      s.on('close', () => (closed = true));
      onTestFinished(() => void s.destroy());
      s.write(`GET / HTTP/1.0\r\nHost: ${name}\r\n\r\n`);
      // Until the name is asked, or the connection was refused at the sandbox's limit.
      for (let j = 0; j < 200 && !closed && !dns.queries.some((q) => q.name === name) && !d.logs.slice(seen).some(isConnection); j++) await sleep(10);
      s.resetAndDestroy();
      await sleep(50);
    }
    const lookups = udpSockets() - before;
    const asked = new Set(dns.queries.map((q) => q.name).filter((n) => n.endsWith(`-${setup}.gone.test`))).size;
    const lines = d.logs.filter((l) => isConnection(l) && field(l, 'source.ip') === source).map((l) => `${String(field(l, 'egressd.end'))}`);
    console.log(JSON.stringify({ setup, asked, lookupSockets: lookups, open: d.daemon.limits.snapshot().open, ends: lines }));
    expect({ namesOnTheWire: asked, udpSocketsHeld: lookups }).toEqual({ namesOnTheWire: Math.min(asked, LIMIT), udpSocketsHeld: Math.min(lookups, LIMIT) });
  }, 60_000);
});
