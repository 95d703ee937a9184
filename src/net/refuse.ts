// Refusing a connection after accept, in the client's own protocol, so that the person behind
// the client reads "denied" rather than a mysterious hang or reset: a TLS fatal alert, an HTTP
// 403 that names the host and the reason, a reset for anything else, or nothing at all.

import type { Socket } from 'node:net';
import { MAX_NAME_LENGTH } from '../match/names.ts';

// RFC 8446 §5.1 TLSPlaintext: type alert(21), legacy_record_version 0x0303, length 2; §6: level
// fatal(2), description access_denied(49). Before any ServerHello this is a plaintext record
// every TLS version reads.
export const ACCESS_DENIED_ALERT: Readonly<Buffer> = Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31]);

/**
 * How long, and for how many bytes, a refused client that is still sending is read (and its
 * bytes discarded) after the answer went out: the config's `refusal` keys.
 */
/** How a refusal is answered: `explain` (TLS alert, HTTP 403, reset) or `drop` (nothing at all). */
export type BlockMode = 'explain' | 'drop';

export interface Linger {
  readonly lingerMs: number;
  readonly lingerMaxBytes: number;
  /**
   * How many refused connections may linger at once, across all sandboxes. Past it a refusal
   * lingers only SHORT_LINGER_MS: one sandbox opening refused connections in a loop must not
   * hold the process's descriptors for `lingerMs` each.
   */
  readonly lingerMaxConnections: number;
  /**
   * Admission's say (limits/admission.ts), asked once when the refusal is answered: a hold on a
   * lingering place within the sandbox's and the process's share of the descriptor budget, to
   * be released when the connection closes, or null when there is none left — the linger is
   * then given up and the connection closed right after its answer. Absent: only
   * `lingerMaxConnections` bounds it.
   */
  readonly hold?: () => LingerHold | null;
}

/** A lingering refusal's place in the descriptor budget; `release` once, when it closes. */
export interface LingerHold {
  release(): void;
}

// nginx's lingering_timeout is 5 s between reads and lingering_time 30 s overall; 30 s and
// 64 MiB let a client pacing a large upload finish sending and read the answer.
export const DEFAULT_LINGER: Linger = Object.freeze({ lingerMs: 30_000, lingerMaxBytes: 64 * 1024 * 1024, lingerMaxConnections: 4096 });
/** Long enough for a client that is not uploading to read the answer and close. */
const SHORT_LINGER_MS = 2_000;
let lingering = 0;

/** How many refused connections are lingering now (for tests and metrics). */
export function lingeringConnections(): number {
  return lingering;
}

const MAX_RULE_CHARS = 512;

/** A fatal access_denied alert, then close: TLS clients report "alert access denied". */
export function refuseTls(socket: Socket, linger: Linger = DEFAULT_LINGER): void {
  answerAndClose(socket, ACCESS_DENIED_ALERT, linger);
}

export interface HttpRefusal {
  /** The name the client asked for (attacker-controlled), or the destination address. */
  readonly host: string;
  /** The outcome reason, a fixed label (`default-block`, `protected-address`...). */
  readonly reason: string;
  /** The rule that decided, when one did. */
  readonly rule?: string | null;
  /** The destination port. */
  readonly port?: number | null;
  /** Whether the port decided (a port rule), so the answer says so. */
  readonly portDecided?: boolean;
  readonly linger?: Linger;
}

/**
 * A 403 whose short text/plain body names the host, the port and why, with the reason also
 * in a Proxy-Status header (RFC 9209) for programs. The host is quoted with escapes, never
 * altered: `a"b` reads `"a\"b"`, a control or non-ASCII character `\u{1b}`.
 */
export function refuseHttp(socket: Socket, r: HttpRefusal): void {
  answerAndClose(socket, httpRefusalBytes(r), r.linger ?? DEFAULT_LINGER);
}

/** The bytes of refuseHttp's answer (head and body), for a caller that writes them itself. */
export function httpRefusalBytes(r: HttpRefusal): Buffer {
  const port = r.port === null || r.port === undefined ? '' : ` port ${r.port}`;
  const rule = r.rule ? ` (${escapeText(r.rule, MAX_RULE_CHARS)})` : '';
  const by = r.portDecided ? '; the destination port decided' : '';
  const body = `egressd refused the connection to ${quoteText(r.host, MAX_NAME_LENGTH)}${port}: ${escapeText(r.reason, 64)}${rule}${by}\n`;
  const head =
    'HTTP/1.1 403 Forbidden\r\n' +
    'Content-Type: text/plain; charset=utf-8\r\n' +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    `Proxy-Status: egressd; error=${proxyStatusError(r.reason)}; details=${quoteText(r.reason, 64)}\r\n` +
    'Cache-Control: no-store\r\n' +
    'Connection: close\r\n' +
    '\r\n';
  // Everything is ASCII by construction (escapeText), so one encoding serves head and body.
  return Buffer.from(head + body, 'ascii');
}

