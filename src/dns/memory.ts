// Which names gave which addresses, per sandbox (Cilium's DNS proxy keeps the same map): a
// connection that carries no name, to an address this sandbox was given for a name, is judged
// with that name. An entry lives for the TTL the sandbox was given plus a grace period (a
// client may open its connection just after the record expired), and each sandbox keeps a
// bounded number of addresses, the least recently given going first.

import type { LRUCache } from 'lru-cache';
import { growingLru } from '../util/lru.ts';

export interface ResolvedNamesOptions {
  /** Kept past a record's TTL (ms). */
  readonly graceMs: number;
  /** Addresses remembered per sandbox. */
  readonly perSandbox: number;
  /** A monotonic millisecond clock; tests replace it. */
  readonly clock?: () => number;
}

/** Names kept per address: a CDN address shared by many names keeps the latest few. */
const NAMES_PER_ADDRESS = 16;

type Names = Map<string, number>;

export interface RememberedAddress {
  readonly address: string;
  readonly names: readonly { readonly name: string; readonly expiresInMs: number }[];
}

export class ResolvedNames {
  readonly #graceMs: number;
  readonly #perSandbox: number;
  readonly #clock: () => number;
  readonly #bySandbox = new Map<string, LRUCache<string, Names>>();

  constructor(o: ResolvedNamesOptions) {
    this.#graceMs = Math.max(0, o.graceMs);
    this.#perSandbox = Math.max(1, o.perSandbox);
    this.#clock = o.clock ?? (() => performance.now());
  }

  /** Records that `sandbox` was given `addresses` (canonical text) for `name`, valid `ttlS` seconds. */
  remember(sandbox: string, name: string, addresses: readonly string[], ttlS: number): void {
    if (addresses.length === 0) return;
    let table = this.#bySandbox.get(sandbox);
    if (!table) {
      table = growingLru<string, Names>(this.#perSandbox);
      this.#bySandbox.set(sandbox, table);
    }
    const until = this.#clock() + Math.max(0, ttlS) * 1000 + this.#graceMs;
    for (const a of addresses) {
      let names = table.get(a);
      if (!names) {
        names = new Map();
        table.set(a, names);
      }
      names.delete(name);
      names.set(name, Math.max(until, names.get(name) ?? 0));
      if (names.size > NAMES_PER_ADDRESS) names.delete(names.keys().next().value!);
    }
  }

  /** The names `sandbox` was given `address` for and that have not expired, latest last. */
  namesFor(sandbox: string, address: string): string[] {
    const names = this.#bySandbox.get(sandbox)?.peek(address);
    if (!names) return [];
    const now = this.#clock();
    const out: string[] = [];
    for (const [n, until] of names) {
      if (until > now) out.push(n);
      else names.delete(n);
    }
    return out;
  }

  /**
   * When the first of the names `sandbox` was given `address` for expires (this clock's ms):
   * a verdict made on those names holds until then at the latest. Infinity when none is
   * remembered.
   */
  expiryOf(sandbox: string, address: string): number {
    const names = this.#bySandbox.get(sandbox)?.peek(address);
    let first = Infinity;
    if (names) for (const until of names.values()) if (until < first) first = until;
    return first;
  }

  /** Everything remembered for a sandbox, for the effective-policy view. */
  view(sandbox: string): RememberedAddress[] {
    const table = this.#bySandbox.get(sandbox);
    if (!table) return [];
    const now = this.#clock();
    const out: RememberedAddress[] = [];
    for (const [address, names] of table.entries()) {
      const live = [...names].filter(([, u]) => u > now).map(([name, u]) => ({ name, expiresInMs: Math.round(u - now) }));
      if (live.length > 0) out.push({ address, names: live });
    }
    return out.sort((a, b) => (a.address < b.address ? -1 : 1));
  }

  /** Drops what a removed sandbox was given. */
  forget(sandbox: string): void {
    this.#bySandbox.delete(sandbox);
  }

  /** Addresses remembered across every sandbox. */
  get total(): number {
    let n = 0;
    for (const t of this.#bySandbox.values()) n += t.size;
    return n;
  }

  /** The `n` sandboxes remembering the most addresses. */
  top(n: number): { sandbox: string; addresses: number }[] {
    return [...this.#bySandbox]
      .map(([sandbox, t]) => ({ sandbox, addresses: t.size }))
      .sort((a, b) => b.addresses - a.addresses || (a.sandbox < b.sandbox ? -1 : 1))
      .slice(0, Math.max(0, n));
  }
}
