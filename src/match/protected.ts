// Protected addresses, in three layers (decide.ts step 1):
// - the host itself (net/host-addresses.ts: its interface addresses and egressd's own
//   listeners): refused whatever the policy and `protected.except` say;
// - the operator's `protected.extra` ranges: refused whatever the policy says; only the
//   operator's `protected.except` lifts them;
// - the built-in ranges below: refused unless a policy's allowed CIDR, lying wholly inside
//   them, unlocks them.
// The built-in ranges They are the ranges of the IANA "IPv4 Special-Purpose Address Registry" and
// "IPv6 Special-Purpose Address Registry" (RFC 6890, updated by RFC 8190) that are not
// globally reachable, the multicast and reserved spaces, the deprecated transition prefixes
// that tunnel to IPv4 or to unknown hosts, and cloud metadata endpoints outside all of those.
// The threat is a sandbox reaching its host's network: the metadata service (credentials),
// the node's loopback services, the cluster's private addresses.

import { CidrTrie } from './cidr-trie.ts';
import { cidrBounds, formatCidr, isIPv4Mapped, parseCidr, parseIpInto, parseZonedIpInto, type CidrBlock, type IpFamily } from './ip.ts';

/** The host's own addresses and listeners, kept current by whoever owns it (net/host-addresses.ts). */
export interface HostGuard {
  /** Why `words` (an IPv4 address in words[0], or IPv6) at `port` is the host itself, or null. */
  refuses(family: IpFamily, words: Uint32Array, port: number): string | null;
}

/** Built-in protected ranges, each with the registry entry or source it comes from. */
export const PROTECTED_RANGES: readonly { readonly cidr: string; readonly why: string }[] = Object.freeze([
  // IANA IPv4 Special-Purpose Address Registry (RFC 6890 §2.2.2 and later entries).
  { cidr: '0.0.0.0/8', why: '"This network", RFC 791 §3.2 (0.0.0.0 reaches the local host on Linux)' },
  { cidr: '10.0.0.0/8', why: 'Private-Use, RFC 1918' },
  { cidr: '100.64.0.0/10', why: 'Shared Address Space, RFC 6598 (CGNAT; Alibaba Cloud metadata 100.100.100.200)' },
  { cidr: '127.0.0.0/8', why: 'Loopback, RFC 1122 §3.2.1.3' },
  { cidr: '169.254.0.0/16', why: 'Link Local, RFC 3927 (cloud metadata 169.254.169.254)' },
  { cidr: '172.16.0.0/12', why: 'Private-Use, RFC 1918' },
  { cidr: '192.0.0.0/24', why: 'IETF Protocol Assignments, RFC 6890 §2.1 (DS-Lite, NAT64 discovery)' },
  { cidr: '192.0.2.0/24', why: 'Documentation (TEST-NET-1), RFC 5737' },
  { cidr: '192.88.99.0/24', why: 'Deprecated 6to4 Relay Anycast, RFC 7526' },
  { cidr: '192.168.0.0/16', why: 'Private-Use, RFC 1918' },
  { cidr: '198.18.0.0/15', why: 'Benchmarking, RFC 2544' },
  { cidr: '198.51.100.0/24', why: 'Documentation (TEST-NET-2), RFC 5737' },
  { cidr: '203.0.113.0/24', why: 'Documentation (TEST-NET-3), RFC 5737' },
  { cidr: '224.0.0.0/4', why: 'Multicast, RFC 5771 (IANA IPv4 Multicast Address Space Registry)' },
  { cidr: '240.0.0.0/4', why: 'Reserved, RFC 1112 §4' },
  { cidr: '255.255.255.255/32', why: 'Limited Broadcast, RFC 919 §7, RFC 8190' },
  // Outside the registries: Azure's platform endpoint (wireserver, DHCP, DNS, health probes).
  { cidr: '168.63.129.16/32', why: 'Azure platform endpoint (WireServer)' },
  // IANA IPv6 Special-Purpose Address Registry (RFC 6890 §2.2.3 and later entries).
  { cidr: '::/128', why: 'Unspecified Address, RFC 4291 §2.5.2' },
  { cidr: '::1/128', why: 'Loopback Address, RFC 4291 §2.5.3' },
  { cidr: '::/96', why: 'IPv4-Compatible IPv6 Address, deprecated, RFC 4291 §2.5.5.1' },
  // Listed for completeness: an IPv4-mapped address is judged as its IPv4 address (decide.ts).
  { cidr: '::ffff:0.0.0.0/96', why: 'IPv4-mapped Address, RFC 4291 §2.5.5.2' },
  { cidr: '64:ff9b::/96', why: 'IPv4-IPv6 Translation, RFC 6052 (NAT64 reaches IPv4 behind the gateway)' },
  // Not in the registry (RFC 6052 replaced it), but a stateless translator may still use it.
  { cidr: '::ffff:0:0:0/96', why: 'IPv4-translated Address, RFC 2765 §2.1 (SIIT reaches IPv4 behind the translator)' },
  { cidr: '64:ff9b:1::/48', why: 'Local-use IPv4/IPv6 Translation, RFC 8215' },
  { cidr: '100::/64', why: 'Discard-Only Address Block, RFC 6666' },
  { cidr: '100:0:0:1::/64', why: 'Dummy IPv6 Prefix (IANA IPv6 Special-Purpose Address Registry)' },
  { cidr: '2001::/23', why: 'IETF Protocol Assignments, RFC 2928' },
  { cidr: '2001::/32', why: 'TEREDO, RFC 4380 (tunnels to IPv4 hosts)' },
  { cidr: '2001:2::/48', why: 'Benchmarking, RFC 5180' },
  { cidr: '2001:db8::/32', why: 'Documentation, RFC 3849' },
  { cidr: '2002::/16', why: '6to4, RFC 3056 (tunnels to IPv4 hosts)' },
  { cidr: '3fff::/20', why: 'Documentation, RFC 9637' },
  { cidr: '5f00::/16', why: 'Segment Routing (SRv6) SIDs, RFC 9602' },
  { cidr: 'fc00::/7', why: 'Unique-Local, RFC 4193 (AWS metadata fd00:ec2::254)' },
  { cidr: 'fe80::/10', why: 'Link-Local Unicast, RFC 4291 §2.5.6' },
  { cidr: 'fec0::/10', why: 'Site-Local Unicast, deprecated, RFC 3879' },
  { cidr: 'ff00::/8', why: 'Multicast, RFC 4291 §2.7' },
]);

