// The verdict for one connection: pure, synchronous, and a handful of structure walks. Every
// verdict carries the reason and the rule that produced it (smokescreen's Decide).

import { quote } from '../util/fields.ts';
import { flatText } from '../util/flat-text.ts';
import type { CompiledPolicy, CompiledSide } from './compile.ts';
import type { RuleCounts } from './rule-hits.ts';
import type { NameSource } from './model.ts';
import { formatIPv4, isIPv4Mapped, parseZonedIpInto, type CidrBlock, type IpFamily } from '../match/ip.ts';
import { embeddedIPv4, MAX_EMBEDDED_IPV4 } from '../match/protected.ts';

export interface Facts {
  /** The name the client sent (SNI, Host), normalized by names.ts, or null when there is none. */
  readonly name: string | null;
  /** The destination address the connection goes to (strict IPv4 or IPv6 text). */
  readonly ip: string;
  readonly port: number;
  /**
   * How `name` was read: the client's TLS SNI, its HTTP Host, or egressd's DNS memory (the client
   * sent none). Absent: unknown (the check API, the CLI), and a domain that matches only a name
   * read over one protocol (Side.domainPorts `via`) matches it as if read over that one.
   */
  readonly via?: NameSource;
}

export type DecisionReason = 'allow-rule' | 'deny-rule' | 'default-allow' | 'default-block' | 'protected-address';

export interface Decision {
  readonly verdict: 'allow' | 'refuse';
  readonly reason: DecisionReason;
  /** The field and entry that decided, e.g. `allowed_domains "*.github.com"`. */
  readonly rule: string | null;
  /**
   * What decided. On an allow, 'name' means a domain rule matched: the data path must then
   * resolve the name itself and dial one of its addresses, since the name alone proves
   * nothing about the address (SNI spoofing).
   */
  readonly matchedBy: 'name' | 'address' | 'port' | 'mode' | 'protected';
  /** The rules that decided, for the per-rule hit counts (rule-hits.ts); absent for a protected address. */
  readonly hit?: RuleHit;
}

/** Up to two rules of one policy (a host rule and a port rule, or one of them, or the mode), by slot. */
export interface RuleHit {
  readonly counts: RuleCounts;
  readonly a: number;
  /** -1 when one rule decided. */
  readonly b: number;
}

/** Counts one connection for the rules of a decision (called once per connection, for its final verdict). */
export function countHit(h: RuleHit | undefined): void {
  if (h === undefined) return;
  h.counts.add(h.a);
  h.counts.add(h.b);
}

/**
 * Filled in by decide() when asked: whether the evaluation reached a step that reads the name
 * (a domain rule of either side). When it did not, no name can change the verdict — the
 * verdict module derives "does a name matter here" from this instead of restating the order.
 */
export interface DecideTrace {
  nameConsulted: boolean;
}

const ALLOW_ALL: Decision = Object.freeze({ verdict: 'allow', reason: 'default-allow', rule: 'mode "allow-all"', matchedBy: 'mode' });
const BLOCK_ALL: Decision = Object.freeze({ verdict: 'refuse', reason: 'default-block', rule: 'mode "block-all"', matchedBy: 'mode' });

/** decide() is synchronous, so one scratch buffer serves every call. */
const words = new Uint32Array(4);

/** The IPv4 addresses inside an IPv6 destination (embeddedIPv4), and one of them as IPv4 words. */
const inner = new Uint32Array(MAX_EMBEDDED_IPV4);
const innerWords = new Uint32Array(4);

/**
 * The grants of protected addresses that a sandbox's layer lends to its organization's layer
 * (verdict.ts): what the sandbox's own decide() would open at step 1c. An organization bounds
 * its sandboxes; it does not cancel, by protection alone, what a sandbox's policy opens.
 */
export interface LentUnlock {
  /** The sandbox's allow side: an allowed CIDR that unlocks the address opens it, on any port. */
  readonly allow: CompiledSide;
  /** The sandbox DNS servers' rule (Novita), or null: it opens its addresses on its ports only. */
  readonly dns: CompiledSide | null;
}

/** Whether `lent` opens the built-in protected range holding `w` (step 1c) for `port`. */
function lentOpens(lent: LentUnlock, family: IpFamily, w: Uint32Array, port: number): boolean {
  const c = lent.allow.cidrIndex(family, w);
  if (c >= 0 && lent.allow.unlocks(c)) return true;
  const dns = lent.dns;
  if (dns === null) return false;
  const d = dns.cidrIndex(family, w);
  return d >= 0 && dns.unlocks(d) && (dns.ports === null || dns.ports.find(port) >= 0);
}

/** Set by a decide() call when only the lent grant opened a protected address (decide() is synchronous). */
let openedByLent = false;

