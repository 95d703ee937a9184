// The control plane's rules over the policy store: who may change what, what is persisted,
// and what a change does to open connections. Every change is validated whole first, then
// persisted (atomically, durably) and only then applied and acknowledged: a refused change
// changes nothing, and an acknowledged one survives a crash.

import { createHash } from 'node:crypto';
import { isPlainObject, quote } from '../util/fields.ts';
import { canonicalSource, SANDBOX_ID } from '../config/schema.ts';
import type { DialectResult, FieldIssue } from '../policy/model.ts';
import { parseNetworkBody } from '../policy/network-body.ts';
import type { OrgDefinition, PolicyStore, SandboxDefinition, Tier } from './store.ts';
import type { StateFile } from './state-file.ts';

export type ChangeSource = 'api' | 'config';

/** What a client sent, kept as sent so that a restart re-reads it with the same rules. */
export interface SandboxRecord {
  readonly id: string;
  readonly sources: readonly string[];
  readonly org: string | null;
  readonly network: unknown;
  readonly origin: ChangeSource;
}

export interface OrgRecord {
  readonly id: string;
  readonly tier: Tier | null;
  readonly network: unknown;
}

export interface PersistedState {
  readonly version: 1;
  readonly sandboxes: readonly Omit<SandboxRecord, 'origin'>[];
  readonly orgs: readonly OrgRecord[];
}

export type ChangeError =
  | { kind: 'invalid'; issues: readonly FieldIssue[] }
  | { kind: 'conflict'; field: string | null; message: string }
  | { kind: 'not-found'; message: string };

export type ChangeResult<T> = { ok: true; value: T } | { ok: false; error: ChangeError };

export interface ChangeEvent {
  readonly source: ChangeSource;
  readonly action: 'put' | 'delete';
  readonly kind: 'sandbox' | 'org';
  readonly id: string;
  /** Who asked: the API client's address, or the config file. */
  readonly actor: string;
  /** Digests of the entry before and after (null when absent), so a log shows what moved without the body. */
  readonly before: string | null;
  readonly after: string | null;
}

/** A short, stable digest of an entry as persisted: the first 16 hex digits of its SHA-256. */
export function digestOf(v: unknown): string | null {
  if (v === undefined || v === null) return null;
  return createHash('sha256').update(JSON.stringify(v)).digest('hex').slice(0, 16);
}

const invalid = (issues: readonly FieldIssue[]): { ok: false; error: ChangeError } => ({ ok: false, error: { kind: 'invalid', issues } });
const conflict = (message: string, field: string | null = null): { ok: false; error: ChangeError } => ({
  ok: false,
  error: { kind: 'conflict', field, message },
});
const notFound = (message: string): { ok: false; error: ChangeError } => ({ ok: false, error: { kind: 'not-found', message } });

export function parseNetwork(body: unknown, field: string): { ok: true; value: DialectResult } | { ok: false; issues: FieldIssue[] } {
  const r = parseNetworkBody(body);
  if (r.ok) return r;
  return { ok: false, issues: r.issues.map((i) => ({ field: i.field ? `${field}.${i.field}` : field, reason: i.reason })) };
}

export class ControlPlane {
  readonly store: PolicyStore;
  readonly #state: StateFile<PersistedState> | null;
  readonly #records = new Map<string, SandboxRecord>();
  readonly #orgs = new Map<string, OrgRecord>();
  readonly #listeners: ((e: ChangeEvent) => void)[] = [];
  /** Serializes changes so that validate → persist → apply is atomic with respect to others. */
  #lock: Promise<unknown> = Promise.resolve();

  constructor(store: PolicyStore, state: StateFile<PersistedState> | null) {
    this.store = store;
    this.#state = state;
  }

  onChange(l: (e: ChangeEvent) => void): void {
    this.#listeners.push(l);
  }

  #emit(e: ChangeEvent): void {
    for (const l of this.#listeners) l(e);
  }

