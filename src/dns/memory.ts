// Which names gave which addresses, per sandbox (Cilium's DNS proxy keeps the same map): a
// connection that carries no name, to an address this sandbox was given for a name, is judged
// with that name. An entry lives for the TTL the sandbox was given plus a grace period (a
// client may open its connection just after the record expired), and each sandbox keeps a
// bounded number of addresses, and of bytes, the least recently given going first.
//
// The bytes, because the sandbox chooses what fills its table: the names it asks (random
// labels under an allowed wildcard, up to 253 characters) and, through a zone it runs, the
// addresses they give. Bounded by addresses alone, 16 names of 253 characters for each of 4096
// addresses held 20 MB of heap per sandbox, where one name of 20 characters an address holds
// 1.5 MB (Node 26, measured with a full table).
//
// Each name keeps the aliases its answer's chain ran through (CNAME and DNAME targets): the chain
// was judged when the answer was given, but a deny rule added since (API, reload) names a host
// behind the name, and a nameless connection to the address is judged on the chain again, as a
// live answer is (net/connection.ts).

import { LRUCache } from 'lru-cache';
import { judgedDnsName } from '../match/names.ts';
import { MAX_CHAIN_ALIASES } from '../net/dns-client.ts';

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

/**
 * A chain of more aliases is not remembered: the bound every path keeps (net/dns-client.ts
 * MAX_CHAIN_ALIASES, longer than resolvers follow), short enough that one name with its chain
 * fits an entry's bytes (MAX_ENTRY_BYTES).
 */
export const MAX_ALIASES = MAX_CHAIN_ALIASES;

/**
 * When a name's entry expires (this clock's ms), with the aliases its chain ran through when it
 * had any: a plain answer's name costs no more than its expiry.
 */
type Given = number | { readonly until: number; readonly aliases: readonly string[] };

type Names = Map<string, Given>;

const untilOf = (g: Given): number => (typeof g === 'number' ? g : g.until);
const aliasesOf = (g: Given): readonly string[] => (typeof g === 'number' ? NO_ALIASES : g.aliases);

/**
 * What an entry costs its sandbox's table, in bytes of heap as measured on Node 26 (tables of
 * 4096 addresses, 1 or 16 names of 20 or 253 characters each): about 300 an address with its
 * map of names, and 60 a name plus one a character.
 */
const ADDRESS_BYTES = 320;
const NAME_BYTES = 64;
/**
 * A name given through aliases: 88 for its record of expiry and chain, and 48 an alias plus one
 * a character (measured as above, tables of names with 1, 4 or 16 aliases of 20 or 253
 * characters: from 5% under to 10% over the heap they held). A plain answer's name costs none.
 */
const ALIASES_BYTES = 88;
const ALIAS_BYTES = 48;
/**
 * Each sandbox's table may take perSandbox × this many bytes (2 MiB at the default 4096): an
 * address given one or two names of ordinary length fits, so the count is what bounds a table
 * of those; addresses given many long names are fewer.
 */
const BYTES_PER_ADDRESS = 512;
/** The most one entry can cost (a table always has room for one: lru-cache refuses a bigger one). */
const MAX_ENTRY_BYTES = ADDRESS_BYTES + NAMES_PER_ADDRESS * (NAME_BYTES + 255);

const NO_ALIASES: readonly string[] = Object.freeze([]);

function entryBytes(names: Names): number {
  let n = ADDRESS_BYTES;
  for (const [name, g] of names) {
    n += NAME_BYTES + name.length;
    if (typeof g !== 'number') {
      n += ALIASES_BYTES;
      for (const a of g.aliases) n += ALIAS_BYTES + a.length;
    }
  }
  return n;
}

/** A name remembered for an address, with the aliases its chain ran through (in order). */
export interface RememberedName {
  readonly name: string;
  readonly aliases: readonly string[];
}

export interface RememberedAddress {
  readonly address: string;
  readonly names: readonly { readonly name: string; readonly expiresInMs: number; readonly aliases?: readonly string[] }[];
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