/** Step 1 (a)–(c) for the IPv4 address `v4`: the rule that refuses it, or null. */
function protectedIPv4(set: CompiledPolicy['protectedSet'], allow: CompiledSide, lent: LentUnlock | null, v4: number, port: number): string | null {
  innerWords[0] = v4;
  const host = set.host?.refuses(4, innerWords, port) ?? null;
  if (host !== null) return host;
  const locked = set.lockedWords(4, innerWords);
  if (locked >= 0) return `protected.extra ${JSON.stringify(set.ranges[locked])}`;
  const prot = set.lookupWords(4, innerWords);
  if (prot < 0) return null;
  const cidr = allow.cidrIndex(4, innerWords);
  if (cidr >= 0 && allow.unlocks(cidr)) return null;
  if (lent !== null && lentOpens(lent, 4, innerWords, port)) {
    openedByLent = true;
    return null;
  }
  return `protected ${JSON.stringify(set.ranges[prot])}`;
}

/**
 * Parses the address into `words`; an IPv4-mapped IPv6 address as its IPv4 address, a link-local
 * one's zone left aside (parseZonedIpInto). 0 when it is none.
 */
function loadAddress(ip: unknown): 0 | IpFamily {
  const family = parseZonedIpInto(typeof ip === 'string' ? ip : '', words);
  if (family === 6 && isIPv4Mapped(words)) {
    // RFC 4291 §2.5.5.2: the kernel sends a mapped destination to the IPv4 address.
    words[0] = words[3]!;
    words[2] = 0;
    words[3] = 0;
    return 4;
  }
  return family;
}

/**
 * Decides one connection. Evaluation order:
 *
 * 1. A protected address (protected.ts) is refused, in three layers:
 *    a. the host itself — its interface addresses, loopback, and egressd's own listeners
 *       (net/host-addresses.ts) — whatever the policy and `protected.except` say; only
 *       `protected.reachableHostAddresses` opens a host address, never a listener of egressd;
 *    b. the operator's `protected.extra` ranges, whatever the policy says (only the
 *       operator's `protected.except` lifts them);
 *    c. the built-in ranges, unless an allowed CIDR holds the address AND lies wholly inside
 *       them: `10.0.0.0/8` or `169.254.169.254/32` unlock what they name, `0.0.0.0/0`
 *       unlocks nothing.
 *    d. an IPv6 address that a translator or tunnel carries on to an IPv4 address (NAT64
 *       64:ff9b::/96 and the operator's `protected.nat64Prefixes`, SIIT, IPv4-compatible,
 *       6to4, Teredo: protected.ts embeddedIPv4) is
 *       refused when a, b or c refuses that IPv4 address, an allowed IPv4 CIDR unlocking it as
 *       in c: unlocking or lifting the IPv6 range opens only the public addresses behind it.
 *    A name never unlocks an address. An address that does not parse is refused here too
 *    (fail closed).
 *    With `lent` (an organization's layer, given its sandbox's grants: verdict.ts), what the
 *    sandbox opens at c (and at d, through c) is open here too; the allow side then matches
 *    such an address by its CIDRs and ports only, never by a domain (a name never unlocks an
 *    address, so an organization that allows names only still refuses it). The deny side and
 *    the mode judge it as any address.
 * 2. The allow side matches → allowed (allow beats deny). It matches when the host matches —
 *    the address by one of its CIDRs, else the name by one of its domains (only on its
 *    `domainPorts` when it has them: Novita's 80 for a Host and 443 for an SNI (Facts.via); on
 *    another port, or for a name read otherwise, the connection is judged as if it had no
 *    name); any host when it lists neither — AND the port matches (any
 *    port when it lists none). A side that lists nothing matches nothing.
 * 3. The deny side matches → refused. It matches when any one of its domains (by name, on its
 *    `domainPorts` when it has them),
 *    CIDRs (by address, an IPv4 CIDR also by the IPv4 address inside a NAT64 — the
 *    well-known or a declared prefix —, SIIT, IPv4-compatible, 6to4 or Teredo destination, as
 *    in 1d) or ports matches.
 * 4. The mode: allow-all allows, block-all refuses.
 *
 * A name is matched only by domain rules and an address only by CIDR rules; a connection
 * without a name is judged by address and port alone. An IPv4-mapped IPv6 address
 * (::ffff:a.b.c.d) is judged as its IPv4 address throughout.
 */
