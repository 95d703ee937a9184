// A client's going against the bytes it sent first, on both set-up paths (Node's sockets and the
// native loops, with many accept slots and with one). The rule (connection.ts judged, and
// native/splice_loop.c client_left): the bytes already received decide where they alone decide —
// a refusal by name, a malformed flight, a flight that is whole — and the client's FIN or reset
// decides only what they left open. So a bad request that is reset at once is still a bad
// request (malformed-http, refused), a refused name is still refused, and a whole allowed
// flight keeps its verdict, its going naming the end (client-reset, client-fin); a flight the
// client left before it was whole is peek-closed. Whatever the path, the same verdict, reason,
// end, side and names, and the same bytes wherever the rule leaves them one answer (whether an
// allowed flight reached its upstream before the client went is a race with the dial).
//
// Flights × endings: a FIN or a reset right after the flight, after a pause shorter and longer
// than the loop's 50 ms grace (native/splice_loop.h SL_FLIGHT_GRACE_MS), and before the flight's
// last piece; and a FIN with a reset a moment after it, the FIN the going (the reset's error is
// EPIPE then, and a read finds the EOF first). Each case has its own source address and its own
// upstream.

import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildHello } from '../helpers/hello-builder.ts';
import { trackedServer, type TrackedServer } from '../helpers/listen.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { action, field, type LogLine } from '../helpers/log-line.ts';

const FIRST_BYTE_MS = 600;
const PEEK_MS = 4000;
/** The pause before a flight's second write: past the loop's grace, so the first is reported alone. */
const SPLIT_PAUSE_MS = 60;

/** Sandboxes by what decides: a name (block-all, ok.test allowed), the address unless the name is refused, the address alone. */
type Policy = 'name' | 'addr-name' | 'addr';
const NETS: Record<Policy, number> = { name: 56, 'addr-name': 60, addr: 64 };
const sourcesOf = (p: Policy): string[] =>
  Array.from({ length: 4 * 256 }, (_, i) => `127.0.${NETS[p] + (i >> 8)}.${i & 0xff}`).filter((a) => !a.endsWith('.0'));

const HELLO_OK = Buffer.from(buildHello({ sni: ['ok.test'] }));
const HELLO_BAD = Buffer.from(buildHello({ sni: ['bad.test'] }));
/** A handshake record whose message is not a ClientHello (type 2): malformed from its sixth byte. */
const TLS_MALFORMED = Buffer.from([0x16, 0x03, 0x01, 0x00, 0x08, 0x02, 0x00, 0x00, 0x04, 0x03, 0x03, 0x00, 0x00]);

interface Flight {
  readonly key: string;
  readonly listener: 'tls' | 'http' | 'tcp';
  readonly policy: Policy;
  readonly bytes: Buffer;
  /** Where the flight's last piece begins: a client that goes before it sent only this much. */
  readonly last: number;
  /** The verdict and reason of the whole flight, the client waiting for its answer. */
  readonly judged: { readonly verdict: string; readonly reason: string };
  /** The bytes before `last` decide as the whole flight does (a flight malformed before its end). */
  readonly decidedBeforeLast?: boolean;
  /** Sent in two writes, the second from this byte on and SPLIT_PAUSE_MS after the first. */
  readonly split?: number;
}

const HEAD_OK = 'GET /x HTTP/1.1\r\nHost: ok.test\r\nUser-Agent: t\r\n\r\n';
const HEAD_BAD = 'GET /x HTTP/1.1\r\nHost: bad.test\r\nUser-Agent: t\r\n\r\n';
// A bad header line (RFC 9112 §5.1: no whitespace before the colon): malformed from its space on,
// the head ended or not.
const HEAD_BAD_LINE = 'GET /x HTTP/1.1\r\nHost: ok.test\r\nBad Line\r\n';
// The same after 2 KB of headers, its bad line in a second write: a reader that asks the parser
// again only per 1 KiB or at the head's end (peek-steps.ts httpStepper) has not yet asked it at the
// client's going; the native loop has reported the first write and holds the second in its grace
// (SL_FLIGHT_GRACE_MS).
const HEAD_LATE_BAD_LINE = `GET /x HTTP/1.1\r\nHost: ok.test\r\nX-Pad: ${'a'.repeat(2000)}\r\nBad Line\r\n`;

const HELLO_EMPTY_LABEL = Buffer.from(buildHello({ sni: ['ok..test'] }));
const HEAD_PAST_CAP = Buffer.from(`GET /x HTTP/1.1\r\nHost: ok.test\r\nX-Pad: ${'a'.repeat(17_000)}`);

const ALLOW = { verdict: 'allow', reason: 'allow-rule' };
const INVALID = { verdict: 'refuse', reason: 'invalid-name' };
const BLOCK = { verdict: 'refuse', reason: 'default-block' };
const NONE = { verdict: 'error', reason: 'peek-closed' };

