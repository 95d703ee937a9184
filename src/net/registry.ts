// Live connections, so that shutdown can drain them and a policy change can re-judge them.

import type { ConnectionOutcome } from './outcome.ts';
import type { Facts } from '../policy/decide.ts';

/**
 * How a connection's life ended outside the policy's verdict and the upstream: not redirected
 * at all, closed by a policy change or by shutdown, or a fault of egressd's own.
 */
export type LifecycleReason = 'not-redirected' | 'policy-changed' | 'shutdown' | 'internal-error';

/**
 * What closes a connection wherever it is (dialing or splicing): a direct hook for the native
 * loops, an AbortSignal for Node's sockets. Both only once the connection is closed.
 */
export interface Closing {
  /** Whether the connection was closed (shutdown, a policy change). */
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
export class LiveConnection implements Closing {
  readonly outcome: ConnectionOutcome;
  /** What the verdict was made on; null until the decision. */
  facts: Facts | null = null;
  closeReason?: Extract<LifecycleReason, 'policy-changed' | 'shutdown'>;
  onClose: (() => void) | null = null;
  #closed = false;
  // Made only when asked for: an AbortController and a listener on it cost more than the rest of
  // this record, and the native path never needs one.
  #controller: AbortController | null = null;

  /** Admission's hold on it, if any (told of the verdict, released at the end). */
  readonly ticket: { decided(): void } | undefined;

  constructor(outcome: ConnectionOutcome, ticket?: { decided(): void }) {
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

export class ConnectionRegistry {
  readonly #live = new Set<LiveConnection>();
  #emptied: (() => void)[] = [];

  add(c: LiveConnection): LiveConnection {
    this.#live.add(c);
    return c;
  }

  remove(c: LiveConnection): void {
    this.#live.delete(c);
    if (this.#live.size === 0 && this.#emptied.length > 0) {
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
    if (this.#live.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#emptied.push(resolve));
  }

  get size(): number {
    return this.#live.size;
  }

  [Symbol.iterator](): IterableIterator<LiveConnection> {
    return this.#live.values();
  }

  /** Closes one connection, recording why. */
  close(c: LiveConnection, reason: NonNullable<LiveConnection['closeReason']>): void {
    c.closeReason ??= reason;
    c.close();
  }

  closeAll(reason: NonNullable<LiveConnection['closeReason']>): number {
    let n = 0;
    for (const c of this.#live) {
      this.close(c, reason);
      n++;
    }
    return n;
  }
}