export function decide(p: CompiledPolicy, f: Facts, trace?: DecideTrace, lent: LentUnlock | null = null): Decision {
  const family = loadAddress(f.ip);
  if (family === 0) return { verdict: 'refuse', reason: 'protected-address', rule: `address ${quote(f.ip)} is not an IP address`, matchedBy: 'protected' };
  const port = f.port;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    return { verdict: 'refuse', reason: 'default-block', rule: `port ${quote(port)} is not a destination port`, matchedBy: 'port' };
  }
  const name = typeof f.name === 'string' ? f.name : null;
  const via = f.via;
  const allow = p.allow;

  // (1) Protected addresses: (a) the host, (b) the operator's extra ranges, (c) built-in.
  const set = p.protectedSet;
  const host = set.host?.refuses(family, words, port) ?? null;
  if (host !== null) return { verdict: 'refuse', reason: 'protected-address', rule: host, matchedBy: 'protected' };
  const locked = set.lockedWords(family, words);
  if (locked >= 0) {
    return { verdict: 'refuse', reason: 'protected-address', rule: `protected.extra ${JSON.stringify(set.ranges[locked])}`, matchedBy: 'protected' };
  }
  const cidr = allow.cidrIndex(family, words);
  const prot = set.lookupWords(family, words);
  openedByLent = false;
  if (prot >= 0 && !(cidr >= 0 && allow.unlocks(cidr))) {
    if (lent === null || !lentOpens(lent, family, words, port)) {
      return { verdict: 'refuse', reason: 'protected-address', rule: `protected ${JSON.stringify(set.ranges[prot])}`, matchedBy: 'protected' };
    }
    openedByLent = true;
  }
  // (1d) The IPv4 addresses a translator or tunnel carries this IPv6 address on to: each is
  // judged by (a)–(c) as if dialed itself, so lifting or unlocking the IPv6 range (64:ff9b::/96
  // or a declared NAT64 prefix on a DNS64 host) opens the public IPv4 addresses behind it, never
  // the metadata service.
  if (family === 6) {
    const n = embeddedIPv4(words, inner, set.nat64);
    for (let i = 0; i < n; i++) {
      const rule = protectedIPv4(set, allow, lent, inner[i]!, port);
      if (rule !== null) {
        return { verdict: 'refuse', reason: 'protected-address', rule: `${rule} (${formatIPv4(inner[i]!)}, inside ${f.ip})`, matchedBy: 'protected' };
      }
    }
  }

  // (2) The allow side; by address and port alone when only the lent grant opened the address.
  if (!allow.empty) {
    const byName = openedByLent ? null : name;
    if (trace !== undefined && !openedByLent && cidr < 0 && allow.hasHosts && allow.domains !== null && allow.namesOn(port)) trace.nameConsulted = true;
    const d = allowMatch(allow, cidr, byName, port, p.counts, via);
    if (d !== null) return d;
  }

  // (3) The deny side.
  const deny = p.deny;
  if (!deny.empty) {
    const denyNames = deny.domains !== null && deny.namesOn(port);
    if (trace !== undefined && denyNames) trace.nameConsulted = true;
    if (name !== null && denyNames && deny.namesOn(port, via)) {
      const i = deny.domains.match(name);
      if (i >= 0)
        return {
          verdict: 'refuse',
          reason: 'deny-rule',
          rule: deny.domainRule(i),
          matchedBy: 'name',
          hit: one(p.counts, p.counts.slot('denied', 'domains', i)),
        };
    }
    const c = deny.cidrIndex(family, words);
    if (c >= 0)
      return { verdict: 'refuse', reason: 'deny-rule', rule: deny.cidrRule(c), matchedBy: 'address', hit: one(p.counts, p.counts.slot('denied', 'cidrs', c)) };
    // A denied IPv4 CIDR holds against the IPv6 forms that reach its addresses, as against the
    // IPv4-mapped one: on a DNS64 host every IPv4-only name resolves to its NAT64 form.
    if (family === 6) {
      const n = embeddedIPv4(words, inner, set.nat64);
      for (let k = 0; k < n; k++) {
        innerWords[0] = inner[k]!;
        const e = deny.cidrIndex(4, innerWords);
        if (e >= 0) {
          const rule = `${deny.cidrRule(e)} (${formatIPv4(inner[k]!)}, inside ${f.ip})`;
          return { verdict: 'refuse', reason: 'deny-rule', rule, matchedBy: 'address', hit: one(p.counts, p.counts.slot('denied', 'cidrs', e)) };
        }
      }
    }
    if (deny.ports !== null) {
      const i = deny.ports.find(port);
      if (i >= 0)
        return { verdict: 'refuse', reason: 'deny-rule', rule: deny.portRule(i), matchedBy: 'port', hit: one(p.counts, p.counts.slot('denied', 'ports', i)) };
    }
  }

  // (4) The mode: one frozen decision per policy, built on first use.
  return (p.counts.modeDecision ??= Object.freeze({
    ...(p.policy.mode === 'allow-all' ? ALLOW_ALL : BLOCK_ALL),
    hit: one(p.counts, p.counts.slot('allowed', null, 0)),
  }));
}

