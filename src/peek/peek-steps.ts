// The parsers as peek steps: what the data path asks of a client's first bytes on each
// listener, and when asking again is worth it.

import { MAX_HELLO_BYTES, parseClientHello, type TlsPeek } from './tls-client-hello.ts';
import { MAX_HEAD_BYTES, parseHttpHead, shapeProgress, type HttpPeek } from './http-head.ts';
import { sniff } from './sniff.ts';

/**
 * A parser's answer to the bytes so far. `atLeast` says the answer cannot change (but for an
 * early refusal) until the buffer is that long, so a client dripping one byte per segment does
 * not cost a full re-parse per byte.
 */
export type PeekStep<R> = { done: true; result: R } | { done: false; atLeast?: number };

/**
 * A peek's parser: given every byte so far. `last`: no byte will follow (the cap is full, the
 * deadline passed, the client closed), so a step that skips parses while bytes drip in
 * (httpStepper) must parse now: its answer is then the one the same bytes in one read get.
 */
export type PeekStepper<R> = (buf: Buffer, last?: boolean) => PeekStep<R>;

/** Why a peek ended a connection before any verdict: the peek's part of the outcome reasons. */
export type PeekReason = 'peek-timeout' | 'peek-closed' | 'too-large' | 'malformed-tls' | 'malformed-http' | 'invalid-name';

export type Peeked = { kind: 'tls'; result: TlsPeek } | { kind: 'http'; result: HttpPeek } | { kind: 'unknown' };

export const tlsStep = (buf: Buffer): PeekStep<Peeked> => {
  const r = parseClientHello(buf);
  return r.kind === 'need-more'
    ? { done: false, ...(r.atLeast !== undefined ? { atLeast: r.atLeast } : {}) }
    : { done: true, result: { kind: 'tls', result: r } };
};

/**
 * An HTTP head can only end at a blank line, so the whole head is re-parsed only when one may
 * have arrived (a LF after a LF or CRLF); peekSocket still re-parses every 1 KiB, so a bad
 * line is refused early, and once more at the `last` bytes, so a bad line in the last 1 KiB is
 * refused as malformed, not cut as too-large or at the deadline. `scanned` makes the search
 * for it linear over the connection.
 */
export function httpStepper(): PeekStepper<Peeked> & { readonly parses: number } {
  let scanned = 0;
  let parsedAt = -1;
  const step = (buf: Buffer, last = false): PeekStep<Peeked> => {
    let lf = buf.indexOf(0x0a, Math.max(0, scanned - 2));
    let blank = false;
    while (lf >= 0 && !blank) {
      blank = (lf >= 1 && buf[lf - 1] === 0x0a) || (lf >= 2 && buf[lf - 1] === 0x0d && buf[lf - 2] === 0x0a);
      if (!blank) lf = buf.indexOf(0x0a, lf + 1);
    }
    scanned = buf.length;
    if (!blank && !last && parsedAt >= 0 && buf.length - parsedAt < 1024) return { done: false };
    parsedAt = buf.length;
    step.parses++;
    const r = parseHttpHead(buf);
    return r.kind === 'need-more' ? { done: false } : { done: true, result: { kind: 'http', result: r } };
  };
  step.parses = 0;
  return step;
}

/** The `tcp` listener serves every other port: sniff first, then parse what the client speaks. */
export function anyStepper(): PeekStepper<Peeked> {
  const http = httpStepper();
  // Asked after every read while the request line is undecided: each byte is sniffed once.
  const shape = shapeProgress();
  return (buf, last) => {
    const s = sniff(buf, shape);
    if (s === 'need-more') return { done: false };
    if (s === 'tls') return tlsStep(buf);
    if (s === 'http') return http(buf, last);
    return { done: true, result: { kind: 'unknown' } };
  };
}

/**
 * The byte cap of each step: a parser's own limit, so the socket never holds more than the
 * parser would read (a ClientHello: MAX_HELLO_BYTES; a request head: MAX_HEAD_BYTES).
 */
export const PEEK_CAPS = Object.freeze({ tls: MAX_HELLO_BYTES, http: MAX_HEAD_BYTES, any: Math.max(MAX_HELLO_BYTES, MAX_HEAD_BYTES) });

/**
 * Whether bytes followed by silence may end a peek as "stalled" (judged as neither TLS nor HTTP
 * after peek.firstByteTimeoutMs): bytes that could still open an HTTP request line ("ping",
 * "HELO"). A first byte 0x16 is a TLS handshake record (RFC 8446 §5.1): such a client is waiting
 * on nothing but its own ClientHello, so it keeps the whole peek deadline.
 */
export const mayStall = (bytes: Buffer): boolean => bytes[0] !== 0x16 && sniff(bytes) === 'need-more';

/**
 * mayStall for one connection's first flight, asked after every read with all of it so far (the
 * same bytes, grown): each byte is looked at once, however the flight drips in.
 */
export function stallCheck(): (bytes: Buffer) => boolean {
  const shape = shapeProgress();
  return (bytes) => bytes[0] !== 0x16 && sniff(bytes, shape) === 'need-more';
}
