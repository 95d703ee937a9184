// The sandbox0 dialect (sandbox0 "Network Policy": `GET`/`PUT /api/v1/sandboxes/{id}/network`) into the
// canonical policy. Every problem in the document is reported at once, each with its field path.
//
//   { "mode": "allow-all" | "block-all",
//     "egress": { "allowed_domains", "denied_domains", "allowed_cidrs", "denied_cidrs",
//                 "allowed_ports", "denied_ports" } }
//
// `mode` is required; `egress` and each of its lists are optional (absent or null is empty,
// as Go clients send nil slices). The mode picks the side that is enforced: block-all enforces
// only the allowed_* lists, allow-all only the denied_* lists. The other side is still
// validated, so a mistake in it is reported, and then dropped.

import { describe, isPlainObject, quote } from '../util/fields.ts';
import { CappedIssues, MAX_LIST_ENTRIES } from '../util/issues.ts';
import type { Mode, Parsed, Policy, PortRange, Side } from './model.ts';
import { EMPTY_SIDE } from './model.ts';
import { normalizePattern } from '../match/names.ts';
import { validateCidr, validatePort } from './validate.ts';

const MODES: readonly Mode[] = ['allow-all', 'block-all'];
const ROOT_FIELDS = ['mode', 'egress'] as const;
const EGRESS_FIELDS = ['allowed_domains', 'denied_domains', 'allowed_cidrs', 'denied_cidrs', 'allowed_ports', 'denied_ports'] as const;

export function parsePolicyDocument(doc: unknown): Parsed<Policy> {
  const issues = new CappedIssues('(root)');
  if (!isPlainObject(doc)) {
    issues.add('(root)', `Expected an object with "mode" and "egress", got ${describe(doc)}`);
    return { ok: false, issues: issues.result() };
  }
  for (const k of Object.keys(doc)) {
    if (!(ROOT_FIELDS as readonly string[]).includes(k)) issues.add(k, `Unknown field ${quote(k)}; known fields are ${ROOT_FIELDS.join(', ')}`);
  }

  let mode: Mode | undefined;
  const m = doc['mode'];
  if (m === undefined) issues.add('mode', `Missing field "mode"; expected ${MODES.join(' or ')}`);
  else if (typeof m !== 'string' || !(MODES as readonly string[]).includes(m)) issues.add('mode', `Unknown mode ${quote(m)}; expected ${MODES.join(' or ')}`);
  else mode = m as Mode;

  const egress = doc['egress'];
  let e: Record<string, unknown> = {};
  if (egress !== undefined && egress !== null) {
    if (!isPlainObject(egress)) {
      issues.add('egress', `Expected an object, got ${describe(egress)}`);
    } else {
      e = egress;
      for (const k of Object.keys(e)) {
        if (!(EGRESS_FIELDS as readonly string[]).includes(k)) {
          issues.add(`egress.${k}`, `Unknown field ${quote(k)}; known fields are ${EGRESS_FIELDS.join(', ')}`);
        }
      }
    }
  }

  const allow: Side = {
    domains: list(e['allowed_domains'], 'egress.allowed_domains', issues, domainEntry('allow')),
    cidrs: list(e['allowed_cidrs'], 'egress.allowed_cidrs', issues, cidrEntry),
    ports: list(e['allowed_ports'], 'egress.allowed_ports', issues, portEntry),
  };
  const deny: Side = {
    domains: list(e['denied_domains'], 'egress.denied_domains', issues, domainEntry('deny')),
    cidrs: list(e['denied_cidrs'], 'egress.denied_cidrs', issues, cidrEntry),
    ports: list(e['denied_ports'], 'egress.denied_ports', issues, portEntry),
  };

  if (mode === undefined || issues.list.length > 0) return { ok: false, issues: issues.result() };
  const policy: Policy = mode === 'block-all' ? { mode, allow: freezeSide(allow), deny: EMPTY_SIDE } : { mode, allow: EMPTY_SIDE, deny: freezeSide(deny) };
  return { ok: true, value: Object.freeze(policy) };
}

type Entry<T> = (v: unknown) => { ok: true; value: T; key: string } | { ok: false; reason: string };

const domainEntry =
  (use: 'allow' | 'deny'): Entry<string> =>
  (v) => {
    if (typeof v !== 'string') return { ok: false, reason: `Expected a domain pattern, got ${describe(v)}` };
    const r = normalizePattern(v, use);
    return r.ok ? { ok: true, value: r.pattern, key: r.pattern } : r;
  };

const cidrEntry: Entry<string> = (v) => {
  if (typeof v !== 'string') return { ok: false, reason: `Expected a CIDR such as "10.0.0.0/8", got ${describe(v)}` };
  const r = validateCidr(v);
  return r.ok ? { ok: true, value: r.cidr, key: r.cidr } : r;
};

const portEntry: Entry<PortRange> = (v) => {
  const r = validatePort(v);
  return r.ok ? { ok: true, value: Object.freeze(r.range), key: `${r.range.from}-${r.range.to}` } : r;
};

/** Validates every entry of one list; duplicates after normalization are kept once. */
function list<T>(v: unknown, field: string, issues: CappedIssues, entry: Entry<T>): T[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) {
    issues.add(field, `Expected a list, got ${describe(v)}`);
    return [];
  }
  if (v.length > MAX_LIST_ENTRIES) {
    issues.add(field, `Expected at most ${MAX_LIST_ENTRIES} entries, got ${v.length}`);
    return [];
  }
  const out: T[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < v.length; i++) {
    const r = entry(v[i]);
    if (!r.ok) {
      issues.add(`${field}[${i}]`, r.reason);
      continue;
    }
    if (seen.has(r.key)) continue;
    seen.add(r.key);
    out.push(r.value);
  }
  return out;
}

function freezeSide(s: Side): Side {
  return Object.freeze({ domains: Object.freeze(s.domains), cidrs: Object.freeze(s.cidrs), ports: Object.freeze(s.ports) }) as Side;
}
