// Which protocol a client speaks first, for the listener that serves every other port. Looks
// at a handful of bytes only and never waits longer than it must: TLS is told by its first
// two bytes, HTTP by a known method and the space after it.
//
// It agrees with the parsers: when it says 'tls', parseClientHello never answers not-tls, and
// a first byte it rejects is not-tls there too (the fuzz suite pins both).

export type Sniffed = 'need-more' | 'tls' | 'http' | 'unknown';

/**
 * Methods a client may open with: RFC 9110 §9, PATCH (RFC 5789), the HTTP/2 preface's PRI
 * (RFC 9113 §3.4), WebDAV (RFC 4918, 3744, 4791, 5323), QUERY (the httpbis safe method with a
 * body) and the caches' PURGE. An unknown token is 'unknown': the caller then judges the
 * connection by address and port alone, as for any protocol it cannot read.
 */
const METHODS: readonly string[] = [
  'GET',
  'HEAD',
  'POST',
  'PUT',
  'DELETE',
  'CONNECT',
  'OPTIONS',
  'TRACE',
  'PATCH',
  'PRI',
  'PROPFIND',
  'PROPPATCH',
  'MKCOL',
  'COPY',
  'MOVE',
  'LOCK',
  'UNLOCK',
  'SEARCH',
  'REPORT',
  'MKCALENDAR',
  'ACL',
  'QUERY',
  'PURGE',
];

const SP = 0x20;

export function sniff(bytes: Uint8Array): Sniffed {
  const n = bytes.length;
  if (n === 0) return 'need-more';
  const b0 = bytes[0]!;
  // RFC 8446 §5.1 / RFC 5246 Appendix E.1: a handshake record, version {03,XX}.
  if (b0 === 0x16) {
    if (n < 2) return 'need-more';
    return bytes[1] === 3 ? 'tls' : 'unknown';
  }
  // RFC 5246 Appendix E.2: an SSLv2-format ClientHello — two-byte length with the top bit
  // set, message type 1, then version 0x0002 or 0x0300–0x0303.
  if ((b0 & 0x80) !== 0) {
    if (n < 3) return 'need-more';
    if (bytes[2] !== 1) return 'unknown';
    if (n < 4) return 'need-more';
    const major = bytes[3]!;
    if (major !== 0 && major !== 3) return 'unknown';
    if (n < 5) return 'need-more';
    const minor = bytes[4]!;
    return (major === 0 && minor === 2) || (major === 3 && minor <= 3) ? 'tls' : 'unknown';
  }

  let pending = false;
  // Bounded: a fixed list of short names.
  for (const m of METHODS) {
    const k = Math.min(n, m.length);
    let j = 0;
    while (j < k && bytes[j] === m.charCodeAt(j)) j++;
    if (j < k) continue;
    if (n <= m.length) pending = true;
    else if (bytes[m.length] === SP) return 'http';
  }
  return pending ? 'need-more' : 'unknown';
}
