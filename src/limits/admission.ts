// Admission at accept: whether a new connection may be taken on, decided before a byte is read
// and never queued. Past a limit the caller resets the connection at once; connections already
// admitted (peeking, dialing, spliced) are never touched by it.
//
// In order, a connection is refused with
//   sandbox-limit  when its sandbox already holds `connections` open, or `undecided` still
//                  being peeked, or has no token left in its bucket (`perSecond`, `burst`);
//   overload       when the memory guard is shedding (limits/overload.ts);
//   global-limit   when the process holds its descriptor budget of connections, or this one
//                  sandbox already holds its share of that budget (so that one sandbox can
//                  never take the last descriptors from the others).
// A source that belongs to no sandbox is accounted on its own (keyed by its address), with
// the default limits.

import type { SandboxLimits } from './limits-body.ts';

export type ShedReason = 'sandbox-limit' | 'global-limit' | 'overload';

export interface Ticket {
  /** The verdict is made: the connection no longer counts as undecided. Idempotent. */
  decided(): void;
  /** The connection is closed. Idempotent. */
  release(): void;
}

export type Admitted = { ok: true; ticket: Ticket } | { ok: false; reason: ShedReason; detail: string };

export interface AdmissionOptions {
  /** Connections the process may hold in total (the descriptor budget), or null for no cap. */
  readonly globalConnections: number | null;
  /** The fraction (0..1] of globalConnections one sandbox may hold. */
  readonly sandboxShare: number;
  readonly now?: () => number;
}

interface Account {
  open: number;
  undecided: number;
  tokens: number;
  /** When `tokens` was last refilled, ms. */
  stamp: number;
  burst: number;
  perSecond: number;
}

export interface AccountView {
  readonly key: string;
  readonly open: number;
  readonly undecided: number;
}

export class Admission {
  readonly #opts: AdmissionOptions;
  readonly #now: () => number;
  readonly #accounts = new Map<string, Account>();
  #open = 0;
  #undecided = 0;

  constructor(opts: AdmissionOptions) {
    this.#opts = opts;
    this.#now = opts.now ?? Date.now;
  }

  get open(): number {
    return this.#open;
  }

  get undecided(): number {
    return this.#undecided;
  }

  get globalConnections(): number | null {
    return this.#opts.globalConnections;
  }

  /** The most connections one sandbox may hold because of the global budget, or null. */
  get sandboxShare(): number | null {
    const g = this.#opts.globalConnections;
    return g === null ? null : Math.max(1, Math.floor(g * this.#opts.sandboxShare));
  }

  /** Tries to admit one connection of `key` (a sandbox id, or `source:ADDR`). */
  admit(key: string, limits: SandboxLimits, overloaded: boolean): Admitted {
    const now = this.#now();
    let a = this.#accounts.get(key);
    if (a === undefined) {
      a = { open: 0, undecided: 0, tokens: limits.burst, stamp: now, burst: limits.burst, perSecond: limits.perSecond };
      this.#accounts.set(key, a);
    } else {
      a.tokens = Math.min(limits.burst, a.tokens + ((now - a.stamp) * limits.perSecond) / 1000);
      a.stamp = now;
      a.burst = limits.burst;
      a.perSecond = limits.perSecond;
    }
    if (a.open >= limits.connections) return refused('sandbox-limit', `${a.open} connections open (limit ${limits.connections})`);
    if (a.undecided >= limits.undecided) return refused('sandbox-limit', `${a.undecided} connections undecided (limit ${limits.undecided})`);
    if (a.tokens < 1) return refused('sandbox-limit', `more than ${limits.perSecond} new connections a second (burst ${limits.burst})`);
    if (overloaded) return refused('overload', 'memory pressure: new connections are shed');
    const g = this.#opts.globalConnections;
    if (g !== null && this.#open >= g) return refused('global-limit', `${this.#open} connections open in total (descriptor budget ${g})`);
    const share = this.sandboxShare;
    if (share !== null && a.open >= share) return refused('global-limit', `${a.open} connections open, this sandbox's share of the descriptor budget`);
    a.tokens -= 1;
    a.open++;
    a.undecided++;
    this.#open++;
    this.#undecided++;
    return { ok: true, ticket: this.#ticket(key, a) };
  }

  #ticket(key: string, a: Account): Ticket {
    return new AccountTicket(this, key, a);
  }

  /** A ticket's verdict came: one fewer undecided. */
  decidedOne(a: Account): void {
    a.undecided--;
    this.#undecided--;
  }

  /** A ticket's connection closed: one fewer open, and the account forgotten once it can be. */
  releasedOne(key: string, a: Account): void {
    a.open--;
    this.#open--;
    if (a.open === 0 && this.#accounts.get(key) === a && this.#full(a, this.#now())) this.#accounts.delete(key);
  }

  /** Whether the bucket has refilled by now: forgetting the account then loses nothing. */
  #full(a: Account, now: number): boolean {
    return a.tokens + ((now - a.stamp) * a.perSecond) / 1000 >= a.burst;
  }

  /** Drops accounts with nothing open whose bucket is full again, so memory stays flat. */
  sweep(): number {
    const now = this.#now();
    let n = 0;
    for (const [k, a] of this.#accounts) {
      if (a.open === 0 && this.#full(a, now)) {
        this.#accounts.delete(k);
        n++;
      }
    }
    return n;
  }

  get accounts(): number {
    return this.#accounts.size;
  }

  /** One key's current counts (zero when it holds nothing). */
  view(key: string): AccountView {
    const a = this.#accounts.get(key);
    return { key, open: a?.open ?? 0, undecided: a?.undecided ?? 0 };
  }

  /** The `n` keys holding the most open connections, most first. */
  top(n: number): AccountView[] {
    const all: AccountView[] = [];
    for (const [key, a] of this.#accounts) if (a.open > 0) all.push({ key, open: a.open, undecided: a.undecided });
    return all.sort((x, y) => y.open - x.open || (x.key < y.key ? -1 : 1)).slice(0, n);
  }
}

/** One admitted connection's hold on its account: decided and released once each. */
class AccountTicket implements Ticket {
  readonly #admission: Admission;
  readonly #key: string;
  readonly #account: Account;
  #undecided = true;
  #open = true;

  constructor(admission: Admission, key: string, account: Account) {
    this.#admission = admission;
    this.#key = key;
    this.#account = account;
  }

  decided(): void {
    if (!this.#undecided) return;
    this.#undecided = false;
    this.#admission.decidedOne(this.#account);
  }

  release(): void {
    if (!this.#open) return;
    this.decided();
    this.#open = false;
    this.#admission.releasedOne(this.#key, this.#account);
  }
}

function refused(reason: ShedReason, detail: string): Admitted {
  return { ok: false, reason, detail };
}
