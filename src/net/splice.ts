// Carries an allowed connection's bytes both ways until it ends, and says how it ended. Two
// paths behind one function: the native data plane (native-splice.ts: splice(2) in an epoll
// loop, the bytes never leave the kernel) wherever it can run, and the JavaScript path below
// where it cannot (another OS, the addon not built, a socket the hand-off cannot carry). Both
// keep the same contract and pass the same tests (test/integration/net/splice.test.ts).
//
// TCP semantics are carried, not flattened: a FIN ends only the other side's write half
// (RFC 9293 §3.6: a half-closed connection still carries data the other way), and a reset is
// answered with a reset, so neither end mistakes an aborted exchange for a complete one. The reset
// goes after what was read from the side that failed, as it would have reached the other side
// without egressd between them (an origin's early answer, then its reset), within a bound
// (RESET_LINGER_MS) so that a peer that does not read cannot hold the connection.
//
// Except a reset from a side that had already sent its FIN: that side had finished, and its reset
// only refused bytes that reached its closed socket (Linux resets a close(2) that leaves bytes
// unread or gets more, RFC 1122 §4.2.2.13): a TLS client's close_notify arriving after the origin
// closed, or the origin's after the client did. It ends no exchange, so it is not a failure: the
// connection `closed`, ended by the side whose FIN came first (HAProxy names a session by the
// first event that ended it, `--` for a normal end). What that side sent is still delivered, its
// FIN last; what the other side sends it is dropped, as that side's own kernel would have.

import { readSync } from 'node:fs';
import type { Socket } from 'node:net';
import { spliceNative } from './native-splice.ts';
import { takeSocketError } from './original-dst.ts';

export interface SpliceOptions {
  /** The bytes already read from the client (the peek): they go upstream first, byte for byte. */
  readonly initial: Buffer;
  /** No byte either way for this long destroys both sides. */
  readonly idleTimeoutMs: number;
  /** Aborting destroys both sides (shutdown, a policy change). */
  readonly signal: AbortSignal;
}

export type SpliceEnd = 'closed' | 'client-reset' | 'upstream-reset' | 'idle-timeout' | 'aborted' | 'error';

export interface SpliceResult {
  readonly bytesUp: number;
  readonly bytesDown: number;
  readonly end: SpliceEnd;
  /**
   * Which side sent its FIN first, when one did (null: neither's was passed on): who ended a
   * connection that `closed`. Left out only by an addon built before the loop reported it.
   */
  readonly firstFin?: Side | null;
  /**
   * When the splice ended (performance.now() ms), where that was before this result was handed
   * over: a native loop's report of it waits in the queue to Node's thread. The connection's
   * duration ends there. Absent: when the result is handed over (the JavaScript splice).
   */
  readonly endedAt?: number;
}

export type Side = 'client' | 'upstream';