  #serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(fn, fn);
    this.#lock = run.catch(() => {});
    return run;
  }

  /** Loads the config file's sandboxes (which the API cannot overwrite) and then the state file. */
  async load(configSandboxes: readonly SandboxRecord[]): Promise<{ loaded: number; skipped: FieldIssue[] }> {
    for (const r of configSandboxes) this.#apply(r, parseNetworkOrThrow(r.network));
    const skipped: FieldIssue[] = [];
    const state = this.#state ? await this.#state.read() : null;
    if (state === null) return { loaded: 0, skipped };
    for (const o of state.orgs) {
      const parsed = this.#validateOrg(o.id, { tier: o.tier ?? undefined, network: o.network ?? undefined });
      if (!parsed.ok) skipped.push(...(parsed.error.kind === 'invalid' ? parsed.error.issues : []));
      else this.#applyOrg(parsed.value.record, parsed.value.def);
    }
    let loaded = 0;
    for (const s of state.sandboxes) {
      const v = this.#validateSandbox(s.id, { sources: s.sources, org: s.org ?? undefined, network: s.network }, 'api');
      if (!v.ok) {
        const e = v.error;
        skipped.push(...(e.kind === 'invalid' ? e.issues : [{ field: `sandboxes.${s.id}`, reason: e.message }]));
        continue;
      }
      this.#apply(v.value.record, v.value.network);
      loaded++;
    }
    return { loaded, skipped };
  }

  /** Replaces the config file's sandboxes (SIGHUP), leaving the API's alone. */
  replaceConfigSandboxes(next: readonly SandboxRecord[]): ChangeResult<number> {
    const issues: FieldIssue[] = [];
    const parsed = next.map((r) => ({ r, n: parseNetwork(r.network, `sandboxes.${r.id}.network`) }));
    for (const p of parsed) if (!p.n.ok) issues.push(...p.n.issues);
    for (const r of next) {
      const api = this.#records.get(r.id);
      if (api && api.origin === 'api') issues.push({ field: `sandboxes.${r.id}`, reason: `Sandbox ${quote(r.id)} already exists through the API` });
      for (const s of r.sources) {
        const owner = this.store.ownerOf(s);
        if (owner !== null && owner !== r.id && this.#records.get(owner)?.origin === 'api') {
          issues.push({ field: `sandboxes.${r.id}.sources`, reason: `Source ${quote(s)} belongs to API sandbox ${quote(owner)}` });
        }
      }
    }
    if (issues.length > 0) return invalid(issues);
    for (const r of [...this.#records.values()]) {
      if (r.origin === 'config') {
        this.store.removeSandbox(r.id);
        this.#records.delete(r.id);
      }
    }
    const before = new Map([...this.#records.values()].filter((r) => r.origin === 'config').map((r) => [r.id, digestOf(r)]));
    for (const p of parsed) if (p.n.ok) this.#apply(p.r, p.n.value);
    for (const r of next) {
      this.#emit({ source: 'config', action: 'put', kind: 'sandbox', id: r.id, actor: 'config', before: before.get(r.id) ?? null, after: digestOf(r) });
    }
    return { ok: true, value: next.length };
  }

  sandbox(id: string): SandboxRecord | undefined {
    return this.#records.get(id);
  }

  sandboxes(): SandboxRecord[] {
    return [...this.#records.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  orgRecord(id: string): OrgRecord | undefined {
    return this.#orgs.get(id);
  }

  #validateSandbox(
    id: string,
    body: unknown,
    source: ChangeSource,
  ): ChangeResult<{ record: SandboxRecord; network: DialectResult }> {
    const issues: FieldIssue[] = [];
    if (!SANDBOX_ID.test(id)) issues.push({ field: 'id', reason: `Expected letters, digits, ".", "_" or "-" (at most 128), got ${quote(id)}` });
    if (!isPlainObject(body)) return invalid([...issues, { field: '', reason: 'Expected a JSON object' }]);
    for (const k of Object.keys(body)) {
      if (!['sources', 'org', 'network'].includes(k)) issues.push({ field: k, reason: `Unknown field ${quote(k)}; known fields are sources, org, network` });
    }
    const sources: string[] = [];
    const rawSources = body['sources'];
    if (!Array.isArray(rawSources)) issues.push({ field: 'sources', reason: 'Expected a list of IPv4 or IPv6 addresses' });
    else {
      rawSources.forEach((s, i) => {
        const c = typeof s === 'string' ? canonicalSource(s) : undefined;
        if (c === undefined) issues.push({ field: `sources[${i}]`, reason: `Expected an IPv4 or IPv6 address, got ${quote(s)}` });
        else if (sources.includes(c)) issues.push({ field: `sources[${i}]`, reason: `Duplicate source ${quote(s)}` });
        else sources.push(c);
      });
    }
    const org = body['org'];
    if (org !== undefined && org !== null && (typeof org !== 'string' || !SANDBOX_ID.test(org))) {
      issues.push({ field: 'org', reason: `Expected an organization id, got ${quote(org)}` });
    }
    const network = parseNetwork(body['network'] ?? { mode: 'block-all' }, 'network');
    if (!network.ok) issues.push(...network.issues);
    if (issues.length > 0 || !network.ok) return invalid(issues);
    const orgId = typeof org === 'string' ? org : null;
    if (orgId !== null && !this.#orgs.has(orgId)) return notFound(`Organization ${quote(orgId)} does not exist`);
    const existing = this.#records.get(id);
    if (existing && existing.origin === 'config' && source === 'api') {
      return conflict(`Sandbox ${quote(id)} comes from the config file; the API cannot change it`);
    }
    for (const [i, s] of sources.entries()) {
      const owner = this.store.ownerOf(s);
      if (owner !== null && owner !== id) return conflict(`Source ${quote(s)} belongs to sandbox ${quote(owner)}`, `sources[${i}]`);
    }
    const record: SandboxRecord = { id, sources, org: orgId, network: body['network'] ?? { mode: 'block-all' }, origin: source };
    return { ok: true, value: { record, network: network.value } };
  }

  #apply(record: SandboxRecord, network: DialectResult): void {
    const def: SandboxDefinition = { id: record.id, sources: record.sources, org: record.org, network };
    this.store.putSandbox(def);
    this.#records.set(record.id, record);
  }

  putSandbox(id: string, body: unknown, actor = 'api'): Promise<ChangeResult<{ record: SandboxRecord; created: boolean }>> {
    return this.#serialized(async () => {
      const v = this.#validateSandbox(id, body, 'api');
      if (!v.ok) return v;
      const created = !this.#records.has(id);
      const before = this.#records.get(id);
      this.#records.set(id, v.value.record);
      try {
        await this.#persist();
      } catch (err) {
        if (before) this.#records.set(id, before);
        else this.#records.delete(id);
        throw err;
      }
      this.#apply(v.value.record, v.value.network);
      this.#emit({ source: 'api', action: 'put', kind: 'sandbox', id, actor, before: digestOf(before), after: digestOf(v.value.record) });
      return { ok: true, value: { record: v.value.record, created } };
    });
  }

  /** Replaces only the network of an existing sandbox (the sandbox0 route). */
  putNetwork(id: string, network: unknown, actor = 'api'): Promise<ChangeResult<{ record: SandboxRecord; created: boolean }>> {
    const r = this.#records.get(id);
    if (!r) return Promise.resolve(notFound(`Sandbox ${quote(id)} does not exist`));
    return this.putSandbox(id, { sources: r.sources, ...(r.org !== null ? { org: r.org } : {}), network }, actor);
  }

  deleteSandbox(id: string, actor = 'api'): Promise<ChangeResult<SandboxRecord>> {
    return this.#serialized(async () => {
      const r = this.#records.get(id);
      if (!r) return notFound(`Sandbox ${quote(id)} does not exist`);
      if (r.origin === 'config') return conflict(`Sandbox ${quote(id)} comes from the config file; the API cannot delete it`);
      this.#records.delete(id);
      try {
        await this.#persist();
      } catch (err) {
        this.#records.set(id, r);
        throw err;
      }
      this.store.removeSandbox(id);
      this.#emit({ source: 'api', action: 'delete', kind: 'sandbox', id, actor, before: digestOf(r), after: null });
      return { ok: true, value: r };
    });
  }

  #validateOrg(id: string, body: unknown): ChangeResult<{ record: OrgRecord; def: OrgDefinition }> {
    const issues: FieldIssue[] = [];
    if (!SANDBOX_ID.test(id)) issues.push({ field: 'id', reason: `Expected letters, digits, ".", "_" or "-" (at most 128), got ${quote(id)}` });
    if (!isPlainObject(body)) return invalid([...issues, { field: '', reason: 'Expected a JSON object' }]);
    for (const k of Object.keys(body)) {
      if (!['tier', 'network'].includes(k)) issues.push({ field: k, reason: `Unknown field ${quote(k)}; known fields are tier, network` });
    }
    const tier = body['tier'];
    if (tier !== undefined && !(tier === 1 || tier === 2 || tier === 3 || tier === 4)) {
      issues.push({ field: 'tier', reason: `Expected a tier from 1 to 4, got ${quote(tier)}` });
    }
    if (tier === undefined && body['network'] === undefined) issues.push({ field: '', reason: 'Expected "tier" or "network"' });
    if (tier !== undefined && body['network'] !== undefined) issues.push({ field: 'network', reason: 'Give either "tier" or "network", not both' });
    let network: DialectResult | null = null;
    if (body['network'] !== undefined) {
      const n = parseNetwork(body['network'], 'network');
      if (!n.ok) issues.push(...n.issues);
      else network = n.value;
    }
    if (issues.length > 0) return invalid(issues);
    const t = (tier ?? null) as Tier | null;
    return { ok: true, value: { record: { id, tier: t, network: body['network'] ?? null }, def: { id, tier: t, network } } };
  }

  #applyOrg(record: OrgRecord, def: OrgDefinition): void {
    this.store.putOrg(def);
    this.#orgs.set(record.id, record);
  }

  putOrg(id: string, body: unknown, actor = 'api'): Promise<ChangeResult<{ record: OrgRecord; created: boolean }>> {
    return this.#serialized(async () => {
      const v = this.#validateOrg(id, body);
      if (!v.ok) return v;
      const before = this.#orgs.get(id);
      this.#orgs.set(id, v.value.record);
      try {
        await this.#persist();
      } catch (err) {
        if (before) this.#orgs.set(id, before);
        else this.#orgs.delete(id);
        throw err;
      }
      this.#applyOrg(v.value.record, v.value.def);
      this.#emit({ source: 'api', action: 'put', kind: 'org', id, actor, before: digestOf(before), after: digestOf(v.value.record) });
      return { ok: true, value: { record: v.value.record, created: before === undefined } };
    });
  }

  deleteOrg(id: string, actor = 'api'): Promise<ChangeResult<OrgRecord>> {
    return this.#serialized(async () => {
      const r = this.#orgs.get(id);
      if (!r) return notFound(`Organization ${quote(id)} does not exist`);
      const user = [...this.#records.values()].find((s) => s.org === id);
      if (user) return conflict(`Organization ${quote(id)} still has sandbox ${quote(user.id)}`);
      this.#orgs.delete(id);
      try {
        await this.#persist();
      } catch (err) {
        this.#orgs.set(id, r);
        throw err;
      }
      this.store.removeOrg(id);
      this.#emit({ source: 'api', action: 'delete', kind: 'org', id, actor, before: digestOf(r), after: null });
      return { ok: true, value: r };
    });
  }

  async #persist(): Promise<void> {
    if (!this.#state) return;
    const state: PersistedState = {
      version: 1,
      sandboxes: [...this.#records.values()]
        .filter((r) => r.origin === 'api')
        .map(({ id, sources, org, network }) => ({ id, sources, org, network })),
      orgs: [...this.#orgs.values()],
    };
    await this.#state.write(state);
  }
}

function parseNetworkOrThrow(network: unknown): DialectResult {
  const r = parseNetworkBody(network);
  if (!r.ok) throw new Error(`Invalid network: ${r.issues.map((i) => `${i.field}: ${i.reason}`).join('; ')}`);
  return r.value;
}