/**
 * An IPv6 block inside ::ffff:0:0/96 as the IPv4 block it maps (RFC 4291 §2.5.5.2): a mapped
 * address is judged as its IPv4 address, so rules written in mapped form must be too.
 */
export function asIPv4IfMapped(b: CidrBlock): CidrBlock {
  if (b.family !== 6 || b.prefix < 96 || !isIPv4Mapped(b.words)) return b;
  return { family: 4, words: Uint32Array.of(b.words[3]!, 0, 0, 0), prefix: b.prefix - 96 };
}

/**
 * The prefix lengths of RFC 6052 §2.2's address formats: a translator using a network-specific
 * prefix (NSP) of one of these lengths writes the IPv4 address after it, skipping bits 64–71.
 */
export const NAT64_PREFIX_LENGTHS: readonly number[] = Object.freeze([32, 40, 48, 56, 64, 96]);

/** The most IPv4 addresses embeddedIPv4 writes for one address: `out` needs this much room. */
export const MAX_EMBEDDED_IPV4 = 8;

/**
 * Checks a NAT64 prefix the operator declares (`protected.nat64Prefixes`): an IPv6 CIDR whose
 * length is one of RFC 6052 §2.2's formats, with no bit set past that length and bits 64–71
 * zero (§2.2: they are reserved and "MUST be set to zero", a /96 included). Returns the block,
 * or a sentence-case reason quoting the value. Host bits are refused, not cleared as in policy
 * CIDRs: the prefix says where the IPv4 address starts, so a typo must not silently move it.
 */
export function parseNat64Prefix(text: string): { ok: true; block: CidrBlock } | { ok: false; reason: string } {
  if (typeof text !== 'string') return { ok: false, reason: `Expected an IPv6 prefix such as "2001:db8:64::/96", got ${typeof text}` };
  const r = parseCidr(text);
  if (!r.ok) return r;
  const q = JSON.stringify(text);
  const b = r.block;
  if (b.family !== 6) return { ok: false, reason: `NAT64 prefix ${q} is not an IPv6 prefix` };
  if (!NAT64_PREFIX_LENGTHS.includes(b.prefix)) {
    return { ok: false, reason: `NAT64 prefix ${q} has a length other than 32, 40, 48, 56, 64 or 96 (RFC 6052 §2.2)` };
  }
  const given = new Uint32Array(4);
  parseIpInto(text.slice(0, text.indexOf('/')), given);
  if (given[2]! >>> 24 !== 0) return { ok: false, reason: `NAT64 prefix ${q} sets bits 64-71, which RFC 6052 §2.2 reserves as zero` };
  if (r.hostBitsSet) return { ok: false, reason: `NAT64 prefix ${q} sets bits past its length; did you mean ${JSON.stringify(formatCidr(b))}?` };
  return { ok: true, block: b };
}

