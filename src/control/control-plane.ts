// The control plane's rules over the policy store: who may change what, what is persisted,
// and what a change does to open connections. Every change is validated whole first, then
// persisted (one row, fsynced: state-store.ts) and only then applied and acknowledged: a
// refused change or a failed write changes nothing, and an acknowledged one survives a crash.
//
// Several processes may share one state (a rollout: docs/deployment.md). The database is their
// one serialization point: a change opens its write transaction first, applies what the others
// committed since (as a policy change: `source: 'state'`), and only then validates against
// that view and writes. Between changes, another process's commit is followed within
// milliseconds (state-writer.ts watches the WAL), and reads through the API follow it first.

import { createHash } from 'node:crypto';
import { isPlainObject, quote } from '../util/fields.ts';
import { OrgBody, OrgId, SandboxBody, SandboxId } from '../schema/schemas.ts';
import { check } from '../schema/check.ts';
import { sandboxSource } from '../match/ip.ts';
import type { DialectResult } from '../policy/model.ts';
import { CappedIssues, type FieldIssue } from '../util/issues.ts';
import { parseNetworkBody } from '../policy/network-body.ts';
import type { LimitsOverride } from '../limits/limits-body.ts';
import type { OrgDefinition, PolicyStore, SandboxDefinition, Tier } from './store.ts';
import {
  schemaProblem,
  storedBody,
  storedRevision,
  type ConfigClaim,
  type EntryKind,
  type OtherClaim,
  type StateChanges,
  type StateStore,
  type StoredEntry,
} from './state-store.ts';
import { StateInvalidError, StateRejectedError, StateWriteError, type StateIssue } from '../errors.ts';

export type ChangeSource = 'api' | 'config';

/** How often another process's commits are checked while the state stands rejected (ms): see #followCommit. */
const REJECTED_RECHECK_MS = 250;

/** What a client sent, kept as sent so that a restart re-reads it with the same rules. */
export interface SandboxRecord {
  readonly id: string;
  readonly sources: readonly string[];
  readonly org: string | null;
  readonly network: unknown;
  readonly origin: ChangeSource;
  /** Connection limits of this sandbox alone (limits/limits-body.ts); absent: its org's, then the config's. */
  readonly limits?: LimitsOverride;
  /** Report-only mode for this sandbox: what its policy would refuse is let through and reported. */
  readonly reportOnly?: boolean;
}

export interface OrgRecord {
  readonly id: string;
  readonly tier: Tier | null;
  readonly network: unknown;
  /** Connection limits for each sandbox of the organization, unless the sandbox sets its own. */
  readonly limits?: LimitsOverride;
  /** Report-only mode for every sandbox of the organization. */
  readonly reportOnly?: boolean;
}

/** The version-1 JSON state egressd wrote before the SQLite store; read once and converted. */
export interface PersistedState {
  readonly version: 1;
  readonly sandboxes: readonly Omit<SandboxRecord, 'origin'>[];
  readonly orgs: readonly OrgRecord[];
}

export type ChangeError =
  | { kind: 'invalid'; issues: readonly FieldIssue[] }
  | { kind: 'conflict'; field: string | null; message: string }
  | { kind: 'not-found'; message: string }
  /** An If-Match or If-None-Match that did not hold; `etag` is the entry's current one (null: absent). */
  | { kind: 'precondition'; etag: string | null; message: string };

/**
 * The preconditions of a change (RFC 9110 §13.1.1 If-Match, §13.1.2 If-None-Match), evaluated
 * against the entry's current entity tag inside the change's serialized section, so that of two
 * writers holding the same tag exactly one succeeds. `'*'` is "any current entry"; a list holds
 * opaque tags as sent, quotes included, compared strongly (a weak tag never matches If-Match).
 */
export interface Preconditions {
  readonly ifMatch?: '*' | readonly string[];
  readonly ifNoneMatch?: '*' | readonly string[];
}

export type ChangeResult<T> = { ok: true; value: T } | { ok: false; error: ChangeError };

export interface ChangeEvent {
  /** `state`: another egressd process on the same state made the change (read from the state). */
  readonly source: ChangeSource | 'state';
  readonly action: 'put' | 'delete';
  readonly kind: 'sandbox' | 'org';
  readonly id: string;
  /** Who asked: the API client's address, or the config file. */
  readonly actor: string;
  /** Digests of the entry before and after (null when absent), so a log shows what moved without the body. */
  readonly before: string | null;
  readonly after: string | null;
  /**
   * True on every event of a batch but its last (another process's changes, followed as one
   * view): the view is already whole, so open connections need judging once, at the last.
   */
  readonly more?: boolean;
}

/**
 * What another process wrote that this one refused to apply (`issues`, named after the entries),
 * or that the state is whole again (`issues` empty) after such a refusal.
 */
