// Which protocol a client speaks first, on every listener (the port only sets which is expected). Looks
// at a handful of bytes only and never waits longer than it must: TLS is told by its first
// two bytes, HTTP by the shape of a request line (http-head.ts requestShape: any token is a
// method, RFC 9110 §9.1; leading empty lines are skipped, RFC 9112 §2.2). Anything else is
// 'unknown', and the caller judges it by address and port, as for any protocol it cannot read.
//
// It agrees with the parsers: when it says 'tls', parseClientHello never answers not-tls, and
// a first byte it rejects is not-tls there too (the fuzz suite pins both).

import { requestShape, type ShapeProgress } from './http-head.ts';

export type Sniffed = 'need-more' | 'tls' | 'http' | 'unknown';

/** `shape` (optional): requestShape's progress on the same, growing bytes (http-head.ts ShapeProgress). */
export function sniff(bytes: Uint8Array, shape?: ShapeProgress): Sniffed {
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

  const s = requestShape(bytes, shape);
  return s === 'need-more' ? 'need-more' : s === 'not-http' ? 'unknown' : 'http';
}
