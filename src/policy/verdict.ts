// The whole verdict for one connection, as one pure function over compiled data: the
// organization's layer AND the sandbox's, each with the essential-services catalog and the
// sandbox DNS servers' port-53 rule beside its policy. The store (control/store.ts) only
// compiles layers on change and hands out the chain that applies to a source; the data path,
// the re-judge after a change, the API's `check` and the CLI's `decide` all ask this module.

import type { ProtectedRanges } from '../match/protected.ts';
import { compilePolicy, type CompiledPolicy, type CompiledSide, type SharedDomains } from './compile.ts';
import {
  countHit,
  decide,
  decideByName,
  matchSide,
  matchSideByName,
  type Decision,
  type DecideTrace,
  type Facts,
  type LentUnlock,
  type RuleHit,
} from './decide.ts';
import type { CompiledOverlays } from './overlay.ts';
import { EMPTY_SIDE, type DialectResult } from './model.ts';
import { flatText } from '../util/flat-text.ts';

export type { Decision, Facts } from './decide.ts';

/** What every layer is compiled against; fixed for the life of a store. */
export interface LayerSettings {
  readonly protectedRanges: ProtectedRanges;
  /**
   * The essential-services catalog's domains, compiled once (`new SharedDomains(domains)`) and
   * joined to the allow side of every layer that has it on.
   */
  readonly catalog: SharedDomains;
  /** The sandboxes' DNS servers (addresses), allowed on port 53 when a dialect says so. */
  readonly dnsServers: readonly string[];
}

/** One policy (a sandbox's or an organization's) as the verdict evaluates it. Immutable. */
export interface CompiledLayer {
  /** The dialect's policy, with the shared catalog joined to its allow side when the dialect says so. */
  readonly main: CompiledPolicy;
  /**
   * The DNS servers on port 53 only: a policy of its own, since one allow side cannot say
   * "these addresses on this port" beside the policy's other rules. Null when off.
   */
  readonly dns: CompiledPolicy | null;
  /**
   * What this layer, as a sandbox's, opens of the protected ranges for its organization's layer
   * (decide.ts step 1): its allowed CIDRs, and its DNS servers on port 53.
   */
  readonly lends: LentUnlock;
}

/** Compiles one dialect result into a layer. Throws TypeError only on unvalidated input. */
export function compileLayer(r: DialectResult, s: LayerSettings): CompiledLayer {
  const dns =
    r.dnsServersAllowed && s.dnsServers.length > 0
      ? compilePolicy(
          { mode: 'block-all', allow: { domains: [], cidrs: [...s.dnsServers], ports: [{ from: 53, to: 53 }] }, deny: EMPTY_SIDE },
          s.protectedRanges,
        )
      : null;
  const main = compilePolicy(r.policy, s.protectedRanges, r.essentialServices ? s.catalog : null);
  return Object.freeze({ main, dns, lends: Object.freeze({ allow: main.allow, dns: dns?.allow ?? null }) });
}

export type Tier = 1 | 2 | 3 | 4;

/**
 * An organization's policy when it names a tier and no network body (Daytona's tiers): tiers 1
 * and 2 are restricted to the essential services, 3 and 4 have full access.
 */
export function tierNetwork(tier: Tier): DialectResult {
  return tier <= 2
    ? { dialect: 'daytona', policy: { mode: 'block-all', allow: EMPTY_SIDE, deny: EMPTY_SIDE }, essentialServices: true, dnsServersAllowed: false }
    : { dialect: 'daytona', policy: { mode: 'allow-all', allow: EMPTY_SIDE, deny: EMPTY_SIDE }, essentialServices: false, dnsServersAllowed: false };
}

/**
 * Where report-only mode was turned on for a chain: the config's top-level `reportOnly`, the
 * organization's or the sandbox's own. Any one of them is enough.
 */
export type ReportOnlyLevel = 'global' | 'org' | 'sandbox';

/**
 * The layers that apply to one source at one moment, as the store holds them. Plain data: a
 * connection asks the store for the chain again at every stage, so a change reaches it.
 */
