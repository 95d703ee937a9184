// The TCP connections of every DNS listener of the process, counted together. dns.limits
// tcpPerSandbox and tcpTotal bound them all (the default set-up listens on `0.0.0.0` and `[::]`,
// and a client may reach either), so a sandbox's bound, the connections held only to be refused,
// and the choice of a connection to close to make room all span the listeners: one listener's
// connections can no longer keep another's newcomers out while the sandbox holding the most sits
// on the first.

import type { Socket } from 'node:net';

/** A connection's descriptor in the budget, released once when it closes (idempotent). */
export interface TcpHold {
  release(): void;
}

/** One served TCP connection. */
export interface TcpConnection {
  readonly socket: Socket;
  readonly key: string;
  /** Queries read and not yet answered. */
  waiting: number;
  /** When it was accepted or last answered (performance.now()): idle once shedIdleMs ago with nothing waiting. */
  active: number;
  /** A query of it was answered: closing it between queries costs its client a reconnect, not an answer. */
  answered: boolean;
  hold: TcpHold | null;
}

export class DnsTcpConnections {
  /** The served connections (not those being refused), every listener's, oldest first. */
  readonly #served = new Set<TcpConnection>();
  readonly #perKey = new Map<string, number>();
  #refusing = 0;
  /** Connections being refused, by sandbox. */
  readonly #refusingBy = new Map<string, number>();

  /** Served connections `key` holds, on every listener. */
  held(key: string): number {
    return this.#perKey.get(key) ?? 0;
  }

  /** Connections held now only to answer REFUSED, every listener's. */
  get refusing(): number {
    return this.#refusing;
  }

  /** Of those, `key`'s. */
  refusingBy(key: string): number {
    return this.#refusingBy.get(key) ?? 0;
  }

  /** Counts a served connection until `remove`. */
  add(c: TcpConnection): void {
    this.#served.add(c);
    bump(this.#perKey, c.key, 1);
  }

  remove(c: TcpConnection): void {
    if (this.#served.delete(c)) bump(this.#perKey, c.key, -1);
  }

  /** Counts a connection held to be refused; the returned function uncounts it (once). */
  addRefusing(key: string): () => void {
    this.#refusing++;
    bump(this.#refusingBy, key, 1);
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.#refusing--;
      bump(this.#refusingBy, key, -1);
    };
  }

  /**
   * Closes a connection with no query waiting, on any listener, so that a new one whose sandbox
   * holds `mine` can have its descriptor: of the sandbox holding the most, its oldest idle for
   * `idleMs`, or answered when that sandbox holds at least two more than `mine` (RFC 7766 §6.2.3
   * lets a server close idle connections under pressure). Its descriptor is given back now
   * (destroy closes it at once). False when there is none.
   */
  shedFor(mine: number, idleMs: number): boolean {
    let pick: TcpConnection | null = null;
    let most = 0;
    const idleSince = performance.now() - idleMs;
    for (const c of this.#served) {
      if (c.waiting > 0 || c.socket.destroyed) continue;
      const n = this.#perKey.get(c.key) ?? 0;
      if (n <= most) continue;
      if (c.active <= idleSince || (c.answered && n >= mine + 2)) {
        pick = c;
        most = n;
      }
    }
    if (pick === null) return false;
    pick.hold?.release();
    pick.hold = null;
    pick.socket.destroy();
    return true;
  }
}

function bump(m: Map<string, number>, key: string, by: number): void {
  const n = (m.get(key) ?? 0) + by;
  if (n <= 0) m.delete(key);
  else m.set(key, n);
}
