// A policy compiled once per change into the structures decide() searches: domain patterns
// into a reverse-label trie, CIDRs into one prefix trie per family, ports into sorted
// segments. Compiling 100,000 domains and 100,000 CIDRs takes a fraction of a second
// (bench/decide.ts); deciding then walks each structure once.

import { CidrTrie } from '../match/cidr-trie.ts';
import { DomainTrie } from '../match/domain-trie.ts';
import { parseCidr, type IpFamily } from '../match/ip.ts';
import type { NameSource, Policy, PortRange, Side } from './model.ts';
import { RuleCounts } from './rule-hits.ts';
import { asIPv4IfMapped, type ProtectedRanges } from '../match/protected.ts';
import { flatText } from '../util/flat-text.ts';

/** Destination ports as sorted, disjoint segments, each labelled with one range holding it. */
export class PortTable {
  /** Segment i covers ports [starts[i], starts[i + 1]). */
  readonly #starts: Int32Array;
  /** The index of a listed range holding segment i, or -1. */
  readonly #labels: Int32Array;

  constructor(ranges: readonly PortRange[]) {
    const order = ranges.map((_, i) => i).sort((a, b) => ranges[a]!.from - ranges[b]!.from);
    const bounds = new Set<number>([0]);
    for (const r of ranges) {
      bounds.add(r.from);
      bounds.add(r.to + 1);
    }
    const points = [...bounds].sort((a, b) => a - b);
    const starts: number[] = [];
    const labels: number[] = [];
    let next = 0;
    let best = -1;
    for (const s of points) {
      // The range reaching furthest among those begun by s: if it does not hold s, none does.
      while (next < order.length && ranges[order[next]!]!.from <= s) {
        const i = order[next++]!;
        if (best < 0 || ranges[i]!.to > ranges[best]!.to) best = i;
      }
      const label = best >= 0 && ranges[best]!.to >= s ? best : -1;
      if (labels.length > 0 && labels[labels.length - 1] === label) continue;
      starts.push(s);
      labels.push(label);
    }
    this.#starts = Int32Array.from(starts);
    this.#labels = Int32Array.from(labels);
  }

  /** The index of a listed range holding `port`, or -1. */
  find(port: number): number {
    const starts = this.#starts;
    let lo = 0;
    let hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid]! <= port) lo = mid;
      else hi = mid - 1;
    }
    return this.#labels[lo]!;
  }
}

export type SideName = 'allowed' | 'denied';

/** Finds the most specific of a side's domain patterns matching a normalized name. */
export interface DomainMatcher {
  /** The index of the most specific matching pattern, or -1. */
  match(name: string): number;
}

/**
 * Domain patterns compiled once and joined to the allow side of many policies: the
 * essential-services catalog, which every sandbox with it on shares instead of compiling a copy
 * of its own (about 150 patterns; at 10,000 sandboxes a copy each cost seconds of start-up and
 * hundreds of MiB, bench/RESULTS.md). Immutable.
 */
export class SharedDomains {
  readonly patterns: readonly string[];
  readonly trie: DomainTrie;
  /** Rule texts by side name, built on first use: `allowed_domains "pypi.org"`. */
  readonly #rules = new Map<SideName, (string | undefined)[]>();

  /** `patterns` are normalized (names.ts normalizePattern). */
  constructor(patterns: readonly string[]) {
    this.patterns = Object.freeze([...patterns]);
    this.trie = new DomainTrie();
    this.patterns.forEach((d, i) => this.trie.insert(d, i));
  }

  rule(name: SideName, i: number): string {
    let rules = this.#rules.get(name);
    if (rules === undefined) this.#rules.set(name, (rules = new Array<string | undefined>(this.patterns.length)));
    return (rules[i] ??= flatText([name, '_domains ', JSON.stringify(this.patterns[i])]));
  }
}

/**
 * A side's own domain patterns joined to shared ones, matched as if they were one list with the
 * side's own first: shared pattern i answers as index `offset + i`, and when both match, the
 * more specific pattern wins (the side's own on a tie, as the first listed does in one trie).
 */