export interface StateRejectedEvent {
  readonly path: string;
  readonly issues: readonly StateIssue[];
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

/** Why `cond` fails against an entry whose tag is `etag` (undefined: absent), or null when it holds. */
function failedPrecondition(cond: Preconditions | undefined, etag: string | undefined, what: string): { ok: false; error: ChangeError } | null {
  if (cond === undefined) return null;
  const fail = (message: string) => ({ ok: false as const, error: { kind: 'precondition' as const, etag: etag ?? null, message } });
  const { ifMatch, ifNoneMatch } = cond;
  if (ifMatch !== undefined) {
    if (etag === undefined) return fail(`If-Match: ${what} does not exist`);
    if (ifMatch !== '*' && !ifMatch.includes(etag)) return fail(`If-Match: ${what} has changed; its entity tag is now ${etag}`);
  }
  if (ifNoneMatch !== undefined && etag !== undefined && (ifNoneMatch === '*' || ifNoneMatch.includes(etag))) {
    return fail(ifNoneMatch === '*' ? `If-None-Match: *: ${what} already exists` : `If-None-Match: ${what} still has entity tag ${etag}`);
  }
  return null;
}

export function parseNetwork(body: unknown, field: string): { ok: true; value: DialectResult } | { ok: false; issues: FieldIssue[] } {
  const r = parseNetworkBody(body);
  if (r.ok) return r;
  return { ok: false, issues: r.issues.map((i) => ({ field: i.field ? `${field}.${i.field}` : field, reason: i.reason })) };
}

/** A change that could not be made durable (answered 503; nothing changed). */
export interface WriteFailureEvent {
  readonly action: 'put' | 'delete';
  readonly kind: 'sandbox' | 'org';
  readonly id: string;
  readonly actor: string;
  readonly error: StateWriteError;
}

/** What start-up found in the state: entries restored, and a conversion if there was one. */
export interface LoadResult {
  readonly loaded: number;
  readonly orgs: number;
  readonly format: 'absent' | 'sqlite' | 'json-v1' | 'none';
  /** Where a version-1 JSON state was kept after its conversion, or null. */
  readonly migratedTo: string | null;
  /** True when there was no state and a new, empty one was created. */
  readonly created: boolean;
  readonly readOnly: boolean;
}

/** The persisted body of an entry: the record without its id (and origin), nulls left out. */
const bodyOf = (r: Readonly<Record<string, unknown>>): Record<string, unknown> =>
  Object.fromEntries(Object.entries(r).filter(([k, v]) => k !== 'id' && k !== 'origin' && v !== null && v !== undefined));

export class ControlPlane {
  readonly store: PolicyStore;
  readonly #state: StateStore | null;
  readonly #records = new Map<string, SandboxRecord>();
  readonly #orgs = new Map<string, OrgRecord>();
  /** The state's revision of each stored entry, by `kind:id` (an entry's version). */
  readonly #revisions = new Map<string, number>();
  /** Revisions of this process's own, for entries no state holds (no `state.path`): never reused while it runs. */
  #counter = 0;
  readonly #listeners: ((e: ChangeEvent) => void)[] = [];
  readonly #failureListeners: ((e: WriteFailureEvent) => void)[] = [];
  /** Serializes changes so that validate → persist → apply is atomic with respect to others. */
  #lock: Promise<unknown> = Promise.resolve();
  /**
   * The config sandboxes of the other live egressd processes on the state, read when the API
   * change now running opened its write transaction (#inWrite); empty outside of one.
   */
  #others: readonly OtherClaim[] = [];
  /** What another process wrote that this one did not apply; null while it follows the state. */
  #rejected: readonly StateIssue[] | null = null;
  readonly #rejectedListeners: ((e: StateRejectedEvent) => void)[] = [];
  /** A refresh for another process's commit is waiting for its turn (one is enough). */
  #refreshQueued = false;
  /**
   * Events of other processes' changes applied inside a change's write transaction, emitted
   * when it ends (#release); null outside of one.
   */
  #held: ChangeEvent[] | null = null;
  /** When the state's changes were last listed by a refresh (performance.now(), ms). */
  #checkedAt = 0;
  /**
   * The entry (`kind:id`) the change now being written repairs: stored by another process, not
   * accepted here, and replaced or deleted by this change (#inWrite). Null otherwise.
   */
  #repairing: string | null = null;

  constructor(store: PolicyStore, state: StateStore | null) {
    this.store = store;
    this.#state = state;
  }

  onChange(l: (e: ChangeEvent) => void): void {
    this.#listeners.push(l);
  }

  /** Called for every change whose write failed (for the error log and the metric). */
  onWriteFailure(l: (e: WriteFailureEvent) => void): void {
    this.#failureListeners.push(l);
  }

  /** Called when changes another process wrote are refused (and once when the state is whole again). */
  onStateRejected(l: (e: StateRejectedEvent) => void): void {
    this.#rejectedListeners.push(l);
  }

  /** What another process wrote that this one refused to apply, or null while it follows the state. */
  get rejected(): readonly StateIssue[] | null {
    return this.#rejected;
  }

  /**
   * Applies what other processes committed to the state since this one last looked, so that a
   * read answers with what any of them acknowledged. Never rejects: when the state cannot be
   * read now, the view stays as it was (the next change or commit tries again).
   */
  refresh(): Promise<void> {
    if (!this.#state?.shared) return Promise.resolve();
    return this.#serialized(async () => {
      this.#refreshQueued = false;
      try {
        const c = await this.#state!.changes();
        this.#checkedAt = performance.now();
        if (c !== null) await this.#take(c);
      } catch {
        // Read again at the next change, commit or read.
      }
    });
  }

  /**
   * Another process committed: follow it, once for however many commits arrive while a refresh
   * waits. While the state stands rejected, at most every REJECTED_RECHECK_MS: each check lists
   * and validates every change since the rejection again (nothing of it is accepted), so
   * following each commit of a busy writer cost this process's main thread, which runs the
   * data path too, work growing with every commit (a quarter of a core at a few hundred
   * changes a second). The view it serves is the last good one either way; a change through
   * this process's API checks at once.
   */
  #followCommit(): void {
    if (this.#refreshQueued) return;
    this.#refreshQueued = true;
    const wait = this.#rejected === null ? 0 : REJECTED_RECHECK_MS - (performance.now() - this.#checkedAt);
    if (wait <= 0) void this.refresh();
    else setTimeout(() => void this.refresh(), wait).unref();
  }

