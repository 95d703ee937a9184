// What the connection pipeline (connection.ts) asks of a client connection, apart from where its
// socket lives: on a Node socket (SocketClient, below: the JavaScript path and the fallback), or
// in the native loops (native-setup.ts: accept, peek, dial and splice in C, issue 12). The
// pipeline's decisions — the policy at every stage, the outcome record — are the same code for
// both, so both paths pass the same tests.

import type { Socket } from 'node:net';
import type { Peeked } from '../peek/peek-steps.ts';
import type { PeekStep } from '../peek/peek-steps.ts';
import type { OriginalDestination } from './original-dst.ts';
import type { Closing } from './registry.ts';
import { peekSocket, type PeekOptions, type PeekOutcome } from './peek-socket.ts';
import { dialFirst, type Attempt } from './dial-first.ts';
import type { DialFailure } from './dial.ts';
import { splice, type SpliceResult } from './splice.ts';
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
  | {
      readonly kind: 'spliced';
      readonly address: string;
      readonly connectMs: number;
      readonly attempts: readonly Attempt[];
      readonly splice: SpliceResult;
    };

export interface ClientSide {
  /** The client's address and port, as Node spells them (an IPv4 client on a dual-stack socket: ::ffff:a.b.c.d). */
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** Where the client was going before REDIRECT. */
  originalDst(): OriginalDestination;
  /** Reads the first flight under the cap and deadlines (peek-socket.ts's rules). */
  peek(step: (buf: Buffer) => PeekStep<Peeked>, opts: PeekOptions): Promise<PeekOutcome<Peeked>>;
  /**
   * The peek's outcome when what already came settles it (the native loop's report carried the
   * whole first flight), else null, and then `peek` with the same step and options, called at
   * once, waits for the rest. Optional: without it, every peek is waited for.
   */
  peekNow?(step: (buf: Buffer) => PeekStep<Peeked>, opts: PeekOptions): PeekOutcome<Peeked> | null;
  /** Dials, re-checks the policy, then carries the bytes both ways until the connection ends. */
  connect(o: ConnectOptions): Promise<ConnectResult>;
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
    return this.#socket.remoteAddress ?? '';
  }

  get remotePort(): number {
    return this.#socket.remotePort ?? 0;
  }

  originalDst(): OriginalDestination {
    return this.#originalDst(this.#socket);
  }

  peek(step: (buf: Buffer) => PeekStep<Peeked>, opts: PeekOptions): Promise<PeekOutcome<Peeked>> {
    return peekSocket(this.#socket, step, opts);
  }

  async connect(o: ConnectOptions): Promise<ConnectResult> {
    const d = await dialFirst({
      addresses: o.addresses,
      port: o.port,
      connectTimeoutMs: o.connectTimeoutMs,
      signal: o.closing.signal,
      ...(o.parallel !== undefined ? { parallel: o.parallel } : {}),
    });
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