class JoinedDomains implements DomainMatcher {
  readonly #own: DomainTrie | null;
  readonly #shared: SharedDomains;
  readonly #offset: number;

  constructor(own: DomainTrie | null, shared: SharedDomains, offset: number) {
    this.#own = own;
    this.#shared = shared;
    this.#offset = offset;
  }

  match(name: string): number {
    const shared = this.#shared.trie.match(name);
    const own = this.#own === null ? -1 : this.#own.match(name);
    if (shared < 0) return own;
    if (own < 0) return this.#offset + shared;
    return this.#own!.specificity(name) >= this.#shared.trie.specificity(name) ? own : this.#offset + shared;
  }
}

/**
 * One side of a compiled policy, with shared domain patterns joined to its own when given
 * (they count as listed domains: a side that lists only ports then restricts hosts too). Rule
 * texts are built on first use and kept.
 */
export class CompiledSide {
  readonly side: Side;
  readonly name: SideName;
  /** Domains or CIDRs listed: the side restricts hosts. */
  readonly hasHosts: boolean;
  /** Nothing listed at all: the side matches no connection. */
  readonly empty: boolean;
  readonly domains: DomainMatcher | null;
  readonly #joined: SharedDomains | null;
  readonly ports: PortTable | null;
  /** The ports on which a domain entry (own or joined) matches (Side.domainPorts); null: every port. */
  readonly domainPorts: PortTable | null;
  readonly #v4: CidrTrie | null;
  readonly #v6: CidrTrie | null;
  /** Per CIDR: whether it lies wholly inside the protected ranges and so unlocks them. */
  readonly #unlocks: Uint8Array | null;
  // Pre-sized: filling a large empty array at scattered indices would turn it into a dictionary.
  readonly #domainRules: (string | undefined)[];
  readonly #cidrRules: (string | undefined)[];
  readonly #portRules: (string | undefined)[];

  constructor(side: Side, name: SideName, protectedSet: ProtectedRanges | null, joined: SharedDomains | null = null) {
    this.side = side;
    this.name = name;
    this.#joined = joined !== null && joined.patterns.length > 0 ? joined : null;
    this.hasHosts = side.domains.length > 0 || side.cidrs.length > 0 || this.#joined !== null;
    this.empty = !this.hasHosts && side.ports.length === 0;
    this.#domainRules = new Array<string | undefined>(side.domains.length);
    this.#cidrRules = new Array<string | undefined>(side.cidrs.length);
    this.#portRules = new Array<string | undefined>(side.ports.length);

    let own: DomainTrie | null = null;
    if (side.domains.length > 0) {
      own = new DomainTrie();
      side.domains.forEach((d, i) => own!.insert(d, i));
    }
    this.domains = this.#joined === null ? own : new JoinedDomains(own, this.#joined, side.domains.length);

    let v4: CidrTrie | null = null;
    let v6: CidrTrie | null = null;
    const unlocks = protectedSet !== null && side.cidrs.length > 0 ? new Uint8Array(side.cidrs.length) : null;
    side.cidrs.forEach((text, i) => {
      const r = parseCidr(text);
      // The model holds validated CIDRs (validate.ts); one that is not is a programming error.
      if (!r.ok) throw new TypeError(`${name}_cidrs[${i}]: ${r.reason}`);
      const b = asIPv4IfMapped(r.block);
      if (b.family === 4) (v4 ??= new CidrTrie(4)).insert(b.words, b.prefix, i);
      else (v6 ??= new CidrTrie(6)).insert(b.words, b.prefix, i);
      if (unlocks !== null) unlocks[i] = protectedSet!.coversBlock(b) ? 1 : 0;
    });
    this.#v4 = v4;
    this.#v6 = v6;
    this.#unlocks = unlocks;

    for (const [i, p] of side.ports.entries()) {
      if (!Number.isInteger(p.from) || !Number.isInteger(p.to) || p.from < 1 || p.to > 65535 || p.from > p.to) {
        throw new TypeError(`${name}_ports[${i}]: ${JSON.stringify(p)} is not a port range within 1-65535`);
      }
    }
    this.ports = side.ports.length > 0 ? new PortTable(side.ports) : null;
    const dp = side.domainPorts;
    if (dp !== undefined) {
      for (const [i, p] of dp.entries()) {
        if (
          !Number.isInteger(p.from) ||
          !Number.isInteger(p.to) ||
          p.from < 1 ||
          p.to > 65535 ||
          p.from > p.to ||
          (p.via !== undefined && p.via !== 'tls' && p.via !== 'http')
        ) {
          throw new TypeError(`${name}_domain_ports[${i}]: ${JSON.stringify(p)} is not a port range within 1-65535`);
        }
      }
    }
    // An empty list leaves domains matching on no port: a table that finds none.
    this.domainPorts = dp === undefined ? null : new PortTable(dp);
  }