/** RFC 9209 §2.3's error types, for the refusal reasons that have a closer one than "denied". */
function proxyStatusError(reason: string): string {
  switch (reason) {
    case 'protected-address':
      return 'destination_ip_prohibited';
    case 'dns-failure':
      return 'dns_error';
    case 'malformed-http':
    case 'invalid-name':
    case 'too-large':
      return 'http_request_error';
    default:
      return 'http_request_denied';
  }
}

/** A reset: for protocols egressd cannot speak, the clearest "no" TCP has. */
export function refuseTcp(socket: Socket): void {
  if (socket.destroyed) return;
  socket.on('error', () => {});
  try {
    socket.resetAndDestroy();
  } catch {
    // Only a non-TCP handle makes resetAndDestroy throw; a plain close is what is left.
    socket.destroy();
  }
}

/** Close without sending a byte (what the three platforms do with a blocked connection). */
export function dropSilently(socket: Socket): void {
  if (socket.destroyed) return;
  socket.on('error', () => {});
  socket.destroy();
}

/**
 * Writes the answer and half-closes, then keeps reading and discarding until the client closes,
 * or `lingerMs` has passed (2 s once `lingerMaxConnections` linger already; none at all when
 * admission gives the linger up), or `lingerMaxBytes` more have arrived: HTTP's staged close (RFC 9112
 * §9.6; nginx's lingering close), used for TLS too. Closing with unread bytes in the receive
 * queue makes the kernel send a reset (RFC 9293 §3.6.1, RFC 2525 §2.17), and a reset can
 * discard the answer before the client has read it — exactly when a client is still sending a
 * request body, which it may go on doing for as long as its upload takes before it reads.
 */
function answerAndClose(socket: Socket, answer: Buffer, linger: Linger): void {
  if (socket.destroyed) return;
  // Errors here mean the client went away first; there is nothing left to tell it.
  socket.on('error', () => {});
  let discarded = 0;
  socket.on('data', (d: Buffer) => {
    discarded += d.length;
    if (discarded > linger.lingerMaxBytes) socket.destroy();
  });
  socket.resume();
  const slot = lingerSlot(linger);
  // Given up (no place in the budget): closed once the answer is written and what the client
  // had already sent is read — setImmediate runs after the poll phase that reads it — as the
  // native loop closes after one drain. The timer stays as the bound if the write never ends.
  if (slot.ms === 0) socket.once('finish', () => setImmediate(() => socket.destroy()));
  const timer = setTimeout(() => socket.destroy(), slot.ms === 0 ? SHORT_LINGER_MS : slot.ms);
  timer.unref();
  socket.once('close', () => {
    clearTimeout(timer);
    slot.release();
  });
  // With allowHalfOpen the socket closes itself once the client's FIN has arrived and the
  // answer has been flushed (autoDestroy).
  if (!socket.writableEnded) socket.end(answer);
  else socket.destroy();
}

/**
 * How long a refused connection may linger now: 0 (given up: closed right after the answer)
 * when admission has no place for it (`linger.hold` answers null), else `lingerMs` while fewer
 * than `lingerMaxConnections` linger, else SHORT_LINGER_MS at most. `release` (once, when the
 * connection closes) gives the places back. Shared by every path that answers a refusal.
 */
export function lingerSlot(linger: Linger): { readonly ms: number; release(): void } {
  const hold = linger.hold === undefined ? NO_HOLD : linger.hold();
  if (hold === null) return GIVEN_UP;
  const full = lingering < linger.lingerMaxConnections;
  if (full) lingering++;
  let released = false;
  return {
    ms: full ? linger.lingerMs : Math.min(linger.lingerMs, SHORT_LINGER_MS),
    release: () => {
      if (released) return;
      released = true;
      if (full) lingering--;
      hold.release();
    },
  };
}

const NO_HOLD: LingerHold = Object.freeze({ release: () => {} });
const GIVEN_UP = Object.freeze({ ms: 0, release: () => {} });

/** `text` in double quotes, escaped by escapeText (so `"` and `\` are escaped too). */
function quoteText(text: string, max: number): string {
  return `"${escapeText(text, max, true)}"`;
}

/**
 * Printable ASCII as it is; everything else as an escape (`\u{1b}`, `\u{e9}`), capped at `max`
 * characters of the original with `...` after: reversible, and safe to print in a body, a
 * header or a terminal (no control characters, no bidi overrides). `\` is escaped as `\\`, and
 * with `quotes` `"` as `\"`.
 */
function escapeText(text: string, max: number, quotes = false): string {
  const s = String(text);
  const clipped = s.length > max ? s.slice(0, max) : s;
  let out = '';
  for (const ch of clipped) {
    const c = ch.codePointAt(0)!;
    if (ch === '\\' || (quotes && ch === '"')) out += `\\${ch}`;
    else if (c >= 0x20 && c <= 0x7e) out += ch;
    else out += `\\u{${c.toString(16)}}`;
  }
  return s.length > max ? `${out}...` : out;
}
