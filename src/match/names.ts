// One normalization for the names in policies and the names connections carry (SNI, Host), so
// that the two can only ever be compared in the same form. A name that cannot be normalized is
// refused, never trimmed into something else: smokescreen's CVE-2022-24825 was a policy and a
// connection disagreeing about what one name was.

import { domainToASCII } from 'node:url';
import { parse as parseDomain } from 'tldts';
import { quote } from '../util/fields.ts';
import { endsInNumber, formatIPv4, formatIPv6, parseIPv4Loose, parseIPv6 } from './ip.ts';

export type NormalizedName = { ok: true; name: string } | { ok: true; ip: string } | { ok: false; reason: string };

/** RFC 1035 §2.3.4: 255 octets on the wire is 253 characters of text without the root dot. */
export const MAX_NAME_LENGTH = 253;
/** RFC 1035 §2.3.4. */
const MAX_LABEL = 63;
/**
 * How much raw text is looked at before refusing. Generous against IDN input (a Unicode label
 * can be shorter than its punycode), small enough to bound the work on hostile input.
 */
const MAX_RAW = 1024;

type Host = { ok: true; name: string } | { ok: true; ip: string } | { ok: false; reason: string };

/**
 * A host name as a connection or a policy writes it → lowercase ASCII with no trailing dot
 * (`{ name }`), or the canonical text of the address it spells (`{ ip }`), or a refusal.
 *
 * Any spelling of an IP address is an address, not a name (`127.1`, `2130706433`, `0x7f.1`,
 * `[::1]`, `[fe80::1%eth0]`): a resolver or URL parser would turn it into that address, so only
 * address rules may judge it. An IPv6 address's zone is left out of `{ ip }` (zoneStart).
 */
export function normalizeName(raw: string): NormalizedName {
  return normalizeHost(raw, 'Name');
}

/**
 * A domain pattern: `example.com` (that name only), `*.example.com` (every name below it, at
 * any depth, never `example.com` itself), or `*` (every name). The name part is normalized
 * like a connection's name. In a list that allows (`use` 'allow', the default), a wildcard over
 * an ICANN public suffix (`*.com`, `*.co.uk`) is refused: it would allow every site under that
 * registry. Private-section suffixes of the Public Suffix List (`*.vercel.app`) name one
 * operator's hosts and are accepted. In a list that denies (`use` 'deny') it is taken: denying
 * a registry (`*.ru`) narrows a policy, and is what its writer asked for.
 */
export function normalizePattern(raw: string, use: 'allow' | 'deny' = 'allow'): { ok: true; pattern: string } | { ok: false; reason: string } {
  if (typeof raw !== 'string') return { ok: false, reason: `Expected a domain pattern, got ${typeof raw}` };
  if (raw === '*') return { ok: true, pattern: '*' };
  const wildcard = raw.startsWith('*.');
  const rest = wildcard ? raw.slice(2) : raw;
  if (rest.includes('*')) {
    return { ok: false, reason: `Pattern ${quote(raw)} may use "*" only as its whole first label, as in "*.example.com"` };
  }
  const h = normalizeHost(rest, 'Pattern', raw);
  if (!h.ok) return h;
  if ('ip' in h) {
    return { ok: false, reason: `Pattern ${quote(raw)} is an IP address, which never matches a name; list it as a CIDR` };
  }
  if (!wildcard || use === 'deny') return { ok: true, pattern: `${wildcard ? '*.' : ''}${h.name}` };
  const suffix = publicSuffixOf(h.name);
  if (suffix !== null) {
    return { ok: false, reason: `Pattern ${quote(raw)} is a wildcard over the public suffix "${suffix}"` };
  }
  return { ok: true, pattern: `*.${h.name}` };
}

/** The name itself when it is an ICANN public suffix (private-section rules excluded), else null. */
function publicSuffixOf(name: string): string | null {
  try {
    const p = parseDomain(name, { allowPrivateDomains: false, extractHostname: false, detectIp: false, validateHostname: false });
    return p.isIcann === true && p.publicSuffix === name ? name : null;
  } catch {
    // tldts is not documented to throw; if it ever does, refusing the wildcard is the safe side.
    return name;
  }
}

/**
 * Where the address ends in `text[start, end)` when a zone follows it (`fe80::1%eth0`, RFC 4007
 * §11): the index of its "%"; else `end`. Node's http writes a link-local destination's zone
 * into its Host as the interface is named (`[fe80::1%eth0]`; Go's net/http, Python's http.client
 * and curl leave it out), and a URI writes it after "%25" (RFC 6874 §2). Either is taken as
 * 1*( unreserved / pct-encoded ) and left aside: the link is the connection's own, and rules judge
 * the address itself. A malformed or empty zone gives `end`, so the "%" fails the address.
 */