/** Whether the IPv6 address `w` lies inside the IPv6 block `b`. */
function inside(w: Uint32Array, b: CidrBlock): boolean {
  for (let i = 0, left = b.prefix; left > 0; i++, left -= 32) {
    const mask = left >= 32 ? 0xffffffff : ~(0xffffffff >>> left);
    if (((w[i]! ^ b.words[i]!) & mask) !== 0) return false;
  }
  return true;
}

/**
 * The IPv4 address inside `w` as RFC 6052 §2.2 writes it after a prefix of `length` bits:
 * straight after the prefix, skipping bits 64–71 (the u-octet), the suffix ignored.
 */
function afterPrefix(w: Uint32Array, length: number): number {
  const w1 = w[1]!;
  const w2 = w[2]!;
  switch (length) {
    case 32:
      return w1;
    case 40:
      return ((w1 << 8) | ((w2 >>> 16) & 0xff)) >>> 0;
    case 48:
      return ((w1 << 16) | ((w2 >>> 8) & 0xffff)) >>> 0;
    case 56:
      return ((w1 << 24) | (w2 & 0xffffff)) >>> 0;
    case 64:
      return ((w2 << 8) | (w[3]! >>> 24)) >>> 0;
    default:
      return w[3]!;
  }
}

/**
 * The IPv4 addresses a packet to the IPv6 address `w` is carried on to by a translator or a
 * tunnel, written to `out` (room for MAX_EMBEDDED_IPV4); returns how many. The gateway, not
 * egressd, then connects to them, so each is as protected as if the sandbox had dialed it
 * (decide.ts step 1):
 * - NAT64, the well-known prefix 64:ff9b::/96 (RFC 6052 §2.1): the last 32 bits;
 * - SIIT, ::ffff:0:0:0/96 (RFC 2765 §2.1), and IPv4-compatible, ::/96 (RFC 4291 §2.5.5.1): the last 32 bits
 *   (but not :: and ::1, which are not IPv4-compatible addresses);
 * - 6to4, 2002::/16 (RFC 3056 §2): bits 16–47, the site's IPv4 address;
 * - Teredo, 2001::/32 (RFC 4380 §4): the server's address (bits 32–63) and the client's,
 *   its bits inverted (the last 32);
 * - NAT64 through each of `nat64`, the prefixes the operator declares (parseNat64Prefix;
 *   the local-use 64:ff9b:1::/48 of RFC 8215 or a network-specific one, RFC 6052 §2.2) that
 *   holds `w`: the 32 bits after the prefix, bits 64–71 skipped. Their length cannot be told
 *   from the address, so undeclared ones are not decoded. An address inside several (nested
 *   declarations) yields the IPv4 address of each: the host's translator uses one of them.
 * IPv4-mapped addresses are not here: they are judged as their IPv4 address throughout.
 */
export function embeddedIPv4(w: Uint32Array, out: Uint32Array, nat64: readonly CidrBlock[]): number {
  let n = builtInEmbedded(w, out);
  for (const p of nat64) if (inside(w, p)) out[n++] = afterPrefix(w, p.prefix);
  return n;
}

function builtInEmbedded(w: Uint32Array, out: Uint32Array): number {
  const w0 = w[0]!;
  if (w0 === 0x0064ff9b) {
    if (w[1] !== 0 || w[2] !== 0) return 0;
    out[0] = w[3]!;
    return 1;
  }
  if (w0 === 0) {
    if (w[1] !== 0 || (w[2] !== 0 && w[2] !== 0xffff0000)) return 0;
    // :: and ::1 are the unspecified and loopback addresses (RFC 4291 §2.5.2, §2.5.3), protected
    // as themselves: no translator carries them on, and `protected.except: ["::1/128"]` must open
    // the host's own loopback without 0.0.0.1 refusing it again.
    if (w[2] === 0 && w[3]! <= 1) return 0;
    out[0] = w[3]!;
    return 1;
  }
  if (w0 >>> 16 === 0x2002) {
    out[0] = ((w0 << 16) | (w[1]! >>> 16)) >>> 0;
    return 1;
  }
  if (w0 === 0x20010000) {
    out[0] = w[1]!;
    out[1] = ~w[3]! >>> 0;
    return 2;
  }
  return 0;
}

