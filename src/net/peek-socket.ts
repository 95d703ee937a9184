// Reads a client's first bytes without losing any: every chunk is kept, and the whole buffer
// is handed back so the caller can send it upstream first, byte for byte. Bounded by a byte
// cap and by one absolute deadline armed at accept, which arriving bytes never push back
// (Envoy's tls_inspector: a slow-drip client is cut at the deadline, not kept alive by it).

import type { Socket } from 'node:net';
import type { PeekStepper } from '../peek/peek-steps.ts';

/**
 * Even when a parser says it needs many more bytes, it is asked again after this many new
 * ones, so malformed input inside a declared length is still refused early; the work per
 * connection stays linear in the bytes (at most cap / stride full parses).
 */
const REPARSE_STRIDE = 1024;
const EMPTY = Buffer.alloc(0);

export type PeekOutcome<R> =
  | { kind: 'done'; result: R; bytes: Buffer }
  /** The absolute deadline passed before the parser was satisfied. */
  | { kind: 'timeout'; bytes: Buffer }
  /** No byte arrived within the first-byte wait (only when one was asked for). */
  | { kind: 'silent'; bytes: Buffer }
  /** Bytes came, then none for `stall.ms` while `stall.undecided` still held for them. */
  | { kind: 'stalled'; bytes: Buffer }
  /** The client closed or reset before the parser was satisfied. */
  | { kind: 'closed'; bytes: Buffer }
  /** More than maxBytes arrived and the parser still wanted more. */
  | { kind: 'too-large'; bytes: Buffer };

export interface PeekOptions {
  /** Absolute time (performance.now() ms, the monotonic clock) after which the peek gives up. */
  readonly deadline: number;
  readonly maxBytes: number;
  /** When set, give up with `silent` if no byte at all arrives within this many ms. */
  readonly firstByteTimeoutMs?: number;
  /**
   * When set, give up with `stalled` if no byte arrives for `ms` while `undecided(bytes)` holds:
   * a client that sent a few bytes that could still open either protocol ("ping") and now waits
   * for the server is not held until the deadline. Asked after every read with the bytes so far
   * (at most `maxBytes`: the same bytes, grown), so it may resume where it stopped (stallCheck).
   */
  readonly stall?: { readonly ms: number; readonly undecided: (bytes: Buffer) => boolean };
}

/**
 * Feeds the socket's bytes to `step` (given everything received so far) until it is done. On
 * return the socket is paused with no 'data' listener, so no byte is read past what is in
 * `bytes`.
 */
/**
 * The byte side of a peek, apart from the socket: keeps every chunk, lets the parser see the
 * first `maxBytes` of them (copied once into one buffer), and asks it again only when its
 * answer can change. `push` returns the parser's result once it is done, 'too-large' when the
 * cap filled first, or null to wait for more.
 */
export class PeekBuffer<R> {
  readonly #step: PeekStepper<R>;
  readonly #max: number;
  /**
   * What the parser reads: the first chunk itself while it is the only one (the usual case, a
   * whole ClientHello or request head in one read: nothing allocated, nothing copied), then a
   * copy of the first `maxBytes` of all of them, made once a second chunk comes.
   */
  #view: Buffer = EMPTY;
  /** The first chunk, whole, while it is the only one. */
  #first: Buffer | null = null;
  /**
   * From the second chunk on: the first `maxBytes` in one buffer, and in `#over` what came past
   * them. The chunks themselves are let go: a flight dripped one byte per read would otherwise
   * keep a Buffer object (about 100 bytes) per byte.
   */
  #acc: Buffer | null = null;
  readonly #over: Buffer[] = [];
  #total = 0;
  #filled = 0;
  #parseAt = 1;
  /** How many times the parser was asked (benchmarks and tests read it). */
  parses = 0;

  constructor(step: PeekStepper<R>, maxBytes: number) {
    this.#step = step;
    this.#max = maxBytes;
  }

  get total(): number {
    return this.#total;
  }

