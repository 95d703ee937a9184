// The first flight as a hostile client sends it, on both set-up paths: Node's sockets (the peek
// in peek-socket.ts) and the native loops, which read the whole first flight themselves before
// reporting (native/first_flight.c, splice_loop.c flight_run). A ClientHello dripping in over
// many records and segments, a record that announces more than ever comes, an HTTP head without
// an end, bytes after the hello, a half-close, records of another type or of length 0: each path
// must reach the same verdict and reason, carry exactly the client's bytes upstream, and log one
// line per connection.

import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { buildHello, sslv2Hello } from '../helpers/hello-builder.ts';
import { trackedServer, type TrackedServer } from '../helpers/listen.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { action, field } from '../helpers/log-line.ts';

interface Upstream extends TrackedServer {
  /** Every byte each accepted connection sent, with whether it ended (FIN). */
  received: { bytes: Buffer[]; ended: boolean }[];
}

async function recordingUpstream(): Promise<Upstream> {
  const received: Upstream['received'] = [];
  const server = await trackedServer((s) => {
    const r = { bytes: [] as Buffer[], ended: false };
    received.push(r);
    s.on('data', (b: Buffer) => {
      r.bytes.push(b);
      s.write(b);
    });
    s.on('end', () => {
      r.ended = true;
      s.end();
    });
  });
  return { ...server, received };
}

/** What the client saw: the bytes echoed back, and how the connection ended. */
interface Seen {
  echoed: Buffer;
  error: string | null;
}

/** Connects from `source`, runs `send` with the socket, and waits for the connection to close. */
function client(source: string, port: number, send: (s: Socket) => Promise<void>): Promise<Seen> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: source, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    let error: string | null = null;
    s.on('data', (b: Buffer) => chunks.push(b));
    s.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
    s.on('end', () => s.end());
    s.on('close', () => resolve({ echoed: Buffer.concat(chunks), error }));
    s.once('connect', () => {
      send(s).catch(() => s.destroy());
    });
  });
}

/**
 * Half-closes `s` once `n` bytes came back. A TLS client that sends its FIN before anything came
 * back has given up (docs/logs.md, "A client that goes before its upstream is reached"), so a test
 * of what is carried ends only after the echo.
 */
function endOnceEchoed(s: Socket, n: number): void {
  let got = 0;
  const on = (b: Buffer): void => {
    got += b.length;
    if (got < n) return;
    s.off('data', on);
    s.end();
  };
  s.on('data', on);
}

const HELLO_OK = Buffer.from(buildHello({ sni: ['ok.test'] }));
const HELLO_BAD = Buffer.from(buildHello({ sni: ['bad.test'] }));

/** `hello` cut into records of `size` bytes of handshake each (RFC 8446 §5.1 allows any split). */
function reframed(hello: Buffer, size: number): Buffer {
  const body = hello.subarray(5);
  const out: Buffer[] = [];
  for (let at = 0; at < body.length; at += size) {
    const piece = body.subarray(at, at + size);
    out.push(Buffer.from([0x16, 0x03, 0x01, piece.length >> 8, piece.length & 0xff]), piece);
  }
  return Buffer.concat(out);
}