// setTimeout's largest delay; beyond it Node fires at once.
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * How long the side that did not fail is given to take each part of what egressd still holds for
 * it before it is reset (spliceJs's `lingerThenReset`): Node's write buffer, then the kernel's send
 * queue. A reader on the sandbox's veth, or an origin reading at 10 MB/s through a full 4 MiB send
 * buffer, takes it well within; a peer that takes nothing in a second is not reading its answer,
 * and must not hold the connection. Envoy bounds the same wait, a write buffer flushed before a
 * close, by its connection manager's `delayed_close_timeout`, 1 s by default.
 */
export const RESET_LINGER_MS = 1000;
const EMPTY = Buffer.alloc(0);
// What rescueUnread reads off a reset socket at most, in reads of RESCUE_READ bytes: a socket's
// receive buffer, as the native loop bounds its own read of one (drop_unread).
const RESCUE_READ = 64 * 1024;
const RESCUE_READS = 64;

/**
 * Resolves exactly once, after both sockets have closed; never rejects. `client` may arrive
 * paused with bytes buffered (peekSocket leaves it so); both sockets must have been made with
 * `allowHalfOpen: true`, or a FIN would close the whole connection. The native data plane when
 * it can take the connection, else the JavaScript path.
 */
export function splice(client: Socket, upstream: Socket, o: SpliceOptions): Promise<SpliceResult> {
  return spliceNative(client, upstream, o) ?? spliceJs(client, upstream, o);
}

/** splice() on Node's sockets in JavaScript: the fallback, with the same contract. */
export function spliceJs(client: Socket, upstream: Socket, o: SpliceOptions): Promise<SpliceResult> {
  return new Promise((resolve) => {
    const socketOf = { client, upstream } as const;
    const other = (s: Side): Side => (s === 'client' ? 'upstream' : 'client');
    const closed = { client: false, upstream: false };
    // A side that reset after its FIN (see the top of this file): its failure ends nothing.
    const gone = { client: false, upstream: false };
    let bytesUp = 0;
    let bytesDown = 0;
    let end: SpliceEnd | null = null;
    let firstFin: Side | null = null;
    let settled = false;
    let lastActivity = performance.now();
    let idleTimer: NodeJS.Timeout | undefined;
    // When egressd last handed bytes for a side to its kernel (a write, or Node's buffer drained).
    const handedOff = { client: -Infinity, upstream: -Infinity };
    // Each direction's 'data' handler: what one side sent, passed on to the other (carry).
    const forward = { client: (_chunk: Buffer): void => {}, upstream: (_chunk: Buffer): void => {} };
    // The side being flushed before its reset (lingerThenReset), and the timer that resets it.
    let lingering: Side | null = null;
    let lingerTimer: NodeJS.Timeout | undefined;
    // A side paused for backpressure is asked every RESET_LINGER_MS whether it reset (watchPaused).
    const pausedTimer: Record<Side, NodeJS.Timeout | undefined> = { client: undefined, upstream: undefined };

    const destroyBoth = (cause: SpliceEnd): void => {
      end ??= cause;
      // A side being flushed after the other's failure is reset, never closed with a FIN.
      if (lingering !== null) reset(socketOf[lingering]);
      client.destroy();
      upstream.destroy();
    };
    // One side failed: the other gets a reset too, never a FIN that would pass for a clean end.
    const failed = (side: Side, cause: SpliceEnd): void => {
      end ??= cause;
      lingerThenReset(other(side));
    };
    // "Nothing acknowledged is lost": what egressd read from the failed side goes out before the
    // reset (resetting at once drops Node's write buffer and the kernel's send queue). Node shows
    // its own buffer, not the kernel's queue (no SIOCOUTQ), so the kernel is given RESET_LINGER_MS
    // after the last byte it was handed; a peer that takes nothing is reset RESET_LINGER_MS after
    // the failure, one that drains Node's buffer slowly at most twice that.
    const lingerThenReset = (side: Side): void => {
      const s = socketOf[side];
      if (s.destroyed || lingering !== null) return;
      lingering = side;
      clearTimeout(idleTimer);
      s.pause(); // what it sends has nowhere to go
      const resetAfter = (from: number): void => {
        clearTimeout(lingerTimer);
        if (s.destroyed) return;
        const wait = from + RESET_LINGER_MS - performance.now();
        if (wait <= 0) return reset(s);
        lingerTimer = setTimeout(() => reset(s), wait);
      };
      if (s.writableLength === 0 || s.writableEnded) return resetAfter(handedOff[side]);
      resetAfter(performance.now());
      // Written after what Node still holds, so its callback says all of that is in the kernel.
      s.write(EMPTY, () => resetAfter(performance.now()));
    };
    const onError = (side: Side) => (err: Error) => {
      if (end !== null || gone[side]) return;
      const code = (err as NodeJS.ErrnoException).code;
      const reset = code === 'ECONNRESET' || code === 'EPIPE';
      // EPIPE is the reset of a socket in CLOSE_WAIT: its FIN had come (Linux's tcp_reset), even
      // when Node has not read the EOF yet.
      if (reset && (socketOf[side].readableEnded || code === 'EPIPE')) return goneAfterFin(side);
      failed(side, reset ? `${side}-reset` : 'error');
    };
    const goneAfterFin = (side: Side): void => {
      gone[side] = true;
      firstFin ??= side;
      const to = socketOf[other(side)];
      // Its bytes already written go out, then its FIN; then the other side is closed. Node has
      // read what it sent meanwhile (and dropped it, `carry`), so the close is a FIN, not a reset.
      if (to.destroyed) return;
      if (!to.writableEnded) to.end();
      if (to.writableFinished) to.destroy();
      else to.once('finish', () => to.destroy());
    };
    const onClose = (side: Side) => (): void => {
      if (closed[side]) return;
      closed[side] = true;
      const s = socketOf[side];
      // Closed with a half still open and no error said why: something else destroyed it (not
      // goneAfterFin, which closes the other side on purpose).
      const finished = gone.client || gone.upstream || (s.readableEnded && s.writableFinished);
      if (end === null && !finished) failed(side, 'error');
      if (!closed.client || !closed.upstream || settled) return;
      settled = true;
      clearTimeout(idleTimer);
      clearTimeout(lingerTimer);
      clearTimeout(pausedTimer.client);
      clearTimeout(pausedTimer.upstream);
      o.signal.removeEventListener('abort', onAbort);
      resolve({ bytesUp, bytesDown, end: end ?? 'closed', firstFin });
    };
    // A side that reset unseen (paused, so unwatched: probe) ended the exchange first: the end is
    // its reset, and the other side is reset, never closed with a FIN.
    const onAbort = (): void => void Promise.all([probe('client'), probe('upstream')]).then(() => destroyBoth('aborted'));

    for (const side of ['client', 'upstream'] as const) {
      const s = socketOf[side];
      // Registered before anything can fail: an 'error' without a listener would crash the daemon.
      s.on('error', onError(side));
      s.once('close', onClose(side));
    }
    if (o.signal.aborted) return destroyBoth('aborted');
    o.signal.addEventListener('abort', onAbort, { once: true });
    // Either side may have gone while the upstream was being chosen and dialed.
    for (const side of ['client', 'upstream'] as const) {
      const s = socketOf[side];
      if (!s.destroyed) continue;
      if (s.errored) onError(side)(s.errored);
      else if (end === null) failed(side, 'error');
      if (s.closed) onClose(side)();
    }
    if (end !== null) return;

    // Paused before any 'data' listener exists, so nothing of the client's can overtake `initial`.
    client.pause();
    // A write that meets a side's reset fails before Node has read what that side sent with it
    // (its last bytes and its reset can arrive together, the write first in the same turn), and
    // Node then closes the socket with them unread. The write's callback runs before that close:
    // they are read off the descriptor there and passed on, Node's own buffer of them first.
    const rescued = { client: false, upstream: false };
    const rescueUnread = (side: Side): void => {
      const s = socketOf[side];
      // Only before Node closes it: a closed descriptor's number may already be another socket's.
      if (rescued[side] || s.destroyed) return;
      rescued[side] = true;
      while (s.read() !== null); // emits 'data' for each chunk: forward passes it on
      const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
      if (typeof fd !== 'number' || fd < 0) return;
      for (let i = 0; i < RESCUE_READS; i++) {
        const chunk = Buffer.allocUnsafe(RESCUE_READ);
        let n: number;
        try {
          n = readSync(fd, chunk); // non-blocking: EAGAIN once it is empty
        } catch {
          return;
        }
        if (n <= 0) return;
        forward[side](chunk.subarray(0, n));
      }
    };
    const carry = (fromSide: Side, from: Socket, to: Socket, count: (n: number) => void): void => {
      const toSide = other(fromSide);
      const written = (err?: Error | null): void => {
        if (isReset(err)) rescueUnread(toSide);
      };
      forward[fromSide] = (chunk: Buffer): void => {
        count(chunk.length);
        lastActivity = performance.now();
        if (to.destroyed || to.writableEnded) return;
        handedOff[toSide] = lastActivity;
        // Backpressure: stop reading until the slow side has taken what it was given.
        if (!to.write(chunk, written)) {
          from.pause();
          watchPaused(fromSide);
        }
      };
      from.on('data', forward[fromSide]);
      to.on('drain', () => {
        handedOff[toSide] = performance.now();
        if (!from.destroyed && lingering === null) from.resume();
      });
      // A FIN ends only the other side's write half; end() sends it after what is still queued.
      from.once('end', () => {
        firstFin ??= fromSide;
        if (!to.destroyed && !to.writableEnded) to.end();
      });
    };
    carry('client', client, upstream, (n) => (bytesUp += n));
    carry('upstream', upstream, client, (n) => (bytesDown += n));

    let upstreamReady = true;
    if (o.initial.length > 0) {
      bytesUp += o.initial.length;
      handedOff.upstream = performance.now();
      upstreamReady = upstream.write(o.initial);
    }
    // A FIN that came before the splice listened: a paused socket whose bytes were all taken (the
    // peek) still emits 'end' (net.js reads the EOF at once), so a client that sent its request
    // and its FIN together had its FIN dropped and the upstream waited for it until the idle
    // timeout. Passed on after `initial`, as it came.
    for (const [fromSide, from, to] of [['client', client, upstream] as const, ['upstream', upstream, client] as const]) {
      if (!from.readableEnded) continue;
      firstFin ??= fromSide;
      if (!to.destroyed && !to.writableEnded) to.end();
    }
    // An upstream that has not yet taken the peeked bytes gets nothing more until it drains; the
    // client is then paused as for any backpressure, and probed the same way (watchPaused).
    if (upstreamReady) client.resume();
    upstream.resume();

    const idleMs = Math.min(MAX_TIMER_MS, Math.max(1, o.idleTimeoutMs));
    // One timer per connection, re-armed lazily, instead of one reset per chunk.
    const checkIdle = (): void => {
      const quiet = performance.now() - lastActivity;
      if (quiet >= idleMs) return void Promise.all([probe('client'), probe('upstream')]).then(idleEnd);
      idleTimer = setTimeout(checkIdle, Math.ceil(idleMs - quiet));
    };
    // Node watches no socket it is not reading (paused for backpressure, or after its FIN): a reset
    // there goes unseen until egressd writes to it. So before the idle timeout closes both sides,
    // a zero-byte write asks each (it fails at once on a reset socket and sends nothing on a
    // healthy one), and a side that reset ends the connection as its reset would have, never as
    // an idle close whose FIN would pass for a clean end.
    const probe = (side: Side): Promise<void> =>
      new Promise((resolve) => {
        const s = socketOf[side];
        // A socket Node is still writing to is watched (its reset would have surfaced), and a
        // probe queued behind bytes a stalled reader never takes would never answer.
        if (s.destroyed || s.writableLength > 0) return resolve();
        if (s.writableEnded) {
          // Its write half is ended (the other side's FIN was passed on): no write can ask it, so
          // its pending error is taken instead (SO_ERROR, as the native loop's check_error does).
          // Node will not see that error again: what the socket still holds is read off and
          // passed on, and the socket is closed here, after its failure is taken.
          const code = takeSocketError(s);
          if (code !== null) {
            rescueUnread(side);
            onError(side)(Object.assign(new Error(`read ${code}`), { code }));
            s.destroy();
          }
          return resolve();
        }
        s.write(EMPTY, (err) => {
          if (err) {
            if (isReset(err)) rescueUnread(side);
            onError(side)(err);
          }
          resolve();
        });
      });
    // Node watches no socket it is not reading: a side paused because the other takes nothing
    // could reset and hold the connection until the idle timeout, though a failed side's other
    // side is to be reset within RESET_LINGER_MS of taking nothing. So while it stays paused, it
    // is probed every RESET_LINGER_MS.
    const watchPaused = (side: Side): void => {
      if (pausedTimer[side] !== undefined) return;
      pausedTimer[side] = setTimeout(() => {
        pausedTimer[side] = undefined;
        const s = socketOf[side];
        if (end !== null || settled || s.destroyed || !s.isPaused()) return;
        void probe(side).then(() => {
          if (end === null && !settled && s.isPaused()) watchPaused(side);
        });
      }, RESET_LINGER_MS);
    };
    const idleEnd = (): void => {
      if (end !== null || settled) return; // a side failed: lingerThenReset ends it
      if (!gone.client && !gone.upstream) return destroyBoth('idle-timeout');
      // One reset after its FIN (goneAfterFin): `closed`, though the other side never took the rest.
      client.destroy();
      upstream.destroy();
    };
    if (!upstreamReady) watchPaused('client');
    idleTimer = setTimeout(checkIdle, idleMs);
  });
}

/** A write's or read's error that is the peer's reset (EPIPE: one that came after its FIN). */
function isReset(err: Error | null | undefined): boolean {
  const code = (err as NodeJS.ErrnoException | null | undefined)?.code;
  return code === 'ECONNRESET' || code === 'EPIPE';
}

function reset(s: Socket): void {
  if (s.destroyed) return;
  try {
    s.resetAndDestroy();
  } catch {
    // resetAndDestroy throws only for a non-TCP handle; closing is what is left.
    s.destroy();
  }
}
