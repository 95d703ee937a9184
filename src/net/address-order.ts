// The order in which a name's addresses are tried: RFC 6724 §6 destination address selection,
// rule 6 (higher precedence first, from the §2.1 default policy table; the other rules need
// the source addresses and routes of the kernel, which the staggered attempts stand in for),
// then RFC 8305 §4: the families interleaved, starting with the preferred one.

import { isIPv4Mapped, parseIpInto } from '../match/ip.ts';

/**
 * The RFC 6724 §2.1 precedence of an address: ::1 50, ::/0 40, IPv4 (::ffff:0:0/96) 35,
 * 2002::/16 30, 2001::/32 5, fc00::/7 3, ::/96, fec0::/10 and 3ffe::/16 1. An address that
 * does not parse sorts last.
 */
export function precedence(address: string): number {
  const w = new Uint32Array(4);
  const family = parseIpInto(address, w);
  if (family === 0) return -1;
  if (family === 4 || isIPv4Mapped(w)) return 35;
  const [a, b, c, d] = [w[0]!, w[1]!, w[2]!, w[3]!];
  if (a === 0 && b === 0 && c === 0 && d === 1) return 50;
  if (a >>> 16 === 0x2002) return 30;
  if (a === 0x20010000) return 5;
  if (a >>> 25 === 0xfc >>> 1) return 3;
  if (a === 0 && b === 0 && c === 0) return 1;
  if (a >>> 22 === 0xfec0 >>> 6) return 1;
  if (a >>> 16 === 0x3ffe) return 1;
  return 40;
}

/** The family an address is dialed as: 6, or 4 for IPv4 and IPv4-mapped IPv6 (and what does not parse). */
export const familyOf = (address: string): 4 | 6 => {
  const w = new Uint32Array(4);
  const f = parseIpInto(address, w);
  return f === 6 && !isIPv4Mapped(w) ? 6 : 4;
};

/**
 * Orders addresses for staggered attempts: by precedence (stable, so the resolver's order
 * breaks ties), then interleaved by family starting with `prefer` (RFC 8305 §4; we prefer the
 * family the client used, whose route is known to exist). Duplicates are kept out.
 */
export function orderAddresses(addresses: readonly string[], prefer: 4 | 6 | null): string[] {
  const unique = [...new Set(addresses)];
  const sorted = unique.map((a, i) => ({ a, i, p: precedence(a) })).sort((x, y) => y.p - x.p || x.i - y.i);
  const first = prefer ?? (sorted.length > 0 ? familyOf(sorted[0]!.a) : 6);
  const mine = sorted.filter((s) => familyOf(s.a) === first).map((s) => s.a);
  const other = sorted.filter((s) => familyOf(s.a) !== first).map((s) => s.a);
  const out: string[] = [];
  for (let i = 0; i < Math.max(mine.length, other.length); i++) {
    if (i < mine.length) out.push(mine[i]!);
    if (i < other.length) out.push(other[i]!);
  }
  return out;
}