export interface PolicyChain {
  /** The sandbox id, or null for a source that belongs to no sandbox (the default policy). */
  readonly sandbox: string | null;
  /** Null when the sandbox names no organization; `layer` null when it names an unknown one. */
  readonly org: { readonly id: string; readonly layer: CompiledLayer | null } | null;
  readonly layer: CompiledLayer;
  /** The levels that put this chain in report-only mode; empty or absent: its policy is enforced. */
  readonly reportOnly?: readonly ReportOnlyLevel[];
  /** The operator's always-deny and always-allow lists (config `overlays`); absent: none. */
  readonly overlays?: CompiledOverlays | null;
}

/** Whether report-only mode is on for the chain. */
export function reportsOnly(chain: PolicyChain): boolean {
  return chain.reportOnly !== undefined && chain.reportOnly.length > 0;
}

/** Which layer's rule decided: the key a per-rule hit count or a report needs beside `rule`. */
export type VerdictLayer = 'always-deny' | 'always-allow' | 'org' | 'sandbox';

/**
 * The layer named to operators (the log line's `rule.ruleset`, the check answer's `layer`): the
 * verdict's layer, except that a protected-address refusal is `protected` whichever layer's
 * protected step stopped it — the host, egressd's own ports and `protected.*` are not policy.
 */
export type Ruleset = VerdictLayer | 'protected';
export function rulesetOf(v: { readonly layer: VerdictLayer; readonly reason: string }): Ruleset {
  return v.reason === 'protected-address' ? 'protected' : v.layer;
}

/**
 * The verdict's three values: `allow` and `refuse` as decided, and `would-refuse` — a refusal
 * by the organization's or the sandbox's policy that report-only mode lets through (the data
 * path splices it as an allow; the log line and the counters say `would-refuse`, with the
 * reason and the rule that would have refused). smokescreen's `report` action
 * (acl.AllowAndReport) is the model.
 */
export type VerdictValue = 'allow' | 'refuse' | 'would-refuse';

export interface Verdict extends Omit<Decision, 'verdict'> {
  readonly verdict: VerdictValue;
  readonly layer: VerdictLayer;
  /** The organization's rules that allowed, when the sandbox's then decided (both are counted). */
  readonly orgHit?: RuleHit;
  /** The overlay entry that decided (layers `always-deny`, `always-allow`). */
  readonly overlay?: { readonly name: string; readonly counter: { hits: number } };
}

/**
 * Counts one connection's final verdict for the rules that made it: the policy's rules
 * (rule-hits.ts), or the overlay entry. Called once per connection (net/connection.ts), never by
 * a check or a re-judge.
 */
export function countVerdict(v: Verdict): void {
  if (v.overlay !== undefined) v.overlay.counter.hits++;
  countHit(v.hit);
  countHit(v.orgHit);
}

