// What the connection pipeline (connection.ts) asks of a client connection, apart from where its
// socket lives: on a Node socket (SocketClient, below: the JavaScript path and the fallback), or
// in the native loops (native-setup.ts: accept, peek, dial and splice in C, issue 12). The
// pipeline's decisions — the policy at every stage, the outcome record — are the same code for
// both, so both paths pass the same tests.

import type { Socket } from 'node:net';
import type { Peeked } from '../peek/peek-steps.ts';
import type { PeekStepper } from '../peek/peek-steps.ts';
import { peerFinished, takeSocketError, type OriginalDestination } from './original-dst.ts';
import type { Closing } from './registry.ts';
import { peekSocket, type PeekOptions, type PeekOutcome } from './peek-socket.ts';
import { dialFirst, type Attempt } from './dial-first.ts';
import type { DialFailure } from './dial.ts';
import { RESET_LINGER_MS, splice, type SpliceResult } from './splice.ts';
import { socketAddress } from './socket-address.ts';
import { dropSilently, refuseHttp, refuseTcp, refuseTls, type HttpRefusal, type Linger } from './refuse.ts';

/** How a refused client is answered (refuse.ts has the bytes and the linger). */
export type Refusal =
  | { readonly kind: 'reset' }
  | { readonly kind: 'drop' }
  | { readonly kind: 'tls'; readonly linger: Linger }
  | { readonly kind: 'http'; readonly http: HttpRefusal & { readonly linger: Linger } };

/** native/splice_loop.h SL_MAX_ADDRS: the most addresses the native loop tries in one dial. */
export const MAX_DIAL_ADDRESSES = 16;

export interface ConnectOptions {
  /** IP address literals in the order to try them (RFC 8305 §5 staggered). */
  readonly addresses: readonly string[];
  readonly port: number;
  readonly connectTimeoutMs: number;
  /**
   * The most attempts in flight at once (at least 1; all when absent): each holds a descriptor,
   * granted by admission (limits/admission.ts Ticket.attempts). See dial-first.ts for the rule
   * at the cap, which the native loop follows too.
   */
  readonly parallel?: number;
  readonly idleTimeoutMs: number;
  /** The client's bytes read so far: they go upstream first, byte for byte. */
  readonly initial: Buffer;
  /** Closing ends the connection wherever it is: dialing or splicing. */
  readonly closing: Closing;
  /**
   * The client's FIN before the upstream connected is its going, as a reset is (`client-gone`,
   * `fin`): its first flight was a TLS ClientHello, and a TLS client cannot finish its handshake
   * once it has sent its FIN (RFC 8446 §2, RFC 5246 §7.3). Otherwise a FIN is a half-close whose
   * sender still reads the answer. Once connected, the splice's rules apply (splice.ts).
   */
  readonly finEnds?: boolean;
  /**
   * Called once an address answered, before any byte goes upstream: the verdict on that address
   * under the policy in force now. A refusal closes the upstream and the caller answers the
   * client. The native path asks only when the policy changed since the dial began (the policy
   * version), so an unchanged policy costs no second look.
   */
  readonly recheck: (address: string) => { readonly refuse: false } | { readonly refuse: true; readonly why: unknown };
  /**
   * When the verdict the dial was made on stops holding by itself (performance.now() ms;
   * Infinity: never): the first remembered DNS name it rested on expires (dns/memory.ts). The
   * native path judges again (recheck) when the dial connects after it, as after a policy change;
   * the JavaScript path judges again at every dial anyway.
   */
  readonly validUntil?: number;
  /** Told the address that answered as soon as it is known (the registry re-judges on it). */
  readonly onConnected?: (address: string) => void;
}

export type ConnectResult =
  | { readonly kind: 'dial-failed'; readonly cause: DialFailure; readonly detail: string; readonly attempts: readonly Attempt[] }
  | {
      readonly kind: 'refused';
      readonly why: unknown;
      readonly address: string;
      readonly connectMs: number;
      readonly attempts: readonly Attempt[];
    }
  /**
   * The client reset (or its socket failed), or sent its FIN under `finEnds`, while its upstream
   * was dialed: the dial was cancelled at once, every attempt closed, and no byte went upstream.
   */
  | { readonly kind: 'client-gone'; readonly how: GoneHow; readonly attempts: readonly Attempt[] }
  | {
      readonly kind: 'spliced';
      readonly address: string;
      readonly connectMs: number;
      readonly attempts: readonly Attempt[];
      readonly splice: SpliceResult;
    };