  /**
   * Applies another process's changes when the view they make is whole, and tells the state they
   * were taken; else keeps the last good view, and reports them once. True when applied.
   */
  async #take(c: StateChanges): Promise<boolean> {
    const issues = this.#follow(c);
    if (issues.length === 0) {
      await this.#state!.accept();
      if (this.#rejected !== null) {
        this.#rejected = null;
        for (const l of this.#rejectedListeners) l({ path: this.#state!.path, issues: [] });
      }
      return true;
    }
    const again = this.#rejected !== null && JSON.stringify(this.#rejected) === JSON.stringify(issues);
    this.#rejected = issues;
    if (!again) for (const l of this.#rejectedListeners) l({ path: this.#state!.path, issues });
    return false;
  }

  /**
   * Validates the view another process's changes make, as a whole (as start-up does: every
   * entry valid, each source held by one sandbox, every organization named exists), and applies
   * it only when it has no problem; returns the problems. Applied as an API change is: the
   * store changes, then one policy-change event per entry (re-judging open connections).
   */
  #follow(c: StateChanges): StateIssue[] {
    const schema = schemaProblem(c.schema);
    if (schema !== null) return [{ entry: '', field: '', reason: schema }];
    const issues: StateIssue[] = [];
    const goneSandboxes = new Set<string>();
    const goneOrgs = new Set<string>();
    for (const d of c.deletes) (d.kind === 'org' ? goneOrgs : goneSandboxes).add(d.id);
    const orgs: { id: string; revision: number; record: OrgRecord; def: OrgDefinition }[] = [];
    const bodies: { id: string; revision: number; body: Record<string, unknown> }[] = [];
    for (const row of c.upserts) {
      const entry = `${row.kind} ${quote(row.id)}`;
      const parsed = storedBody(row.kind, row.id, row.type, row.body);
      if (!parsed.ok) {
        issues.push(parsed.issue);
        continue;
      }
      const rev = storedRevision(row.kind, row.id, row.revision);
      if (!rev.ok) {
        issues.push(rev.issue);
        continue;
      }
      const body = parsed.body;
      if (row.kind === 'org') {
        const v = this.#validateOrg(row.id, bodyOf(body));
        if (!v.ok) issues.push(...issuesOf(entry, v.error));
        else orgs.push({ id: row.id, revision: row.revision, ...v.value });
      } else if (row.kind === 'sandbox') bodies.push({ id: row.id, revision: row.revision, body });
      else issues.push({ entry, field: 'kind', reason: `Unknown kind ${quote(row.kind)}` });
    }
    // The view after: organizations that stay or come; sources of sandboxes that stay, then of those that come.
    const hasOrg = (id: string): boolean => orgs.some((o) => o.id === id) || (this.#orgs.has(id) && !goneOrgs.has(id));
    const changed = new Set([...goneSandboxes, ...bodies.map((b) => b.id)]);
    const claimed = new Map<string, string>();
    const ownerOf = (source: string): string | null => {
      const owner = claimed.get(source) ?? this.store.ownerOf(source);
      return owner === null || (changed.has(owner) && !claimed.has(source)) ? null : owner;
    };
    const sandboxes: { id: string; revision: number; record: SandboxRecord; network: DialectResult }[] = [];
    for (const b of bodies) {
      const v = this.#validateSandbox(b.id, bodyOf(b.body), 'api', { ownerOf, hasOrg });
      if (!v.ok) {
        issues.push(...issuesOf(`sandbox ${quote(b.id)}`, v.error));
        continue;
      }
      for (const s of v.value.record.sources) claimed.set(s, b.id);
      sandboxes.push({ id: b.id, revision: b.revision, ...v.value });
    }
    for (const id of goneOrgs) {
      const user = [...this.#records.values()].find((r) => r.org === id && !changed.has(r.id));
      if (user) issues.push({ entry: `org ${quote(id)}`, field: '', reason: `Deleted, but sandbox ${quote(user.id)} still names it` });
    }
    if (issues.length > 0) return issues;

    const events: ChangeEvent[] = [];
    const event = (action: 'put' | 'delete', kind: EntryKind, id: string, before: unknown, after: unknown): void => {
      events.push({ source: 'state', action, kind, id, actor: 'state', before: digestOf(before), after: digestOf(after) });
    };
    for (const id of goneSandboxes) {
      const r = this.#records.get(id);
      this.#revisions.delete(`sandbox:${id}`);
      if (r === undefined || r.origin !== 'api') continue;
      this.#records.delete(id);
      this.store.removeSandbox(id);
      event('delete', 'sandbox', id, r, null);
    }
    for (const o of orgs) {
      const before = this.#orgs.get(o.id);
      this.#applyOrg(o.record, o.def);
      this.#revisions.set(`org:${o.id}`, o.revision);
      event('put', 'org', o.id, before, o.record);
    }
    for (const sb of sandboxes) {
      const before = this.#records.get(sb.id);
      this.#apply(sb.record, sb.network);
      this.#revisions.set(`sandbox:${sb.id}`, sb.revision);
      event('put', 'sandbox', sb.id, before, sb.record);
    }
    for (const id of goneOrgs) {
      const r = this.#orgs.get(id);
      this.#revisions.delete(`org:${id}`);
      if (r === undefined) continue;
      this.#orgs.delete(id);
      this.store.removeOrg(id);
      event('delete', 'org', id, r, null);
    }
    if (this.#held !== null) this.#held.push(...events);
    else this.#emitBatch(events);
    return [];
  }

  /**
   * Runs a change inside the state's write transaction: first what other processes committed
   * is applied (or, when it cannot be, the change is refused with StateRejectedError), then `fn`
   * validates against that view and writes; the transaction is rolled back if `fn` did not write.
   * A change of an entry that is itself part of the problem may repair it: when the rest of
   * what was committed is whole without that entry, the rest is applied and the change goes on
   * (validated as any, so a PUT must make a whole view, and a DELETE of an organization still
   * in use is refused): a change that makes the state whole again, never one that leaves it worse.
   */
  async #inWrite<T>(action: 'put' | 'delete', kind: EntryKind, id: string, actor: string, asked: number, fn: () => Promise<T>): Promise<T> {
    const state = this.#state;
    if (state === null) return fn();
    let c: StateChanges | null;
    try {
      c = await state.begin(asked);
    } catch (err) {
      if (!(err instanceof StateWriteError)) throw err;
      for (const l of this.#failureListeners) l({ action, kind, id, actor, error: err });
      throw err;
    }
    // What the others committed is applied now, but judged (its events) once the transaction ends.
    this.#held = [];
    try {
      if (c !== null && !(await this.#take(c))) {
        const rest = { ...c, upserts: c.upserts.filter((u) => u.kind !== kind || u.id !== id) };
        if (rest.upserts.length === c.upserts.length || this.#follow(rest).length > 0) throw new StateRejectedError(state.path, this.#rejected ?? []);
        // The rest is applied; the entry stays listed until this change writes over it.
        await state.accept([kind, id]);
        this.#repairing = `${kind}:${id}`;
      }
      this.#others = state.claims();
      const result = await fn();
      if (this.#repairing !== null && !state.inWrite) {
        // Written: the state is whole again.
        this.#rejected = null;
        for (const l of this.#rejectedListeners) l({ path: state.path, issues: [] });
      }
      return result;
    } finally {
      this.#repairing = null;
      this.#others = [];
      await state.rollback();
      this.#release();
    }
  }

  /**
   * Emits the events of other processes' changes applied inside the change's write transaction,
   * now that it ended (committed or rolled back): re-judging open connections, and waiting up to
   * a second for the data-plane loops to close the refused ones, must not hold the database's
   * write lock, which every other process's change waits for.
   */
  #release(): void {
    const held = this.#held;
    this.#held = null;
    if (held !== null && held.length > 0) this.#emitBatch(held);
  }

  /**
   * Queues a change (serialized with this process's others) to run in the state's write
   * transaction. Its wait for another process's write lock counts from now (or from the end
   * of this process's last change: StateStore.begin), not from its turn: changes queued behind
   * one that waits out a lock held elsewhere fail within the busy timeout too, and reads queued
   * behind them (refresh) wait at most that long.
   */
  #change<T>(action: 'put' | 'delete', kind: EntryKind, id: string, actor: string, fn: () => Promise<T>): Promise<T> {
    const asked = performance.now();
    return this.#serialized(() => this.#inWrite(action, kind, id, actor, asked, fn));
  }

  /** The stored revision of a sandbox or organization (its version), or undefined when not stored. */
  revisionOf(kind: EntryKind, id: string): number | undefined {
    return this.#revisions.get(`${kind}:${id}`);
  }

  /**
   * The entity tag of a sandbox or organization (RFC 9110 §8.8.3), or undefined when absent:
   * its revision (never reused: the state's, or this process's own without a state) and a digest
   * of the entry, so that a tag from before a restart never matches different content.
   */
  etagOf(kind: EntryKind, id: string): string | undefined {
    const r = kind === 'sandbox' ? this.#records.get(id) : this.#orgs.get(id);
    if (r === undefined) return undefined;
    return `"${this.#revisions.get(`${kind}:${id}`) ?? 0}-${digestOf(r)}"`;
  }

  /**
   * Writes one change durably. A failure is reported to the failure listeners and rethrown as
   * StateWriteError, before anything in memory changed.
   */
  async #write(action: 'put' | 'delete', kind: EntryKind, id: string, actor: string, body: Record<string, unknown> | null): Promise<void> {
    if (!this.#state) {
      if (action === 'put') this.#revisions.set(`${kind}:${id}`, ++this.#counter);
      else this.#revisions.delete(`${kind}:${id}`);
      return;
    }
    try {
      const revision = action === 'put' ? await this.#state.put(kind, id, body!) : await this.#state.delete(kind, id);
      if (action === 'put') this.#revisions.set(`${kind}:${id}`, revision);
      else this.#revisions.delete(`${kind}:${id}`);
    } catch (err) {
      if (!(err instanceof StateWriteError)) throw err;
      for (const l of this.#failureListeners) l({ action, kind, id, actor, error: err });
      throw err;
    } finally {
      // The transaction ended: the others' changes it applied are judged before this one.
      this.#release();
    }
  }

  /** Removes this process's config claims and closes the state (a clean shutdown folds the WAL into the database). */
  async close(): Promise<void> {
    await this.#serialized(async () => {
      await this.#state?.dropClaims();
      await this.#state?.close();
    });
  }

  #emit(e: ChangeEvent): void {
    for (const l of this.#listeners) l(e);
  }

  /**
   * Emits the events of changes already applied together (a reload, another process's changes):
   * open connections are judged against the whole view once, at the last (`more` on the
   * others); per event, a batch of k changes judged every open connection k times.
   */
  #emitBatch(events: readonly ChangeEvent[]): void {
    for (const [i, e] of events.entries()) this.#emit(i < events.length - 1 ? { ...e, more: true } : e);
  }

  #serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(fn, fn);
    this.#lock = run.catch(() => {});
    return run;
  }

