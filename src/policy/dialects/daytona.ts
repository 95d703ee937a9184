// The Daytona dialect (its three network documents, docs/sources.md): `networkBlockAll`, `networkAllowList` and the
// newer `domainAllowList`, as Daytona's create-sandbox body carries them, into the canonical
// policy.
//
//   { "networkBlockAll": true }                               block everything (the older Daytona "Network Limits" summary: it
//                                                             "takes precedence" over a list)
//   { "networkAllowList": "208.80.154.232/32,10.0.0.0/8" }    block-all + those CIDRs + the
//                                                             essential services (Daytona "Network Limits (Firewall)")
//   { "domainAllowList": "pypi.org,*.github.com" }            block-all + those names + the
//                                                             essential services; with
//                                                             networkAllowList, both lists
//   {} or { "networkBlockAll": false }                        full access (Daytona "Network Configuration" "Default
//                                                             Network Behavior")

import { normalizePattern } from '../../match/names.ts';
import { describe, quote } from '../../util/fields.ts';
import type { DialectResult } from '../model.ts';
import type { FieldIssue } from '../../util/issues.ts';
import { EMPTY_SIDE } from '../model.ts';
import { validateCidr } from '../validate.ts';

/**
 * Daytona "Network Limits (Firewall)": "Max 10 entries". the older Daytona "Network Limits" summary, the older summary, says "up to 5"; the newer document
 * is followed.
 */
const MAX_ENTRIES = 10;

type Result = { ok: true; value: DialectResult } | { ok: false; issues: FieldIssue[] };

/**
 * A body holding only Daytona's keys (src/policy/network-body.ts sorts keys by dialect). Field
 * paths in issues are relative to the body. Absent and null mean the same (unset), as an SDK
 * that serializes an unset optional field sends either.
 */
export function parseDaytona(body: Readonly<Record<string, unknown>>): Result {
  const issues: FieldIssue[] = [];

  const blockRaw = body['networkBlockAll'];
  let blockAll = false;
  if (blockRaw !== undefined && blockRaw !== null) {
    if (typeof blockRaw === 'boolean') blockAll = blockRaw;
    else issues.push({ field: 'networkBlockAll', reason: `Expected true or false, got ${describe(blockRaw)}` });
  }

  // The lists are validated even when networkBlockAll overrides them: a malformed list is a
  // mistake worth reporting whichever flag wins.
  const cidrs = readList(body, issues, ALLOW_LIST, allowListEntry);
  const domains = readList(body, issues, DOMAIN_LIST, domainListEntry);

  if (issues.length > 0) return { ok: false, issues };
  const value: DialectResult = blockAll
    ? // the older Daytona "Network Limits" summary: "networkBlockAll takes precedence"; Daytona "Network Limits (Firewall)"'s essential services are not
      // kept: "Block all network access" means all (Daytona "Network Configuration" "Isolated Development Environment").
      { dialect: 'daytona', policy: { mode: 'block-all', allow: EMPTY_SIDE, deny: EMPTY_SIDE }, essentialServices: false, dnsServersAllowed: false }
    : cidrs !== null || domains !== null
      ? {
          dialect: 'daytona',
          // Either list turns the sandbox into block-all plus what the lists name; both lists
          // together allow the union (a connection matching either one is allowed).
          policy: { mode: 'block-all', allow: { domains: domains ?? [], cidrs: cidrs ?? [], ports: [] }, deny: EMPTY_SIDE },
          // Daytona "Network Limits (Firewall)": "Essential services are available on all tiers".
          essentialServices: true,
          dnsServersAllowed: false,
        }
      : { dialect: 'daytona', policy: { mode: 'allow-all', allow: EMPTY_SIDE, deny: EMPTY_SIDE }, essentialServices: false, dnsServersAllowed: false };
  return { ok: true, value };
}

/** One of Daytona's comma-separated lists: its key, what its messages call it, and what it holds. */
interface ListKind {
  readonly key: 'networkAllowList' | 'domainAllowList';
  readonly name: string;
  readonly expected: string;
}

/**
 * Daytona "Network Limits (Firewall)" "Network allow list format", rule by rule: a comma-separated list of IPv4 CIDR
 * blocks; entries trimmed; each `A.B.C.D/N` with N an integer 0-32 ("CIDR required", so a bare
 * address is refused); no extra `/`; no hostnames, domains or IPv6; at most 10 entries.
 * Host bits may be set (Daytona "Network Configuration"'s own example is `192.168.1.0/16`) and are cleared.
 */
const ALLOW_LIST: ListKind = { key: 'networkAllowList', name: 'allow list', expected: 'IPv4 CIDRs such as "10.0.0.0/8,192.168.1.0/24"' };