  /** How many bytes in all before the parser is asked again (a reader may wait for that many). */
  get wantsAt(): number {
    return Math.min(this.#parseAt, this.#max);
  }

  /**
   * The first `maxBytes` received, as the parser reads them: one buffer grown in place, not a
   * concatenation made per call (bytes()), so it can be asked after every read.
   */
  view(): Buffer {
    return this.#view;
  }

  /** Everything received, byte for byte, to be sent upstream first. */
  bytes(): Buffer {
    if (this.#acc === null) return this.#first ?? EMPTY;
    const head = this.#acc.subarray(0, this.#filled);
    return this.#over.length === 0 ? head : Buffer.concat([head, ...this.#over], this.#total);
  }

  /**
   * The parser's answer to every byte so far, asked even where push would not have asked it: the
   * peek ends without one (the deadline, the client's FIN or reset, a stall), and the bytes must
   * be judged as the same bytes read at once would be — a bad line that came in the last read
   * is malformed, not a timeout. Null when they have no answer yet (or there are none).
   */
  settle(): { done: true; result: R } | null {
    if (this.#total === 0) return null;
    this.parses++;
    const s = this.#step(this.#view, true);
    return s.done ? s : null;
  }

  push(chunk: Buffer): { done: true; result: R } | 'too-large' | null {
    this.#total += chunk.length;
    if (this.#first === null && this.#acc === null) {
      this.#first = chunk;
      this.#filled = Math.min(chunk.length, this.#max);
      this.#view = chunk.subarray(0, this.#filled);
    } else {
      if (this.#acc === null) {
        this.#acc = Buffer.allocUnsafe(this.#max);
        this.#view.copy(this.#acc, 0);
        if (this.#first!.length > this.#filled) this.#over.push(this.#first!.subarray(this.#filled));
        this.#first = null;
      }
      const take = Math.min(chunk.length, this.#max - this.#filled);
      if (take > 0) {
        chunk.copy(this.#acc, this.#filled, 0, take);
        this.#filled += take;
        this.#view = this.#acc.subarray(0, this.#filled);
      }
      if (take < chunk.length) this.#over.push(take === 0 ? chunk : chunk.subarray(take));
    }
    if (this.#filled < this.#parseAt && this.#filled < this.#max) return null;
    this.parses++;
    // At the cap the parser is asked for the last time: it must answer as on one read.
    const s = this.#step(this.#view, this.#filled >= this.#max);
    if (s.done) return s;
    if (this.#filled >= this.#max) return 'too-large';
    this.#parseAt = Math.min(Math.max(s.atLeast ?? 0, this.#filled + 1), this.#filled + REPARSE_STRIDE);
    return null;
  }
}

export function peekSocket<R>(socket: Socket, step: PeekStepper<R>, opts: PeekOptions): Promise<PeekOutcome<R>> {
  return new Promise((resolve) => {
    const buf = new PeekBuffer(step, opts.maxBytes);
    let settled = false;
    const timers: NodeJS.Timeout[] = [];
    let stallTimer: NodeJS.Timeout | undefined;

    const finish = (o: PeekOutcome<R>): void => {
      if (settled) return;
      settled = true;
      for (const t of timers) clearTimeout(t);
      clearTimeout(stallTimer);
      socket.pause();
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onClose);
      socket.off('error', onError);
      resolve(o);
    };
    // Ended without the parser's answer (the deadline, the client's FIN or reset, a stall): the
    // bytes may have one it was not asked for yet (PeekBuffer.settle). At a reset too: the bytes
    // received decide where they alone decide (a malformed flight, a refused name, a whole
    // flight), and the client's going only what they left open (connection.ts judged), as the
    // native loop reports what it read before a reset (splice_loop.c client_left).
    const ended = (kind: 'timeout' | 'closed' | 'stalled'): void => {
      if (settled) return;
      const r = buf.settle();
      finish(r !== null ? { kind: 'done', result: r.result, bytes: buf.bytes() } : { kind, bytes: buf.bytes() });
    };
    const onData = (chunk: Buffer): void => {
      const r = buf.push(chunk);
      if (r === null) {
        if (opts.stall !== undefined) {
          clearTimeout(stallTimer);
          // The parser's view, not bytes(): a concatenation of every chunk per read made a client
          // dripping its flight one byte per segment cost the main thread seconds.
          if (opts.stall.undecided(buf.view())) stallTimer = setTimeout(() => ended('stalled'), opts.stall.ms);
        }
        return;
      }
      if (r === 'too-large') return finish({ kind: 'too-large', bytes: buf.bytes() });
      finish({ kind: 'done', result: r.result, bytes: buf.bytes() });
    };
    const onEnd = (): void => ended('closed');
    // A close with no error before it is egressd's own reset (admission under memory pressure,
    // shutdown): it ends the peek as it is, as the native loop's abort does.
    const onClose = (): void => finish({ kind: 'closed', bytes: buf.bytes() });
    // The client's reset (an error, then 'close'); the caller learns of it from the socket's state.
    const onError = (): void => ended('closed');

    const remaining = opts.deadline - performance.now();
    if (remaining <= 0) return finish({ kind: 'timeout', bytes: Buffer.alloc(0) });
    timers.push(setTimeout(() => ended('timeout'), remaining));
    if (opts.firstByteTimeoutMs !== undefined && opts.firstByteTimeoutMs < remaining) {
      timers.push(
        setTimeout(() => {
          if (buf.total === 0) finish({ kind: 'silent', bytes: Buffer.alloc(0) });
        }, opts.firstByteTimeoutMs),
      );
    }
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onClose);
    socket.on('error', onError);
    socket.resume();
  });
}
