// The live table of sandboxes and organizations: which policy applies to a connection, found
// by its source address. Policies are compiled here, once per change; a lookup on the hot path
// is one Map get, and a decision is the organization's layer then the sandbox's.

import type { DialectResult, Side } from '../policy/model.ts';
import { compilePolicy, type CompiledPolicy } from '../policy/compile.ts';
import { decide, type Decision, type Facts } from '../policy/decide.ts';
import { compileProtected, type HostGuard, type ProtectedSet } from '../match/protected.ts';

/** What the data path needs of a sandbox's policy. */
export interface SandboxPolicy {
  /** The sandbox id, or null for a source that belongs to no sandbox (the default policy). */
  readonly id: string | null;
  decide(facts: Facts): Decision;
  /**
   * Whether a name could change the verdict made without one. False lets the tcp listener
   * decide by address and port alone, so server-first protocols are not delayed.
   */
  nameMatters(facts: Facts): boolean;
}

export interface PolicyLookup {
  lookup(source: string): SandboxPolicy;
}

export interface SandboxDefinition {
  readonly id: string;
  /** Canonical source addresses (see config/schema canonicalSource). */
  readonly sources: readonly string[];
  readonly org: string | null;
  readonly network: DialectResult;
}

export type Tier = 1 | 2 | 3 | 4;

export interface OrgDefinition {
  readonly id: string;
  readonly tier: Tier | null;
  readonly network: DialectResult | null;
}

export interface StoreSettings {
  readonly protected: { readonly extra: readonly string[]; readonly except: readonly string[] };
  /** The host's own addresses and egressd's listeners (net/host-addresses.ts); none offline (`egressd decide`). */
  readonly host?: HostGuard | null;
  /** The essential-services catalog's domains, joined to the allow side of policies that have it on. */
  readonly catalog: readonly string[];
  /** The sandboxes' DNS servers (addresses), allowed on port 53 when a dialect says so. */
  readonly dnsServers: readonly string[];
}

const EMPTY: Side = { domains: [], cidrs: [], ports: [] };

/** One compiled policy plus the two platform behaviours beside it. */
class Layer {
  readonly main: CompiledPolicy;
  readonly dns: CompiledPolicy | null;
  readonly hasDomains: boolean;
  constructor(r: DialectResult, s: StoreSettings, protectedSet: ProtectedSet) {
    let policy = r.policy;
    if (r.essentialServices && s.catalog.length > 0) {
      policy = { ...policy, allow: { ...policy.allow, domains: [...policy.allow.domains, ...s.catalog] } };
    }
    this.main = compilePolicy(policy, protectedSet);
    // The DNS servers are allowed on port 53 only: a rule of its own, since one allow side
    // cannot say "these addresses on this port" beside the policy's other rules.
    this.dns =
      r.dnsServersAllowed && s.dnsServers.length > 0
        ? compilePolicy({ mode: 'block-all', allow: { domains: [], cidrs: [...s.dnsServers], ports: [{ from: 53, to: 53 }] }, deny: EMPTY }, protectedSet)
        : null;
    this.hasDomains = policy.allow.domains.length > 0 || policy.deny.domains.length > 0;
  }
  decide(f: Facts): Decision {
    if (this.dns) {
      const d = decide(this.dns, f);
      if (d.verdict === 'allow') return { ...d, rule: `dns servers: ${d.rule ?? ''}`.trim() };
    }
    return decide(this.main, f);
  }
}

const tierResult = (tier: Tier): DialectResult =>
  tier <= 2
    ? { dialect: 'daytona', policy: { mode: 'block-all', allow: EMPTY, deny: EMPTY }, essentialServices: true, dnsServersAllowed: false }
    : { dialect: 'daytona', policy: { mode: 'allow-all', allow: EMPTY, deny: EMPTY }, essentialServices: false, dnsServersAllowed: false };

