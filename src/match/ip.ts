// IP addresses as numbers: parsing (strict, and the loose spellings a host name may hide),
// canonical text, and the 128-bit word form the prefix tries and protected ranges work on.
//
// An address is held as four 32-bit words, most significant first (network order). IPv4 uses
// word 0 alone. Every parser here walks the text once with charCodeAt, allocates nothing on
// success or failure, and caps the length it will look at, so hostile input costs O(45).

import { quote } from '../util/fields.ts';

export type IpFamily = 4 | 6;

/** An address as data: its family and its words (IPv4 in words[0], the rest zero). */
export interface IpAddress {
  readonly family: IpFamily;
  readonly words: Uint32Array;
}

/** A CIDR block as data: the network (host bits cleared) and its prefix length. */
export interface CidrBlock {
  readonly family: IpFamily;
  readonly words: Uint32Array;
  readonly prefix: number;
}

/** The widest text an IPv6 address can take: eight 4-digit groups, or six and a dotted quad. */
const MAX_IPV6_TEXT = 45;
const MAX_IPV4_TEXT = 15;

const groups = new Uint32Array(8);

const isDigit = (c: number): boolean => c >= 0x30 && c <= 0x39;
const hexValue = (c: number): number => {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  return l >= 0x61 && l <= 0x66 ? l - 0x61 + 10 : -1;
};

/**
 * Strict dotted-decimal IPv4 (inet_pton, RFC 6943 §3.1.1): four decimal parts 0-255 with no
 * leading zeros, so `010.0.0.1` (octal 8 to inet_aton, decimal 10 to others) is refused
 * rather than guessed. Parses `text[start, end)`; returns the address as an unsigned 32-bit
 * number, or -1.
 */
export function parseIPv4(text: string, start = 0, end = text.length): number {
  if (end - start > MAX_IPV4_TEXT || end - start < 7) return -1;
  let value = 0;
  let part = 0;
  let digits = 0;
  let parts = 0;
  for (let i = start; i <= end; i++) {
    const c = i === end ? 0x2e : text.charCodeAt(i);
    if (c === 0x2e) {
      if (digits === 0 || part > 255) return -1;
      value = value * 256 + part;
      parts++;
      part = 0;
      digits = 0;
      continue;
    }
    if (!isDigit(c) || (digits === 1 && part === 0)) return -1;
    part = part * 10 + (c - 0x30);
    digits++;
    if (digits > 3) return -1;
  }
  return parts === 4 ? value : -1;
}

/**
 * Every spelling of an IPv4 address that a URL host or inet_aton(3) accepts (WHATWG URL
 * "IPv4 parser"): one to four parts, each decimal, octal (leading 0) or hex (0x); the last
 * part fills the remaining bytes, so `127.1`, `2130706433`, `0x7f.1` and `0177.0.0.1` are all
 * 127.0.0.1. Returns the address or -1. Used to classify names: a name spelled like this
 * reaches an address whatever a resolver would say, so it must be judged as that address.
 */
export function parseIPv4Loose(text: string): number {
  const len = text.length;
  if (len === 0 || len > 64) return -1;
  let parts = 0;
  let value = 0;
  let start = 0;
  for (let i = 0; i <= len; i++) {
    if (i < len && text.charCodeAt(i) !== 0x2e) continue;
    const n = parseIPv4Number(text, start, i);
    if (n < 0) return -1;
    parts++;
    if (parts > 4) return -1;
    if (i === len) {
      // The last part fills the 5 - parts bytes that remain (WHATWG URL, IPv4 parser step 8).
      if (n >= 256 ** (5 - parts)) return -1;
      return value * 256 ** (5 - parts) + n;
    }
    if (n > 255) return -1;
    value = value * 256 + n;
    start = i + 1;
  }
  return -1;
}

/**
 * One part of a loose IPv4 address: decimal, octal with a leading 0, or hex with 0x (an empty
 * hex part is 0, as in WHATWG URL). Returns -1 when malformed or above 2^32.
 */
function parseIPv4Number(text: string, start: number, end: number): number {
  if (start >= end) return -1;
  let radix = 10;
  let i = start;
  if (end - start >= 2 && text.charCodeAt(start) === 0x30 && (text.charCodeAt(start + 1) | 0x20) === 0x78) {
    radix = 16;
    i += 2;
  } else if (end - start >= 2 && text.charCodeAt(start) === 0x30) {
    radix = 8;
    i += 1;
  }
  let n = 0;
  for (; i < end; i++) {
    const d = hexValue(text.charCodeAt(i));
    if (d < 0 || d >= radix) return -1;
    n = n * radix + d;
    if (n > 0xffffffff) return -1;
  }
  return n;
}