  /**
   * Loads the config file's sandboxes (which the API cannot overwrite), then every entry of the
   * state. Any entry that does not validate, or conflicts, stops start-up with
   * StateInvalidError naming the file, the entry and the field: nothing is dropped, and nothing
   * is written (a version-1 JSON state is converted only once all of it was accepted).
   */
  async load(configSandboxes: readonly SandboxRecord[]): Promise<LoadResult> {
    for (const r of configSandboxes) this.#apply(r, parseNetworkOrThrow(r.network));
    if (!this.#state) return { loaded: 0, orgs: 0, format: 'none', migratedTo: null, created: false, readOnly: false };
    const entries = this.#state.read();
    const issues: StateIssue[] = [];
    const entryName = (e: StoredEntry): string => `${e.kind} ${quote(e.id)}`;
    const orgs = entries.filter((e) => e.kind === 'org');
    const sandboxes = entries.filter((e) => e.kind === 'sandbox');
    for (const e of orgs) {
      // The version-1 writer wrote null for "absent"; the validators read absent.
      const v = this.#validateOrg(e.id, bodyOf(e.body));
      if (!v.ok) issues.push(...issuesOf(entryName(e), v.error));
      else {
        this.#applyOrg(v.value.record, v.value.def);
        this.#revisions.set(`org:${e.id}`, e.revision);
      }
    }
    let loaded = 0;
    for (const e of sandboxes) {
      const v = this.#validateSandbox(e.id, bodyOf(e.body), 'api');
      if (!v.ok) {
        issues.push(...issuesOf(entryName(e), v.error));
        continue;
      }
      this.#apply(v.value.record, v.value.network);
      this.#revisions.set(`sandbox:${e.id}`, e.revision);
      loaded++;
    }
    if (issues.length > 0) {
      await this.#state.close();
      throw new StateInvalidError(this.#state.path, issues);
    }
    const format = this.#state.format ?? 'absent';
    const c = await this.#state.commit();
    // What another process committed between the read and now, then whatever it commits later.
    this.#state.onChanged(() => this.#followCommit());
    await this.refresh();
    await this.#claimAtStart(configSandboxes);
    return { loaded, orgs: orgs.length, format, migratedTo: c.migratedTo, created: c.created, readOnly: this.#state.readOnly };
  }

  /**
   * Records the config file's sandboxes in the state at start, once checked in the same write
   * transaction against what the others committed and against their config claims. A conflict
   * stops start-up as a state that conflicts with the config file does (StateInvalidError).
   */
  async #claimAtStart(configSandboxes: readonly SandboxRecord[]): Promise<void> {
    const state = this.#state!;
    if (!state.shared) return;
    const problem = await this.#serialized(async (): Promise<StateInvalidError | null> => {
      this.#held = [];
      try {
        const c = await state.begin();
        if (c !== null && !(await this.#take(c))) {
          return new StateInvalidError(state.path, this.#rejected ?? []);
        }
        const issues = this.#configIssues(configSandboxes, state.claims());
        if (issues.length > 0) {
          return new StateInvalidError(
            state.path,
            issues.map((i) => ({ entry: 'config file', field: i.field, reason: i.reason })),
          );
        }
        await state.setClaims(claimsOf(configSandboxes));
        return null;
      } catch (err) {
        if (!(err instanceof StateWriteError)) throw err;
        return new StateInvalidError(
          state.path,
          [{ entry: '', field: '', reason: `Cannot record the config file's sandboxes: ${err.errno} (${err.detail})` }],
          err,
        );
      } finally {
        await state.rollback();
        this.#release();
      }
    });
    if (problem !== null) {
      await state.close();
      throw problem;
    }
  }

  /**
   * Replaces the config file's sandboxes (SIGHUP), leaving the API's alone; refused whole
   * (`invalid`, each field and reason; nothing changed) when a sandbox is invalid, takes an API
   * sandbox's id or source, or gives a source to another sandbox than another live process's
   * config file does. With a shared state this runs in a write transaction: it is checked
   * against every change any process acknowledged before it and against the others' config
   * claims as they are, then records its own claims (config_claims) in the same commit; a
   * failed write refuses the reload (`conflict`, with the errno). Serialized with API changes.
   */
  replaceConfigSandboxes(next: readonly SandboxRecord[]): Promise<ChangeResult<number>> {
    return this.#serialized(async () => {
      const state = this.#state;
      if (state === null || !state.shared) return this.#replaceConfig(next, []);
      this.#held = [];
      try {
        // What the others committed first: a change one acknowledged before this reload holds.
        // Should it not be whole, the reload is judged against the last good view.
        const c = await state.begin();
        const refused = c !== null && !(await this.#take(c)) ? c : null;
        const others = state.claims();
        const pending = refused === null ? [] : refusedSandboxes(refused);
        const issues = this.#configIssues(next, others, pending);
        if (issues.length > 0) return invalid(issues);
        await state.setClaims(claimsOf(next));
        const r = this.#replaceConfig(next, others, pending);
        // The reload may be what makes the refused changes whole (it took back the source they
        // give): judged again now, not when some process next writes. The same listing: accept
        // takes what was listed, and what was committed since is found by the next look.
        if (refused !== null) await this.#take(refused);
        return r;
      } catch (err) {
        if (!(err instanceof StateWriteError)) throw err;
        return conflict(`Cannot record the config file's sandboxes in the state: ${err.errno} (${err.detail})`);
      } finally {
        await state.rollback();
        this.#release();
      }
    });
  }

  /**
   * Why the config sandboxes `next` cannot replace this process's, given the other processes'
   * claims and, while the state stands rejected, the sandboxes of the refused changes
   * (`pending`: not in this view, but in the state, and in force once the rejection is fixed);
   * empty when they can. A source a refused sandbox holds is refused unless the running config
   * gives it to the same sandbox already: that conflict is the rejection's, not the reload's.
   */
  #configIssues(next: readonly SandboxRecord[], others: readonly OtherClaim[], pending: readonly PendingSandbox[] = []): FieldIssue[] {
    const issues: FieldIssue[] = [];
    for (const r of next) {
      const n = parseNetwork(r.network, `sandboxes.${r.id}.network`);
      if (!n.ok) issues.push(...n.issues);
      const api = this.#records.get(r.id);
      if (api && api.origin === 'api') issues.push({ field: `sandboxes.${r.id}`, reason: `Sandbox ${quote(r.id)} already exists through the API` });
      else if (pending.some((p) => p.id === r.id) && api?.origin !== 'config') {
        issues.push({
          field: `sandboxes.${r.id}`,
          reason: `Sandbox ${quote(r.id)} exists through the API of another egressd process (not applied here: the state stands rejected)`,
        });
      }
      const running = api?.origin === 'config' ? api.sources : [];
      for (const s of r.sources) {
        const owner = this.store.ownerOf(s);
        if (owner !== null && owner !== r.id && this.#records.get(owner)?.origin === 'api') {
          issues.push({ field: `sandboxes.${r.id}.sources`, reason: `Source ${quote(s)} belongs to API sandbox ${quote(owner)}` });
          continue;
        }
        const held = pending.find((p) => p.id !== r.id && p.sources.includes(s));
        if (held !== undefined && !running.includes(s)) {
          issues.push({
            field: `sandboxes.${r.id}.sources`,
            reason: `Source ${quote(s)} belongs to API sandbox ${quote(held.id)}, written by another egressd process (not applied here: the state stands rejected)`,
          });
          continue;
        }
        // The same source to the same sandbox is a rollout (both configs alike, or the new one
        // changing its policy); to another sandbox, one source would be judged by two policies.
        const other = others.find((o) => o.sandbox !== r.id && o.sources.includes(s));
        if (other !== undefined) issues.push({ field: `sandboxes.${r.id}.sources`, reason: claimedReason(s, other) });
      }
    }
    return issues;
  }