/**
 * The verdict for one connection. What wins: protected addresses and always-deny (both refuse,
 * in every mode) > always-allow > organization ∧ sandbox > report-only. Evaluation order:
 *
 * 0. The operator's overlays (config `overlays`, policy/overlay.ts), around every policy:
 *    a. always-deny: an entry that matches refuses (`deny-rule`, layer `always-deny`, rule
 *       `always-deny "<name>": ...`), whatever the policies say and in report-only mode too —
 *       it is the operator's list for every tenant, not a tenant's policy on trial;
 *    b. always-allow: an entry that matches allows (layer `always-allow`), through decide()
 *       on a block-all policy whose allow side is the entry, so the protected step applies as
 *       to any policy: the host, egressd's listeners and protected.extra are never opened, and
 *       a built-in range (a 10.x mirror) only by an entry CIDR wholly inside it. It beats an
 *       organization's or a sandbox's block-all: the list is the platform's own services (its
 *       API, a telemetry collector, a package mirror), which a sandbox needs whatever its
 *       tenant's policy, and it lives in the operator's config, which no API client can write.
 *    An always-deny entry that matches a protected address reports itself rather than the
 *    protection; both refuse, in every mode.
 * 1. The organization, when the sandbox names one. An unknown organization refuses
 *    everything (fail closed, `default-block`, rule `org <id>: unknown organization`). When
 *    the organization's layer (below) refuses, that is the verdict, its rule prefixed
 *    `org <id>: `: a sandbox narrows its organization, never widens it. A protected address
 *    that the sandbox's layer opens (an allowed CIDR wholly inside the protected ranges, its
 *    DNS servers on port 53) is open in the organization's layer too, which then judges it by
 *    address, port, deny rules and mode, never by an allowed domain (decide.ts `lent`): the
 *    protected ranges are egressd's boundary, not the organization's policy, so an allow-all
 *    organization (Daytona tiers 3 and 4: "full internet access ... with the ability to
 *    configure custom network settings") leaves the sandbox's `192.168.1.0/24` open, and a
 *    block-all one (tiers 1 and 2) still refuses it by its own mode. Nothing is lent the other
 *    way: what the organization's allowed CIDRs open, the sandbox must open itself.
 * 2. The sandbox's layer (or the default policy's, for a source that is no sandbox's). When
 *    the organization allowed by name and the sandbox by address, port or mode, the verdict
 *    still says `matchedBy: 'name'`, so the data path resolves and checks the name.
 *
 * Within one layer:
 *   a. the DNS servers on port 53, when the layer's dialect allows them (Novita): an allow
 *      here is final, its rule prefixed `dns servers: `;
 *   b. the layer's policy, with the catalog joined to its allow side: decide() in decide.ts,
 *      whose own order is protected addresses, the allow side, the deny side, the mode.
 *
 * 3. Report-only (the chain's `reportOnly`): a refusal by step 1 or 2 that no layer refuses as
 *    a protected address becomes `would-refuse`; the caller splices it.
 *
 * Facts that do not parse (an address that is not one, a port outside 1-65535) are refused
 * by the first layer that sees them, in every mode.
 *
 * Extension point:
 * - names resolved through egressd's DNS: `Facts` may grow the names this sandbox resolved
 *   to the address; a connection with no name of its own is then matched by them at the
 *   domain steps of decide() (`matchedBy: 'dns'`), and `nameMatters` stays exact because it
 *   is derived from which steps read the name. "Could this sandbox reach name N on some
 *   port" is this chain walked over name and port alone, one port through every layer
 *   (nameReach).
 */
export function verdict(chain: PolicyChain, facts: Facts, trace?: DecideTrace): Verdict {
  const v = enforcedVerdict(chain, facts, trace);
  // Report-only softens the policy's refusals and nothing else: a protected address (the host,
  // egressd's own listeners, protected.extra, the built-in ranges) is a security boundary, not
  // policy, and stays refused in every mode.
  if (v.verdict !== 'refuse' || v.reason === 'protected-address' || !reportsOnly(chain)) return v;
  if (v.layer === 'always-deny') return v;
  if (!Number.isInteger(facts.port) || facts.port < 1 || facts.port > 65535) return v;
  // The refusing layer may have stopped before another layer's protected step (an unknown
  // organization refuses everything at once; an organization that refuses leaves the sandbox
  // unread): every layer is asked, and a protected refusal by any of them stands.
  const layers = chain.org?.layer ? [chain.org.layer, chain.layer] : [chain.layer];
  for (const l of layers) {
    const p = layerVerdict(l, facts, undefined, l === chain.layer ? null : chain.layer.lends);
    if (p.verdict === 'refuse' && p.reason === 'protected-address') return { ...p, layer: l === chain.layer ? 'sandbox' : 'org' };
  }
  return { ...v, verdict: 'would-refuse' };
}

/** The verdict as enforcement would make it (report-only aside). */
function enforcedVerdict(chain: PolicyChain, facts: Facts, trace: DecideTrace | undefined): Verdict {
  const ov = chain.overlays;
  if (ov) {
    for (const e of ov.alwaysDeny) {
      const m = matchSide(e.side, facts, ov.nat64, trace);
      if (m !== null) return { ...alwaysDenyRefusal(e.name, m), overlay: e };
    }
    for (const e of ov.alwaysAllow) {
      const d = decide(e.policy, facts, trace);
      if (d.verdict === 'allow') {
        return {
          verdict: 'allow',
          reason: d.reason,
          rule: flatText(['always-allow ', JSON.stringify(e.name), ': ', String(d.rule)]),
          matchedBy: d.matchedBy,
          layer: 'always-allow',
          overlay: e,
        };
      }
    }
  }
  const org = chain.org;
  if (org !== null) {
    if (org.layer === null) return unknownOrgRefusal(org.id);
    const o = layerVerdict(org.layer, facts, trace, chain.layer.lends);
    if (o.verdict === 'refuse') return { ...o, rule: flatText(['org ', org.id, ': ', o.rule ?? o.reason]), layer: 'org' };
    const s = layerVerdict(chain.layer, facts, trace, null);
    return {
      ...s,
      ...(s.verdict === 'allow' && o.matchedBy === 'name' && s.matchedBy !== 'name' ? { matchedBy: 'name' as const } : {}),
      ...(s.verdict === 'allow' && o.hit !== undefined ? { orgHit: o.hit } : {}),
      layer: 'sandbox',
    };
  }
  return { ...layerVerdict(chain.layer, facts, trace, null), layer: 'sandbox' };
}

