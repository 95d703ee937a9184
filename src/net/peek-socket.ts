// Reads a client's first bytes without losing any: every chunk is kept, and the whole buffer
// is handed back so the caller can send it upstream first, byte for byte. Bounded by a byte
// cap and by one absolute deadline armed at accept, which arriving bytes never push back
// (Envoy's tls_inspector: a slow-drip client is cut at the deadline, not kept alive by it).

import type { Socket } from 'node:net';

/**
 * A parser's answer to the bytes so far. `atLeast` says the answer cannot change (but for an
 * early refusal) until the buffer is that long, so a client dripping one byte per segment does
 * not cost a full re-parse per byte.
 */
export type PeekStep<R> = { done: true; result: R } | { done: false; atLeast?: number };

/**
 * Even when a parser says it needs many more bytes, it is asked again after this many new
 * ones, so malformed input inside a declared length is still refused early; the work per
 * connection stays linear in the bytes (at most cap / stride full parses).
 */
const REPARSE_STRIDE = 1024;

export type PeekOutcome<R> =
  | { kind: 'done'; result: R; bytes: Buffer }
  /** The absolute deadline passed before the parser was satisfied. */
  | { kind: 'timeout'; bytes: Buffer }
  /** No byte arrived within the first-byte wait (only when one was asked for). */
  | { kind: 'silent'; bytes: Buffer }
  /** The client closed or reset before the parser was satisfied. */
  | { kind: 'closed'; bytes: Buffer }
  /** More than maxBytes arrived and the parser still wanted more. */
  | { kind: 'too-large'; bytes: Buffer };

export interface PeekOptions {
  /** Absolute time (Date.now() clock) after which the peek gives up. */
  readonly deadline: number;
  readonly maxBytes: number;
  /** When set, give up with `silent` if no byte at all arrives within this many ms. */
  readonly firstByteTimeoutMs?: number;
}

/**
 * Feeds the socket's bytes to `step` (given everything received so far) until it is done. On
 * return the socket is paused with no 'data' listener, so no byte is read past what is in
 * `bytes`.
 */
export function peekSocket<R>(socket: Socket, step: (buf: Buffer) => PeekStep<R>, opts: PeekOptions): Promise<PeekOutcome<R>> {
  return new Promise((resolve) => {
    // Every chunk is kept whole (the bytes past the hello, e.g. early data, go upstream too);
    // the parser sees the first maxBytes of them, copied once into one buffer.
    const chunks: Buffer[] = [];
    let total = 0;
    const acc = Buffer.allocUnsafe(opts.maxBytes);
    let filled = 0;
    let parseAt = 1;
    let settled = false;
    const timers: NodeJS.Timeout[] = [];

    const finish = (o: PeekOutcome<R>): void => {
      if (settled) return;
      settled = true;
      for (const t of timers) clearTimeout(t);
      socket.pause();
      socket.off('data', onData);
      socket.off('end', onClose);
      socket.off('close', onClose);
      socket.off('error', onError);
      resolve(o);
    };
    const bytes = (): Buffer => (chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, total));

    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      total += chunk.length;
      const take = Math.min(chunk.length, opts.maxBytes - filled);
      if (take > 0) {
        chunk.copy(acc, filled, 0, take);
        filled += take;
      }
      if (filled < parseAt && filled < opts.maxBytes) return;
      const s = step(acc.subarray(0, filled));
      if (s.done) return finish({ kind: 'done', result: s.result, bytes: bytes() });
      if (filled >= opts.maxBytes) return finish({ kind: 'too-large', bytes: bytes() });
      parseAt = Math.min(Math.max(s.atLeast ?? 0, filled + 1), filled + REPARSE_STRIDE);
    };
    const onClose = (): void => finish({ kind: 'closed', bytes: bytes() });
    // An error is followed by 'close'; the caller learns of it from the socket's state.
    const onError = (): void => finish({ kind: 'closed', bytes: bytes() });

    const remaining = opts.deadline - Date.now();
    if (remaining <= 0) return finish({ kind: 'timeout', bytes: Buffer.alloc(0) });
    timers.push(setTimeout(() => finish({ kind: 'timeout', bytes: bytes() }), remaining));
    if (opts.firstByteTimeoutMs !== undefined && opts.firstByteTimeoutMs < remaining) {
      timers.push(
        setTimeout(() => {
          if (total === 0) finish({ kind: 'silent', bytes: Buffer.alloc(0) });
        }, opts.firstByteTimeoutMs),
      );
    }
    socket.on('data', onData);
    socket.once('end', onClose);
    socket.once('close', onClose);
    socket.on('error', onError);
    socket.resume();
  });
}