  /** Puts `next` in place of this process's config sandboxes, unless #configIssues finds a problem. */
  #replaceConfig(next: readonly SandboxRecord[], others: readonly OtherClaim[], pending: readonly PendingSandbox[] = []): ChangeResult<number> {
    const issues = this.#configIssues(next, others, pending);
    if (issues.length > 0) return invalid(issues);
    // Only what the file changed is a change: a sandbox the reload leaves as it was keeps its
    // compiled policy, logs no policy-change line and re-judges no connection (a reload that
    // touched one sandbox of a thousand must not say a thousand policies changed, nor re-judge
    // every open connection). The digest is of the whole record: sources, org, network, reportOnly.
    const before = new Map([...this.#records.values()].filter((r) => r.origin === 'config').map((r) => [r.id, digestOf(r)]));
    const after = new Map(next.map((r) => [r.id, { r, digest: digestOf(r) }]));
    const gone = [...before.keys()].filter((id) => after.get(id)?.digest !== before.get(id));
    // Every changed sandbox's old sources are freed before any is applied: one may take another's.
    for (const id of gone) {
      this.store.removeSandbox(id);
      this.#records.delete(id);
    }
    const events: ChangeEvent[] = [];
    // A removed sandbox is a change too: its sources fall to the default policy, which must
    // re-judge their open connections and dials as an API DELETE does.
    for (const id of gone) {
      if (!after.has(id))
        events.push({ source: 'config', action: 'delete', kind: 'sandbox', id, actor: 'config', before: before.get(id) ?? null, after: null });
    }
    for (const [id, { r, digest }] of after) {
      if (before.get(id) === digest) continue;
      this.#apply(r, parseNetworkOrThrow(r.network));
      events.push({ source: 'config', action: 'put', kind: 'sandbox', id, actor: 'config', before: before.get(id) ?? null, after: digest });
    }
    this.#emitBatch(events);
    return { ok: true, value: next.length };
  }

  sandbox(id: string): SandboxRecord | undefined {
    return this.#records.get(id);
  }

  sandboxes(): SandboxRecord[] {
    return [...this.#records.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  /** Every organization, by id. */
  orgs(): OrgRecord[] {
    return [...this.#orgs.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  /** How many organizations are registered (a scrape reads it: no copy, no sort). */
  get orgCount(): number {
    return this.#orgs.size;
  }

  orgRecord(id: string): OrgRecord | undefined {
    return this.#orgs.get(id);
  }

  /**
   * Validates a sandbox against the view in memory, or against `view` (the view another
   * process's changes make: #follow).
   */
  #validateSandbox(
    id: string,
    body: unknown,
    source: ChangeSource,
    view?: { ownerOf: (source: string) => string | null; hasOrg: (id: string) => boolean },
  ): ChangeResult<{ record: SandboxRecord; network: DialectResult }> {
    const issues = new CappedIssues();
    check(SandboxId, id, 'id', issues);
    // The one schema (src/schema/define/bodies.ts) gives the shape; the rest is what a shape cannot say.
    if (!check(SandboxBody, body, '', issues) && !isPlainObject(body)) return invalid(issues.result());
    const b = body as Record<string, unknown>;
    const sources: string[] = [];
    if (Array.isArray(b['sources'])) {
      (b['sources'] as unknown[]).forEach((s, i) => {
        if (typeof s !== 'string') return;
        const r = sandboxSource(s);
        if (!r.ok) issues.add(`sources[${i}]`, r.reason);
        else if (sources.includes(r.source)) issues.add(`sources[${i}]`, `Duplicate source ${quote(s)}`);
        else sources.push(r.source);
      });
    }
    const networkBody = b['network'] ?? { mode: 'block-all' };
    const network = parseNetwork(networkBody, 'network');
    if (!network.ok) for (const i of network.issues) issues.add(i.field, i.reason);
    if (!issues.ok || !network.ok) return invalid(issues.result());
    const orgId = typeof b['org'] === 'string' ? b['org'] : null;
    if (orgId !== null && !(view ? view.hasOrg(orgId) : this.#orgs.has(orgId))) return notFound(`Organization ${quote(orgId)} does not exist`);
    const existing = this.#records.get(id);
    if (existing && existing.origin === 'config' && source === 'api') {
      return conflict(`Sandbox ${quote(id)} comes from the config file; the API cannot change it`);
    }
    // Another live process's config file (#others: an API change's, read in its transaction).
    const others = view === undefined && source === 'api' ? this.#others : [];
    const theirs = others.find((o) => o.sandbox === id);
    if (theirs !== undefined) {
      return conflict(`Sandbox ${quote(id)} comes from the config file of another egressd process on the state (pid ${theirs.pid}); the API cannot change it`);
    }
    for (const [i, s] of sources.entries()) {
      const owner = view ? view.ownerOf(s) : this.store.ownerOf(s);
      if (owner !== null && owner !== id) return conflict(`Source ${quote(s)} belongs to sandbox ${quote(owner)}`, `sources[${i}]`);
      const other = others.find((o) => o.sources.includes(s));
      if (other !== undefined) return conflict(claimedReason(s, other), `sources[${i}]`);
    }
    const limits = b['limits'] as LimitsOverride | undefined;
    const reportOnly = b['reportOnly'] as boolean | undefined;
    const record: SandboxRecord = {
      id,
      sources,
      org: orgId,
      network: networkBody,
      origin: source,
      ...(limits ? { limits: Object.freeze({ ...limits }) } : {}),
      ...(reportOnly !== undefined ? { reportOnly } : {}),
    };
    return { ok: true, value: { record, network: network.value } };
  }

  #apply(record: SandboxRecord, network: DialectResult): void {
    const def: SandboxDefinition = { id: record.id, sources: record.sources, org: record.org, network, reportOnly: record.reportOnly === true };
    this.store.putSandbox(def);
    this.#records.set(record.id, record);
  }

  putSandbox(id: string, body: unknown, actor = 'api', cond?: Preconditions): Promise<ChangeResult<{ record: SandboxRecord; created: boolean; etag: string }>> {
    return this.#change('put', 'sandbox', id, actor, () => this.#putSandbox(id, body, actor, cond));
  }

  /** putSandbox's work; runs only inside the serialized section and the state's write transaction. */
  async #putSandbox(
    id: string,
    body: unknown,
    actor: string,
    cond?: Preconditions,
  ): Promise<ChangeResult<{ record: SandboxRecord; created: boolean; etag: string }>> {
    const v = this.#validateSandbox(id, body, 'api');
    if (!v.ok) return v;
    const failed = failedPrecondition(cond, this.etagOf('sandbox', id), `sandbox ${quote(id)}`);
    if (failed) return failed;
    const created = !this.#records.has(id);
    const before = this.#records.get(id);
    // A reload cannot hand out what this change takes while it writes: reloads are serialized with changes.
    await this.#write('put', 'sandbox', id, actor, bodyOf(v.value.record as unknown as Record<string, unknown>));
    this.#apply(v.value.record, v.value.network);
    this.#emit({ source: 'api', action: 'put', kind: 'sandbox', id, actor, before: digestOf(before), after: digestOf(v.value.record) });
    // The tag of what this change wrote, read inside its serialized section: a later change cannot slip in.
    return { ok: true, value: { record: v.value.record, created, etag: this.etagOf('sandbox', id)! } };
  }

  /**
   * Replaces only the network of an existing sandbox (the sandbox0 route). The rest of the
   * sandbox is read inside the serialized section: a change queued before this one (a DELETE,
   * a PUT that moved its sources or organization) is kept, not undone by a stale copy.
   */
  putNetwork(
    id: string,
    network: unknown,
    actor = 'api',
    cond?: Preconditions,
  ): Promise<ChangeResult<{ record: SandboxRecord; created: boolean; etag: string }>> {
    return this.#change('put', 'sandbox', id, actor, async () => {
      const r = this.#records.get(id);
      if (!r) return notFound(`Sandbox ${quote(id)} does not exist`);
      const body = {
        sources: r.sources,
        ...(r.org !== null ? { org: r.org } : {}),
        ...(r.limits ? { limits: r.limits } : {}),
        ...(r.reportOnly !== undefined ? { reportOnly: r.reportOnly } : {}),
        network,
      };
      return this.#putSandbox(id, body, actor, cond);
    });
  }

  /** Deletes a sandbox; the value is what was deleted (null: an entry stored by another process and refused here, see #inWrite). */
  deleteSandbox(id: string, actor = 'api', cond?: Preconditions): Promise<ChangeResult<SandboxRecord | null>> {
    return this.#change('delete', 'sandbox', id, actor, async () => {
      const r = this.#records.get(id);
      if (!r && this.#repairing === `sandbox:${id}`) {
        // Stored by another process and refused here: only the row goes, nothing in memory held it.
        await this.#write('delete', 'sandbox', id, actor, null);
        return { ok: true, value: null };
      }
      if (!r) return notFound(`Sandbox ${quote(id)} does not exist`);
      const failed = failedPrecondition(cond, this.etagOf('sandbox', id), `sandbox ${quote(id)}`);
      if (failed) return failed;
      if (r.origin === 'config') return conflict(`Sandbox ${quote(id)} comes from the config file; the API cannot delete it`);
      await this.#write('delete', 'sandbox', id, actor, null);
      this.#records.delete(id);
      this.store.removeSandbox(id);
      this.#emit({ source: 'api', action: 'delete', kind: 'sandbox', id, actor, before: digestOf(r), after: null });
      return { ok: true, value: r };
    });
  }

