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
// A refused connection that lingers after its answer (net/refuse.ts) holds one descriptor, half
// a connection's two, and counts so against both budgets. Lingering refusals may take half the
// descriptors of the budget and of a sandbox's share; past that the linger is given up
// (`linger` answers null) and the connection closed right after its answer. nginx likewise
// closes lingering connections first once fewer than 1/16 of its worker_connections are free
// (ngx_drain_connections; a lingering close is a reusable connection since 1.19.2).
// (refusal.lingerMaxConnections, in net/refuse.ts, shortens lingers past it to 2 s.)
// A dial to several addresses may hold more than one upstream socket at once (RFC 8305 §5
// staggered attempts: up to SL_MAX_ADDRS, for as long as the connect timeout). Each attempt past
// a connection's first is a descriptor too, granted from the same budget and share (`attempts`)
// and given back when the dial ends; a dial granted none tries its addresses one at a time.
// A TCP connection to the DNS listener (dnsTcp) is one descriptor too, from the same budget and
// share; all of them together may take a quarter of the budget's descriptors (and
// dns.limits.tcpTotal), those held only to answer REFUSED another eighth, so that DNS can never
// take the proxied connections' descriptors, nor they DNS's entirely.
// A source that belongs to no sandbox is accounted under the network block holding it (its /64
// for IPv6 by default: match/tenant-key.ts), with the default limits.

import type { SandboxLimits } from './limits-body.ts';

export type ShedReason = 'sandbox-limit' | 'global-limit' | 'overload';

export interface Ticket {
  /** The verdict is made: the connection no longer counts as undecided. Idempotent. */
  decided(): void;
  /**
   * The connection was refused and would linger (holding its client descriptor): a hold to
   * release once it closes, or null when the sandbox or the process has no room for it (the
   * linger is given up). Outlives `release`.
   */
  linger(): LingerHold | null;
  /**
   * Grants up to `wanted` dial attempts beyond the connection's first, each one descriptor, from
   * what the process's budget and the sandbox's share leave free; returns how many (0 when none
   * is free). The grant is held until attemptsDone or release.
   */
  attempts(wanted: number): number;
  /** The dial ended (an address answered, or none did): its extra attempts are given back. Idempotent. */
  attemptsDone(): void;
  /** The connection is closed. Idempotent. */
  release(): void;
}

/** A lingering refusal's descriptor in the budget; `release` once, when it closes. Idempotent. */
export interface LingerHold {
  release(): void;
}

/** A DNS TCP connection's descriptor in the budget; `release` once, when it closes. Idempotent. */
export interface DnsTcpHold {
  release(): void;
}

/**
 * Why a DNS TCP connection got no descriptor: its sandbox's share of the budget (sandbox), the
 * DNS listener's total (total: dns.limits.tcpTotal) or the budget's part for DNS (budget).
 */
export type DnsTcpRefusal = 'sandbox' | 'total' | 'budget';

/** Why a linger was given up: its sandbox's share, or the process's budget. */
export type LingerGivenUp = 'sandbox' | 'global';

export type Admitted = { ok: true; ticket: Ticket } | { ok: false; reason: ShedReason; detail: string };

export interface AdmissionOptions {
  /** Connections the process may hold in total (the descriptor budget), or null for no cap. */
  readonly globalConnections: number | null;
  /** The fraction (0..1] of globalConnections one sandbox may hold. */
  readonly sandboxShare: number;
  /**
   * A monotonic ms clock for the buckets' refill (default performance.now(): on the wall clock, a
   * step back put every bucket that refilled across it into debt, its sandbox refused for the
   * step's length); tests replace it to move time without waiting.
   */
  readonly now?: () => number;
  /** Told of each linger given up, and why. */
  readonly onLingerGivenUp?: (why: LingerGivenUp) => void;
  /** Told how many dial attempts a dial asked for and was not granted (attemptsFor), when any. */
  readonly onAttemptsWithheld?: (n: number) => void;
}

interface Account {
  open: number;
  undecided: number;
  /** Refused connections of this key lingering (one descriptor each). */
  lingering: number;
  /** Dial attempts beyond their connection's first, held by this key's dials (one descriptor each). */
  attempts: number;
  /** TCP connections of this key to the DNS listener (one descriptor each). */
  dnsTcp: number;
  tokens: number;
  /** When `tokens` was last refilled (AdmissionOptions.now, ms). */
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
  #lingering = 0;
  #attempts = 0;
  #dnsTcp = 0;
  /** Of #dnsTcp, those held only to answer REFUSED. */
  #dnsRefusing = 0;