const one = (counts: RuleCounts, a: number): RuleHit => ({ counts, a, b: -1 });

/**
 * Whether a connection matches one side taken as an allow side is matched (step 2's rule: host
 * AND port), with no protected step and no mode: the operator's always-deny entries
 * (policy/overlay.ts), which refuse and so need no protection. An IPv4 CIDR also matches the
 * IPv6 forms that reach its addresses, as on decide()'s deny side, those inside `nat64` (the
 * protected set's NAT64 prefixes) included. Returns the matching rule text, or null (also for
 * facts that do not parse: the layers after refuse those).
 */
export function matchSide(side: CompiledSide, f: Facts, nat64: readonly CidrBlock[], trace?: DecideTrace): Decision | null {
  const family = loadAddress(f.ip);
  if (family === 0 || !Number.isInteger(f.port) || f.port < 1 || f.port > 65535 || side.empty) return null;
  let cidr = side.cidrIndex(family, words);
  // As on the deny side of decide(): an IPv4 CIDR of the entry matches the IPv6 forms that reach it.
  if (cidr < 0 && family === 6) {
    const n = embeddedIPv4(words, inner, nat64);
    for (let k = 0; k < n && cidr < 0; k++) {
      innerWords[0] = inner[k]!;
      cidr = side.cidrIndex(4, innerWords);
    }
  }
  if (trace !== undefined && cidr < 0 && side.hasHosts && side.domains !== null && side.namesOn(f.port)) trace.nameConsulted = true;
  return allowMatch(side, cidr, typeof f.name === 'string' ? f.name : null, f.port, null, f.via);
}

function allowMatch(allow: CompiledSide, cidr: number, name: string | null, port: number, counts: RuleCounts | null, via?: NameSource): Decision | null {
  let host: string | null = null;
  let hostSlot = -1;
  let by: Decision['matchedBy'] = 'port';
  if (allow.hasHosts) {
    if (cidr >= 0) {
      host = allow.cidrRule(cidr);
      hostSlot = counts?.slot('allowed', 'cidrs', cidr) ?? -1;
      by = 'address';
    } else if (name !== null && allow.domains !== null && allow.namesOn(port, via)) {
      // On a port where the side's domains do not match (Side.domainPorts), or a name read in a
      // way they do not match there (Novita: an SNI on 80, a Host on 443, a name remembered from
      // DNS for a client that sent none), the connection is judged as if it carried no name: no
      // host matches, and the deny side and the mode decide.
      const i = allow.domains.match(name);
      if (i < 0) return null;
      host = allow.domainRule(i);
      hostSlot = counts?.slot('allowed', 'domains', i) ?? -1;
      by = 'name';
    } else {
      return null;
    }
  }
  let portRule: string | null = null;
  let portSlot = -1;
  if (allow.ports !== null) {
    const i = allow.ports.find(port);
    if (i < 0) return null;
    portRule = allow.portRule(i);
    portSlot = counts?.slot('allowed', 'ports', i) ?? -1;
  }
  const rule = host === null ? portRule : portRule === null ? host : flatText([host, ' + ', portRule]);
  if (counts === null) return { verdict: 'allow', reason: 'allow-rule', rule, matchedBy: by };
  return { verdict: 'allow', reason: 'allow-rule', rule, matchedBy: by, hit: hostSlot >= 0 ? { counts, a: hostSlot, b: portSlot } : one(counts, portSlot) };
}

/**
 * decide()'s steps 2–4 for a connection carrying `name` (normalized) on `port` (1–65535) to an
 * address that no rule of the policy names and no protected range holds: what the policy decides
 * by name and port alone (verdict.ts `nameReach`). Steps 1 and the CIDR rules cannot apply to
 * such an address, so the result is decide()'s for it. Counts no hit.
 */
export function decideByName(p: CompiledPolicy, name: string, port: number): Decision {
  const allow = p.allow;
  if (!allow.empty) {
    const d = allowMatch(allow, -1, name, port, null);
    if (d !== null) return d;
  }
  const deny = p.deny;
  const i = deny.namesOn(port) ? (deny.domains?.match(name) ?? -1) : -1;
  if (i >= 0) return { verdict: 'refuse', reason: 'deny-rule', rule: deny.domainRule(i), matchedBy: 'name' };
  const j = deny.ports?.find(port) ?? -1;
  if (j >= 0) return { verdict: 'refuse', reason: 'deny-rule', rule: deny.portRule(j), matchedBy: 'port' };
  return p.policy.mode === 'allow-all' ? ALLOW_ALL : BLOCK_ALL;
}

/** matchSide() for `name` on `port` at an address no CIDR of the side names (see decideByName). */
export function matchSideByName(side: CompiledSide, name: string, port: number): Decision | null {
  return side.empty ? null : allowMatch(side, -1, name, port, null);
}