/** `lent`: the sandbox's grants, when `layer` is its organization's (decide.ts step 1). */
function layerVerdict(layer: CompiledLayer, facts: Facts, trace: DecideTrace | undefined, lent: LentUnlock | null): Decision {
  if (layer.dns !== null) {
    const d = decide(layer.dns, facts, trace, lent);
    if (d.verdict === 'allow') return { ...d, rule: flatText(['dns servers: ', d.rule ?? '']).trim() };
  }
  return decide(layer.main, facts, trace, lent);
}

/**
 * Whether a name could change the verdict made on address and port alone. False lets the data
 * path decide at once, so server-first protocols (SSH, SMTP, MySQL) are not delayed. Derived
 * from the verdict itself: a name can matter only when the evaluation reached a domain rule.
 */
export function nameMatters(chain: PolicyChain, at: { readonly ip: string; readonly port: number }): boolean {
  const trace: DecideTrace = { nameConsulted: false };
  verdict(chain, { name: null, ip: at.ip, port: at.port }, trace);
  return trace.nameConsulted;
}

/** The answer to "could this chain reach this name on some port", with the rule that says so. */
export interface NameReach {
  readonly reach: boolean;
  readonly rule: string | null;
  /**
   * A deny rule naming it refuses it on some port (as opposed to nothing allowing it); with
   * `wouldRefuse`, would refuse it were the policy enforced.
   */
  readonly denied: boolean;
  /** Report-only mode let a name through that the policy would not reach (`rule` says which rule). */
  readonly wouldRefuse?: boolean;
}

/**
 * Whether a connection carrying `name` (normalized) could be allowed on some port: what the DNS
 * listener asks before it forwards a query, and what the effective view's `essential_services`
 * lists. True iff some port p gives verdict() allow for `name` on p at an address that no rule
 * names and no protected range holds — one port must pass the overlays, the organization's
 * layer and the sandbox's together, so port sets are intersected, never asked layer by layer (an
 * organization allowing the name on 443 over a sandbox allowing port 22 only reaches nothing).
 * Address rules grant no name: a block-all policy that allows only CIDRs resolves nothing, nor
 * does the DNS servers' port-53 rule. In report-only mode the name reaches when some port's
 * refusal is the policies' (not an always-deny entry's): the DNS listener forwards what would be
 * refused, or the report would never see the connection, and `rule` keeps the refusing rule.
 *
 * The verdict's port rules cut 1–65535 into segments on which every one of them answers alike;
 * each segment is judged once, at its first port, through the verdict's own order.
 *
 * When nothing reaches, `rule` is the refusal that got furthest through the chain (a deny rule
 * naming it first), and `denied` says whether some port is refused by a rule naming the name.
 */
export function nameReach(chain: PolicyChain, name: string): NameReach {
  let refusal: { v: NameVerdict; at: number } | null = null;
  let wouldRefuse: NameVerdict | null = null;
  let denied = false;
  for (const port of portSegments(chain)) {
    const v = nameVerdictAt(chain, name, port);
    if (v.verdict === 'allow') return { reach: true, rule: v.rule, denied: false };
    const byName = v.reason === 'deny-rule' && v.matchedBy === 'name';
    denied ||= byName;
    if (v.layer !== 'always-deny') wouldRefuse ??= v;
    const at = byName ? 3 : v.layer === 'sandbox' ? 2 : v.layer === 'org' ? 1 : 0;
    if (refusal === null || at > refusal.at) refusal = { v, at };
  }
  if (wouldRefuse !== null && reportsOnly(chain)) return { reach: true, rule: wouldRefuse.rule, denied, wouldRefuse: true };
  return { reach: false, rule: refusal?.v.rule ?? null, denied };
}