/** How a client went before its upstream was reached: its reset (or a failed socket), or its FIN when that ends it (`finEnds`). */
export type GoneHow = 'reset' | 'fin';

/** ClientSide.watchGone for a client gone already: `gone(how)` in a microtask, unless the function it returns is called first. */
export function goneAlready(gone: (how: GoneHow) => void, how: GoneHow): () => void {
  let live = true;
  queueMicrotask(() => {
    if (live) gone(how);
  });
  return () => {
    live = false;
  };
}

export interface ClientSide {
  /** The client's address and port, as Node spells them (an IPv4 client on a dual-stack socket: ::ffff:a.b.c.d). */
  readonly remoteAddress: string;
  readonly remotePort: number;
  /**
   * When the connection was accepted (performance.now() ms, the monotonic clock: a step of the
   * wall clock must not move a deadline or make a duration negative), where that was before the
   * pipeline was handed it: a native loop reports a connection once its first flight is in, or
   * after a wait. The outcome's start, duration and peek time, and the peek's deadline, count
   * from it. Absent: the pipeline starts at the accept (a Node socket's 'connection' event).
   */
  readonly acceptedAt?: number;
  /** Where the client was going before REDIRECT. */
  originalDst(): OriginalDestination;
  /** Reads the first flight under the cap and deadlines (peek-socket.ts's rules). */
  peek(step: PeekStepper<Peeked>, opts: PeekOptions): Promise<PeekOutcome<Peeked>>;
  /**
   * The peek's outcome when what already came settles it (the native loop's report carried the
   * whole first flight), else null, and then `peek` with the same step and options, called at
   * once, waits for the rest. Optional: without it, every peek is waited for.
   */
  peekNow?(step: PeekStepper<Peeked>, opts: PeekOptions): PeekOutcome<Peeked> | null;
  /**
   * Dials, re-checks the policy, then carries the bytes both ways until the connection ends. The
   * client's reset during the dial cancels it (`client-gone`); its FIN does only under `finEnds`
   * (a client that sent its request and half-closed still reads the answer).
   */
  connect(o: ConnectOptions): Promise<ConnectResult>;
  /**
   * Calls `gone` once when the client resets (or its socket fails) before the returned function
   * is called: for a wait of the pipeline's own (a lookup on the wire), so that a client that went
   * holds neither its place in the limits nor the log line until the wait is over. A FIN is going
   * away only under `finEnds` (ConnectOptions.finEnds says when), and then it is `fin`. Called at
   * once (in a microtask) when the client is already gone.
   */
  watchGone(gone: (how: GoneHow) => void, finEnds?: boolean): () => void;
  /** Answers a refused client and closes (lingering as refuse.ts says). */
  refuse(r: Refusal): void;
  /** Resets the client, if it is still open. */
  reset(): void;
}

/** The client on a Node socket: the JavaScript path. */
export class SocketClient implements ClientSide {
  readonly #socket: Socket;
  readonly #originalDst: (socket: Socket) => OriginalDestination;

  constructor(socket: Socket, originalDst: (socket: Socket) => OriginalDestination) {
    this.#socket = socket;
    this.#originalDst = originalDst;
    // Errors surface through the socket's state and the steps; an unhandled 'error' event must
    // never take the process down.
    socket.on('error', () => {});
    socket.setNoDelay(true);
  }

