// The live table of sandboxes and organizations: which compiled policies apply to a connection,
// found by its source address. Layers are compiled here, once per change — a sandbox's on first
// use, so that a start-up restoring 10,000 sandboxes compiles only those that get traffic
// (bench/RESULTS.md); a lookup on the hot path is one Map get and returns plain data, which
// policy/verdict.ts judges.

import type { DialectResult } from '../policy/model.ts';
import { compileLayer, tierNetwork, type CompiledLayer, type LayerSettings, type PolicyChain, type ReportOnlyLevel, type Tier } from '../policy/verdict.ts';
import { compileProtected, type HostGuard, type ProtectedRanges } from '../match/protected.ts';
import { SharedDomains } from '../policy/compile.ts';
import { compileOverlays, NO_OVERLAYS, type CompiledOverlays, type Overlays } from '../policy/overlay.ts';

export type { Tier } from '../policy/verdict.ts';

/** Finds the policies that apply to a connection, by its source address. */
export interface PolicyLookup {
  /** The chain in force now; ask again at every stage so a change reaches the connection. */
  lookup(source: string): PolicyChain;
}

export interface SandboxDefinition {
  readonly id: string;
  /** Canonical source addresses (see match/ip canonicalSource). */
  readonly sources: readonly string[];
  readonly org: string | null;
  readonly network: DialectResult;
  /** Report-only mode for this sandbox alone (policy/verdict.ts `would-refuse`). */
  readonly reportOnly?: boolean;
}

export interface OrgDefinition {
  readonly id: string;
  readonly tier: Tier | null;
  readonly network: DialectResult | null;
  /** Report-only mode for every sandbox of the organization. */
  readonly reportOnly?: boolean;
}

export interface StoreSettings {
  /** The config's `protected.*` (`nat64Prefixes` checked by parseNat64Prefix). */
  readonly protected: { readonly extra: readonly string[]; readonly except: readonly string[]; readonly nat64Prefixes: readonly string[] };
  /** The host's own addresses and egressd's listeners (net/host-addresses.ts); none offline (`egressd decide`). */
  readonly host?: HostGuard | null;
  /** The essential-services catalog's domains, joined to the allow side of policies that have it on. */
  readonly catalog: readonly string[];
  /** The sandboxes' DNS servers (addresses), allowed on port 53 when a dialect says so. */
  readonly dnsServers: readonly string[];
  /** Report-only mode for every chain, the default policy's included (the config's `reportOnly`). */
  readonly reportOnly?: boolean;
  /** The operator's always-deny and always-allow lists (the config's `overlays`). */
  readonly overlays?: Overlays;
}

interface SandboxEntry {
  readonly def: SandboxDefinition;
  /** Compiled on first use; the network was validated, so compiling cannot fail. */
  layer: CompiledLayer | null;
  /** Built on first use, and again after its organization changed. */
  chain: PolicyChain | null;
}

export class PolicyStore implements PolicyLookup {
  readonly #settings: StoreSettings;
  readonly #layerSettings: LayerSettings;
  #default: PolicyChain;
  #reportOnly: boolean;
  #overlays: { readonly model: Overlays; readonly compiled: CompiledOverlays | null };
  readonly #bySource = new Map<string, SandboxEntry>();
  readonly #sandboxes = new Map<string, SandboxEntry>();
  readonly #orgs = new Map<string, { def: OrgDefinition; layer: CompiledLayer }>();
  #version = 0;

