// A dial to a name of several addresses through the whole daemon, on both set-up paths: the
// extra attempts admission grants (limits/admission.ts Ticket.attempts) come back whatever ends
// the dial, and both paths log the same addresses tried and the same failure for the same
// situation.

import { connect, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { acceptingServer, blackholePort } from '../../helpers/listen.ts';
import { field, type LogLine } from '../../helpers/log-line.ts';

/** 127.0.0.1 is the blackhole's (a connect there hangs), .0.2 accepts, .0.3 refuses. */
const SILENT = '127.0.0.1';
const ANSWERS = '127.0.0.2';
const REFUSES = '127.0.0.3';
const CONNECT_TIMEOUT_MS = 800;

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('a dial to several addresses, set up on $setup', ({ setup }) => {
  let port: number;
  const sources = Array.from({ length: 40 }, (_, i) => `127.0.1.${10 + i}`);
  let nextSource = 0;

  const served = dnsDaemonPerBlock(
    () => DnsTestServer.start(),
    (dns) => ({
      dns: { servers: [dns.server] },
      upstream: { dial: 'resolved', connectTimeoutMs: CONNECT_TIMEOUT_MS },
      sandboxes: [{ id: 'sb', sources, network: { mode: 'block-all', egress: { allowed_domains: ['*.many.test'] } } }],
    }),
    { setup },
  );

  /** Asks for http://`name`/ from a fresh source routed to `original`; the socket, and the connection's log line once it ends. */
  const request = (name: string, original: string): { socket: Socket; line: Promise<LogLine> } => {
    const source = sources[nextSource++ % sources.length]!;
    served.egressd.route(source, original, port);
    const socket = connect({ host: '127.0.0.1', port: served.egressd.port('http'), localAddress: source });
    socket.on('error', () => {});
    socket.write(`GET / HTTP/1.1\r\nHost: ${name}\r\n\r\n`);
    const line = served.egressd.nextConnectionLine(source, 5000);
    return { socket, line };
  };

  const held = (): number => served.egressd.daemon.limits.snapshot().dialAttempts;

  it('gives back every extra attempt, however the dial ends, and holds none while spliced', async () => {
    port = await blackholePort();
    const up = await acceptingServer(ANSWERS, port);
    up.server.on('connection', (s) => s.on('error', () => {}));
    served.upstream.set('first.many.test', { kind: 'answer', a: [ANSWERS, SILENT, REFUSES], ttl: 60 });
    served.upstream.set('second.many.test', { kind: 'answer', a: [REFUSES, ANSWERS, SILENT], ttl: 60 });
    served.upstream.set('refused.many.test', { kind: 'answer', a: [REFUSES, REFUSES.replace(/3$/, '4'), REFUSES.replace(/3$/, '5')], ttl: 60 });
    served.upstream.set('silent.many.test', { kind: 'answer', a: [SILENT, REFUSES.replace(/3$/, '6')], ttl: 60 });
    for (let round = 0; round < 3; round++) {
      // Spliced and left open: the attempts past the first are over once an address answered.
      const open = [request('first.many.test', ANSWERS), request('second.many.test', ANSWERS)];
      for (let i = 0; i < 100 && up.accepted.length < 2 * (round + 1); i++) await new Promise((r) => setTimeout(r, 20));
      expect(up.accepted.length).toBe(2 * (round + 1));
      for (let i = 0; i < 50 && held() > 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(held(), 'extra attempts still held by spliced connections').toBe(0);
      const failed = [request('refused.many.test', REFUSES), request('silent.many.test', SILENT)];
      // A client that goes away during the dial.
      const gone = request('silent.many.test', SILENT);
      setTimeout(() => gone.socket.resetAndDestroy(), 100);
      // The silent dials hold theirs meanwhile (the gauge counts at all).
      for (let i = 0; i < 50 && held() === 0; i++) await new Promise((r) => setTimeout(r, 5));
      expect(held()).toBeGreaterThan(0);
      for (const r of open) r.socket.resetAndDestroy();
      await Promise.all([...open, ...failed, gone].map((r) => r.line));
      expect(held(), `round ${round}`).toBe(0);
    }
  });

  // A silent address then one that refuses: the dial ends at its timeout with the first still
  // unanswered. Both paths must say the same (the JS path: a timeout).
  it('logs a timeout, and the same addresses tried, when the last to end was a silent one', async () => {
    port = await blackholePort();
    served.upstream.set('late.many.test', { kind: 'answer', a: [SILENT, REFUSES], ttl: 60 });
    const r = request('late.many.test', SILENT);
    const l = await r.line;
    r.socket.destroy();
    expect({ failure: field(l, 'egressd.upstream.failure'), tried: field(l, 'egressd.upstream.tried') }).toEqual({
      failure: 'timeout',
      tried: [`${SILENT} timeout`, `${REFUSES} refused`],
    });
  });
});