  /**
   * Whether the side's domain entries can match a name on `port` (Side.domainPorts), read as
   * `via` says (a TLS SNI, an HTTP Host, egressd's DNS memory). Without `via` (a name asked about
   * by the check API, the CLI or the DNS listener's "could it reach") a range bound to a protocol
   * counts: the name could come over it.
   */
  namesOn(port: number, via?: NameSource): boolean {
    if (this.domainPorts === null) return true;
    const i = this.domainPorts.find(port);
    if (i < 0) return false;
    const bound = this.side.domainPorts![i]!.via;
    return bound === undefined || via === undefined || via === bound;
  }

  /** The shared patterns joined to this side's own domains, or null. */
  get joined(): SharedDomains | null {
    return this.#joined;
  }

  /** The index of the longest listed CIDR holding the address, or -1. */
  cidrIndex(family: IpFamily, words: Uint32Array): number {
    const t = family === 4 ? this.#v4 : this.#v6;
    return t === null ? -1 : t.longest(words);
  }

  /** Whether CIDR `i` lies wholly inside the protected ranges. */
  unlocks(i: number): boolean {
    return this.#unlocks !== null && this.#unlocks[i] === 1;
  }

  /** Index `i` past the side's own domains names a joined pattern (JoinedDomains). */
  domainRule(i: number): string {
    const own = this.side.domains.length;
    if (i >= own && this.#joined !== null) return this.#joined.rule(this.name, i - own);
    return (this.#domainRules[i] ??= flatText([this.name, '_domains ', JSON.stringify(this.side.domains[i])]));
  }

  cidrRule(i: number): string {
    return (this.#cidrRules[i] ??= flatText([this.name, '_cidrs ', JSON.stringify(this.side.cidrs[i])]));
  }

  portRule(i: number): string {
    const p = this.side.ports[i]!;
    return (this.#portRules[i] ??= flatText([this.name, '_ports "', p.from === p.to ? String(p.from) : `${p.from}-${p.to}`, '"']));
  }
}

export interface CompiledPolicy {
  /** The policy as given: shared patterns joined to its allow side are not in it. */
  readonly policy: Policy;
  readonly protectedSet: ProtectedRanges;
  readonly allow: CompiledSide;
  readonly deny: CompiledSide;
  /** How many connections each of its rules decided (rule-hits.ts); the one mutable part. */
  readonly counts: RuleCounts;
}

/**
 * Compiles a validated policy (every entry normalized, see model.ts) against the protected
 * set in force, with `joinAllow` (compiled once, shared) joined to its allow side's domains as
 * if listed after them. The result is immutable; compile again when any of them changes.
 */
export function compilePolicy(policy: Policy, protectedSet: ProtectedRanges, joinAllow: SharedDomains | null = null): CompiledPolicy {
  return Object.freeze({
    policy,
    protectedSet,
    // Only allowed CIDRs unlock protected addresses; a denied one never needs to.
    allow: new CompiledSide(policy.allow, 'allowed', protectedSet, joinAllow),
    deny: new CompiledSide(policy.deny, 'denied', null),
    counts: new RuleCounts(policy.allow, policy.deny, policy.mode, joinAllow),
  });
}