const FLIGHTS: Flight[] = [
  { key: 'allowed TLS', listener: 'tls', policy: 'name', bytes: HELLO_OK, last: HELLO_OK.length - 1, judged: ALLOW },
  { key: 'allowed TLS in two writes', listener: 'tls', policy: 'name', bytes: HELLO_OK, last: HELLO_OK.length - 1, judged: ALLOW, split: 60 },
  { key: 'denied TLS', listener: 'tls', policy: 'name', bytes: HELLO_BAD, last: HELLO_BAD.length - 1, judged: BLOCK },
  {
    key: 'malformed TLS',
    listener: 'tls',
    policy: 'name',
    bytes: TLS_MALFORMED,
    last: TLS_MALFORMED.length - 2,
    judged: { verdict: 'refuse', reason: 'malformed-tls' },
    decidedBeforeLast: true,
  },
  { key: 'allowed HTTP', listener: 'http', policy: 'name', bytes: Buffer.from(HEAD_OK), last: HEAD_OK.length - 2, judged: ALLOW },
  { key: 'denied HTTP', listener: 'http', policy: 'name', bytes: Buffer.from(HEAD_BAD), last: HEAD_BAD.length - 2, judged: BLOCK },
  ...[
    ['malformed HTTP', HEAD_BAD_LINE, HEAD_BAD_LINE.length - 1, undefined],
    ['malformed HTTP, head ended', `${HEAD_BAD_LINE}\r\n`, HEAD_BAD_LINE.length, undefined],
    ['malformed HTTP, its bad line in a second write', HEAD_LATE_BAD_LINE, HEAD_LATE_BAD_LINE.length - 1, HEAD_LATE_BAD_LINE.indexOf('Bad Line')],
  ].map(([key, text, last, split]): Flight => ({
    key: key as string,
    listener: 'http',
    policy: 'name',
    bytes: Buffer.from(text as string),
    last: last as number,
    judged: { verdict: 'refuse', reason: 'malformed-http' },
    decidedBeforeLast: true,
    ...(split !== undefined ? { split: split as number } : {}),
  })),
  // A name that is no name (an empty label): refused as invalid-name once the hello is whole.
  { key: 'TLS with an invalid name', listener: 'tls', policy: 'name', bytes: HELLO_EMPTY_LABEL, last: HELLO_EMPTY_LABEL.length - 1, judged: INVALID },
  // A head with no end within the peek's cap (16 KiB): too-large once the cap is full, whatever follows.
  {
    key: 'HTTP head past the cap',
    listener: 'http',
    policy: 'name',
    bytes: HEAD_PAST_CAP,
    last: HEAD_PAST_CAP.length - 1,
    judged: { verdict: 'refuse', reason: 'too-large' },
    decidedBeforeLast: true,
  },
  // Never whole: the hello's last 10 bytes are never sent.
  { key: 'incomplete hello', listener: 'tls', policy: 'name', bytes: HELLO_OK.subarray(0, HELLO_OK.length - 10), last: HELLO_OK.length - 20, judged: NONE },
  // Neither TLS nor HTTP: judged on the address (refused by block-all; allowed by allow-all).
  { key: 'SSH bytes, refused by address', listener: 'tcp', policy: 'name', bytes: Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'), last: 2, judged: BLOCK },
  {
    key: 'SSH bytes, allowed by address',
    listener: 'tcp',
    policy: 'addr-name',
    bytes: Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'),
    last: 2,
    judged: { verdict: 'allow', reason: 'default-allow' },
  },
  { key: 'nothing', listener: 'tls', policy: 'name', bytes: Buffer.alloc(0), last: 0, judged: NONE },
  // No name can change the verdict: dialed without reading a byte (server-first protocols), so
  // the bytes decide nothing and a FIN is a half-close, even after a ClientHello.
  { key: 'allowed TLS, by address alone', listener: 'tcp', policy: 'addr', bytes: HELLO_OK, last: HELLO_OK.length - 1, judged: ALLOW, decidedBeforeLast: true },
  { key: 'nothing, allowed by address alone', listener: 'tcp', policy: 'addr', bytes: Buffer.alloc(0), last: 0, judged: ALLOW, decidedBeforeLast: true },
];

interface Ending {
  readonly key: string;
  readonly how: 'fin' | 'reset' | 'fin-reset';
  readonly afterMs: number;
  /** Sends only the bytes before the flight's last piece. */
  readonly beforeLast: boolean;
}

const ENDINGS: Ending[] = [
  { key: 'a FIN right after', how: 'fin', afterMs: 0, beforeLast: false },
  { key: 'a reset right after', how: 'reset', afterMs: 0, beforeLast: false },
  { key: 'a FIN 20 ms after', how: 'fin', afterMs: 20, beforeLast: false },
  { key: 'a reset 20 ms after', how: 'reset', afterMs: 20, beforeLast: false },
  { key: 'a FIN 80 ms after', how: 'fin', afterMs: 80, beforeLast: false },
  { key: 'a reset 80 ms after', how: 'reset', afterMs: 80, beforeLast: false },
  { key: 'a FIN before the last piece', how: 'fin', afterMs: 0, beforeLast: true },
  { key: 'a reset before the last piece', how: 'reset', afterMs: 0, beforeLast: true },
  { key: 'a FIN, then a reset', how: 'fin-reset', afterMs: 0, beforeLast: false },
  { key: 'a FIN, then a reset, before the last piece', how: 'fin-reset', afterMs: 0, beforeLast: true },
];

/** fin-reset: the wait between the FIN and the reset. */
const FIN_RESET_MS = 2;

/** A FIN is the client's going only after a ClientHello read before the verdict (docs/logs.md). */
const finGoes = (f: Flight): boolean => f.bytes[0] === 0x16 && f.policy !== 'addr';

/** What is compared across the paths. */
type Seen = {
  verdict: unknown;
  reason: unknown;
  end: unknown;
  endedBy: unknown;
  protocol: unknown;
  domain: unknown;
  sni: unknown;
  url: unknown;
  up: unknown;
  down: unknown;
  /** Every byte the case's upstream got, hex. */
  upstream: string;
};

interface Upstream extends TrackedServer {
  received: Buffer[];
}

/**
 * Records what it gets and answers it back whole at the client's FIN, then ends: the bytes back
 * never race the client's reset (a reset client gets none), and a FIN's client gets all of them.
 */
async function recordingUpstream(): Promise<Upstream> {
  const received: Buffer[] = [];
  const server = await trackedServer((s) => {
    const mine: Buffer[] = [];
    s.on('data', (b: Buffer) => {
      received.push(b);
      mine.push(b);
    });
    s.on('end', () => s.end(Buffer.concat(mine)));
  });
  return { ...server, received };
}

/**
 * Sends `bytes` (in two writes SPLIT_PAUSE_MS apart when `split`), waits `afterMs`, then sends its FIN or
 * resets (or both, FIN_RESET_MS apart); resolves with the local port and what came back, once closed.
 */
function client(source: string, port: number, bytes: Buffer, split: number | undefined, how: Ending['how'], afterMs: number): Promise<number> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: source, allowHalfOpen: true });
    let localPort = 0;
    s.on('data', () => {});
    s.on('error', () => {});
    s.on('end', () => s.end());
    const guard = setTimeout(() => s.destroy(), PEEK_MS + 3000);
    s.on('close', () => {
      clearTimeout(guard);
      resolve(localPort);
    });
    s.once('connect', () => {
      localPort = s.localPort!;
      void (async () => {
        const pieces = split !== undefined && split < bytes.length ? [bytes.subarray(0, split), bytes.subarray(split)] : [bytes];
        for (const [i, p] of pieces.entries()) {
          if (i > 0) await sleep(SPLIT_PAUSE_MS);
          if (p.length > 0 && !s.destroyed) s.write(p);
        }
        if (afterMs > 0) await sleep(afterMs);
        if (s.destroyed) return;
        if (how !== 'reset') s.end();
        if (how === 'fin-reset') await sleep(FIN_RESET_MS);
        if (how !== 'fin' && !s.destroyed) s.resetAndDestroy();
      })();
    });
  });
}