/**
 * Whether a name "ends in a number" (WHATWG URL): its last label is all digits or a 0x hex
 * number. Such a name is an IPv4 attempt; if it does not parse as one, it is malformed, never
 * a name (RFC 1123 §2.1: a top-level label is not all-numeric).
 */
export function endsInNumber(name: string): boolean {
  const dot = name.lastIndexOf('.');
  const start = dot + 1;
  const end = name.length;
  if (start >= end) return false;
  let allDigits = true;
  for (let i = start; i < end; i++) {
    if (!isDigit(name.charCodeAt(i))) {
      allDigits = false;
      break;
    }
  }
  if (allDigits) return true;
  if (end - start < 2 || name.charCodeAt(start) !== 0x30 || (name.charCodeAt(start + 1) | 0x20) !== 0x78) return false;
  for (let i = start + 2; i < end; i++) if (hexValue(name.charCodeAt(i)) < 0) return false;
  return true;
}

/**
 * An IPv6 address in RFC 4291 §2.2 text form (hex groups, one `::`, an optional dotted-quad
 * tail), without brackets or a zone. Writes the four words into `out` and returns true, or
 * returns false leaving `out` unspecified.
 */
export function parseIPv6(text: string, out: Uint32Array, start = 0, end = text.length): boolean {
  const len = end - start;
  if (len < 2 || len > MAX_IPV6_TEXT) return false;
  let n = 0;
  let gap = -1;
  let i = start;
  if (text.charCodeAt(i) === 0x3a) {
    if (text.charCodeAt(i + 1) !== 0x3a) return false;
    gap = 0;
    i += 2;
  }
  while (i < end) {
    const groupStart = i;
    let v = 0;
    let digits = 0;
    while (i < end && digits <= 4) {
      const d = hexValue(text.charCodeAt(i));
      if (d < 0) break;
      v = v * 16 + d;
      digits++;
      i++;
    }
    if (i < end && text.charCodeAt(i) === 0x2e) {
      // RFC 4291 §2.2 (3): the low 32 bits may be written as an IPv4 dotted quad.
      if (n > 6) return false;
      const v4 = parseIPv4(text, groupStart, end);
      if (v4 < 0) return false;
      groups[n++] = v4 >>> 16;
      groups[n++] = v4 & 0xffff;
      i = end;
      break;
    }
    if (digits === 0 || digits > 4 || n >= 8) return false;
    groups[n++] = v;
    if (i === end) break;
    if (text.charCodeAt(i) !== 0x3a) return false;
    i++;
    if (i < end && text.charCodeAt(i) === 0x3a) {
      if (gap >= 0) return false;
      gap = n;
      i++;
    } else if (i === end) {
      return false;
    }
  }
  if (gap < 0) {
    if (n !== 8) return false;
  } else {
    // `::` stands for at least one zero group (RFC 4291 §2.2 (2)).
    if (n > 7) return false;
    const shift = 8 - n;
    for (let k = n - 1; k >= gap; k--) groups[k + shift] = groups[k]!;
    for (let k = gap; k < gap + shift; k++) groups[k] = 0;
  }
  for (let k = 0; k < 4; k++) out[k] = ((groups[2 * k]! << 16) | groups[2 * k + 1]!) >>> 0;
  return true;
}

/**
 * A strict address (dotted-decimal IPv4 or RFC 4291 IPv6, no brackets, no zone) into `out`.
 * Returns the family, or 0 when the text is neither. Allocates nothing: the hot path's parser.
 */
export function parseIpInto(text: string, out: Uint32Array): 0 | IpFamily {
  if (text.length > MAX_IPV6_TEXT) return 0;
  const v4 = parseIPv4(text);
  if (v4 >= 0) {
    out[0] = v4;
    out[1] = 0;
    out[2] = 0;
    out[3] = 0;
    return 4;
  }
  return text.indexOf(':') >= 0 && parseIPv6(text, out) ? 6 : 0;
}

/**
 * parseIpInto for an address a socket reported, which may carry a zone: a link-local IPv6 address
 * is written with its interface, `fe80::1%eth0` (RFC 4007 §11; Node's remoteAddress, the native
 * plane's reports, SO_ORIGINAL_DST's scope). The zone says which link the address is on, so it is
 * kept for the dial; rules and protected ranges carry none and judge the address itself. An IPv4
 * address with a zone, or an empty zone, is none.
 */
export function parseZonedIpInto(text: string, out: Uint32Array): 0 | IpFamily {
  const pct = text.indexOf('%');
  if (pct < 0) return parseIpInto(text, out);
  return pct < text.length - 1 && parseIpInto(text.slice(0, pct), out) === 6 ? 6 : 0;
}

/**
 * The address of a socket's address text without its zone: `fe80::1` of `fe80::1%eth0` (RFC 4007
 * §11), the text as it is when it has none. What a name's DNS answer or a remembered address is
 * compared with: neither carries a zone, while the original destination of a link-local
 * connection does (parseZonedIpInto).
 */
