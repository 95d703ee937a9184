// Removes the `ech` SvcParam from SVCB (64) and HTTPS (65) records, so that clients send the
// real name in the SNI rather than a CDN's shared public name that stands for every site it
// serves (RFC 9460 §2.2 wire format; draft-ietf-tls-svcb-ech for the key). dns-packet does not
// know these types and hands their RDATA over as bytes; the few fields read here are read
// through the bounds-checked ByteReader.

import { ByteReader, OVERRUN, SHORT } from '../peek/byte-reader.ts';

export const SVCB_TYPE = 64;
export const HTTPS_TYPE = 65;
/** RFC 9460 §14.3.2: SvcParamKey 0 is "mandatory", 5 is "ech". */
const KEY_MANDATORY = 0;
const KEY_ECH = 5;

export type EchStrip =
  | { kind: 'unchanged' }
  | { kind: 'stripped'; rdata: Buffer }
  /** RDATA that is not SVCB's shape: the record is dropped rather than passed on unread. */
  | { kind: 'malformed'; why: string };

/**
 * The RDATA of one SVCB/HTTPS record without its `ech` parameter. When `mandatory` lists `ech`,
 * that entry goes too (and `mandatory` itself if it lists nothing else), since RFC 9460 §8 makes
 * a record that names a missing mandatory key malformed.
 */
export function stripEch(rdata: Uint8Array): EchStrip {
  const r = new ByteReader(rdata);
  if (r.u16() < 0) return { kind: 'malformed', why: 'no SvcPriority' };
  // TargetName: RFC 9460 §2.2 forbids compression, so labels run to the root label.
  for (;;) {
    const len = r.u8();
    if (len < 0) return { kind: 'malformed', why: 'TargetName runs past the record' };
    if (len === 0) break;
    if (len > 63) return { kind: 'malformed', why: 'TargetName has a compression pointer or a bad label' };
    if (r.skip(len) < 0) return { kind: 'malformed', why: 'TargetName runs past the record' };
  }
  const head = r.offset;
  const params: { key: number; start: number; end: number; value: Uint8Array }[] = [];
  while (r.remaining > 0) {
    const start = r.offset;
    const key = r.u16();
    const len = r.u16();
    if (key < 0 || len < 0) return { kind: 'malformed', why: 'a SvcParam runs past the record' };
    const value = r.take(len);
    if (value === SHORT || value === OVERRUN || typeof value === 'number') return { kind: 'malformed', why: 'a SvcParam value runs past the record' };
    params.push({ key, start, end: r.offset, value });
  }
  if (!params.some((p) => p.key === KEY_ECH)) return { kind: 'unchanged' };
  const parts: Uint8Array[] = [rdata.subarray(0, head)];
  for (const p of params) {
    if (p.key === KEY_ECH) continue;
    if (p.key === KEY_MANDATORY) {
      const keys: number[] = [];
      for (let i = 0; i + 1 < p.value.length; i += 2) keys.push((p.value[i]! << 8) | p.value[i + 1]!);
      const rest = keys.filter((k) => k !== KEY_ECH);
      if (rest.length === keys.length) parts.push(rdata.subarray(p.start, p.end));
      else if (rest.length > 0) {
        const b = Buffer.alloc(4 + rest.length * 2);
        b.writeUInt16BE(KEY_MANDATORY, 0);
        b.writeUInt16BE(rest.length * 2, 2);
        rest.forEach((k, i) => b.writeUInt16BE(k, 4 + i * 2));
        parts.push(b);
      }
      continue;
    }
    parts.push(rdata.subarray(p.start, p.end));
  }
  return { kind: 'stripped', rdata: Buffer.concat(parts) };
}