interface Interval {
  lo: bigint;
  hi: bigint;
}

/** The compiled protected set; decide uses its word-level methods to avoid re-parsing. */
export class ProtectedRanges {
  readonly ranges: readonly string[];
  readonly host: HostGuard | null;
  /** The operator's NAT64 prefixes (parseNat64Prefix), each once: what embeddedIPv4 decodes beyond the built-in ones. */
  readonly nat64: readonly CidrBlock[];
  readonly #tries: { 4: CidrTrie; 6: CidrTrie };
  /** The `extra` ranges (values index `ranges`): no policy unlocks them. */
  readonly #locked: { 4: CidrTrie; 6: CidrTrie };
  readonly #except: { 4: CidrTrie; 6: CidrTrie };
  /** built-in \ except, as disjoint, non-adjacent, sorted intervals per family: what an allowed CIDR may unlock. */
  readonly #covered: { 4: Interval[]; 6: Interval[] };

  constructor(
    ranges: readonly CidrBlock[],
    except: readonly CidrBlock[],
    extra: readonly CidrBlock[] = [],
    host: HostGuard | null = null,
    nat64: readonly CidrBlock[] = [],
  ) {
    this.host = host;
    // Each once: distinct prefixes of one length are disjoint, so an address lies in at most six
    // (one per length), which with the built-in two bounds embeddedIPv4 (MAX_EMBEDDED_IPV4).
    const byText = new Map(nat64.map((b) => [formatCidr(b), b]));
    this.nat64 = Object.freeze([...byText.values()]);
    this.#tries = { 4: new CidrTrie(4), 6: new CidrTrie(6) };
    this.#locked = { 4: new CidrTrie(4), 6: new CidrTrie(6) };
    this.#except = { 4: new CidrTrie(4), 6: new CidrTrie(6) };
    for (const e of except) {
      const b = asIPv4IfMapped(e);
      this.#except[b.family].insert(b.words, b.prefix, 0);
    }
    const exceptIntervals: { 4: Interval[]; 6: Interval[] } = { 4: [], 6: [] };
    for (const e of except) {
      const b = asIPv4IfMapped(e);
      exceptIntervals[b.family].push(cidrBounds(b));
    }
    const kept: string[] = [];
    const covering: { 4: Interval[]; 6: Interval[] } = { 4: [], 6: [] };
    const seen = new Map<string, number>();
    const add = (r: CidrBlock, isExtra: boolean): void => {
      // The IPv4-mapped block itself stays literal (as IPv4 it would be 0.0.0.0/0): no address
      // is looked up in it, since mapped addresses are judged as IPv4, and it covers nothing.
      const literal = r.family === 6 && r.prefix === 96 && isIPv4Mapped(r.words);
      const b = literal ? r : asIPv4IfMapped(r);
      const bounds = cidrBounds(b);
      if (exceptIntervals[b.family].some((x) => x.lo <= bounds.lo && bounds.hi <= x.hi)) return;
      const text = formatCidr(r);
      let index = seen.get(text);
      if (index === undefined) {
        index = kept.length;
        seen.set(text, index);
        kept.push(text);
        this.#tries[b.family].insert(b.words, b.prefix, index);
        if (!isExtra && !literal) covering[b.family].push(bounds);
      }
      // An extra range that repeats a built-in one still locks it.
      if (isExtra) this.#locked[b.family].insert(b.words, b.prefix, index);
    };
    for (const r of ranges) add(r, false);
    for (const r of extra) add(r, true);
    this.ranges = Object.freeze(kept);
    this.#covered = { 4: subtract(merge(covering[4]), merge(exceptIntervals[4])), 6: subtract(merge(covering[6]), merge(exceptIntervals[6])) };
  }

  /** The protected range containing `ip` (canonical CIDR text), or null. */
  lookup(ip: string): string | null {
    return this.#lookupText(ip, (f, w) => this.lookupWords(f, w));
  }

  lookupLocked(ip: string): string | null {
    return this.#lookupText(ip, (f, w) => this.lockedWords(f, w));
  }