  /**
   * Records that `sandbox` was given `addresses` (canonical text) for `name`, valid `ttlS`
   * seconds, through the chain of `aliases` (as written in the answer, in order; none for a plain
   * answer; each kept as judgedDnsName reads it, an alias with no host name above it dropped). A
   * chain of more than MAX_ALIASES is not remembered: its addresses are then judged by address
   * alone, as any the sandbox learned elsewhere, rather than by a name whose chain was cut.
   */
  remember(sandbox: string, name: string, addresses: readonly string[], ttlS: number, aliases: readonly string[] = NO_ALIASES): void {
    if (addresses.length === 0) return;
    if (aliases.length > MAX_ALIASES) {
      // An earlier answer's shorter chain no longer is what the name leads to: the name is
      // forgotten for these addresses rather than judged by a chain it left.
      this.#forgetName(sandbox, name, addresses);
      return;
    }
    // Kept as judged (match/names.ts judgedDnsName), which is all a deny rule is matched against:
    // ASCII of at most 255 characters, one byte of heap each as entryBytes counts them. An alias as
    // the upstream wrote it may hold any byte, and dns-packet reads a label's bytes as UTF-8, an
    // invalid byte becoming U+FFFD: a two-byte string, twice the heap its length counts.
    const judged = new Set<string>();
    for (const a of aliases) {
      const j = judgedDnsName(a);
      if (j !== null) judged.add(j);
    }
    const chain = judged.size === 0 ? null : Object.freeze([...judged]);
    const had = this.#bySandbox.get(sandbox);
    // Swept first: an emptied table is dropped, and made again below.
    if (had) this.#sweep(sandbox, had);
    let table = this.#bySandbox.get(sandbox);
    if (!table) {
      // Bounded by bytes here and by count in the loop below: lru-cache's `max` would allocate
      // its bookkeeping for every slot up front (util/lru.ts).
      table = new LRUCache<string, Names>({ maxSize: Math.max(this.#perSandbox * BYTES_PER_ADDRESS, MAX_ENTRY_BYTES), sizeCalculation: entryBytes });
      this.#bySandbox.set(sandbox, table);
    }
    const until = this.#clock() + Math.max(0, ttlS) * 1000 + this.#graceMs;
    for (const a of addresses) {
      let names = table.get(a);
      if (!names) {
        names = new Map();
        if (table.size >= this.#perSandbox) table.pop();
      }
      // The later expiry stands: the sandbox may still hold the answer that gave the longer TTL.
      // The chain is the latest answer's: a deny rule is judged against what the name leads to now.
      const was = names.get(name);
      const latest = Math.max(until, was === undefined ? 0 : untilOf(was));
      names.delete(name);
      names.set(name, chain === null ? latest : { until: latest, aliases: chain });
      // The earliest given go first past 16 names, or past an entry's bytes (names with chains).
      while (names.size > 1 && (names.size > NAMES_PER_ADDRESS || entryBytes(names) > MAX_ENTRY_BYTES)) names.delete(names.keys().next().value!);
      // Stored again, new or not: lru-cache sizes an entry only as it is added (a set with the
      // same value keeps the old size), the least recently given going while the table is past
      // its bytes.
      table.delete(a);
      table.set(a, names);
    }
  }

  #forgetName(sandbox: string, name: string, addresses: readonly string[]): void {
    const table = this.#bySandbox.get(sandbox);
    if (!table) return;
    for (const a of addresses) {
      const names = table.peek(a);
      if (!names?.delete(name)) continue;
      // Stored again so that lru-cache sizes it anew (as remember does); an empty entry goes.
      table.delete(a);
      if (names.size > 0) table.set(a, names);
    }
  }

  /** The names `sandbox` was given `address` for and that have not expired, latest last. */
  namesFor(sandbox: string, address: string): string[] {
    return this.chainsFor(sandbox, address).map((g) => g.name);
  }

  /** namesFor, each name with the aliases its chain ran through. */
  chainsFor(sandbox: string, address: string): RememberedName[] {
    const names = this.#bySandbox.get(sandbox)?.peek(address);
    if (!names) return [];
    const now = this.#clock();
    const out: RememberedName[] = [];
    for (const [name, g] of names) {
      if (untilOf(g) > now) out.push({ name, aliases: aliasesOf(g) });
      else names.delete(name);
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
    if (names) for (const g of names.values()) first = Math.min(first, untilOf(g));
    return first;
  }

  /** Everything remembered for a sandbox, for the effective-policy view. */
  view(sandbox: string): RememberedAddress[] {
    const table = this.#bySandbox.get(sandbox);
    if (!table) return [];
    const now = this.#clock();
    const out: RememberedAddress[] = [];
    for (const [address, names] of table.entries()) {
      const live = [...names]
        .filter(([, g]) => untilOf(g) > now)
        .map(([name, g]) => ({ name, expiresInMs: Math.round(untilOf(g) - now), ...(typeof g === 'number' ? {} : { aliases: g.aliases }) }));
      if (live.length > 0) out.push({ address, names: live });
    }
    return out.sort((a, b) => (a.address < b.address ? -1 : 1));
  }

  /**
   * Drops the addresses of `sandbox` whose every name has expired, from the least recently given
   * on up to the first still remembered, and the table once empty. Nothing else takes them: a
   * sandbox that stopped asking kept its table's heap, and the count and `top` its addresses, for
   * as long as it lived. An expired address given after a live one waits for it: each goes at
   * most the listener's TTL cap (300 s) and graceMs after it was last given. O(addresses dropped).
   */
  #sweep(sandbox: string, table: LRUCache<string, Names>): void {
    const now = this.#clock();
    const gone: string[] = [];
    for (const [address, names] of table.rentries() as Iterable<[string, Names]>) {
      let live = false;
      for (const g of names.values()) {
        if (untilOf(g) > now) {
          live = true;
          break;
        }
      }
      if (live) break;
      gone.push(address);
    }
    for (const a of gone) table.delete(a);
    if (table.size === 0) this.#bySandbox.delete(sandbox);
  }

  /** Every sandbox's table, swept (#sweep). */
  #swept(): [string, LRUCache<string, Names>][] {
    for (const [sandbox, table] of [...this.#bySandbox]) this.#sweep(sandbox, table);
    return [...this.#bySandbox];
  }

  /** Drops what a removed sandbox was given. */
  forget(sandbox: string): void {
    this.#bySandbox.delete(sandbox);
  }

  /** What `sandbox`'s table costs, in the bytes its bound counts (entryBytes). */
  bytesOf(sandbox: string): number {
    const table = this.#bySandbox.get(sandbox);
    if (!table) return 0;
    this.#sweep(sandbox, table);
    return table.calculatedSize;
  }

  /** Addresses remembered across every sandbox. */
  get total(): number {
    let n = 0;
    for (const [, t] of this.#swept()) n += t.size;
    return n;
  }

  /** The `n` sandboxes remembering the most addresses. */
  top(n: number): { sandbox: string; addresses: number }[] {
    return this.#swept()
      .map(([sandbox, t]) => ({ sandbox, addresses: t.size }))
      .sort((a, b) => b.addresses - a.addresses || (a.sandbox < b.sandbox ? -1 : 1))
      .slice(0, Math.max(0, n));
  }
}