const seenOf = (l: LogLine, up: Upstream): Seen => ({
  verdict: field(l, 'egressd.verdict'),
  reason: field(l, 'event.reason'),
  end: field(l, 'egressd.end'),
  endedBy: field(l, 'egressd.ended_by'),
  protocol: field(l, 'network.protocol'),
  domain: field(l, 'destination.domain'),
  sni: field(l, 'tls.client.server_name'),
  url: field(l, 'url.domain'),
  up: field(l, 'source.bytes'),
  down: field(l, 'destination.bytes'),
  upstream: Buffer.concat(up.received).toString('hex'),
});

/** Each case's line on the path that ran first: the others must agree. */
const firstPath = new Map<string, { setup: string; seen: Record<string, unknown> }>();

const CASES: [string, string, Flight, Ending][] = FLIGHTS.flatMap((f) => ENDINGS.map((e): [string, string, Flight, Ending] => [f.key, e.key, f, e]));

describe.each([
  { setup: 'node' as const, pressed: false, what: 'on node' },
  { setup: 'native' as const, pressed: false, what: 'on native' },
  { setup: 'native' as const, pressed: true, what: 'on native, one accept slot per loop' },
])('a client going after its first flight, set up $what', ({ setup, pressed, what }) => {
  let d: LoopbackDaemon;
  const free: Record<Policy, string[]> = { name: sourcesOf('name'), 'addr-name': sourcesOf('addr-name'), addr: sourcesOf('addr') };
  const whose = (l: LogLine): string => `${String(field(l, 'source.ip'))}:${String(field(l, 'source.port'))}`;

  beforeAll(async () => {
    d = await startLoopbackDaemon(
      loopbackConfig({
        sandboxes: [
          { id: 'sb-name', sources: sourcesOf('name'), network: { mode: 'block-all', egress: { allowed_domains: ['ok.test'] } } },
          { id: 'sb-addr-name', sources: sourcesOf('addr-name'), network: { mode: 'allow-all', egress: { denied_domains: ['bad.test'] } } },
          { id: 'sb-addr', sources: sourcesOf('addr'), network: { mode: 'block-all', egress: { allowed_cidrs: ['127.0.0.1/32'] } } },
        ],
        upstream: { dial: 'original' },
        peek: { timeoutMs: PEEK_MS, firstByteTimeoutMs: FIRST_BYTE_MS },
      }),
      { setup },
    );
    if (process.platform === 'linux') expect(d.daemon.nativeSetup !== null).toBe(setup === 'native');
    if (pressed) d.daemon.nativeSetup?.setAcceptCap(1);
  });
  afterAll(async () => {
    if (pressed) d.daemon.nativeSetup?.setAcceptCap(512);
    await d.stop();
  });

  async function run(f: Flight, e: Ending): Promise<Seen> {
    const source = free[f.policy].shift()!;
    const up = await recordingUpstream();
    try {
      d.route(source, '127.0.0.1', up.port);
      const bytes = e.beforeLast ? f.bytes.subarray(0, f.last) : f.bytes;
      const localPort = await client(source, d.port(f.listener), bytes, f.split, e.how, e.afterMs);
      const me = `${source}:${localPort}`;
      const line = await d.waitForLog((l) => action(l) === 'connection' && whose(l) === me, PEEK_MS + 3000);
      // Whatever the upstream got has come by the time the line is written; a moment for its echo.
      await sleep(10);
      return seenOf(line, up);
    } finally {
      up.close();
    }
  }

  it.each(CASES)('%s, %s: judged by the rule, the same line on every path', async (_f, _e, f, e) => {
    const seen = await run(f, e);
    const key = `${f.key} / ${e.key}`;
    const sent = e.beforeLast ? f.bytes.subarray(0, f.last) : f.bytes;
    const judged = !e.beforeLast || f.decidedBeforeLast === true ? f.judged : NONE;
    expect({ verdict: seen.verdict, reason: seen.reason }, key).toEqual(judged);
    const carried = { end: seen.end, up: seen.up, down: seen.down, upstream: seen.upstream };
    if (judged.verdict !== 'allow') {
      expect({ up: seen.up, down: seen.down, upstream: seen.upstream }, key).toEqual({ up: 0, down: 0, upstream: '' });
    } else {
      // The client's going decides only what the bytes left open: whether the flight reached the
      // upstream before it went (a race with the dial, on either path), never a byte more or less.
      const reached = {
        end: e.how === 'fin' ? 'closed' : 'client-reset',
        up: sent.length,
        down: e.how === 'fin' ? sent.length : 0,
        upstream: sent.toString('hex'),
      };
      // A FIN is a half-close, carried, but after a ClientHello (docs/logs.md, "A client that goes
      // before its upstream is reached").
      const notReached = { end: e.how === 'fin' ? 'client-fin' : 'client-reset', up: 0, down: 0, upstream: '' };
      // A FIN, then a reset: the flight carried with its FIN, the echo back before the reset or
      // not; or the reset (an error at once after the FIN) ending the wait for the upstream.
      const finReset = [
        ...['closed', 'client-reset'].flatMap((end) => [0, sent.length].map((down) => ({ ...reached, end, down }))),
        ...['client-fin', 'client-reset'].map((end) => ({ ...notReached, end })),
      ];
      const may = e.how === 'fin-reset' ? finReset : e.how === 'fin' && !finGoes(f) ? [reached] : [reached, notReached];
      expect(may, `${key}: carried ${JSON.stringify(carried)}`).toContainEqual(carried);
      expect(seen.endedBy, key).toBe('client');
    }
    // The rest, and the bytes wherever the rule leaves them one answer, as on the path that ran first.
    const compared: Record<string, unknown> =
      judged.verdict === 'allow' && !(e.how === 'fin' && !finGoes(f)) ? { ...seen, end: null, up: null, down: null, upstream: null } : seen;
    const other = firstPath.get(key);
    if (other) expect(compared, `${key}: ${what} against ${other.setup}`).toEqual(other.seen);
    else firstPath.set(key, { setup: what, seen: compared });
  });
});