  #lookupText(ip: string, find: (family: IpFamily, words: Uint32Array) => number): string | null {
    const words = new Uint32Array(4);
    let family = parseZonedIpInto(typeof ip === 'string' ? ip : '', words);
    if (family === 0) return null;
    if (family === 6 && isIPv4Mapped(words)) {
      words[0] = words[3]!;
      words[3] = 0;
      words[2] = 0;
      family = 4;
    }
    const i = find(family, words);
    return i < 0 ? null : this.ranges[i]!;
  }

  /** The index in `ranges` of the protected range containing the address, or -1. */
  lookupWords(family: IpFamily, words: Uint32Array): number {
    if (this.#except[family].longest(words) >= 0) return -1;
    return this.#tries[family].longest(words);
  }

  /** The index in `ranges` of the `extra` range containing the address (not lifted by except), or -1. */
  lockedWords(family: IpFamily, words: Uint32Array): number {
    if (this.#except[family].longest(words) >= 0) return -1;
    return this.#locked[family].longest(words);
  }

  /** Whether every address of `cidr` is protected: the condition for it to unlock them. */
  coversWholly(cidr: string): boolean {
    const r = parseCidr(typeof cidr === 'string' ? cidr : '');
    return r.ok && this.coversBlock(r.block);
  }

  coversBlock(block: CidrBlock): boolean {
    const b = asIPv4IfMapped(block);
    const { lo, hi } = cidrBounds(b);
    const list = this.#covered[b.family];
    // The last interval starting at or before lo is the only one that can hold the block.
    let a = 0;
    let z = list.length - 1;
    let found = -1;
    while (a <= z) {
      const mid = (a + z) >> 1;
      if (list[mid]!.lo <= lo) {
        found = mid;
        a = mid + 1;
      } else {
        z = mid - 1;
      }
    }
    return found >= 0 && hi <= list[found]!.hi;
  }
}

function merge(list: Interval[]): Interval[] {
  const sorted = [...list].sort((x, y) => (x.lo < y.lo ? -1 : x.lo > y.lo ? 1 : 0));
  const out: Interval[] = [];
  for (const i of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && i.lo <= last.hi + 1n) {
      if (i.hi > last.hi) last.hi = i.hi;
    } else {
      out.push({ lo: i.lo, hi: i.hi });
    }
  }
  return out;
}

/** `from` minus `cut`, both merged: what remains stays sorted, disjoint and non-adjacent. */
function subtract(from: Interval[], cut: Interval[]): Interval[] {
  const out: Interval[] = [];
  for (const f of from) {
    let lo = f.lo;
    for (const c of cut) {
      if (c.hi < lo || c.lo > f.hi) continue;
      if (c.lo > lo) out.push({ lo, hi: c.lo - 1n });
      lo = c.hi + 1n;
      if (lo > f.hi) break;
    }
    if (lo <= f.hi) out.push({ lo, hi: f.hi });
  }
  return out;
}

/**
 * The protected set: the built-in ranges, plus `extra`, minus `except` (test rigs carve out
 * 198.18.0.0/15 and 2001:db8::/32, the ranges they address their fake internet from). An
 * address inside an `except` range is never protected by a range, even when an `extra` range
 * holds it; an `extra` range is never unlocked by a policy. `host` (the running daemon's own
 * addresses and listeners) is consulted before all of them and nothing lifts it. `nat64Prefixes`
 * protects nothing itself: it says which IPv6 addresses also carry an IPv4 address to judge
 * (embeddedIPv4). Entries are CIDR text already checked by validateCidr (parseNat64Prefix for
 * `nat64Prefixes`); an entry that does not parse is a programming error and throws.
 */
export interface ProtectedOptions {
  readonly extra?: readonly string[];
  readonly except?: readonly string[];
  readonly host?: HostGuard | null;
  /** The host's NAT64 prefixes (`protected.nat64Prefixes`), already checked by parseNat64Prefix. */
  readonly nat64Prefixes?: readonly string[];
}

export function compileProtected(opts: ProtectedOptions): ProtectedRanges {
  const block = (text: string): CidrBlock => {
    const r = parseCidr(text);
    if (!r.ok) throw new TypeError(`Protected range: ${r.reason}`);
    return r.block;
  };
  return new ProtectedRanges(
    PROTECTED_RANGES.map((r) => block(r.cidr)),
    (opts.except ?? []).map(block),
    (opts.extra ?? []).map(block),
    opts.host ?? null,
    (opts.nat64Prefixes ?? []).map((text) => {
      const r = parseNat64Prefix(text);
      if (!r.ok) throw new TypeError(`NAT64 prefix: ${r.reason}`);
      return r.block;
    }),
  );
}