  #validateOrg(id: string, body: unknown): ChangeResult<{ record: OrgRecord; def: OrgDefinition }> {
    const issues = new CappedIssues();
    check(OrgId, id, 'id', issues);
    if (!check(OrgBody, body, '', issues) && !isPlainObject(body)) return invalid(issues.result());
    const b = body as Record<string, unknown>;
    if (b['tier'] === undefined && b['network'] === undefined) issues.add('tier', 'Expected "tier" or "network"');
    if (b['tier'] !== undefined && b['network'] !== undefined) issues.add('network', 'Give either "tier" or "network", not both');
    let network: DialectResult | null = null;
    if (b['network'] !== undefined) {
      const n = parseNetwork(b['network'], 'network');
      if (!n.ok) for (const i of n.issues) issues.add(i.field, i.reason);
      else network = n.value;
    }
    if (!issues.ok) return invalid(issues.result());
    const t = (b['tier'] ?? null) as Tier | null;
    const limits = b['limits'] as LimitsOverride | null | undefined;
    const reportOnly = b['reportOnly'] as boolean | undefined;
    const record: OrgRecord = {
      id,
      tier: t,
      network: b['network'] ?? null,
      ...(limits ? { limits: Object.freeze({ ...limits }) } : {}),
      ...(reportOnly !== undefined ? { reportOnly } : {}),
    };
    return { ok: true, value: { record, def: { id, tier: t, network, reportOnly: reportOnly === true } } };
  }

  #applyOrg(record: OrgRecord, def: OrgDefinition): void {
    this.store.putOrg(def);
    this.#orgs.set(record.id, record);
  }

  putOrg(id: string, body: unknown, actor = 'api', cond?: Preconditions): Promise<ChangeResult<{ record: OrgRecord; created: boolean; etag: string }>> {
    return this.#change('put', 'org', id, actor, async () => {
      const v = this.#validateOrg(id, body);
      if (!v.ok) return v;
      const failed = failedPrecondition(cond, this.etagOf('org', id), `organization ${quote(id)}`);
      if (failed) return failed;
      const before = this.#orgs.get(id);
      await this.#write('put', 'org', id, actor, bodyOf(v.value.record as unknown as Record<string, unknown>));
      this.#applyOrg(v.value.record, v.value.def);
      this.#emit({ source: 'api', action: 'put', kind: 'org', id, actor, before: digestOf(before), after: digestOf(v.value.record) });
      return { ok: true, value: { record: v.value.record, created: before === undefined, etag: this.etagOf('org', id)! } };
    });
  }

  /** Deletes an organization; the value is what was deleted (null: an entry stored by another process and refused here, see #inWrite). */
  deleteOrg(id: string, actor = 'api', cond?: Preconditions): Promise<ChangeResult<OrgRecord | null>> {
    return this.#change('delete', 'org', id, actor, async () => {
      const r = this.#orgs.get(id);
      if (!r && this.#repairing === `org:${id}`) {
        await this.#write('delete', 'org', id, actor, null);
        return { ok: true, value: null };
      }
      if (!r) return notFound(`Organization ${quote(id)} does not exist`);
      const failed = failedPrecondition(cond, this.etagOf('org', id), `organization ${quote(id)}`);
      if (failed) return failed;
      const user = [...this.#records.values()].find((s) => s.org === id);
      if (user) return conflict(`Organization ${quote(id)} still has sandbox ${quote(user.id)}`);
      const theirs = this.#others.find((o) => o.org === id);
      if (theirs) {
        return conflict(
          `Organization ${quote(id)} still has sandbox ${quote(theirs.sandbox)} in the config file of another egressd process on the state (pid ${theirs.pid})`,
        );
      }
      await this.#write('delete', 'org', id, actor, null);
      this.#orgs.delete(id);
      this.store.removeOrg(id);
      this.#emit({ source: 'api', action: 'delete', kind: 'org', id, actor, before: digestOf(r), after: null });
      return { ok: true, value: r };
    });
  }
}