function zoneStart(text: string, start: number, end: number): number {
  const pct = text.indexOf('%', start);
  if (pct < 0 || pct >= end || pct === end - 1) return end;
  for (let i = pct + 1; i < end; i++) {
    const c = text.charCodeAt(i);
    const unreserved = (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x2e || c === 0x5f || c === 0x7e;
    if (unreserved) continue;
    if (c === 0x25 && i + 2 < end && isHex(text.charCodeAt(i + 1)) && isHex(text.charCodeAt(i + 2))) {
      i += 2;
      continue;
    }
    return end;
  }
  return pct;
}

const isHex = (c: number): boolean => (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x66);

function normalizeHost(raw: string, noun: 'Name' | 'Pattern', original: string = raw): Host {
  if (typeof raw !== 'string') return { ok: false, reason: `Expected a host name, got ${typeof raw}` };
  const q = quote(original);
  if (raw.length === 0) return { ok: false, reason: `${noun} is empty` };
  if (raw.length > MAX_RAW) return { ok: false, reason: `${noun} ${q} is longer than ${MAX_NAME_LENGTH} characters` };
  let ascii = true;
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    // C0 controls, DEL and C1 controls: never part of a name, and a NUL is how a name gets
    // cut short by C code downstream.
    if (c < 0x20 || c === 0x7f || (c >= 0x80 && c <= 0x9f)) return { ok: false, reason: `${noun} ${q} contains a control character` };
    if (c >= 0x80) ascii = false;
  }

  // RFC 3986 §3.2.2: an IPv6 literal in a host is bracketed; a bare one is accepted too.
  if (raw.charCodeAt(0) === 0x5b) {
    const words = new Uint32Array(4);
    const end = raw.length - 1;
    if (raw.charCodeAt(end) === 0x5d && parseIPv6(raw, words, 1, zoneStart(raw, 1, end))) return { ok: true, ip: formatIPv6(words) };
    return { ok: false, reason: `${noun} ${q} is bracketed but is not an IPv6 address` };
  }
  if (raw.includes(':')) {
    const words = new Uint32Array(4);
    if (parseIPv6(raw, words, 0, zoneStart(raw, 0, raw.length))) return { ok: true, ip: formatIPv6(words) };
    return { ok: false, reason: `${noun} ${q} contains ":", which is not allowed in a host name` };
  }

  let s = raw;
  if (!ascii) {
    // UTS #46 processing as WHATWG URL does it: maps (including case and full-width forms)
    // and encodes each label as punycode (RFC 3492). '' means the name is not valid IDNA.
    try {
      s = domainToASCII(raw);
    } catch {
      s = '';
    }
    if (s === '') return { ok: false, reason: `${noun} ${q} is not a valid internationalized domain name` };
  } else {
    s = raw.toLowerCase();
  }
  if (s.endsWith('.')) s = s.slice(0, -1);
  if (s.length === 0) return { ok: false, reason: `${noun} ${q} is empty once its trailing dot is removed` };

  if (endsInNumber(s)) {
    const v4 = parseIPv4Loose(s);
    if (v4 >= 0) return { ok: true, ip: formatIPv4(v4) };
    return { ok: false, reason: `${noun} ${q} ends in a number but is not an IPv4 address` };
  }

  if (s.length > MAX_NAME_LENGTH) return { ok: false, reason: `${noun} ${q} is longer than ${MAX_NAME_LENGTH} characters` };
  let labelStart = 0;
  for (let i = 0; i <= s.length; i++) {
    const c = i === s.length ? 0x2e : s.charCodeAt(i);
    if (c === 0x2e) {
      if (i === labelStart) return { ok: false, reason: `${noun} ${q} has an empty label` };
      if (i - labelStart > MAX_LABEL) return { ok: false, reason: `${noun} ${q} has a label longer than ${MAX_LABEL} characters` };
      labelStart = i + 1;
      continue;
    }
    if (c >= 0x80) return { ok: false, reason: `${noun} ${q} keeps a non-ASCII character after IDN conversion` };
    // RFC 952 / RFC 1123 §2.1 letters, digits and hyphen; underscore is tolerated because
    // real hosts carry it (RFC 2181 §11 puts no restriction on labels).
    const ok = (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f;
    if (!ok) return { ok: false, reason: `${noun} ${q} contains ${JSON.stringify(String.fromCharCode(c))}, which is not allowed in a host name` };
  }
  return { ok: true, name: s };
}

/**
 * A name as a client sent it on the wire (SNI host_name, HTTP Host). RFC 6066 §3 makes the
 * host_name ASCII (an IDN travels as its A-label) and RFC 9110 §7.2 the Host too; the peek
 * decodes one character per byte, so a byte ≥ 0x80 here is not a U-label to convert but bytes a
 * server would compare as they are: matching their punycoded reading would judge a name the
 * upstream never sees. Refused, never converted.
 */
export function normalizeWireName(raw: string): NormalizedName {
  for (let i = 0; i < raw.length; i++) {
    if (raw.charCodeAt(i) > 0x7f) {
      return {
        ok: false,
        reason: `Name ${JSON.stringify(raw.length > 80 ? `${raw.slice(0, 77)}...` : raw)} has a non-ASCII byte at ${i}; a name on the wire is ASCII (RFC 6066 §3)`,
      };
    }
  }
  return normalizeName(raw);
}

/**
 * The name a policy judges for `raw`, a name as a DNS record writes it (an owner, a CNAME or
 * other target; dns-packet text, labels joined by dots): its normalized host name
 * (normalizeWireName); for one that is no host name, `*.` and the nearest host name enclosing it
 * (`*.denied.test` for the wildcard owner `*.denied.test`, for `a b.denied.test`, for
 * `x.a!b.denied.test`). A record may carry any bytes in a label (RFC 2181 §11), and such a name
 * lies under that host name all the same: judged as a child no rule names, it is matched by the
 * wildcard rules over that name only (the `*` label is no rule's label: a rule's `*.` is kept
 * apart, domain-trie.ts). Null for what has no host name above it: the root, an address.
 */
export function judgedDnsName(raw: string): string | null {
  const n = normalizeWireName(raw);
  if (n.ok) return 'name' in n ? n.name : null;
  for (let dot = raw.indexOf('.'); dot >= 0; dot = raw.indexOf('.', dot + 1)) {
    const up = normalizeWireName(raw.slice(dot + 1));
    if (up.ok && 'name' in up) return `*.${up.name}`;
  }
  return null;
}