type NameVerdict = Pick<Verdict, 'verdict' | 'reason' | 'rule' | 'matchedBy' | 'layer'>;

/** The refusal of the always-deny entry `entry` whose side matched (`m`), as both verdicts name it. */
function alwaysDenyRefusal(entry: string, m: Decision): NameVerdict {
  return {
    verdict: 'refuse',
    reason: 'deny-rule',
    rule: flatText(['always-deny ', JSON.stringify(entry), ': ', String(m.rule)]),
    matchedBy: m.matchedBy,
    layer: 'always-deny',
  };
}

/** An unknown organization refuses everything (fail closed), as both verdicts name it. */
function unknownOrgRefusal(org: string): NameVerdict {
  return { verdict: 'refuse', reason: 'default-block', rule: `org ${org}: unknown organization`, matchedBy: 'mode', layer: 'org' };
}

/**
 * enforcedVerdict() for `name` on `port` at an address no rule names and no protected range
 * holds, with the same rule texts: decide() reduced to its name and port steps (decideByName).
 */
function nameVerdictAt(chain: PolicyChain, name: string, port: number): NameVerdict {
  const ov = chain.overlays;
  if (ov) {
    for (const e of ov.alwaysDeny) {
      const m = matchSideByName(e.side, name, port);
      if (m !== null) return alwaysDenyRefusal(e.name, m);
    }
    for (const e of ov.alwaysAllow) {
      const d = decideByName(e.policy, name, port);
      if (d.verdict === 'allow') return { ...d, rule: flatText(['always-allow ', JSON.stringify(e.name), ': ', String(d.rule)]), layer: 'always-allow' };
    }
  }
  const org = chain.org;
  if (org !== null) {
    if (org.layer === null) return unknownOrgRefusal(org.id);
    const o = layerByName(org.layer, name, port);
    if (o.verdict === 'refuse') return { ...o, rule: flatText(['org ', org.id, ': ', o.rule ?? o.reason]), layer: 'org' };
  }
  return { ...layerByName(chain.layer, name, port), layer: 'sandbox' };
}

function layerByName(layer: CompiledLayer, name: string, port: number): Decision {
  if (layer.dns !== null) {
    const d = decideByName(layer.dns, name, port);
    if (d.verdict === 'allow') return { ...d, rule: flatText(['dns servers: ', d.rule ?? '']).trim() };
  }
  return decideByName(layer.main, name, port);
}

/**
 * The first port of each segment of 1–65535 on which every port rule of the chain (overlay
 * entries, both layers' policies and DNS-server rules, and the ports their domains match on)
 * answers alike, ascending.
 */
function portSegments(chain: PolicyChain): number[] {
  const starts = new Set<number>([1]);
  const add = (s: CompiledSide): void => {
    // The ports on which the side's domains match cut segments too (Novita's 80 and 443).
    for (const r of [...s.side.ports, ...(s.side.domainPorts ?? [])]) {
      starts.add(r.from);
      if (r.to < 65535) starts.add(r.to + 1);
    }
  };
  const addPolicy = (p: CompiledPolicy | null): void => {
    if (p === null) return;
    add(p.allow);
    add(p.deny);
  };
  for (const e of chain.overlays?.alwaysDeny ?? []) add(e.side);
  for (const e of chain.overlays?.alwaysAllow ?? []) addPolicy(e.policy);
  for (const l of [chain.org?.layer ?? null, chain.layer]) {
    if (l === null) continue;
    addPolicy(l.main);
    addPolicy(l.dns);
  }
  return [...starts].sort((a, b) => a - b);
}

/**
 * Whether the chain allows anything at all: false for block-all with an empty allow side
 * (`networkBlockAll`, `allowInternetAccess: false` without rules), in either layer or for an
 * unknown organization, unless report-only mode is on or the operator always allows something.
 * Such a sandbox gets no DNS at all,
 * operator zones included.
 */
export function allowsAnything(chain: PolicyChain): boolean {
  if (reportsOnly(chain) || (chain.overlays?.alwaysAllow.length ?? 0) > 0) return true;
  const some = (l: CompiledLayer): boolean => l.main.policy.mode === 'allow-all' || !l.main.allow.empty;
  if (chain.org !== null && (chain.org.layer === null || !some(chain.org.layer))) return false;
  return some(chain.layer);
}
