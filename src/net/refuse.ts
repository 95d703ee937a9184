// Refusing a connection after accept, in the client's own protocol, so that the person behind
// the client reads "denied" rather than a mysterious hang or reset: a TLS fatal alert, an HTTP
// 403 that names the host and the reason, a reset for anything else, or nothing at all.

import type { Socket } from 'node:net';

// RFC 8446 §5.1 TLSPlaintext: type alert(21), legacy_record_version 0x0303, length 2; §6: level
// fatal(2), description access_denied(49). Before any ServerHello this is a plaintext record
// every TLS version reads.
const ACCESS_DENIED_ALERT = Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31]);

// How long a refused client is given to read the answer and close before it is cut off.
const LINGER_MS = 2_000;
// RFC 1035 §2.3.4: a name is at most 253 characters; anything longer is not a name but a payload.
const MAX_HOST_CHARS = 253;
const MAX_REASON_CHARS = 256;

/** A fatal access_denied alert, then close: TLS clients report "alert access denied". */
export function refuseTls(socket: Socket): void {
  answerAndClose(socket, ACCESS_DENIED_ALERT);
}

/** A 403 whose short text/plain body names the host and why; the host is attacker-controlled. */
export function refuseHttp(socket: Socket, o: { host: string; reason: string }): void {
  const body = `egressd refused the connection to "${printable(o.host, MAX_HOST_CHARS)}": ${printable(o.reason, MAX_REASON_CHARS)}\n`;
  const head =
    'HTTP/1.1 403 Forbidden\r\n' +
    'Content-Type: text/plain; charset=utf-8\r\n' +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    'Cache-Control: no-store\r\n' +
    'Connection: close\r\n' +
    '\r\n';
  answerAndClose(socket, Buffer.from(head + body, 'latin1'));
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

/** Close without sending a byte (what the seeds' platforms do with a blocked connection). */
export function dropSilently(socket: Socket): void {
  if (socket.destroyed) return;
  socket.on('error', () => {});
  socket.destroy();
}

/**
 * Writes the answer and half-closes, then keeps reading and discarding until the client closes
 * or the linger ends: HTTP's staged close (RFC 9112 §9.6), used for TLS too. Closing with unread
 * bytes in the receive queue makes the kernel send a reset (RFC 9293 §3.6.1, RFC 2525 §2.17),
 * and a reset can discard the answer before the client has read it — exactly when a client is
 * still sending a request body.
 */
function answerAndClose(socket: Socket, answer: Buffer): void {
  if (socket.destroyed) return;
  // Errors here mean the client went away first; there is nothing left to tell it.
  socket.on('error', () => {});
  socket.on('data', () => {});
  socket.resume();
  const linger = setTimeout(() => socket.destroy(), LINGER_MS);
  linger.unref();
  socket.once('close', () => clearTimeout(linger));
  // With allowHalfOpen the socket closes itself once the client's FIN has arrived and the
  // answer has been flushed (autoDestroy).
  if (!socket.writableEnded) socket.end(answer);
  else socket.destroy();
}

/** Printable ASCII only, quotes and backslashes replaced, capped: safe to quote in a body or a terminal. */
function printable(text: string, max: number): string {
  const s = String(text);
  const clipped = s.length > max ? s.slice(0, max) : s;
  const clean = clipped.replace(/[^\x20-\x7e]|["\\]/g, '?');
  return s.length > max ? `${clean}...` : clean;
}
