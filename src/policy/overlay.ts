// The operator's overlays (config `overlays`): an always-deny list and an always-allow list,
// applied to every sandbox around its own policy (policy/verdict.ts gives the order). Each
// entry is named — the name is what the log line, the effective view and the metric label
// show, so the operator bounds the label set — and is written in the policies' own grammar:
// `domains` (patterns as in `allowed_domains`), `cidrs`, `ports` (443 or "8000-8999").
//
// An entry matches a connection the way a policy's allow side does: its host (an address in
// one of its CIDRs, else the name by one of its domains; any host when it lists neither, which
// only always-deny may do) AND its port (any port when it lists none). "smtp: ports [25]" is
// every host on port 25;
// "mirror: domains [mirror.test], ports [443]" is that name on 443 only.

import { quote } from '../util/fields.ts';
import type { FieldIssue } from '../util/issues.ts';
import { normalizePattern } from '../match/names.ts';
import { cidrBounds, familyBits, parseCidr } from '../match/ip.ts';
import type { ProtectedRanges } from '../match/protected.ts';
import { compilePolicy, CompiledSide, type CompiledPolicy } from './compile.ts';
import { EMPTY_SIDE, type PortRange, type Side } from './model.ts';
import { validateCidr, validatePort } from './validate.ts';

export type OverlayKind = 'alwaysAllow' | 'alwaysDeny';

export interface OverlayEntry {
  /** Unique within its list; letters, digits, ".", "_", "-" (at most 64): a metric label value. */
  readonly name: string;
  readonly side: Side;
}

export interface Overlays {
  readonly alwaysAllow: readonly OverlayEntry[];
  readonly alwaysDeny: readonly OverlayEntry[];
}

export const NO_OVERLAYS: Overlays = Object.freeze({ alwaysAllow: [], alwaysDeny: [] });

const ENTRY_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const ENTRY_KEYS = ['name', 'domains', 'cidrs', 'ports'];

/**
 * Reads `overlays` ({ alwaysAllow: [...], alwaysDeny: [...] }, each list optional). Every
 * problem is returned, each with its key path under `field`; any problem refuses the whole
 * value (a reload that fails changes nothing).
 */
export function parseOverlays(v: unknown, field = 'overlays'): { ok: true; value: Overlays } | { ok: false; issues: FieldIssue[] } {
  const issues: FieldIssue[] = [];
  if (v === undefined || v === null) return { ok: true, value: NO_OVERLAYS };
  if (typeof v !== 'object' || Array.isArray(v))
    return { ok: false, issues: [{ field, reason: `Expected an object with alwaysAllow and alwaysDeny, got ${quote(v)}` }] };
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (k !== 'alwaysAllow' && k !== 'alwaysDeny')
      issues.push({ field: `${field}.${k}`, reason: `Unknown key ${quote(k)}; known keys are alwaysAllow, alwaysDeny` });
  }
  const list = (kind: OverlayKind): OverlayEntry[] => {
    const raw = o[kind];
    const f = `${field}.${kind}`;
    if (raw === undefined) return [];
    if (!Array.isArray(raw)) {
      issues.push({ field: f, reason: `Expected a list of entries, got ${quote(raw)}` });
      return [];
    }
    const out: OverlayEntry[] = [];
    const seen = new Map<string, number>();
    raw.forEach((e, i) => {
      const entry = parseEntry(e, `${f}[${i}]`, kind, issues);
      if (entry === null) return;
      const before = seen.get(entry.name);
      if (before !== undefined) issues.push({ field: `${f}[${i}].name`, reason: `Duplicate name ${quote(entry.name)} (also ${f}[${before}])` });
      seen.set(entry.name, i);
      out.push(entry);
    });
    return out;
  };
  const alwaysAllow = list('alwaysAllow');
  const alwaysDeny = list('alwaysDeny');
  if (issues.length > 0) return { ok: false, issues };
  return { ok: true, value: Object.freeze({ alwaysAllow: Object.freeze(alwaysAllow), alwaysDeny: Object.freeze(alwaysDeny) }) };
}