  get remoteAddress(): string {
    return socketAddress(this.#socket, 'remote')?.address ?? '';
  }

  get remotePort(): number {
    return socketAddress(this.#socket, 'remote')?.port ?? 0;
  }

  originalDst(): OriginalDestination {
    return this.#originalDst(this.#socket);
  }

  peek(step: PeekStepper<Peeked>, opts: PeekOptions): Promise<PeekOutcome<Peeked>> {
    return peekSocket(this.#socket, step, opts);
  }

  async connect(o: ConnectOptions): Promise<ConnectResult> {
    // The dial ends when the connection is closed (shutdown, a policy change) or the client goes.
    const stop = new AbortController();
    const closing = o.closing.signal;
    const onClosing = (): void => stop.abort();
    let gone: GoneHow | null = null;
    const unwatch = this.watchGone((how) => {
      gone = how;
      stop.abort();
    }, o.finEnds);
    if (closing.aborted) stop.abort();
    else closing.addEventListener('abort', onClosing, { once: true });
    const d = await dialFirst({
      addresses: o.addresses,
      port: o.port,
      connectTimeoutMs: o.connectTimeoutMs,
      signal: stop.signal,
      ...(o.parallel !== undefined ? { parallel: o.parallel } : {}),
    });
    unwatch();
    closing.removeEventListener('abort', onClosing);
    if (gone !== null) {
      // An attempt that connected in the same turn as the client's going carries nothing.
      if (d.ok) d.socket.destroy();
      return { kind: 'client-gone', how: gone, attempts: d.attempts };
    }
    if (!d.ok) return { kind: 'dial-failed', cause: d.cause, detail: d.detail, attempts: d.attempts };
    o.onConnected?.(d.address);
    const r = o.recheck(d.address);
    if (r.refuse) {
      d.socket.destroy();
      return { kind: 'refused', why: r.why, address: d.address, connectMs: d.connectMs, attempts: d.attempts };
    }
    const s = await splice(this.#socket, d.socket, { initial: o.initial, idleTimeoutMs: o.idleTimeoutMs, signal: o.closing.signal });
    return { kind: 'spliced', address: d.address, connectMs: d.connectMs, attempts: d.attempts, splice: s };
  }

  watchGone(gone: (how: GoneHow) => void, finEnds = false): () => void {
    const s = this.#socket;
    const already: GoneHow | null = s.destroyed ? 'reset' : finEnds && (finRead(s) || peerFinished(s)) ? 'fin' : null;
    if (already !== null) return goneAlready(gone, already);
    // Node reads the client from its accept on (a paused socket still fills its buffer), so a reset
    // destroys the socket ('close' after 'error'); a FIN only ends its readable side
    // (allowHalfOpen), and 'end' comes at once when nothing past the first flight waits unread.
    let over = false;
    const onClose = (): void => {
      if (over) return;
      over = true;
      gone('reset');
    };
    const onEnd = (): void => {
      if (over) return;
      over = true;
      gone('fin');
    };
    s.once('close', onClose);
    if (finEnds) s.once('end', onEnd);
    // Node watches nothing on a socket it stopped reading: its buffer full (the client sent more
    // than 64 KiB past its first flight) or its EOF read (the client's FIN). A reset there is
    // unseen, so while the wait lasts the socket's pending error is asked for every
    // RESET_LINGER_MS (SO_ERROR, as the native loop's client_left takes it): a reset after the
    // FIN is going away too here, as nothing was sent to the client that it could be refusing.
    // The same asks whether a FIN that ends it came behind bytes the client sent past its hello:
    // read (no 'end' until they are, and they are kept for the upstream), or, past Node's buffer,
    // still in the kernel's (Node never reads its EOF: the socket's TCP state says it came).
    let probe: NodeJS.Timeout | undefined;
    const ask = (): void => {
      if (s.destroyed || over) return;
      if (finEnds && (finRead(s) || peerFinished(s))) return onEnd();
      const code = takeSocketError(s);
      if (code === null) {
        probe = setTimeout(ask, RESET_LINGER_MS);
        return;
      }
      s.destroy(Object.assign(new Error(`read ${code}`), { code }));
    };
    probe = setTimeout(ask, RESET_LINGER_MS);
    return () => {
      over = true;
      clearTimeout(probe);
      s.off('close', onClose);
      s.off('end', onEnd);
    };
  }

  refuse(r: Refusal): void {
    switch (r.kind) {
      case 'reset':
        return refuseTcp(this.#socket);
      case 'drop':
        return dropSilently(this.#socket);
      case 'tls':
        return refuseTls(this.#socket, r.linger);
      case 'http':
        return refuseHttp(this.#socket, r.http);
    }
  }

  reset(): void {
    if (!this.#socket.destroyed) this.#socket.resetAndDestroy();
  }
}

/**
 * Whether Node has read the client's FIN: its readable side ended, whether or not what came before
 * it was read out yet (`_readableState.ended`, set as the EOF is read; the public readableEnded
 * waits for the buffer to be drained, which the bytes kept for the upstream never are).
 */
function finRead(s: Socket): boolean {
  if (s.readableEnded) return true;
  const state = (s as unknown as { _readableState?: { ended?: boolean } })._readableState;
  return state?.ended === true;
}
