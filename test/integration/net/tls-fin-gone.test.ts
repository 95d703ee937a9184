// A TLS client whose FIN comes while its name is resolved or its upstream dialed, through the whole
// daemon on both set-up paths. Every TLS version needs the client to send more after its
// ClientHello (RFC 8446 §2, RFC 5246 §7.3), so a client that sent its FIN before anything came
// back can never finish the handshake: `curl --max-time` and a plain close() do just that, and
// "connect, ClientHello, close, repeat" toward an address that never answers held one dial each
// for upstream.connectTimeoutMs. Such a FIN now ends the connection at once, as a reset does:
// every attempt cancelled, nothing sent upstream, the place given back, the line `client-fin`.
// (An HTTP client's FIN is a half-close that still reads its answer: client-gone.test.ts.)
//
// And a lookup every waiting connection has left is cancelled at once, its socket closed, while
// one another connection still waits on goes on, and its answer reaches the cache.

import { connect, createServer, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { describe, expect, it, onTestFinished } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { buildHello } from '../../helpers/hello-builder.ts';
import { blackholePort, listenOn, synSent, udpSockets, within } from '../../helpers/listen.ts';
import { field, isConnection, type LogLine } from '../../helpers/log-line.ts';

/** 127.0.0.1 is the blackhole's (a connect there hangs in SYN_SENT), .0.2 answers. */
const SILENT = '127.0.0.1';
const ANSWERS = '127.0.0.2';
/** Nothing listens here: a dial is refused at once. */
const REFUSES = '127.0.0.3';
/** Another sandbox's source. */
const OTHER = '127.0.7.10';
/** Far beyond every wait here: a line that comes at all came from the client's going. */
const CONNECT_TIMEOUT_MS = 60_000;
const DNS_TIMEOUT_MS = 60_000;
/** How long a line may take after the client's FIN on a loaded machine (far below the timeouts). */
const PROMPTLY_MS = 10_000;
/** How long the DNS server takes to answer a lookup that must still be on the wire when the line comes. */
const LOOKUP_MS = 20_000;

const NO_EXTRA = Buffer.alloc(0);
const CHANGE_CIPHER_SPEC = Buffer.from([0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
/** Five full application_data records (80 KiB): beyond Node's read-ahead, within the kernel's receive buffer on loopback. */
const EARLY_DATA = Buffer.concat(Array.from({ length: 5 }, () => Buffer.concat([Buffer.from([0x17, 0x03, 0x03, 0x40, 0x00]), Buffer.alloc(16_384)])));

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])(
  'a TLS client that sends its FIN before its upstream is reached, set up on $setup',
  ({ setup }) => {
    let port: number;
    const sources = Array.from({ length: 20 }, (_, i) => `127.0.6.${10 + i}`);
    let nextSource = 0;

    const served = dnsDaemonPerBlock(
      () => DnsTestServer.start(),
      (dns) => ({
        dns: { servers: [dns.server], timeoutMs: DNS_TIMEOUT_MS },
        upstream: { dial: 'resolved', connectTimeoutMs: CONNECT_TIMEOUT_MS },
        sandboxes: [
          { id: 'sb', sources, network: { mode: 'block-all', egress: { allowed_domains: ['*.fin.test'] } } },
          { id: 'other', sources: [OTHER], network: { mode: 'block-all', egress: { allowed_domains: ['*.fin.test'] } } },
        ],
        protected: { except: ['127.0.0.0/8', '::1/128'], reachableHostAddresses: ['127.0.0.0/8', '::1'] },
      }),
      { setup },
    );

    const held = (): { open: number; dialAttempts: number } => {
      const s = served.egressd.daemon.limits.snapshot();
      return { open: s.open, dialAttempts: s.dialAttempts };
    };

    /** A fresh source routed to `original`:port, and its connection's line once it ends. */
    const from = (original: string): { source: string; line: Promise<LogLine> } => {
      const source = sources[nextSource++ % sources.length]!;
      served.egressd.route(source, original, port);
      const line = served.egressd.nextConnectionLine(source, PROMPTLY_MS + 5_000);
      return { source, line };
    };

    /** Node's TLS client for `name`: it sends its ClientHello and waits for the server's answer. */
    const tlsClient = (name: string, source: string): Socket => {
      // Over a TCP socket of the test's own, bound to the sandbox's source.
      const tcp = connect({ host: '127.0.0.1', port: served.egressd.port('tls'), localAddress: source });
      tcp.on('error', () => {});
      const s = tlsConnect({ socket: tcp, servername: name, rejectUnauthorized: false });
      s.on('error', () => {});
      onTestFinished(() => void s.destroy());
      return s;
    };

    /** A raw TCP client that sends `bytes` (a ClientHello, or a request). */
    const rawClient = (listener: 'tls' | 'http', source: string, bytes: Uint8Array | string): Socket => {
      const s = connect({ host: '127.0.0.1', port: served.egressd.port(listener), localAddress: source, allowHalfOpen: true });
      s.on('error', () => {});
      onTestFinished(() => void s.destroy());
      s.write(bytes);
      return s;
    };

    const ending = (l: LogLine): Record<string, unknown> => ({
      verdict: field(l, 'egressd.verdict'),
      end: field(l, 'egressd.end'),
      endedBy: field(l, 'egressd.ended_by'),
      failure: field(l, 'egressd.upstream.failure'),
      dialed: field(l, 'egressd.upstream.ip'),
    });

    it('a TLS client closed while its upstream is dialed (close(2): its FIN) ends the dial at once', async () => {
      port = await blackholePort();
      served.upstream.set('silent.fin.test', { kind: 'answer', a: [SILENT], ttl: 60 });
      const c = from(SILENT);
      const s = tlsClient('silent.fin.test', c.source);
      expect(await within(PROMPTLY_MS, () => synSent(port) > 0), 'the dial never began').toBe(true);
      const closedAt = Date.now();
      // Nothing came back: close(2) sends a FIN, as curl --max-time does.
      s.destroy();
      const l = await c.line;
      expect(ending(l)).toEqual({ verdict: 'allow', end: 'client-fin', endedBy: 'client', failure: 'aborted', dialed: undefined });
      expect(Date.now() - closedAt, 'the line came only when the dial timed out').toBeLessThan(PROMPTLY_MS);
      expect(synSent(port), 'dial attempts still in SYN_SENT after the line').toBe(0);
      expect(held()).toEqual({ open: 0, dialAttempts: 0 });
    });

    it.each([
      { what: 'sent with its ClientHello', gap: false, extra: NO_EXTRA },
      // A change_cipher_spec record, as a TLS 1.3 client in compatibility mode may send (RFC 8446 §D.4).
      { what: 'after more bytes past its ClientHello (unread, kept for the upstream)', gap: true, extra: CHANGE_CIPHER_SPEC },
      // Early data (RFC 8446 §4.2.10) past what Node reads ahead of its reader (64 KiB): Node then
      // reads nothing more, so its own EOF is never read; the socket's TCP state still says so.
      { what: 'after more bytes past its ClientHello than Node reads ahead', gap: true, extra: EARLY_DATA },
    ])('a TLS client whose FIN is $what while its upstream is dialed ends it at once too', async ({ gap, extra }) => {
      port = await blackholePort();
      served.upstream.set('silent.fin.test', { kind: 'answer', a: [SILENT], ttl: 60 });
      const c = from(SILENT);
      const s = rawClient('tls', c.source, buildHello({ sni: ['silent.fin.test'] }));
      if (gap) expect(await within(PROMPTLY_MS, () => synSent(port) > 0), 'the dial never began').toBe(true);
      s.write(extra);
      s.end();
      const closedAt = Date.now();
      const l = await c.line;
      expect(ending(l)).toMatchObject({ verdict: 'allow', end: 'client-fin', endedBy: 'client', dialed: undefined });
      expect(Date.now() - closedAt, 'the line came only when the dial timed out').toBeLessThan(PROMPTLY_MS);
      expect(synSent(port)).toBe(0);
      expect(held()).toEqual({ open: 0, dialAttempts: 0 });
    });

    it('a TLS client closed while its name is resolved ends it at once, its lookup cancelled, its place given back', async () => {
      port = await blackholePort();
      served.upstream.set('unanswered.fin.test', { kind: 'answer', a: [SILENT], ttl: 60, delayMs: LOOKUP_MS });
      const asked = served.upstream.queries.length;
      const udpBefore = udpSockets();
      const c = from(SILENT);
      const s = tlsClient('unanswered.fin.test', c.source);
      expect(
        await within(PROMPTLY_MS, () => served.upstream.queries.slice(asked).some((q) => q.name === 'unanswered.fin.test')),
        'the name was never asked',
      ).toBe(true);
      expect(held().open).toBe(1);
      const closedAt = Date.now();
      s.destroy();
      const l = await c.line;
      expect(ending(l)).toEqual({ verdict: 'allow', end: 'client-fin', endedBy: 'client', failure: undefined, dialed: undefined });
      expect(Date.now() - closedAt, 'the line came only when the lookup ended').toBeLessThan(PROMPTLY_MS);
      // No one waits on the lookup any more: its socket closed, the place given back, long before
      // the answer comes.
      expect(await within(PROMPTLY_MS, () => held().open === 0 && udpSockets() <= udpBefore), 'the lookup or the place was held').toBe(true);
      expect(Date.now() - closedAt).toBeLessThan(LOOKUP_MS);
    });

    it('an HTTP client whose FIN comes while its upstream is dialed still gets its answer (a half-close)', async () => {
      // The silent address first, the answering one after the attempt delay (RFC 8305 §5).
      port = await blackholePort();
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
      served.upstream.set('second.fin.test', { kind: 'answer', a: [SILENT, ANSWERS], ttl: 60 });
      const c = from(ANSWERS);
      const s = rawClient('http', c.source, 'GET / HTTP/1.0\r\nHost: second.fin.test\r\n\r\n');
      s.end();
      const answer = await new Promise<string>((resolve) => {
        const got: Buffer[] = [];
        s.on('data', (b: Buffer) => got.push(b));
        s.on('close', () => resolve(Buffer.concat(got).toString('latin1')));
      });
      expect(answer).toContain('answered');
      expect(ending(await c.line)).toMatchObject({ end: 'closed', endedBy: 'client', dialed: ANSWERS });
    });

    // The address cache is every sandbox's: a lookup cancelled once its only waiter left, after
    // the A answer came and before the AAAA one, must not leave the A records alone cached as the
    // name's answer for their TTL, else one sandbox leaving so decides that another gets no IPv6
    // address (here: the one that answers).
    it('a TLS client leaving just after the A answer does not leave another sandbox with A records alone', async () => {
      let accepted = 0;
      const server = createServer((s) => {
        accepted++;
        s.on('error', () => {});
        s.resume();
      });
      onTestFinished(() => void server.close());
      port = await listenOn(server, '::1');
      const both = { kind: 'answer', a: [REFUSES], aaaa: ['::1'], ttl: 60 } as const;
      served.upstream.set('split.fin.test', { ...both, delayMs: { AAAA: 400 } });
      const asked = served.upstream.queries.length;
      const c = from(REFUSES);
      const s = rawClient('tls', c.source, buildHello({ sni: ['split.fin.test'] }));
      expect(
        await within(PROMPTLY_MS, () => served.upstream.queries.slice(asked).some((q) => q.name === 'split.fin.test' && q.type === 'AAAA')),
        'never asked',
      ).toBe(true);
      // The A answer is in (loopback); the lookup waits 50 ms for AAAA before it settles.
      await sleep(15);
      s.end();
      expect(field(await c.line, 'egressd.end')).toBe('client-fin');
      // The other sandbox's lookup would be answered by both families at once.
      served.upstream.set('split.fin.test', both);
      served.egressd.route(OTHER, REFUSES, port);
      const seen = served.egressd.logs.length;
      const line = served.egressd.waitForLog(
        (l) => served.egressd.logs.indexOf(l) >= seen && isConnection(l) && field(l, 'source.ip') === OTHER,
        PROMPTLY_MS + 5_000,
      );
      const o = rawClient('tls', OTHER, buildHello({ sni: ['split.fin.test'] }));
      // Its line comes when it ends: once dialed (or failed).
      await within(PROMPTLY_MS, () => accepted > 0 || served.egressd.logs.slice(seen).some((x) => isConnection(x) && field(x, 'source.ip') === OTHER));
      o.destroy();
      const l = await line;
      expect({ sandbox: field(l, 'egressd.sandbox'), dialed: field(l, 'egressd.upstream.ip'), failure: field(l, 'egressd.upstream.failure') }).toEqual({
        sandbox: 'other',
        dialed: '::1',
        failure: undefined,
      });
    });

    it('a lookup another connection still waits on goes on: its answer dialed, and cached for the next', async () => {
      port = await blackholePort();
      const accepted: Socket[] = [];
      // Reads each request and closes once the client's FIN came: the connection then ends.
      const server = createServer((s) => {
        s.on('error', () => {});
        s.resume();
        accepted.push(s);
      });
      onTestFinished(() => void server.close());
      await listenOn(server, ANSWERS, port);
      served.upstream.set('shared.fin.test', { kind: 'answer', a: [ANSWERS], ttl: 60, delayMs: 1_500 });
      const asked = (): number => served.upstream.queries.filter((q) => q.name === 'shared.fin.test').length;
      const first = from(ANSWERS);
      const a = tlsClient('shared.fin.test', first.source);
      expect(await within(PROMPTLY_MS, () => asked() > 0), 'the name was never asked').toBe(true);
      const second = from(ANSWERS);
      const b = rawClient('http', second.source, 'GET / HTTP/1.0\r\nHost: shared.fin.test\r\n\r\n');
      await sleep(200);
      const askedOnce = asked();
      // The first leaves; the second still waits on the same lookup.
      a.destroy();
      expect(field(await first.line, 'egressd.end')).toBe('client-fin');
      expect(await within(PROMPTLY_MS, () => accepted.length === 1), 'the waiting connection was never dialed').toBe(true);
      expect(asked(), 'the name was asked again').toBe(askedOnce);
      b.destroy();
      expect(field(await second.line, 'egressd.upstream.ip')).toBe(ANSWERS);
      // The answer went to the cache: the next connection for the name asks nothing.
      const third = from(ANSWERS);
      const t = rawClient('http', third.source, 'GET / HTTP/1.0\r\nHost: shared.fin.test\r\n\r\n');
      expect(await within(PROMPTLY_MS, () => accepted.length === 2), 'the next connection was never dialed').toBe(true);
      expect(asked()).toBe(askedOnce);
      t.destroy();
      await third.line;
    });
  },
);