/**
 * Daytona's `domainAllowList`, validated as Daytona's API validates it: a comma-separated string
 * of domain names, `*.` for every name below one; entries trimmed; at most 10 entries; no
 * addresses, CIDRs, ports, schemes or paths; a bare `*` is refused (it would be every name).
 * Names are normalized as every policy name is (lowercase, punycode, no trailing dot).
 */
const DOMAIN_LIST: ListKind = { key: 'domainAllowList', name: 'domain allow list', expected: 'domains such as "pypi.org,*.github.com"' };

/**
 * The list under `kind.key` of the body, each entry read by `entry` (its canonical form, or why
 * not), duplicates kept once in order; null when the key is absent, null, or the list is
 * refused (its reasons then pushed to `issues`, each naming the key).
 */
function readList(
  body: Readonly<Record<string, unknown>>,
  issues: FieldIssue[],
  kind: ListKind,
  entry: (e: string) => string | { reason: string },
): string[] | null {
  const raw = body[kind.key];
  if (raw === undefined || raw === null) return null;
  const r = parseList(raw, kind, entry);
  if (Array.isArray(r)) return r;
  for (const reason of r.reasons) issues.push({ field: kind.key, reason });
  return null;
}

/** The entries of a list, or the reasons it is refused. */
function parseList(raw: unknown, kind: ListKind, entry: (e: string) => string | { reason: string }): string[] | { reasons: string[] } {
  if (typeof raw !== 'string') return { reasons: [`Expected a comma-separated list of ${kind.expected}, got ${describe(raw)}`] };
  // An empty list is refused, not read as "no list": it is unclear whether it means nothing
  // beyond the essential services or full access, and the two are opposites.
  if (raw.trim() === '') {
    return { reasons: [`The ${kind.name} ${quote(raw)} is empty; leave ${kind.key} out for full access, or set networkBlockAll to true to block everything`] };
  }
  // Counted before splitting, so a hostile megabyte of commas costs one pass and no array.
  let entries = 1;
  for (let i = 0; i < raw.length; i++) if (raw.charCodeAt(i) === 0x2c) entries++;
  if (entries > MAX_ENTRIES) return { reasons: [`The ${kind.name} has ${entries} entries; at most ${MAX_ENTRIES} are allowed`] };

  const reasons: string[] = [];
  const values: string[] = [];
  raw.split(',').forEach((untrimmed, i) => {
    const trimmed = untrimmed.trim();
    if (trimmed === '') {
      reasons.push(`Entry ${i + 1} of ${quote(raw)} is empty`);
      return;
    }
    const r = entry(trimmed);
    if (typeof r !== 'string') reasons.push(r.reason);
    else if (!values.includes(r)) values.push(r);
  });
  return reasons.length > 0 ? { reasons } : values;
}

/** The canonical CIDR, or why the entry breaks one of Daytona "Network Limits (Firewall)"'s rules. */
function allowListEntry(entry: string): string | { reason: string } {
  const q = quote(entry);
  const slash = entry.indexOf('/');
  const address = slash < 0 ? entry : entry.slice(0, slash);
  if (address.includes(':')) return { reason: `Entry ${q} is IPv6; the allow list takes IPv4 CIDRs only` };
  if (/[a-z]/i.test(address)) return { reason: `Entry ${q} is not an IPv4 address; hostnames and domains are not supported` };
  if (slash < 0) return { reason: `Entry ${q} has no prefix length; write ${quote(`${entry}/32`)} for a single address` };
  const prefix = entry.slice(slash + 1);
  if (prefix.includes('/')) return { reason: `Entry ${q} has more than one "/"` };
  if (!/^(?:0|[1-9][0-9]?)$/.test(prefix) || Number(prefix) > 32) {
    return { reason: `Entry ${q} has prefix length ${quote(prefix)}; expected an integer from 0 to 32` };
  }
  // The address itself (four decimal parts 0-255) is judged by the one CIDR validator.
  const r = validateCidr(entry);
  return r.ok ? r.cidr : { reason: r.reason };
}

/** The normalized name pattern, or why the entry is not a domain Daytona's list takes. */
function domainListEntry(entry: string): string | { reason: string } {
  const q = quote(entry);
  if (entry === '*') return { reason: 'Entry "*" is not a domain; name the domains, or use "*.example.com" for every name below one' };
  if (/[/:]/.test(entry)) return { reason: `Entry ${q} is not a domain name; write the name alone, without a scheme, port, path or CIDR` };
  if (validateCidr(entry).ok) return { reason: `Entry ${q} is an IP address; put addresses in networkAllowList as CIDRs` };
  const r = normalizePattern(entry);
  return r.ok ? r.pattern : { reason: r.reason };
}
