// The Novita dialect (Novita "Internet access", derived from E2B): `allowInternetAccess` and
// `network: { allowOut, denyOut }`, as `Sandbox.create` takes them, into the canonical policy.
//
//   { "allowInternetAccess": false }                                   block everything
//   { "network": { "denyOut": ["8.8.8.8"] } }                          everything but 8.8.8.8
//   { "network": { "denyOut": ["0.0.0.0/0"], "allowOut": ["1.1.1.1", "*.github.com"] } }
//                                                                      only those
//
// Both lists are active and "the allow rules take priority" (Novita "Internet access" "Priority rules"): the
// allow list fills the allow side, the deny list the deny side. A deny list that covers every
// destination makes the mode block-all; otherwise it is allow-all.

import { describe, isPlainObject, quote } from '../../util/fields.ts';
import { CappedIssues, MAX_LIST_ENTRIES } from '../../util/issues.ts';
import type { DialectResult, DomainPortRange, Side } from '../model.ts';
import type { FieldIssue } from '../../util/issues.ts';
import { EMPTY_SIDE } from '../model.ts';
import { normalizePattern } from '../../match/names.ts';
import { validateCidr } from '../validate.ts';

/**
 * Novita "Internet access": "'0.0.0.0/0' is shorthand for 'every destination'" and falsy allowInternetAccess
 * "blocks every destination". egressd also carries IPv6, so this entry blocks IPv6 as well: a
 * sandbox told "every destination is denied" must not keep reaching the v6 internet. `::/0`
 * alone names only the IPv6 half and stays an ordinary deny entry (IPv4 stays open).
 */
const ALL_TRAFFIC = '0.0.0.0/0';
/** The ports on which Novita matches a domain entry, each by the one name it reads there: HTTP's Host on 80, TLS's SNI on 443. */
const NAME_PORTS: readonly DomainPortRange[] = Object.freeze([
  Object.freeze({ from: 80, to: 80, via: 'http' as const }),
  Object.freeze({ from: 443, to: 443, via: 'tls' as const }),
]);
const NETWORK_FIELDS = ['allowOut', 'denyOut', 'maskRequestHost', 'allowPublicTraffic'] as const;
/**
 * Novita "Internet access" "Masking request host headers" (`maskRequestHost`, with `${PORT}` substituted) and
 * E2B's `allowPublicTraffic` (whether the sandbox's public URL needs a token) shape requests
 * coming *into* the sandbox. They are accepted, kept and returned, never enforced.
 */
const INGRESS_NOTE = "egressd filters outbound traffic only and does not enforce this setting of the sandbox's inbound side";
type Result = { ok: true; value: DialectResult } | { ok: false; issues: FieldIssue[] };

/** One allowOut or denyOut entry, classified. */
type Entry = { kind: 'cidr'; cidr: string } | { kind: 'domain'; pattern: string; raw: string } | { kind: 'invalid'; reason: string };

/**
 * A body holding only Novita's keys (src/policy/network-body.ts sorts keys by dialect). Field
 * paths in issues are relative to the body.
 */
