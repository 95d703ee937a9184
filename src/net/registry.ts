// Live connections, so that shutdown can drain them and a policy change can re-judge them.

import type { ConnectionOutcome } from './outcome.ts';
import type { Facts } from '../policy/decide.ts';

/**
 * How a connection's life ended outside the policy's verdict and the upstream: not redirected
 * at all, closed by a policy change or by shutdown, or a fault of egressd's own.
 */
export type LifecycleReason = 'not-redirected' | 'policy-changed' | 'shutdown' | 'internal-error';

export interface LiveConnection {
  readonly outcome: ConnectionOutcome;
  /** Aborting closes the connection wherever it is: dialing or splicing. */
  readonly abort: AbortController;
  /** What the verdict was made on; null until the decision. */
  facts: Facts | null;
  closeReason?: Extract<LifecycleReason, 'policy-changed' | 'shutdown'>;
}

export class ConnectionRegistry {
  readonly #live = new Set<LiveConnection>();

  add(c: LiveConnection): LiveConnection {
    this.#live.add(c);
    return c;
  }

  remove(c: LiveConnection): void {
    this.#live.delete(c);
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
    c.abort.abort();
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
