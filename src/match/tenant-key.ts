// The key a source's limits are counted under (its tenant): its sandbox's id, or, for a source
// that belongs to no sandbox, the network block holding its address. An IPv6 host picks its
// own addresses from its link's /64 (SLAAC, RFC 4862 §5.5.3; temporary addresses, RFC 8981), or
// is given a /64 of its own (RFC 7934 §6), so a sandbox, or any tenant with such a prefix, that
// were counted per exact address could rotate through 2^64 unregistered addresses and get a
// fresh allowance from each. Peers group the same way: iptables' hashlimit
// (`--hashlimit-srcmask`, iptables-extensions(8)) and Envoy's `masked_remote_address` rate limit
// action (`v4_prefix_mask_len`, `v6_prefix_mask_len`) count a source by its prefix.

import { clearHostBits, formatCidr, isIPv4Mapped, parseIp } from './ip.ts';

/** The prefix length, in bits, a source of no sandbox is counted under, per family. */
export interface UnknownSourcePrefix {
  /** 0 to 32. */
  readonly ipv4: number;
  /** 0 to 128. */
  readonly ipv6: number;
}

/** The key of `source`'s limits: `sandbox`, or for a source of none `source BLOCK` (tenantKeyOf). */
export type TenantKeyOf = (sandbox: string | null, source: string) => string;

/**
 * The tenant key function for `prefix`: a sandbox's id as it is, and a source of no sandbox as
 * `source ` and the canonical CIDR text of the block holding it, host bits cleared
 * (`source 2001:db8:1:2::/64`, `source 198.18.0.1/32`), so each block has one spelling. An
 * IPv4-mapped IPv6 address (::ffff:a.b.c.d, RFC 4291 §2.5.5.2: an IPv4 client of a dual-stack
 * listener) is counted as its IPv4 address; a link-local one by its block on its interface
 * (`source fe80::/64%eth0`, sourceBlock). A source that is no address (`''`: a client gone
 * before its address was read) is keyed by its text.
 */
export function tenantKeyOf(prefix: UnknownSourcePrefix): TenantKeyOf {
  // Asked for every connection and query, about the same few sources: each answer is kept
  // (bounded; started over when full, as match/ip's canonicalSource does).
  const known = new Map<string, string>();
  return (sandbox, source) => {
    if (sandbox !== null) return sandbox;
    let key = known.get(source);
    if (key === undefined) {
      key = `source ${sourceBlock(source, prefix)}`;
      if (known.size >= KEYS_KEPT) known.clear();
      known.set(source, key);
    }
    return key;
  };
}

const KEYS_KEPT = 4096;

/**
 * The canonical CIDR text of the block of `prefix` holding `source`, or `source` as it is when it
 * is no address. An IPv6 address with a zone (`fe80::1%eth0`: Node's remoteAddress and a datagram's
 * rinfo.address name the interface of a link-local address, RFC 4007 §11) is its block on that
 * zone (`fe80::/64%eth0`): each link is a network of its own, and its hosts pick their link-local
 * addresses as freely as their global ones (RFC 4862 §5.3).
 */
export function sourceBlock(source: string, prefix: UnknownSourcePrefix): string {
  const pct = source.indexOf('%');
  const a = parseIp(pct < 0 ? source : source.slice(0, pct));
  if (a === null || (pct >= 0 && a.family !== 6)) return source;
  const zone = pct < 0 ? '' : source.slice(pct);
  if (a.family === 6 && isIPv4Mapped(a.words)) {
    const words = new Uint32Array([a.words[3]!, 0, 0, 0]);
    clearHostBits(words, prefix.ipv4);
    return formatCidr({ family: 4, words, prefix: prefix.ipv4 }) + zone;
  }
  const bits = a.family === 4 ? prefix.ipv4 : prefix.ipv6;
  clearHostBits(a.words, bits);
  return formatCidr({ family: a.family, words: a.words, prefix: bits }) + zone;
}
