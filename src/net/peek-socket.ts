// Reads a client's first bytes without losing any: every chunk is kept, and the whole buffer
// is handed back so the caller can send it upstream first, byte for byte. Bounded by a byte
// cap and by one absolute deadline armed at accept, which arriving bytes never push back
// (Envoy's tls_inspector: a slow-drip client is cut at the deadline, not kept alive by it).

import type { Socket } from 'node:net';

export type PeekStep<R> = { done: true; result: R } | { done: false };

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
    const chunks: Buffer[] = [];
    let total = 0;
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
      const buf = bytes();
      if (chunks.length > 1) {
        chunks.length = 0;
        chunks.push(buf);
      }
      const s = step(buf);
      if (s.done) return finish({ kind: 'done', result: s.result, bytes: buf });
      if (total >= opts.maxBytes) finish({ kind: 'too-large', bytes: buf });
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