  constructor(opts: AdmissionOptions) {
    this.#opts = opts;
    this.#now = opts.now ?? (() => performance.now());
  }

  get open(): number {
    return this.#open;
  }

  get undecided(): number {
    return this.#undecided;
  }

  /** Dial attempts beyond their connections' first, held now, all keys together. */
  get attemptsHeld(): number {
    return this.#attempts;
  }

  /** TCP connections to the DNS listener held now, all keys together (refusing ones included). */
  get dnsTcpHeld(): number {
    return this.#dnsTcp;
  }

  /** Refused connections lingering now, all keys together. */
  get lingering(): number {
    return this.#lingering;
  }

  get globalConnections(): number | null {
    return this.#opts.globalConnections;
  }

  /**
   * The descriptor budget has no room for a new connection (admit refuses `global-limit`):
   * counted as admit counts it, lingering refusals and extra dial attempts included.
   */
  get budgetFull(): boolean {
    const g = this.#opts.globalConnections;
    return g !== null && this.#used() + 2 > 2 * g;
  }

  /** Descriptors of the budget in use: two a connection, one a lingering refusal, an extra dial attempt, a DNS TCP connection. */
  #used(): number {
    return 2 * this.#open + this.#lingering + this.#attempts + this.#dnsTcp;
  }

  /** The same, of one key's account. */
  static #usedBy(a: Account): number {
    return 2 * a.open + a.lingering + a.attempts + a.dnsTcp;
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
      a = { open: 0, undecided: 0, lingering: 0, attempts: 0, dnsTcp: 0, tokens: limits.burst, stamp: now, burst: limits.burst, perSecond: limits.perSecond };
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
    // Refused past this point, the connection took no token: an account holding nothing with a
    // full bucket is forgotten at once, not at the next sweep, so that sources rotated through an
    // IPv6 prefix while egressd sheds (under memory pressure, of all times) leave nothing behind.
    if (overloaded) return this.#refusedHolding(key, a, refused('overload', 'memory pressure: new connections are shed'));
    const g = this.#opts.globalConnections;
    // In descriptors: two a connection, one a lingering refusal, an extra dial attempt, a DNS TCP connection.
    if (this.budgetFull)
      return this.#refusedHolding(
        key,
        a,
        refused(
          'global-limit',
          `${this.#open} connections open, ${this.#lingering} refusals lingering, ${this.#attempts} extra dial attempts and ${this.#dnsTcp} DNS TCP connections in total (descriptor budget ${g})`,
        ),
      );
    const share = this.sandboxShare;
    if (share !== null && Admission.#usedBy(a) + 2 > 2 * share)
      return this.#refusedHolding(
        key,
        a,
        refused(
          'global-limit',
          `${a.open} connections open, ${a.lingering} refusals lingering, ${a.attempts} extra dial attempts and ${a.dnsTcp} DNS TCP connections, this sandbox's share of the descriptor budget`,
        ),
      );
    a.tokens -= 1;
    a.open++;
    a.undecided++;
    this.#open++;
    this.#undecided++;
    return { ok: true, ticket: this.#ticket(key, a) };
  }

  /** `r`, once `key`'s account is forgotten if it can be (#forget). */
  #refusedHolding(key: string, a: Account, r: Admitted): Admitted {
    this.#forget(key, a);
    return r;
  }

  #ticket(key: string, a: Account): Ticket {
    return new AccountTicket(this, key, a);
  }

  /** A ticket's verdict came: one fewer undecided. */
  decidedOne(a: Account): void {
    a.undecided--;
    this.#undecided--;
  }

  /**
   * Up to `wanted` extra dial attempts for one of `a`'s connections: what the process's budget
   * and `a`'s share leave free, in descriptors as admit counts them.
   */
  attemptsFor(a: Account, wanted: number): number {
    let k = Math.max(0, Math.floor(wanted));
    const g = this.#opts.globalConnections;
    if (g !== null) k = Math.min(k, 2 * g - this.#used());
    const share = this.sandboxShare;
    if (share !== null) k = Math.min(k, 2 * share - Admission.#usedBy(a));
    k = Math.max(0, k);
    if (k < wanted) this.#opts.onAttemptsWithheld?.(Math.floor(wanted) - k);
    a.attempts += k;
    this.#attempts += k;
    return k;
  }

  /** `k` extra dial attempts of `a` are over. */
  attemptsBack(a: Account, k: number): void {
    a.attempts -= k;
    this.#attempts -= k;
  }

  /** A ticket's connection closed: one fewer open, and the account forgotten once it can be. */
  releasedOne(key: string, a: Account): void {
    a.open--;
    this.#open--;
    this.#forget(key, a);
  }

  /**
   * A place for one more lingering refusal of `a`, or null (told to onLingerGivenUp).
   * Lingering refusals may take half the descriptors of the process's budget (`g` of `2g`) and
   * half those of a sandbox's share: the other half
   * stays for live connections, so a sandbox whose refused clients never close still reaches
   * its allowed destinations. The descriptor must also fit in the budget and the share as
   * admit counts them. `asking`: the refusing connection is still open (its ticket not yet
   * released); its two descriptors are then left out, as the linger keeps only its client's
   * and the ticket is released right after.
   */
  lingerOne(key: string, a: Account, asking: boolean): LingerHold | null {
    const mine = asking ? 2 : 0;
    const g = this.#opts.globalConnections;
    if (g !== null && (this.#lingering >= g || this.#used() - mine + 1 > 2 * g)) {
      this.#opts.onLingerGivenUp?.('global');
      return null;
    }
    const share = this.sandboxShare;
    if (share !== null && (a.lingering >= share || Admission.#usedBy(a) - mine + 1 > 2 * share)) {
      this.#opts.onLingerGivenUp?.('sandbox');
      return null;
    }
    a.lingering++;
    this.#lingering++;
    let held = true;
    return {
      release: () => {
        if (!held) return;
        held = false;
        a.lingering--;
        this.#lingering--;
        this.#forget(key, a);
      },
    };
  }

  /**
   * A descriptor for one TCP connection of `key` to the DNS listener, or why not: the budget's
   * part for DNS (a quarter of its descriptors, and `total` connections) and `key`'s share must
   * have room for it. `refusing`: the connection is held only to answer its query REFUSED (for at
   * most a few seconds): it needs no room under `total`, but refusing ones may take only an eighth
   * of the budget's descriptors besides.
   */
  dnsTcp(key: string, total: number, refusing: boolean): DnsTcpHold | DnsTcpRefusal {
    const g = this.#opts.globalConnections;
    if (refusing) {
      if (g !== null && this.#dnsRefusing + 1 > Math.max(1, Math.floor((2 * g) / 8))) return 'budget';
    } else {
      if (this.#dnsTcp - this.#dnsRefusing >= total) return 'total';
      if (g !== null && this.#dnsTcp - this.#dnsRefusing + 1 > Math.max(1, Math.floor((2 * g) / 4))) return 'budget';
    }
    if (g !== null && this.#used() + 1 > 2 * g) return 'budget';
    let a = this.#accounts.get(key);
    const share = this.sandboxShare;
    if (share !== null && a !== undefined && Admission.#usedBy(a) + 1 > 2 * share) return 'sandbox';
    if (a === undefined) {
      // A full bucket whatever the key's limits: admit clamps it to the burst on its first connection.
      a = { open: 0, undecided: 0, lingering: 0, attempts: 0, dnsTcp: 0, tokens: Infinity, stamp: this.#now(), burst: 0, perSecond: 0 };
      this.#accounts.set(key, a);
    }
    const account = a;
    account.dnsTcp++;
    this.#dnsTcp++;
    if (refusing) this.#dnsRefusing++;
    let held = true;
    return {
      release: () => {
        if (!held) return;
        held = false;
        account.dnsTcp--;
        this.#dnsTcp--;
        if (refusing) this.#dnsRefusing--;
        this.#forget(key, account);
      },
    };
  }

  /** Forgets an account holding nothing whose bucket has refilled (its own or a newer one's). */
  #forget(key: string, a: Account): void {
    if (a.open === 0 && a.lingering === 0 && a.dnsTcp === 0 && this.#accounts.get(key) === a && this.#full(a, this.#now())) this.#accounts.delete(key);
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
      if (a.open === 0 && a.lingering === 0 && a.dnsTcp === 0 && this.#full(a, now)) {
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
  /** Extra dial attempts held (attempts). */
  #attempts = 0;

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

  linger(): LingerHold | null {
    return this.#admission.lingerOne(this.#key, this.#account, this.#open);
  }

  attempts(wanted: number): number {
    if (!this.#open) return 0;
    this.attemptsDone();
    this.#attempts = this.#admission.attemptsFor(this.#account, wanted);
    return this.#attempts;
  }

  attemptsDone(): void {
    if (this.#attempts === 0) return;
    this.#admission.attemptsBack(this.#account, this.#attempts);
    this.#attempts = 0;
  }

  release(): void {
    if (!this.#open) return;
    this.decided();
    this.attemptsDone();
    this.#open = false;
    this.#admission.releasedOne(this.#key, this.#account);
  }
}

function refused(reason: ShedReason, detail: string): Admitted {
  return { ok: false, reason, detail };
}