function parseEntry(v: unknown, f: string, kind: OverlayKind, issues: FieldIssue[]): OverlayEntry | null {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    issues.push({ field: f, reason: `Expected an entry { name, domains, cidrs, ports }, got ${quote(v)}` });
    return null;
  }
  const e = v as Record<string, unknown>;
  const before = issues.length;
  for (const k of Object.keys(e)) {
    if (!ENTRY_KEYS.includes(k)) issues.push({ field: `${f}.${k}`, reason: `Unknown key ${quote(k)}; known keys are ${ENTRY_KEYS.join(', ')}` });
  }
  const name = e['name'];
  if (name === undefined) issues.push({ field: `${f}.name`, reason: 'Missing required field "name"' });
  else if (typeof name !== 'string' || !ENTRY_NAME.test(name)) {
    issues.push({ field: `${f}.name`, reason: `Expected letters, digits, ".", "_" or "-" (at most 64), got ${quote(name)}` });
  }
  const strings = (k: string): string[] => {
    const raw = e[k];
    if (raw === undefined) return [];
    if (!Array.isArray(raw)) {
      issues.push({ field: `${f}.${k}`, reason: `Expected a list, got ${quote(raw)}` });
      return [];
    }
    return raw as string[];
  };
  const domains: string[] = [];
  strings('domains').forEach((d, i) => {
    const n = normalizePattern(d, kind === 'alwaysDeny' ? 'deny' : 'allow');
    if (!n.ok) issues.push({ field: `${f}.domains[${i}]`, reason: n.reason });
    // Allowing every name to every sandbox would void every policy: say so rather than do it.
    else if (kind === 'alwaysAllow' && n.pattern === '*')
      issues.push({ field: `${f}.domains[${i}]`, reason: 'An always-allow entry may not allow every name ("*")' });
    else domains.push(n.pattern);
  });
  const cidrs: string[] = [];
  strings('cidrs').forEach((c, i) => {
    const r = validateCidr(c);
    if (!r.ok) issues.push({ field: `${f}.cidrs[${i}]`, reason: r.reason });
    else if (kind === 'alwaysAllow' && r.cidr.endsWith('/0'))
      issues.push({ field: `${f}.cidrs[${i}]`, reason: `An always-allow entry may not allow every address (${quote(c)})` });
    else cidrs.push(r.cidr);
  });
  if (kind === 'alwaysAllow' && cidrs.length > 1) {
    const family = coversEveryAddress(cidrs);
    if (family !== null)
      issues.push({ field: `${f}.cidrs`, reason: `An always-allow entry may not allow every address: its CIDRs together cover every IPv${family} address` });
  }
  const ports: PortRange[] = [];
  const rawPorts = e['ports'];
  if (rawPorts !== undefined && !Array.isArray(rawPorts)) issues.push({ field: `${f}.ports`, reason: `Expected a list, got ${quote(rawPorts)}` });
  else if (Array.isArray(rawPorts)) {
    rawPorts.forEach((p, i) => {
      const r = validatePort(p);
      if (!r.ok) issues.push({ field: `${f}.ports[${i}]`, reason: r.reason });
      else ports.push(r.range);
    });
  }
  if (issues.length === before && domains.length + cidrs.length + ports.length === 0) {
    issues.push({ field: f, reason: 'An entry lists no domains, cidrs or ports: it would match nothing' });
  } else if (issues.length === before && kind === 'alwaysAllow' && domains.length + cidrs.length === 0) {
    // With ports alone an entry matches any host: "*" on those ports (["1-65535"]: everything),
    // for every sandbox, which the "*" and /0 refusals above exist to prevent.
    issues.push({ field: f, reason: 'An always-allow entry must name its hosts (domains or cidrs): with ports alone it allows every host on them' });
  }
  if (issues.length > before) return null;
  return Object.freeze({ name: name as string, side: Object.freeze({ domains, cidrs, ports }) });
}

/** The family (4 or 6) whose whole address space `cidrs` (valid, canonical) cover together, or null: ["0.0.0.0/1", "128.0.0.0/1"] is a /0. */
function coversEveryAddress(cidrs: readonly string[]): 4 | 6 | null {
  for (const family of [4, 6] as const) {
    const spans = cidrs
      .map((c) => parseCidr(c))
      .flatMap((r) => (r.ok && r.block.family === family ? [cidrBounds(r.block)] : []))
      .sort((a, b) => (a.lo < b.lo ? -1 : a.lo > b.lo ? 1 : 0));
    let next = 0n; // the first address not covered yet
    for (const { lo, hi } of spans) {
      if (lo > next) break;
      if (hi + 1n > next) next = hi + 1n;
    }
    if (next === 1n << BigInt(familyBits(family))) return family;
  }
  return null;
}

/** One always-allow entry: a block-all policy whose allow side is the entry, so decide() applies protection. */
export interface CompiledAllowEntry {
  readonly name: string;
  readonly entry: OverlayEntry;
  readonly policy: CompiledPolicy;
  /** Connections this entry decided since it was loaded (the effective view's `hits`). */
  readonly counter: { hits: number };
}

/** One always-deny entry: its side, matched as an allow side is (host AND port), rule texts `denied_*`. */
export interface CompiledDenyEntry {
  readonly name: string;
  readonly entry: OverlayEntry;
  readonly side: CompiledSide;
  readonly counter: { hits: number };
}

export interface CompiledOverlays {
  readonly alwaysAllow: readonly CompiledAllowEntry[];
  readonly alwaysDeny: readonly CompiledDenyEntry[];
  /** The protected set's NAT64 prefixes: an always-deny IPv4 CIDR holds against its forms inside them too (matchSide). */
  readonly nat64: ProtectedRanges['nat64'];
}

/** Compiles the overlays against the protected set in force; compile again when either changes. */
export function compileOverlays(o: Overlays, protectedSet: ProtectedRanges): CompiledOverlays {
  return Object.freeze({
    alwaysAllow: Object.freeze(
      o.alwaysAllow.map((entry) => ({
        name: entry.name,
        entry,
        policy: compilePolicy({ mode: 'block-all', allow: entry.side, deny: EMPTY_SIDE }, protectedSet),
        counter: { hits: 0 },
      })),
    ),
    alwaysDeny: Object.freeze(
      o.alwaysDeny.map((entry) => ({ name: entry.name, entry, side: new CompiledSide(entry.side, 'denied', null), counter: { hits: 0 } })),
    ),
    nat64: protectedSet.nat64,
  });
}
