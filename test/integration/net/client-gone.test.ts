// A client that goes away before its connection is carried, through the whole daemon on both
// set-up paths: while its name is resolved, and while its upstream is dialed. Its reset ends the
// connection at once — the dial's attempts closed, its place in the limits given back, its log
// line written, ended by the client — rather than when an upstream that never answers times out
// (a sandbox resetting in a loop would otherwise hold a dial each time, for connectTimeoutMs).
// Its FIN is not going away: a client that sent its request and half-closed still gets the answer
// (a TLS client's FIN is: tls-fin-gone.test.ts). A lookup it leaves, no one else waiting on it, is
// cancelled at once.

import { connect, createServer, type Socket } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { blackholePort, listenOn, synSent, udpSockets, within } from '../../helpers/listen.ts';
import { field, type LogLine } from '../../helpers/log-line.ts';

/** 127.0.0.1 is the blackhole's (a connect there hangs in SYN_SENT), .0.2 answers. */
const SILENT = '127.0.0.1';
const ANSWERS = '127.0.0.2';
/** Far beyond every wait of these tests: a connection still held when its line is looked for was held by its dial or lookup. */
const CONNECT_TIMEOUT_MS = 60_000;
const DNS_TIMEOUT_MS = 60_000;
/** How long a line may take after the client's reset (the machine may be loaded; still far below the timeouts). */
const PROMPTLY_MS = 10_000;
/** How long the DNS server takes to answer a lookup that must still be on the wire when the line comes. */
const LOOKUP_MS = 6_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])(
  'a client that goes before its upstream is reached, set up on $setup',
  ({ setup }) => {
    let port: number;
    const sources = Array.from({ length: 20 }, (_, i) => `127.0.2.${10 + i}`);
    let nextSource = 0;

    const served = dnsDaemonPerBlock(
      () => DnsTestServer.start(),
      (dns) => ({
        dns: { servers: [dns.server], timeoutMs: DNS_TIMEOUT_MS },
        upstream: { dial: 'resolved', connectTimeoutMs: CONNECT_TIMEOUT_MS },
        sandboxes: [{ id: 'sb', sources, network: { mode: 'block-all', egress: { allowed_domains: ['*.gone.test'] } } }],
      }),
      { setup },
    );

    /** Sends an HTTP/1.0 request for `name` from a fresh source routed to `original`; the socket, and the connection's log line once it ends. */
    const request = (name: string, original: string, finToo = false, body = 0): { socket: Socket; line: Promise<LogLine> } => {
      const source = sources[nextSource++ % sources.length]!;
      served.egressd.route(source, original, port);
      const socket = connect({ host: '127.0.0.1', port: served.egressd.port('http'), localAddress: source, allowHalfOpen: true });
      socket.on('error', () => {});
      onTestFinished(() => void socket.destroy());
      const line = served.egressd.nextConnectionLine(source, PROMPTLY_MS + 5_000);
      socket.write(`GET / HTTP/1.0\r\nHost: ${name}\r\n\r\n`);
      if (body > 0) socket.write(Buffer.alloc(body, 0x61));
      // `printf 'GET / ...' | nc -q0`: the request, then the client's FIN; it still reads the answer.
      if (finToo) socket.end();
      return { socket, line };
    };

    const held = (): { open: number; dialAttempts: number } => {
      const s = served.egressd.daemon.limits.snapshot();
      return { open: s.open, dialAttempts: s.dialAttempts };
    };

    it('a reset while its upstream is dialed ends the dial at once: no attempt left, its place given back, ended by the client', async () => {
      port = await blackholePort();
      served.upstream.set('silent.gone.test', { kind: 'answer', a: [SILENT], ttl: 60 });
      const r = request('silent.gone.test', SILENT);
      expect(await within(PROMPTLY_MS, () => synSent(port) > 0), 'the dial never began').toBe(true);
      const resetAt = Date.now();
      r.socket.resetAndDestroy();
      const l = await r.line;
      const after = Date.now() - resetAt;
      expect({
        verdict: field(l, 'egressd.verdict'),
        endedBy: field(l, 'egressd.ended_by'),
        end: field(l, 'egressd.end'),
        failure: field(l, 'egressd.upstream.failure'),
        dialed: field(l, 'egressd.upstream.ip'),
      }).toEqual({ verdict: 'allow', endedBy: 'client', end: 'client-reset', failure: 'aborted', dialed: undefined });
      expect(after, 'the line came only when the dial timed out').toBeLessThan(PROMPTLY_MS);
      // Let go before the line was written: nothing left to wait for.
      expect(synSent(port), 'dial attempts still in SYN_SENT after the line').toBe(0);
      expect(held()).toEqual({ open: 0, dialAttempts: 0 });
    });

    // Two resets no event shows the JavaScript path (Node stops reading a socket whose buffer is
    // full, or whose EOF it read): asked for every second there (SO_ERROR); the native loop sees them.
    it.each([
      { what: 'after sending more than Node buffers past its flight', body: 512 * 1024, fin: false },
      { what: 'after its own FIN (nothing was sent to it that it could be refusing)', body: 0, fin: true },
    ])('a reset while its upstream is dialed, $what, ends the dial at once too', async ({ body, fin }) => {
      port = await blackholePort();
      served.upstream.set('silent.gone.test', { kind: 'answer', a: [SILENT], ttl: 60 });
      const r = request('silent.gone.test', SILENT, fin, body);
      expect(await within(PROMPTLY_MS, () => synSent(port) > 0), 'the dial never began').toBe(true);
      // Every byte handed to the kernel: what egressd can read of it, it has.
      expect(await within(PROMPTLY_MS, () => r.socket.writableLength === 0)).toBe(true);
      await sleep(100);
      const resetAt = Date.now();
      r.socket.resetAndDestroy();
      const l = await r.line;
      expect({ endedBy: field(l, 'egressd.ended_by'), end: field(l, 'egressd.end'), failure: field(l, 'egressd.upstream.failure') }).toEqual({
        endedBy: 'client',
        end: 'client-reset',
        failure: 'aborted',
      });
      expect(Date.now() - resetAt, 'the line came only when the dial timed out').toBeLessThan(PROMPTLY_MS);
      expect(synSent(port)).toBe(0);
      expect(held()).toEqual({ open: 0, dialAttempts: 0 });
    });

    it('a reset while its name is resolved ends it at once, its lookup cancelled and its place given back', async () => {
      port = await blackholePort();
      // Answered late: the lookup would still be on the wire when the line comes.
      served.upstream.set('unanswered.gone.test', { kind: 'nxdomain', delayMs: LOOKUP_MS });
      const asked = served.upstream.queries.length;
      const before = held();
      const udpBefore = udpSockets();
      const r = request('unanswered.gone.test', SILENT);
      expect(
        await within(PROMPTLY_MS, () => served.upstream.queries.slice(asked).some((q) => q.name === 'unanswered.gone.test')),
        'the name was never asked',
      ).toBe(true);
      expect(held().open).toBe(before.open + 1);
      const resetAt = Date.now();
      r.socket.resetAndDestroy();
      const l = await r.line;
      expect({ verdict: field(l, 'egressd.verdict'), endedBy: field(l, 'egressd.ended_by'), end: field(l, 'egressd.end') }).toEqual({
        verdict: 'allow',
        endedBy: 'client',
        end: 'client-reset',
      });
      // Nothing was dialed: no dial failure to name.
      expect(field(l, 'egressd.upstream.failure')).toBeUndefined();
      expect(Date.now() - resetAt, 'the line came only when the lookup ended').toBeLessThan(LOOKUP_MS);
      // No one else waits on the lookup: it is cancelled, its socket closed, so the place that
      // counted that descriptor is given back at once, not when the answer comes.
      expect(held()).toEqual(before);
      expect(await within(PROMPTLY_MS, () => udpSockets() <= udpBefore), 'the lookup socket was held').toBe(true);
      expect(Date.now() - resetAt, 'the lookup was held until it settled').toBeLessThan(LOOKUP_MS);
    });

    /** An origin on ANSWERS:port that reads the whole request (to its FIN), then answers and closes. */
    const answeringOrigin = async (): Promise<{ requests: string[] }> => {
      const requests: string[] = [];
      const server = createServer({ allowHalfOpen: true }, (s) => {
        const got: Buffer[] = [];
        s.on('error', () => {});
        s.on('data', (b: Buffer) => got.push(b));
        s.on('end', () => {
          requests.push(Buffer.concat(got).toString('latin1'));
          s.end('HTTP/1.0 200 OK\r\n\r\nanswered');
        });
      });
      onTestFinished(() => void server.close());
      await listenOn(server, ANSWERS, port);
      return { requests };
    };

    const answerOf = (s: Socket): Promise<string> =>
      new Promise((resolve) => {
        const got: Buffer[] = [];
        s.on('data', (b: Buffer) => got.push(b));
        s.on('close', () => resolve(Buffer.concat(got).toString('latin1')));
      });

    it('a FIN while its upstream is dialed is not going away: the request reaches the origin and the answer comes back', async () => {
      // The silent address first: the second is dialed after the 250 ms attempt delay (RFC 8305 §5),
      // long after the client's request and FIN came.
      port = await blackholePort();
      const origin = await answeringOrigin();
      served.upstream.set('second.gone.test', { kind: 'answer', a: [SILENT, ANSWERS], ttl: 60 });
      const r = request('second.gone.test', ANSWERS, true);
      const answer = answerOf(r.socket);
      expect(await answer).toContain('answered');
      expect(origin.requests).toEqual(['GET / HTTP/1.0\r\nHost: second.gone.test\r\n\r\n']);
      const l = await r.line;
      expect({ end: field(l, 'egressd.end'), endedBy: field(l, 'egressd.ended_by'), dialed: field(l, 'egressd.upstream.ip') }).toEqual({
        end: 'closed',
        endedBy: 'client',
        dialed: ANSWERS,
      });
    });

    it('a FIN while its name is resolved is not going away either', async () => {
      port = await blackholePort();
      const origin = await answeringOrigin();
      served.upstream.set('slow.gone.test', { kind: 'answer', a: [ANSWERS], ttl: 60, delayMs: 300 });
      const r = request('slow.gone.test', ANSWERS, true);
      expect(await answerOf(r.socket)).toContain('answered');
      expect(origin.requests).toEqual(['GET / HTTP/1.0\r\nHost: slow.gone.test\r\n\r\n']);
      const l = await r.line;
      expect({ end: field(l, 'egressd.end'), endedBy: field(l, 'egressd.ended_by') }).toEqual({ end: 'closed', endedBy: 'client' });
    });
  },
);