export function withoutZone(text: string): string {
  const pct = text.indexOf('%');
  return pct < 0 ? text : text.slice(0, pct);
}

/** A strict address as data, or null. */
export function parseIp(text: string): IpAddress | null {
  const words = new Uint32Array(4);
  const family = parseIpInto(text, words);
  return family === 0 ? null : { family, words };
}

/** Whether IPv6 words are an IPv4-mapped address, ::ffff:0:0/96 (RFC 4291 §2.5.5.2). */
export function isIPv4Mapped(words: Uint32Array): boolean {
  return words[0] === 0 && words[1] === 0 && words[2] === 0xffff;
}

export function formatIPv4(v: number): string {
  return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

/**
 * RFC 5952 text: lowercase hex without leading zeros (§4.1, §4.3), the longest run of two or
 * more zero groups as `::`, the first on a tie (§4.2), and an IPv4-mapped address with its
 * IPv4 part dotted (§5).
 */
export function formatIPv6(words: Uint32Array): string {
  const g: number[] = [];
  for (let k = 0; k < 4; k++) g.push(words[k]! >>> 16, words[k]! & 0xffff);
  if (isIPv4Mapped(words)) return `::ffff:${formatIPv4(words[3]!)}`;
  let bestStart = -1;
  let bestLen = 1;
  for (let k = 0; k < 8;) {
    if (g[k] !== 0) {
      k++;
      continue;
    }
    let e = k;
    while (e < 8 && g[e] === 0) e++;
    if (e - k > bestLen) {
      bestStart = k;
      bestLen = e - k;
    }
    k = e;
  }
  const hex = (from: number, to: number): string =>
    g
      .slice(from, to)
      .map((x) => x.toString(16))
      .join(':');
  if (bestStart < 0) return hex(0, 8);
  return `${hex(0, bestStart)}::${hex(bestStart + bestLen, 8)}`;
}

export function formatIp(family: IpFamily, words: Uint32Array): string {
  return family === 4 ? formatIPv4(words[0]!) : formatIPv6(words);
}

/** The canonical text of a strict address, or null when it is not one. */
export function canonicalIp(text: string): string | null {
  const a = parseIp(text);
  return a === null ? null : formatIp(a.family, a.words);
}

/**
 * The canonical text of a source address, the key the sandbox table is indexed by: the strict
 * canonical form, and an IPv4-mapped IPv6 address as its IPv4 (a dual-stack listener reports
 * IPv4 clients as ::ffff:a.b.c.d). Undefined when the text is not a strict address.
 */
export function canonicalSource(text: string): string | undefined {
  // Asked several times per connection (admission, the DNS memory, the upstream's addresses)
  // about the same few texts: each text's answer is kept (bounded; started over when full).
  const known = canonicalSources.get(text);
  if (known !== undefined) return known === '' ? undefined : known;
  const a = parseIp(text);
  const c = a === null ? undefined : a.family === 6 && isIPv4Mapped(a.words) ? formatIPv4(a.words[3]!) : formatIp(a.family, a.words);
  if (canonicalSources.size >= CANONICAL_SOURCES_KEPT) canonicalSources.clear();
  canonicalSources.set(text, c ?? '');
  return c;
}

/**
 * A sandbox's `sources` entry as the key the sandbox table is indexed by, or why it is none. The
 * key is what a connection's source is looked up by: canonicalSource's text, and for a link-local
 * IPv6 address (fe80::/10, RFC 4291 §2.5.6) the address with its interface, `fe80::b1%eth1`, as
 * both data planes report a link-local peer (Node's remoteAddress, native/napi_args.h
 * sockaddr_text). A link-local address names a host only on one link (RFC 4007 §6): without its
 * interface it would match no connection, and with any interface the same address on two links
 * would be one sandbox, so one is required, and a zone is refused on any other address. The
 * interface name is kept as written (Linux names are case-sensitive).
 */
export function sandboxSource(text: string): { ok: true; source: string } | { ok: false; reason: string } {
  const pct = text.indexOf('%');
  const a = parseIp(pct < 0 ? text : text.slice(0, pct));
  if (a === null) return { ok: false, reason: `Expected an IPv4 or IPv6 address, got ${quote(text)}` };
  const linkLocal = a.family === 6 && (a.words[0]! & 0xffc00000) >>> 0 === 0xfe800000;
  if (!linkLocal) {
    // An IPv4 address has no zone in the socket API, link-local (169.254/16) or not.
    if (pct >= 0) return { ok: false, reason: `Only an IPv6 link-local address (fe80::/10) takes an interface, got ${quote(text)}` };
    return { ok: true, source: canonicalSource(text)! };
  }
  const zone = pct < 0 ? '' : text.slice(pct + 1);
  if (!/^[A-Za-z0-9_.@-]{1,15}$/.test(zone)) {
    return {
      ok: false,
      reason: `A link-local source needs the interface it is seen on, as in "${formatIp(6, a.words)}%eth0" (a link-local address names a host on one link only), got ${quote(text)}`,
    };
  }
  // Both data planes report the interface by its name; a number is what the native one writes
  // only for an interface that is gone, so an index here could never match a connection.
  if (/^\d+$/.test(zone)) {
    return {
      ok: false,
      reason: `A link-local source names its interface, not its index (connections are reported by name), as in "${formatIp(6, a.words)}%eth0", got ${quote(text)}`,
    };
  }
  return { ok: true, source: `${formatIp(6, a.words)}%${zone}` };
}

/** canonicalSource's answers by text ('' for not an address); at most this many are kept. */
const canonicalSources = new Map<string, string>();
const CANONICAL_SOURCES_KEPT = 4096;

export const familyBits = (family: IpFamily): number => (family === 4 ? 32 : 128);

/**
 * The mask of word `k` for a prefix length counted over `bits` (32 for IPv4, whose one word is
 * words[0]; 128 for IPv6).
 */
export function wordMask(prefix: number, k: number): number {
  const left = prefix - 32 * k;
  if (left <= 0) return 0;
  if (left >= 32) return 0xffffffff;
  return (0xffffffff << (32 - left)) >>> 0;
}

/** Clears the host bits of `words` after `prefix`, in place. Returns whether any were set. */
export function clearHostBits(words: Uint32Array, prefix: number): boolean {
  let changed = false;
  for (let k = 0; k < 4; k++) {
    const m = wordMask(prefix, k);
    const v = (words[k]! & m) >>> 0;
    if (v !== words[k]) changed = true;
    words[k] = v;
  }
  return changed;
}

/** An address as an unsigned integer of 32 (IPv4) or 128 (IPv6) bits. */
export function wordsToBigInt(family: IpFamily, words: Uint32Array): bigint {
  if (family === 4) return BigInt(words[0]!);
  let v = 0n;
  for (let k = 0; k < 4; k++) v = (v << 32n) | BigInt(words[k]!);
  return v;
}

/** The first and last address of a block, as integers of its family's width. */
export function cidrBounds(b: CidrBlock): { lo: bigint; hi: bigint } {
  const bits = BigInt(familyBits(b.family));
  const lo = wordsToBigInt(b.family, b.words);
  const hostBits = bits - BigInt(b.prefix);
  return { lo, hi: lo + (1n << hostBits) - 1n };
}

export function formatCidr(b: CidrBlock): string {
  return `${formatIp(b.family, b.words)}/${b.prefix}`;
}

export type CidrParse = { readonly ok: true; readonly block: CidrBlock; readonly hostBitsSet: boolean } | { readonly ok: false; readonly reason: string };

const MAX_CIDR_TEXT = MAX_IPV6_TEXT + 4;

/**
 * `address/prefix`, or a bare address as a single-host block (/32, /128). The address is
 * strict (see parseIPv4, parseIPv6) and the prefix plain decimal without leading zeros.
 * Host bits are cleared and reported rather than refused, the behaviour of most CIDR tools.
 */
export function parseCidr(text: string): CidrParse {
  const q = quote(text);
  if (text.length === 0) return { ok: false, reason: 'Expected a CIDR such as "10.0.0.0/8", got an empty string' };
  if (text.length > MAX_CIDR_TEXT) return { ok: false, reason: `CIDR ${q} is too long to be an address and prefix` };
  const slash = text.indexOf('/');
  const addrEnd = slash < 0 ? text.length : slash;
  const words = new Uint32Array(4);
  let family: IpFamily;
  const v4 = parseIPv4(text, 0, addrEnd);
  if (v4 >= 0) {
    words[0] = v4;
    family = 4;
  } else if (text.lastIndexOf(':', addrEnd) >= 0 && parseIPv6(text, words, 0, addrEnd)) {
    family = 6;
  } else {
    const addr = text.slice(0, addrEnd);
    const hint = addr.includes('%')
      ? ' (zone indexes such as "%eth0" are not accepted)'
      : parseIPv4Loose(addr) >= 0
        ? ' (write IPv4 as four decimal parts without leading zeros)'
        : '';
    return { ok: false, reason: `CIDR ${q} does not start with an IPv4 or IPv6 address${hint}` };
  }
  const bits = familyBits(family);
  let prefix = bits;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) return { ok: false, reason: `CIDR ${q} has a malformed prefix length "${p}"` };
    prefix = Number(p);
    if (prefix > bits) return { ok: false, reason: `CIDR ${q} has a prefix length outside 0-${bits}` };
  }
  const hostBitsSet = clearHostBits(words, prefix);
  return { ok: true, block: { family, words, prefix }, hostBitsSet };
}