/** Writes `bytes` in pieces of `size`, `gapMs` apart. */
async function drip(s: Socket, bytes: Buffer, size: number, gapMs: number): Promise<void> {
  for (let at = 0; at < bytes.length; at += size) {
    s.write(bytes.subarray(at, at + size));
    await sleep(gapMs);
  }
}

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('a hostile first flight, set up on $setup', ({ setup }) => {
  let d: LoopbackDaemon | undefined;
  let up: Upstream;

  beforeEach(async () => {
    up = await recordingUpstream();
    d = await startLoopbackDaemon(
      loopbackConfig({
        sandboxes: [{ id: 'sb-ff', sources: ['127.0.0.21'], network: { mode: 'block-all', egress: { allowed_domains: ['ok.test'] } } }],
        upstream: { dial: 'original' },
        peek: { timeoutMs: 1500, firstByteTimeoutMs: 300 },
      }),
      { setup },
    );
    if (process.platform === 'linux') expect(d.daemon.nativeSetup !== null).toBe(setup === 'native');
    d.route('127.0.0.21', '127.0.0.1', up.port);
  });
  afterEach(async () => {
    await d?.stop();
    d = undefined;
    up.close();
  });

  const lineOf = async (): Promise<{ verdict: unknown; reason: unknown; up: unknown; lines: number }> => {
    const l = await d!.waitForLog((x) => action(x) === 'connection', 5000);
    // One line per connection: wait a batch's time (100 ms) for any second one.
    await sleep(250);
    const lines = d!.logs.filter((x) => action(x) === 'connection').length;
    return { verdict: field(l, 'egressd.verdict'), reason: field(l, 'event.reason'), up: field(l, 'source.bytes'), lines };
  };
  const upstreamGot = (): Buffer => Buffer.concat(up.received.flatMap((r) => r.bytes));

  it('carries a ClientHello dripped over 1-byte TCP writes in 8-byte records (SNI in a late record), byte for byte', async () => {
    const flight = reframed(HELLO_OK, 8);
    const seen = await client('127.0.0.21', d!.port('tls'), async (s) => {
      endOnceEchoed(s, flight.length);
      await drip(s, flight, 7, 3);
    });
    expect(seen.echoed.equals(flight)).toBe(true);
    expect(upstreamGot().equals(flight)).toBe(true);
    expect(await lineOf()).toEqual({ verdict: 'allow', reason: 'allow-rule', up: flight.length, lines: 1 });
  });

  it('refuses a refused name dripped the same way, and nothing reaches the upstream', async () => {
    const flight = reframed(HELLO_BAD, 8);
    await client('127.0.0.21', d!.port('tls'), async (s) => {
      await drip(s, flight, 7, 3);
    });
    expect(up.received).toEqual([]);
    expect(await lineOf()).toMatchObject({ verdict: 'refuse', reason: 'default-block', lines: 1 });
  });

  it('carries bytes pipelined after the hello in the same write, once and in order', async () => {
    const flight = Buffer.concat([HELLO_OK, Buffer.from('PIPELINED-APPLICATION-DATA')]);
    const seen = await client('127.0.0.21', d!.port('tls'), async (s) => {
      endOnceEchoed(s, flight.length);
      s.write(flight);
    });
    expect(seen.echoed.equals(flight)).toBe(true);
    expect(upstreamGot().equals(flight)).toBe(true);
    expect(up.received[0]!.ended).toBe(true);
    expect(await lineOf()).toEqual({ verdict: 'allow', reason: 'allow-rule', up: flight.length, lines: 1 });
  });

  it('carries a hello followed by a half-close: the upstream gets the FIN and the answer still comes back', async () => {
    const seen = await client('127.0.0.21', d!.port('tls'), async (s) => {
      s.write(HELLO_OK);
      await sleep(80);
      s.end();
    });
    expect(seen.echoed.equals(HELLO_OK)).toBe(true);
    expect(up.received[0]!.ended).toBe(true);
    expect(await lineOf()).toEqual({ verdict: 'allow', reason: 'allow-rule', up: HELLO_OK.length, lines: 1 });
  });

  it('ends a half hello followed by a FIN as peek-closed, nothing upstream', async () => {
    await client('127.0.0.21', d!.port('tls'), async (s) => {
      s.end(HELLO_OK.subarray(0, 40));
    });
    expect(up.received).toEqual([]);
    expect(await lineOf()).toMatchObject({ reason: 'peek-closed', lines: 1 });
  });

  it('ends a half hello followed by a reset as peek-closed, nothing upstream', async () => {
    await client('127.0.0.21', d!.port('tls'), async (s) => {
      s.write(HELLO_OK.subarray(0, 40));
      await sleep(80);
      s.resetAndDestroy();
    });
    expect(up.received).toEqual([]);
    expect(await lineOf()).toMatchObject({ reason: 'peek-closed', lines: 1 });
  });

  it('times a record header announcing 16 KiB out at the peek deadline (never a stall), nothing upstream', async () => {
    const t0 = Date.now();
    await client('127.0.0.21', d!.port('tls'), async (s) => {
      s.write(Buffer.from([0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f]));
    });
    expect(Date.now() - t0).toBeGreaterThan(1200);
    expect(up.received).toEqual([]);
    expect(await lineOf()).toMatchObject({ verdict: 'refuse', reason: 'peek-timeout', lines: 1 });
  });

  it('times an HTTP head without its end out at the peek deadline, nothing upstream', async () => {
    await client('127.0.0.21', d!.port('http'), async (s) => {
      await drip(s, Buffer.from('GET / HTTP/1.1\r\nHost: ok.test\r\nX-A: 1\r\n'), 4, 20);
    });
    expect(up.received).toEqual([]);
    expect(await lineOf()).toMatchObject({ verdict: 'refuse', reason: 'peek-timeout', lines: 1 });
  });

  // Each report is a hand-off between the loop's thread and the main thread, which every tenant
  // shares: a hello dripped one byte per segment must not be a report per byte.
  it('judges an SSLv2-format hello dripped over 1-byte writes (no name: refused) on a few reports, not one per byte', async () => {
    const flight = Buffer.from(sslv2Hello({ specs: 3 * 100 }));
    const reports = (): number => (d!.daemon.nativeSetup ? d!.daemon.nativeSetup.reports.peek : 0);
    const before = reports();
    await client('127.0.0.21', d!.port('tls'), async (s) => {
      await drip(s, flight, 1, 2);
    });
    expect(up.received).toEqual([]);
    expect(await lineOf()).toMatchObject({ verdict: 'refuse', reason: 'default-block', lines: 1 });
    expect(reports() - before).toBeLessThan(20);
  });

  it('carries an HTTP head dripped over many segments once it ends', async () => {
    const head = Buffer.from('GET / HTTP/1.1\r\nHost: ok.test\r\nX-A: 1\r\n\r\nBODY');
    const seen = await client('127.0.0.21', d!.port('http'), async (s) => {
      await drip(s, head, 3, 5);
      s.end();
    });
    expect(seen.echoed.equals(head)).toBe(true);
    expect(await lineOf()).toEqual({ verdict: 'allow', reason: 'allow-rule', up: head.length, lines: 1 });
  });

  // The parser answers as soon as a line is bad, before the head's end: the native loop must
  // not sit on such bytes until the deadline because they came after its first report.
  it.each([
    // The parser is asked again after each 1 KiB (peek-socket.ts REPARSE_STRIDE).
    ['a header line without a colon and 1 KiB more', 'GET / HTTP/1.1\r\nHost: ok.test\r\n', `Bad Line\r\nX-Pad: ${'a'.repeat(1100)}`],
    ['a bare LF and 1 KiB more', 'GET / HTTP/1.1\r\n', `Host: ok.test\nX-Pad: ${'a'.repeat(1100)}`],
    ['a bare LF, the first bytes after an empty accept', '', 'GET / HTTP/1.1\nHost: ok.test\r\n'],
    ['a CONNECT, the first bytes after an empty accept', '', 'CONNECT ok.test:443 HTTP/1.1\r\n'],
  ])('refuses an HTTP head with %s arriving late at once as malformed-http, not at the deadline', async (_what, first, late) => {
    const t0 = Date.now();
    let refusedAfter = -1;
    await client('127.0.0.21', d!.port('http'), async (s) => {
      s.on('close', () => (refusedAfter = Date.now() - t0));
      if (first) s.write(first);
      await sleep(150);
      s.write(late);
    });
    expect(up.received).toEqual([]);
    expect(await lineOf()).toMatchObject({ verdict: 'refuse', reason: 'malformed-http', lines: 1 });
    // Before the peek deadline (1500 ms from the accept, which came after t0): a refusal held
    // until it comes 1500 ms or more after t0; one made at once, 150 ms after t0 and what the
    // machine's load adds. Not 1000: a bound of its own that only a loaded machine could cross.
    expect(refusedAfter).toBeLessThan(1500);
  });

  it('refuses more than the byte cap of a head that never ends as too-large', async () => {
    const seen = await client('127.0.0.21', d!.port('http'), async (s) => {
      s.write(`GET / HTTP/1.1\r\nHost: ok.test\r\nX: ${'a'.repeat(20_000)}`);
    });
    expect(seen.echoed.length).toBeLessThan(1000);
    expect(up.received).toEqual([]);
    expect(await lineOf()).toMatchObject({ verdict: 'refuse', reason: 'too-large', lines: 1 });
  });

  it.each([
    ['an application-data record first', 'default-block', () => Buffer.concat([Buffer.from([0x17, 0x03, 0x03, 0x00, 0x05]), Buffer.from('hello'), HELLO_OK])],
    ['a zero-length handshake record first', 'malformed-tls', () => Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x00, 0x00]), HELLO_OK])],
    [
      'a hello whose second record has another content type',
      'malformed-tls',
      () => Buffer.concat([reframed(HELLO_OK, 40).subarray(0, 45), Buffer.from([0x17, 0x03, 0x03, 0x00, 0x01, 0x00])]),
    ],
  ])('refuses %s (%s), nothing upstream', async (_what, reason, bytes) => {
    await client('127.0.0.21', d!.port('tls'), async (s) => {
      s.write(bytes());
    });
    expect(up.received).toEqual([]);
    expect(await lineOf()).toMatchObject({ verdict: 'refuse', reason, lines: 1 });
  });
});
