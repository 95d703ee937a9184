// Validation of the two scalar kinds every dialect shares: CIDR blocks and port ranges. Each
// returns the canonical value or a sentence-case reason that quotes what was given.

import { quote } from '../util/fields.ts';
import { formatCidr, parseCidr } from '../match/ip.ts';
import type { PortRange } from './model.ts';

/**
 * A CIDR block in canonical text: a bare address becomes a single-host block (/32, /128);
 * host bits are cleared (`192.168.1.0/16` → `192.168.0.0/16`), since the writer's intent, the
 * network, is unambiguous; IPv6 is written as RFC 5952 prescribes. IPv4 parts must be plain
 * decimal: `010.0.0.0/8` is refused rather than read as octal or decimal.
 */
export function validateCidr(text: string): { ok: true; cidr: string } | { ok: false; reason: string } {
  if (typeof text !== 'string') return { ok: false, reason: `Expected a CIDR such as "10.0.0.0/8", got ${quote(text)}` };
  const r = parseCidr(text);
  return r.ok ? { ok: true, cidr: formatCidr(r.block) } : r;
}

const PORT_TEXT = /^([0-9]{1,5})(?:-([0-9]{1,5}))?$/;

/**
 * A destination port or an inclusive range: `443`, `"443"` or `"8000-8999"`. Port 0 is not a
 * destination a connection can have (RFC 6335 §6 reserves it), so ports run 1-65535.
 */
export function validatePort(v: unknown): { ok: true; range: PortRange } | { ok: false; reason: string } {
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) return { ok: false, reason: `Port ${quote(String(v))} is not a whole number` };
    if (v < 1 || v > 65535) return { ok: false, reason: `Port ${quote(String(v))} is outside 1-65535` };
    return { ok: true, range: { from: v, to: v } };
  }
  if (typeof v !== 'string') {
    return { ok: false, reason: `Expected a port (443) or a range ("8000-8999"), got ${v === null ? 'null' : typeof v}` };
  }
  const m = PORT_TEXT.exec(v);
  if (!m) return { ok: false, reason: `Port ${quote(v)} is not a port (443) or a range ("8000-8999")` };
  const from = Number(m[1]);
  const to = m[2] === undefined ? from : Number(m[2]);
  if (from < 1 || from > 65535 || to < 1 || to > 65535) return { ok: false, reason: `Port ${quote(v)} is outside 1-65535` };
  if (from > to) return { ok: false, reason: `Port range ${quote(v)} is reversed; write the lower port first` };
  return { ok: true, range: { from, to } };
}