/** A sandbox another process wrote that this one refused (the state stands rejected): its id and canonical sources. */
interface PendingSandbox {
  readonly id: string;
  readonly sources: readonly string[];
}

/** The sandboxes `c` puts, as far as their stored bodies give sources (a body beyond reading gives none). */
function refusedSandboxes(c: StateChanges): PendingSandbox[] {
  const out: PendingSandbox[] = [];
  for (const row of c.upserts) {
    if (row.kind !== 'sandbox') continue;
    const parsed = storedBody(row.kind, row.id, row.type, row.body);
    const raw = parsed.ok && Array.isArray(parsed.body['sources']) ? (parsed.body['sources'] as unknown[]) : [];
    const sources = raw.flatMap((t) => {
      const k = typeof t === 'string' ? sandboxSource(t) : null;
      return k?.ok === true ? [k.source] : [];
    });
    out.push({ id: row.id, sources });
  }
  return out;
}

/** What config_claims records of a process's config sandboxes. */
const claimsOf = (records: readonly SandboxRecord[]): ConfigClaim[] => records.map((r) => ({ sandbox: r.id, sources: r.sources, org: r.org }));

/** Why a source another live process's config file gives out cannot be given here. */
const claimedReason = (source: string, other: OtherClaim): string =>
  `Source ${quote(source)} belongs to config sandbox ${quote(other.sandbox)} of another egressd process's config file (pid ${other.pid}, on the same state)`;

/** A refused entry's problems, named after the entry. */
function issuesOf(entry: string, e: ChangeError): StateIssue[] {
  if (e.kind === 'invalid') return e.issues.map((i) => ({ entry, field: i.field, reason: i.reason }));
  return [{ entry, field: e.kind === 'conflict' ? (e.field ?? '') : '', reason: e.message }];
}

function parseNetworkOrThrow(network: unknown): DialectResult {
  const r = parseNetworkBody(network);
  if (!r.ok) throw new Error(`Invalid network: ${r.issues.map((i) => `${i.field}: ${i.reason}`).join('; ')}`);
  return r.value;
}