export function parseNovita(body: Readonly<Record<string, unknown>>): Result {
  const issues = new CappedIssues();

  // Novita "Internet access": "Passing a falsy value ... has the same effect as adding ['0.0.0.0/0'] to
  // denyOut". Only true and false are taken: null, 0 or "" are falsy in the SDK but are more
  // likely a client's mistake than a request to cut the sandbox off, so they are refused.
  const internet = body['allowInternetAccess'];
  if (internet !== undefined && typeof internet !== 'boolean') {
    issues.add('allowInternetAccess', `Expected true or false, got ${describe(internet)}`);
  }

  let allowRaw: unknown;
  let denyRaw: unknown;
  const ingress: Record<string, string | boolean> = {};
  const network = body['network'];
  if (network !== undefined && network !== null) {
    if (!isPlainObject(network)) issues.add('network', `Expected an object with allowOut and denyOut, got ${describe(network)}`);
    else {
      for (const k of Object.keys(network)) {
        if (!(NETWORK_FIELDS as readonly string[]).includes(k))
          issues.add(`network.${k}`, `Unknown field ${quote(k)}; known fields are ${NETWORK_FIELDS.join(', ')}`);
      }
      const mask = network['maskRequestHost'];
      if (mask !== undefined && mask !== null) {
        // A Host header value: printable ASCII without spaces, bounded like a name with a port.
        if (typeof mask !== 'string' || mask === '' || mask.length > 300 || !/^[\x21-\x7e]+$/.test(mask)) {
          issues.add('network.maskRequestHost', `Expected a host such as "localhost:\${PORT}", got ${describe(mask)}`);
        } else ingress['maskRequestHost'] = mask;
      }
      const pub = network['allowPublicTraffic'];
      if (pub !== undefined && pub !== null) {
        if (typeof pub !== 'boolean') issues.add('network.allowPublicTraffic', `Expected true or false, got ${describe(pub)}`);
        else ingress['allowPublicTraffic'] = pub;
      }
      allowRaw = network['allowOut'];
      denyRaw = network['denyOut'];
    }
  }

  const allowEntries = entries(allowRaw, 'network.allowOut', issues);
  const denyEntries = entries(denyRaw, 'network.denyOut', issues);

  // The deny list decides the mode, and the mode decides whether the allow list may name
  // domains; issues are still reported in the order of the body.
  // Sets keep each entry once (in first-seen order) at a cost linear in a list of 100,000.
  const deny = new Set<string>();
  for (const [, e] of denyEntries) if (e.kind === 'cidr') deny.add(e.cidr);
  const blockAll = internet === false || deny.has(ALL_TRAFFIC);

  const allow = { domains: new Set<string>(), cidrs: new Set<string>() };
  for (const [i, e] of allowEntries) {
    if (e.kind === 'invalid') issues.add(`network.allowOut[${i}]`, e.reason);
    else if (e.kind === 'cidr') allow.cidrs.add(e.cidr);
    else if (!blockAll) {
      // Novita "Internet access": "When domain-based filtering is enabled, all remaining traffic must be
      // blocked through denyOut".
      issues.add(
        `network.allowOut[${i}]`,
        `Domain ${quote(e.raw)} needs all other traffic blocked; add "${ALL_TRAFFIC}" to denyOut or set allowInternetAccess to false`,
      );
    } else allow.domains.add(e.pattern);
  }
  for (const [i, e] of denyEntries) {
    if (e.kind === 'invalid') issues.add(`network.denyOut[${i}]`, e.reason);
    // Novita "Internet access": "Domain entries are only supported in allow lists and cannot be used in deny lists."
    else if (e.kind === 'domain') issues.add(`network.denyOut[${i}]`, `Domain ${quote(e.raw)} cannot be denied; denyOut takes IP addresses and CIDRs only`);
  }

  if (issues.list.length > 0) return { ok: false, issues: issues.result() };
  // Novita "Internet access": "Filtering by domain applies only to HTTP over port 80 (inspected
  // via the Host header) and TLS over port 443 (inspected via SNI). Any other port falls back to
  // CIDR-based matching": a domain entry allows nothing on port 22 or 8443.
  const allowSide: Side =
    allow.domains.size > 0
      ? { domains: [...allow.domains], cidrs: [...allow.cidrs], ports: [], domainPorts: NAME_PORTS }
      : { domains: [], cidrs: [...allow.cidrs], ports: [] };
  const kept = Object.keys(ingress);
  const beside =
    kept.length === 0
      ? {}
      : {
          ingress: Object.freeze(ingress),
          warnings: Object.freeze(kept.map((k) => ({ field: `network.${k}`, reason: `Kept but not enforced: ${INGRESS_NOTE}` }))),
        };
  const value: DialectResult = blockAll
    ? {
        dialect: 'novita',
        // Under block-all a deny entry can refuse nothing the mode does not already refuse,
        // since allow beats deny: the deny side is left empty rather than shown as if it acted.
        policy: { mode: 'block-all', allow: allowSide, deny: EMPTY_SIDE },
        essentialServices: false,
        // Novita "Internet access": "Whenever a domain appears in the configuration, the default nameserver
        // 8.8.8.8 is allowed automatically so that DNS resolution keeps working."
        dnsServersAllowed: allow.domains.size > 0,
        ...beside,
      }
    : {
        dialect: 'novita',
        policy: { mode: 'allow-all', allow: allowSide, deny: { domains: [], cidrs: [...deny], ports: [] } },
        essentialServices: false,
        dnsServersAllowed: false,
        ...beside,
      };
  return { ok: true, value };
}

/** The entries of one list with their indexes, or none (with an issue) when it is not a list. */
function entries(v: unknown, field: string, issues: CappedIssues): [number, Entry][] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) {
    issues.add(field, `Expected a list of IP addresses, CIDRs or domains, got ${describe(v)}`);
    return [];
  }
  if (v.length > MAX_LIST_ENTRIES) {
    issues.add(field, `Expected at most ${MAX_LIST_ENTRIES} entries, got ${v.length}`);
    return [];
  }
  const out: [number, Entry][] = [];
  for (let i = 0; i < v.length; i++) out.push([i, classify(v[i])]);
  return out;
}

/**
 * Novita "Internet access": entries are "IP addresses, CIDR blocks, or domain names", and `*.` wildcards.
 * Whatever the CIDR validator accepts is an address (a bare address is a /32 or /128); an
 * entry with a "/" that it refuses is a broken CIDR; anything else is read as a domain pattern,
 * whose validator also refuses other spellings of addresses (`127.1`).
 */
function classify(v: unknown): Entry {
  if (typeof v !== 'string') return { kind: 'invalid', reason: `Expected an IP address, a CIDR or a domain, got ${describe(v)}` };
  // The SDK's ALL_TRAFFIC constant is resolved by the client (Novita "Internet access"); its name on the wire
  // is most likely a client that sent the identifier instead of the value.
  if (v === 'ALL_TRAFFIC') return { kind: 'invalid', reason: `${quote(v)} is the SDK's name for "${ALL_TRAFFIC}"; send the CIDR itself` };
  const c = validateCidr(v);
  if (c.ok) return { kind: 'cidr', cidr: c.cidr };
  if (v.includes('/')) return { kind: 'invalid', reason: c.reason };
  // Novita "Internet access" shows domains and `*.` wildcards only; a bare "*" would be every name.
  if (v === '*') return { kind: 'invalid', reason: 'Pattern "*" is not a domain; name the domains, or use "*.example.com" for every name below one' };
  const d = normalizePattern(v);
  return d.ok ? { kind: 'domain', pattern: d.pattern, raw: v } : { kind: 'invalid', reason: d.reason };
}