  constructor(settings: StoreSettings, defaultNetwork: DialectResult) {
    this.#settings = settings;
    this.#layerSettings = {
      protectedRanges: compileProtected({
        extra: [...settings.protected.extra],
        except: [...settings.protected.except],
        nat64Prefixes: [...settings.protected.nat64Prefixes],
        host: settings.host ?? null,
      }),
      // Compiled here once for the life of the store, and shared by every layer that has it on.
      catalog: new SharedDomains(settings.catalog),
      dnsServers: settings.dnsServers,
    };
    this.#reportOnly = settings.reportOnly ?? false;
    this.#overlays = this.#compileOverlays(settings.overlays ?? NO_OVERLAYS);
    this.#default = this.#defaultChain(compileLayer(defaultNetwork, this.#layerSettings));
  }

  #defaultChain(layer: CompiledLayer): PolicyChain {
    return Object.freeze({
      sandbox: null,
      org: null,
      layer,
      reportOnly: this.#reportOnly ? (['global'] as const) : [],
      overlays: this.#overlays.compiled,
    });
  }

  #compileOverlays(model: Overlays): { model: Overlays; compiled: CompiledOverlays | null } {
    const empty = model.alwaysAllow.length === 0 && model.alwaysDeny.length === 0;
    return { model, compiled: empty ? null : compileOverlays(model, this.#layerSettings.protectedRanges) };
  }

  /** The operator's overlays in force, as configured and as compiled (null when there are none). */
  get overlays(): { readonly model: Overlays; readonly compiled: CompiledOverlays | null } {
    return this.#overlays;
  }

  /** Replaces the operator's overlays (a config reload, already validated whole); chains link again on their next lookup. */
  setOverlays(model: Overlays): void {
    this.#overlays = this.#compileOverlays(model);
    this.#default = this.#defaultChain(this.#default.layer);
    for (const e of this.#sandboxes.values()) e.chain = null;
    this.#version++;
  }

  /** Whether report-only mode is on for every chain (the config's `reportOnly`). */
  get reportOnly(): boolean {
    return this.#reportOnly;
  }

  /** Turns report-only mode on or off for every chain (a config reload); chains link again on their next lookup. */
  setReportOnly(on: boolean): void {
    if (on === this.#reportOnly) return;
    this.#reportOnly = on;
    this.#default = this.#defaultChain(this.#default.layer);
    for (const e of this.#sandboxes.values()) e.chain = null;
    this.#version++;
  }

  get protectedRanges(): ProtectedRanges {
    return this.#layerSettings.protectedRanges;
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
    this.#default = this.#defaultChain(compileLayer(network, this.#layerSettings));
    this.#version++;
  }

  lookup(source: string): PolicyChain {
    const e = this.#bySource.get(source);
    return e === undefined ? this.#default : this.#chainOf(e);
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

  /** The chain that applies to a sandbox (for `check` and `effective`). */
  policyOf(id: string): PolicyChain | undefined {
    const e = this.#sandboxes.get(id);
    return e === undefined ? undefined : this.#chainOf(e);
  }

  /** How many sandboxes' layers are compiled now (the rest compile on their first lookup). */
  get compiledCount(): number {
    let n = 0;
    for (const e of this.#sandboxes.values()) if (e.layer !== null) n++;
    return n;
  }

  /** The sandbox that owns a source address, if any. */
  ownerOf(source: string): string | null {
    return this.#bySource.get(source)?.def.id ?? null;
  }

  #chainOf(e: SandboxEntry): PolicyChain {
    if (e.chain !== null) return e.chain;
    const layer = (e.layer ??= compileLayer(e.def.network, this.#layerSettings));
    const o = e.def.org === null ? undefined : this.#orgs.get(e.def.org);
    const org = e.def.org === null ? null : { id: e.def.org, layer: o?.layer ?? null };
    const reportOnly: ReportOnlyLevel[] = [];
    if (this.#reportOnly) reportOnly.push('global');
    if (o?.def.reportOnly === true) reportOnly.push('org');
    if (e.def.reportOnly === true) reportOnly.push('sandbox');
    return (e.chain = Object.freeze({ sandbox: e.def.id, org, layer, reportOnly: Object.freeze(reportOnly), overlays: this.#overlays.compiled }));
  }

  /** Drops the chains of the sandboxes in one organization after it changed; the next lookup links them again. */
  #relink(orgId: string): void {
    for (const e of this.#sandboxes.values()) if (e.def.org === orgId) e.chain = null;
  }

  /**
   * Creates or replaces a sandbox. The caller has checked that its sources are free and its
   * network is valid (dialects/): the layer is compiled on the first lookup.
   */
  putSandbox(def: SandboxDefinition): void {
    const entry: SandboxEntry = { def, layer: null, chain: null };
    this.removeSandbox(def.id);
    this.#sandboxes.set(def.id, entry);
    for (const s of def.sources) this.#bySource.set(s, entry);
    this.#version++;
  }

  removeSandbox(id: string): boolean {
    const old = this.#sandboxes.get(id);
    if (!old) return false;
    for (const s of old.def.sources) if (this.#bySource.get(s) === old) this.#bySource.delete(s);
    this.#sandboxes.delete(id);
    this.#version++;
    return true;
  }

  putOrg(def: OrgDefinition): void {
    const result = def.network ?? tierNetwork(def.tier ?? 4);
    this.#orgs.set(def.id, { def, layer: compileLayer(result, this.#layerSettings) });
    this.#relink(def.id);
    this.#version++;
  }

  removeOrg(id: string): boolean {
    const had = this.#orgs.delete(id);
    if (had) {
      this.#relink(id);
      this.#version++;
    }
    return had;
  }
}
