// Live connections, so that shutdown can drain them and a policy change can re-judge them.

import type { ConnectionOutcome } from './outcome.ts';
import type { Facts } from '../policy/decide.ts';
import type { LingerHold } from './refuse.ts';

/**
 * How a connection's life ended outside the policy's verdict and the upstream: not redirected
 * at all, closed by a policy change, closed because the host gained its destination as an
 * address of its own (decide step 1a, net/host-addresses.ts), by shutdown, or a fault of
 * egressd's own.
 */
export type LifecycleReason = 'not-redirected' | 'policy-changed' | 'host-address-changed' | 'shutdown' | 'internal-error';

/** Why an open connection was judged again and refused: a policy change or a change of the host's own addresses. */
export type RejudgeReason = Extract<LifecycleReason, 'policy-changed' | 'host-address-changed'>;

/** Whether a close reason is a new verdict (a refusal, ended by `policy`) rather than egressd's shutdown. */
export function isRejudged(reason: LifecycleReason | undefined): reason is RejudgeReason {
  return reason === 'policy-changed' || reason === 'host-address-changed';
}

/**
 * What closes a connection wherever it is (dialing or splicing): a direct hook for the native
 * loops, an AbortSignal for Node's sockets. Both only once the connection is closed.
 */
export interface Closing {
  /** Whether the connection was closed (shutdown, a policy or host-address change). */
  readonly closed: boolean;
  /**
   * Run once, synchronously, when the connection is closed: the one step in progress that must
   * stop (the native loop's abort). Set and cleared by that step; null when none.
   */
  onClose: (() => void) | null;
  /** Aborts when the connection is closed; made on first use (Node's sockets take one). */
  readonly signal: AbortSignal;
}

/** One connection between accept and outcome. */
/** What the pipeline asks of admission's hold (limits/admission.ts's Ticket). */
export interface LiveTicket {
  decided(): void;
  /** A lingering place for the refusal, or null: the linger is given up. Absent: no bound. */
  linger?(): LingerHold | null;
  /** Up to `wanted` dial attempts beyond the first, each a descriptor: how many are granted. Absent: no bound. */
  attempts?(wanted: number): number;
  /** The dial is over: the attempts granted are given back. */
  attemptsDone?(): void;
}

export class LiveConnection implements Closing {
  readonly outcome: ConnectionOutcome;
  /** What the verdict was made on; null until the decision. */
  facts: Facts | null = null;
  /**
   * The alias chain the verdict was made on (the remembered name's, or the dial's lookup), judged
   * again with `facts` on a change (net/connection.ts deniedAlias); null when there is none.
   */
  aliases: readonly string[] | null = null;
  closeReason?: RejudgeReason | 'shutdown';
  onClose: (() => void) | null = null;
  /** When its splice ended (SpliceResult.endedAt, performance.now() ms), where the result came later; else absent. */
  endedAt?: number;
  #closed = false;
  // Made only when asked for: an AbortController and a listener on it cost more than the rest of
  // this record, and the native path never needs one.
  #controller: AbortController | null = null;

  /** Admission's hold on it, if any (told of the verdict, released at the end). */
  readonly ticket: LiveTicket | undefined;
  /** The registry's list (ConnectionRegistry's own: a link each way, and whether it is listed). */
  listPrev: LiveConnection | null = null;
  listNext: LiveConnection | null = null;
  listed = false;

  constructor(outcome: ConnectionOutcome, ticket?: LiveTicket) {
    this.outcome = outcome;
    this.ticket = ticket;
  }

  get closed(): boolean {
    return this.#closed;
  }

  get signal(): AbortSignal {
    if (this.#controller === null) {
      this.#controller = new AbortController();
      if (this.#closed) this.#controller.abort();
    }
    return this.#controller.signal;
  }

  /** Closes it: runs the step's hook and aborts the signal, once. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const hook = this.onClose;
    this.onClose = null;
    hook?.();
    this.#controller?.abort();
  }
}

/**
 * The live connections, as a list linked through the connections themselves: adding and removing
 * one allocates nothing and never rehashes a table (a Set grown and shrunk by every connection
 * was a cost of each; issue 12). Walked only by a policy change, shutdown and the tests.
 */
export class ConnectionRegistry {
  #head: LiveConnection | null = null;
  #tail: LiveConnection | null = null;
  #size = 0;
  #emptied: (() => void)[] = [];

  add(c: LiveConnection): LiveConnection {
    if (c.listed) return c;
    c.listed = true;
    c.listNext = null;
    c.listPrev = this.#tail;
    if (this.#tail !== null) this.#tail.listNext = c;
    else this.#head = c;
    this.#tail = c;
    this.#size++;
    return c;
  }

  remove(c: LiveConnection): void {
    if (c.listed) {
      c.listed = false;
      if (c.listPrev !== null) c.listPrev.listNext = c.listNext;
      else this.#head = c.listNext;
      if (c.listNext !== null) c.listNext.listPrev = c.listPrev;
      else this.#tail = c.listPrev;
      c.listPrev = c.listNext = null;
      this.#size--;
    }
    if (this.#size === 0 && this.#emptied.length > 0) {
      const waiting = this.#emptied;
      this.#emptied = [];
      for (const w of waiting) w();
    }
  }

  /**
   * Settles once no connection is left (at once when none is): the pipeline removes a
   * connection just before emitting its outcome, and the caller resumes after that outcome.
   */
  whenEmpty(): Promise<void> {
    if (this.#size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#emptied.push(resolve));
  }

  get size(): number {
    return this.#size;
  }

  /** The connections live now, oldest first (a snapshot: closing them while walking is safe). */
  [Symbol.iterator](): IterableIterator<LiveConnection> {
    const all: LiveConnection[] = [];
    for (let c = this.#head; c !== null; c = c.listNext) all.push(c);
    return all.values();
  }

  /** Closes one connection, recording why. */
  close(c: LiveConnection, reason: NonNullable<LiveConnection['closeReason']>): void {
    c.closeReason ??= reason;
    c.close();
  }

  closeAll(reason: NonNullable<LiveConnection['closeReason']>): number {
    let n = 0;
    for (const c of this) {
      this.close(c, reason);
      n++;
    }
    return n;
  }
}