class Effective implements SandboxPolicy {
  readonly id: string | null;
  readonly #sandbox: Layer;
  readonly #orgId: string | null;
  readonly #orgs: ReadonlyMap<string, { layer: Layer }>;
  constructor(id: string | null, sandbox: Layer, orgId: string | null, orgs: ReadonlyMap<string, { layer: Layer }>) {
    this.id = id;
    this.#sandbox = sandbox;
    this.#orgId = orgId;
    this.#orgs = orgs;
  }
  #org(): Layer | null | undefined {
    return this.#orgId === null ? null : this.#orgs.get(this.#orgId)?.layer;
  }
  /**
   * The organization allows AND the sandbox allows: a sandbox narrows its org, never widens
   * it. A sandbox whose organization is unknown is refused everything (fail closed).
   */
  decide(f: Facts): Decision {
    const org = this.#org();
    if (org === null) return this.#sandbox.decide(f);
    if (org === undefined) return { verdict: 'refuse', reason: 'default-block', rule: `org ${this.#orgId}: unknown organization`, matchedBy: 'mode' };
    const o = org.decide(f);
    if (o.verdict === 'refuse') return { ...o, rule: `org ${this.#orgId}: ${o.rule ?? o.reason}` };
    const s = this.#sandbox.decide(f);
    // When the org allowed by name, the name still has to be resolved and checked.
    return s.verdict === 'allow' && o.matchedBy === 'name' && s.matchedBy !== 'name' ? { ...s, matchedBy: 'name' } : s;
  }
  nameMatters(f: Facts): boolean {
    const org = this.#org();
    if (!this.#sandbox.hasDomains && !(org?.hasDomains ?? false)) return false;
    const d = this.decide({ ...f, name: null });
    // A protected address stays refused and an address/port allow stays allowed whatever
    // name comes: steps (1) and (2) of decide do not look at the name.
    return !(d.reason === 'protected-address' || (d.verdict === 'allow' && d.reason === 'allow-rule' && this.#org() === null));
  }
}

export class PolicyStore implements PolicyLookup {
  readonly #settings: StoreSettings;
  readonly #protected: ProtectedSet;
  #default: Effective;
  readonly #bySource = new Map<string, Effective>();
  readonly #sandboxes = new Map<string, { def: SandboxDefinition; effective: Effective }>();
  readonly #orgs = new Map<string, { def: OrgDefinition; layer: Layer }>();
  #version = 0;

  constructor(settings: StoreSettings, defaultNetwork: DialectResult) {
    this.#settings = settings;
    this.#protected = compileProtected({ extra: [...settings.protected.extra], except: [...settings.protected.except], host: settings.host ?? null });
    this.#default = this.#effective(null, null, defaultNetwork);
  }

  get protectedSet(): ProtectedSet {
    return this.#protected;
  }

  get settings(): StoreSettings {
    return this.#settings;
  }

  /** Increases on every change; lets observers know the table moved. */
  get version(): number {
    return this.#version;
  }

  get sandboxCount(): number {
    return this.#sandboxes.size;
  }

  /** Replaces the policy for sources that belong to no sandbox (a config reload). */
  setDefault(network: DialectResult): void {
    this.#default = this.#effective(null, null, network);
    this.#version++;
  }

  lookup(source: string): SandboxPolicy {
    return this.#bySource.get(source) ?? this.#default;
  }

  sandbox(id: string): SandboxDefinition | undefined {
    return this.#sandboxes.get(id)?.def;
  }

  sandboxes(): SandboxDefinition[] {
    return [...this.#sandboxes.values()].map((s) => s.def);
  }

  org(id: string): OrgDefinition | undefined {
    return this.#orgs.get(id)?.def;
  }

  orgs(): OrgDefinition[] {
    return [...this.#orgs.values()].map((o) => o.def);
  }

  /** The policy that applies to a sandbox (for `check` and `effective`). */
  policyOf(id: string): SandboxPolicy | undefined {
    return this.#sandboxes.get(id)?.effective;
  }

  /** The sandbox that owns a source address, if any. */
  ownerOf(source: string): string | null {
    return this.#bySource.get(source)?.id ?? null;
  }

  #effective(id: string | null, org: string | null, network: DialectResult): Effective {
    return new Effective(id, new Layer(network, this.#settings, this.#protected), org, this.#orgs);
  }

  /** Creates or replaces a sandbox. The caller has checked that its sources are free. */
  putSandbox(def: SandboxDefinition): void {
    const effective = this.#effective(def.id, def.org, def.network);
    this.removeSandbox(def.id);
    this.#sandboxes.set(def.id, { def, effective });
    for (const s of def.sources) this.#bySource.set(s, effective);
    this.#version++;
  }

  removeSandbox(id: string): boolean {
    const old = this.#sandboxes.get(id);
    if (!old) return false;
    for (const s of old.def.sources) if (this.#bySource.get(s) === old.effective) this.#bySource.delete(s);
    this.#sandboxes.delete(id);
    this.#version++;
    return true;
  }

  putOrg(def: OrgDefinition): void {
    const result = def.network ?? tierResult(def.tier ?? 4);
    this.#orgs.set(def.id, { def, layer: new Layer(result, this.#settings, this.#protected) });
    this.#version++;
  }

  removeOrg(id: string): boolean {
    const had = this.#orgs.delete(id);
    if (had) this.#version++;
    return had;
  }
}
