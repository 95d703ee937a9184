// Several processes on one SQLite state (docs/config.md "Several processes on one state"), with
// two stores on one real file: what one commits, the other lists and applies; revisions come
// from the database; changes not accepted are listed again; a view that is not whole is never
// applied, and changes are refused while it stands.

import { existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { ControlPlane, type ChangeEvent, type SandboxRecord } from '../../../src/control/control-plane.ts';
import { StateStore } from '../../../src/control/state-store.ts';
import { instanceLockPath, lockOffset } from '../../../src/control/state-writer.ts';
import { PolicyStore } from '../../../src/control/store.ts';
import { StateInvalidError, StateRejectedError, StateWriteError } from '../../../src/errors.ts';

const EMPTY = { domains: [], cidrs: [], ports: [] };
const LOCK_ADDON = resolve(import.meta.dirname, '../../../native/build/instance_lock.node');

let dir: string;
let path: string;
const closing: { close(): Promise<void> }[] = [];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'egressd-shared-'));
  path = join(dir, 'state.db');
});
afterEach(async () => {
  for (const c of closing.splice(0)) await c.close();
  rmSync(dir, { recursive: true, force: true });
});

async function store(): Promise<StateStore> {
  const s = new StateStore(path);
  closing.push(s);
  s.read();
  await s.commit();
  return s;
}

async function plane(state = new StateStore(path), config: readonly SandboxRecord[] = []): Promise<ControlPlane> {
  const policies = new PolicyStore(
    { protected: { extra: [], except: [], nat64Prefixes: [] }, catalog: [], dnsServers: [] },
    { dialect: 'sandbox0', policy: { mode: 'block-all', allow: EMPTY, deny: EMPTY }, essentialServices: false, dnsServersAllowed: false },
  );
  const cp = new ControlPlane(policies, state);
  closing.push(cp);
  await cp.load(config);
  return cp;
}

const put = async (s: StateStore, kind: 'sandbox' | 'org', id: string, body: Record<string, unknown>): Promise<number> => {
  await s.begin();
  return s.put(kind, id, body);
};

/** A stored body's bytes, as a store lists them. */
const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

/** Writes behind the stores' back, as another program would: one transaction. */
function sneak(sql: string, ...params: (string | number)[]): void {
  const db = new DatabaseSync(path);
  try {
    db.exec('BEGIN IMMEDIATE');
    // Several statements (exec) or one with parameters.
    if (params.length === 0) db.exec(sql);
    else db.prepare(sql).run(...params);
    db.exec("UPDATE meta SET value = value + 1 WHERE key = 'revision'; COMMIT");
  } finally {
    db.close();
  }
}

describe('two stores on one state', () => {
  it('list what the other committed, once accepted no more; a change not accepted is listed again at the next write', async () => {
    const [a, b] = [await store(), await store()];
    expect(await b.changes()).toBeNull();
    const r1 = await put(a, 'sandbox', 'sb-1', { sources: ['198.18.0.1'] });
    const seen = await b.changes();
    expect(seen).toEqual({
      schema: 3,
      upserts: [{ kind: 'sandbox', id: 'sb-1', revision: r1, type: 'text', body: bytes('{"sources":["198.18.0.1"]}') }],
      deletes: [],
    });
    await b.accept();
    expect(await b.changes()).toBeNull();

    await a.begin();
    await a.delete('sandbox', 'sb-1');
    const inWrite = await b.begin();
    expect(inWrite).toEqual({ schema: 3, upserts: [], deletes: [{ kind: 'sandbox', id: 'sb-1' }] });
    await b.rollback();
    // Not accepted: a read lists nothing new (nobody committed since), a write lists it again.
    expect(await b.changes()).toBeNull();
    expect(await b.begin()).toEqual(inWrite);
    await b.rollback();
  });

  it('list a deletion and an addition made in one transaction, and an update, and nothing else', async () => {
    const [a, b] = [await store(), await store()];
    for (let i = 0; i < 5; i++) await put(a, 'sandbox', `sb-${i}`, { sources: [`198.18.0.${i + 1}`] });
    await b.changes();
    await b.accept();
    // As many rows as before: only the listing of every key tells the deletion.
    sneak("DELETE FROM entries WHERE id = 'sb-1'");
    sneak("INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'sb-new', 9, '{}')");
    expect(await b.changes()).toEqual({
      schema: 3,
      upserts: [{ kind: 'sandbox', id: 'sb-new', revision: 9, type: 'text', body: bytes('{}') }],
      deletes: [{ kind: 'sandbox', id: 'sb-1' }],
    });
    await b.accept();
    const r = await put(a, 'sandbox', 'sb-3', { sources: ['198.18.0.33'] });
    expect(await b.changes()).toEqual({
      schema: 3,
      upserts: [{ kind: 'sandbox', id: 'sb-3', revision: r, type: 'text', body: bytes('{"sources":["198.18.0.33"]}') }],
      deletes: [],
    });
    await b.accept();
    expect(await b.changes()).toBeNull();
  });

  it('a row written by hand must take a new revision: the database refuses one that could go unseen, and follows one that does', async () => {
    const [a, b] = [await store(), await store()];
    for (let i = 0; i < 5; i++) await put(a, 'sandbox', `sb-${i}`, { sources: [`198.18.0.${i + 1}`] });
    await b.changes();
    await b.accept();
    // Before: each was committed, and b listed nothing (same count, same sum of revisions, no
    // row past the newest it held): b served the old entries until it restarted.
    expect(() => sneak("UPDATE entries SET body = '{\"sources\":[]}' WHERE id = 'sb-4'")).toThrow(/needs a revision above meta.revision/);
    expect(() => sneak("DELETE FROM entries WHERE id = 'sb-2'; INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'sb-new', 3, '{}')")).toThrow(
      /needs a revision above meta.revision/,
    );
    // A writer that does not follow the others (an egressd of schema 1) reusing a free revision
    // below the newest.
    expect(() => sneak("UPDATE entries SET revision = 2, body = '{\"sources\":[]}' WHERE id = 'sb-4'")).toThrow(/needs a revision above/);
    expect(() => sneak("UPDATE meta SET value = 1 WHERE key = 'revision'")).toThrow(/never goes back/);
    expect(await b.changes()).toBeNull();
    // As docs/config.md says to: the next revision, in the same statement.
    sneak("UPDATE entries SET body = '{\"sources\":[]}', revision = (SELECT value FROM meta WHERE key = 'revision') + 1 WHERE id = 'sb-4'");
    const c = await b.changes();
    expect(c?.upserts).toEqual([{ kind: 'sandbox', id: 'sb-4', revision: expect.any(Number), type: 'text', body: bytes('{"sources":[]}') }]);
    // meta.revision followed the row: the next revision egressd hands out is past it.
    await b.accept();
    expect(await put(a, 'sandbox', 'sb-9', { sources: ['198.18.0.9'] })).toBeGreaterThan(c!.upserts[0]!.revision);
  });

  it('take the next revision from the database, whoever wrote the last', async () => {
    const [a, b] = [await store(), await store()];
    const r1 = await put(a, 'sandbox', 'sb-1', { sources: ['198.18.0.1'] });
    const r2 = await put(a, 'sandbox', 'sb-2', { sources: ['198.18.0.2'] });
    // b has written nothing and read nothing since its start: before, it handed out 1 again.
    const r3 = await put(b, 'sandbox', 'sb-3', { sources: ['198.18.0.3'] });
    expect([r1, r2, r3]).toEqual([1, 2, 3]);
    await a.begin();
    expect(await a.delete('sandbox', 'sb-2')).toBe(4);
    expect(await put(b, 'org', 'acme', { tier: 3 })).toBe(5);
  });

  it("are told of the other's commit without asking", async () => {
    const [a, b] = [await store(), await store()];
    const told = new Promise<void>((resolve) => b.onChanged(resolve));
    await put(a, 'sandbox', 'sb-1', { sources: ['198.18.0.1'] });
    await expect(Promise.race([told.then(() => 'told'), new Promise((r) => setTimeout(r, 3000, 'not told'))])).resolves.toBe('told');
  });

  it.each([1, 2])('a schema-%i state (no config_claims) is read, and marked schema 3 with the table once opened for writing', async (old) => {
    await store();
    for (const c of closing.splice(0)) await c.close();
    const db = new DatabaseSync(path);
    db.exec(`DROP TABLE config_claims; UPDATE meta SET value = ${old} WHERE key = 'schema'`);
    db.close();
    await store();
    const check = new DatabaseSync(path, { readOnly: true });
    expect(check.prepare("SELECT value FROM meta WHERE key = 'schema'").get()).toEqual({ value: 3 });
    expect(check.prepare("SELECT count(*) AS n FROM sqlite_schema WHERE type = 'table' AND name = 'config_claims'").get()).toEqual({ n: 1 });
    check.close();
  });
});

describe('two control planes on one state', () => {
  it("apply the other's changes as a whole view: a source moved through several changes is no conflict", async () => {
    const [a, b] = [await plane(), await plane()];
    expect((await a.putSandbox('x', { sources: ['198.18.0.1'] })).ok).toBe(true);
    await b.refresh();
    const events: ChangeEvent[] = [];
    b.onChange((e) => events.push(e));
    // In one transaction, so that b lists it at once: x gives its source to y (revision 2), then
    // changes again (3). Applied one revision at a time, y would meet x's first version still
    // holding the source.
    const db = new DatabaseSync(path);
    db.exec('BEGIN IMMEDIATE');
    db.prepare("INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'y', 2, ?)").run(JSON.stringify({ sources: ['198.18.0.1'] }));
    db.prepare("UPDATE entries SET revision = 3, body = ? WHERE kind = 'sandbox' AND id = 'x'").run(JSON.stringify({ sources: ['198.18.0.9'] }));
    db.exec("UPDATE meta SET value = 3 WHERE key = 'revision'; COMMIT");
    db.close();
    await b.refresh();
    expect(b.rejected).toBeNull();
    expect(b.store.ownerOf('198.18.0.1')).toBe('y');
    expect(b.store.ownerOf('198.18.0.9')).toBe('x');
    expect(events.map((e) => `${e.source} ${e.action} ${e.id}`).sort()).toEqual(['state put x', 'state put y']);
    // One revision sequence, one entity tag per entry.
    await a.refresh();
    expect(b.etagOf('sandbox', 'x')).toBe(a.etagOf('sandbox', 'x'));
    expect(b.etagOf('sandbox', 'x')).toMatch(/^"3-/);
  });

  it('validate a change against what the other committed first', async () => {
    const [a, b] = [await plane(), await plane()];
    expect((await a.putOrg('acme', { tier: 3 })).ok).toBe(true);
    expect((await a.putSandbox('x', { sources: ['198.18.0.1'] })).ok).toBe(true);
    // No refresh in between: the write itself reads what a committed.
    expect(await b.putSandbox('thief', { sources: ['198.18.0.1'] })).toMatchObject({ ok: false, error: { kind: 'conflict', field: 'sources[0]' } });
    expect((await b.putSandbox('member', { sources: ['198.18.0.2'], org: 'acme' })).ok).toBe(true);
    await a.refresh();
    expect(await a.deleteOrg('acme')).toMatchObject({ ok: false, error: { kind: 'conflict' } });
  });

  it('never apply a view that is not whole, refuse changes while it stands, and let a change of the entry at fault repair it', async () => {
    const [a, b] = [await plane(), await plane()];
    expect((await a.putSandbox('owner', { sources: ['198.18.0.1'] })).ok).toBe(true);
    await b.refresh();
    const reported: (readonly unknown[])[] = [];
    b.onStateRejected((e) => reported.push(e.issues));
    sneak("INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'thief', 50, ?)", JSON.stringify({ sources: ['198.18.0.1'] }));
    sneak("INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'fine', 52, ?)", JSON.stringify({ sources: ['198.18.0.5'] }));
    await b.refresh();
    await b.refresh();
    expect(b.rejected).toEqual([{ entry: 'sandbox "thief"', field: 'sources[0]', reason: 'Source "198.18.0.1" belongs to sandbox "owner"' }]);
    expect(reported).toHaveLength(1);
    // Nothing of it applied, not even the entry that is fine on its own.
    expect(b.sandbox('fine')).toBeUndefined();
    expect(b.store.ownerOf('198.18.0.1')).toBe('owner');
    await expect(b.putSandbox('other', { sources: ['198.18.0.7'] })).rejects.toBeInstanceOf(StateRejectedError);
    await expect(b.deleteSandbox('owner')).rejects.toBeInstanceOf(StateRejectedError);
    const db = new DatabaseSync(path, { readOnly: true });
    expect(
      db
        .prepare("SELECT id FROM entries WHERE kind = 'sandbox' ORDER BY id")
        .all()
        .map((r) => r['id']),
    ).toEqual(['fine', 'owner', 'thief']);
    db.close();

    // A change of the entry at fault may repair it, never repeat it: the rest is applied first.
    expect(await b.putSandbox('thief', { sources: ['198.18.0.1'] })).toMatchObject({ ok: false, error: { kind: 'conflict' } });
    expect(b.rejected).not.toBeNull();
    expect(await b.deleteSandbox('thief')).toEqual({ ok: true, value: null });
    expect(b.rejected).toBeNull();
    expect(reported.at(-1)).toEqual([]);
    expect(b.sandbox('fine')?.sources).toEqual(['198.18.0.5']);
    await a.refresh();
    expect(a.rejected).toBeNull();
    expect(a.sandbox('fine')?.sources).toEqual(['198.18.0.5']);
    expect((await b.putSandbox('other', { sources: ['198.18.0.7'] })).ok).toBe(true);
  });
});

describe("another program's body that is not strict JSON text", () => {
  // Each written by hand (sqlite3), as docs/config.md "Recovering the state" shows. Read leniently,
  // the first was served as allow-all (JSON.parse keeps the last of two keys), the second with
  // U+FFFD in its name; the third is no text at all.
  const cases: [string, string, RegExp][] = [
    [
      'a key given twice',
      `CAST('{"sources":["198.18.0.5"],"network":{"mode":"block-all","mode":"allow-all"}}' AS TEXT)`,
      /gives the key "network\.mode" more than once/,
    ],
    [
      'bytes that are not UTF-8',
      `CAST(X'7B22736F7572636573223A5B5D2C226F7267223A2262FC227D' AS TEXT)`,
      /not UTF-8: byte 0xFC \(offset 22, line 1, column 23\)/,
    ],
    ['a blob', `X'7B22736F7572636573223A5B5D7D'`, /is a SQLite blob, not JSON text/],
  ];
  it.each(cases)('%s: is never applied, and the state stands rejected naming the entry', async (_name, value, reason) => {
    const b = await plane();
    sneak(`INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'hand', 50, ${value})`);
    await b.refresh();
    expect(b.rejected).toEqual([{ entry: 'sandbox "hand"', field: '', reason: expect.stringMatching(reason) }]);
    expect(b.sandbox('hand')).toBeUndefined();
    expect(b.store.ownerOf('198.18.0.5')).toBeNull();
  });
});

describe("another program's row whose revision is text", () => {
  it('is never applied, and the state stands rejected naming the entry (it was read as revision NaN)', async () => {
    const b = await plane();
    // By hand, as sqlite3 would: the triggers take it (text sorts above every number).
    const db = new DatabaseSync(path);
    db.exec(`INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'hand', 'abc', '{"sources":["198.18.0.5"]}')`);
    db.close();
    await b.refresh();
    expect(b.rejected).toEqual([
      { entry: 'sandbox "hand"', field: 'revision', reason: 'Expected a positive integer, got a stored value that is not a number' },
    ]);
    expect(b.sandbox('hand')).toBeUndefined();
  });
});

describe("the others' changes a write finds", () => {
  it('are judged (their events) once its transaction ended: the write lock is free by then', async () => {
    const b = await plane();
    const lockFree: string[] = [];
    b.onChange((e) => {
      const db = new DatabaseSync(path);
      try {
        db.exec('PRAGMA busy_timeout = 0; BEGIN IMMEDIATE; ROLLBACK');
        lockFree.push(`${e.source} ${e.id} free`);
      } catch {
        lockFree.push(`${e.source} ${e.id} locked`);
      } finally {
        db.close();
      }
    });
    // Committed by another program, and b writes at once: its write finds x in its transaction.
    sneak(
      "INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'x', (SELECT value FROM meta WHERE key = 'revision') + 1, ?)",
      JSON.stringify({ sources: ['198.18.0.1'] }),
    );
    expect((await b.putSandbox('y', { sources: ['198.18.0.2'] })).ok).toBe(true);
    // Before: "state x locked": re-judging (and waiting for the data-plane loops) held the lock.
    expect(lockFree).toEqual(['state x free', 'api y free']);
  });
});

describe('a state rejected while another process keeps writing', () => {
  it('is checked again a few times a second, not at each commit, and followed once fixed', async () => {
    const stateStore = new StateStore(path);
    const b = await plane(stateStore);
    const a = await store();
    sneak(
      "INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'odd', 100, ?)",
      JSON.stringify({ sources: [], network: { mode: 'promiscuous' } }),
    );
    await b.refresh();
    expect(b.rejected).not.toBeNull();
    // Every listing of the changes since the rejection: counted through the state's changes().
    let listings = 0;
    const changes = stateStore.changes.bind(stateStore);
    stateStore.changes = () => (listings++, changes());
    // 40 commits, 20 ms apart (800 ms): before, each was listed and validated again.
    for (let i = 0; i < 40; i++) {
      await put(a, 'sandbox', `sb-${i}`, { sources: [`198.18.1.${i + 1}`] });
      await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(listings).toBeGreaterThan(0);
    expect(listings).toBeLessThanOrEqual(8);
    // Fixed by the other process: followed without a request, within the recheck period.
    await a.begin();
    await a.delete('sandbox', 'odd');
    for (let t = 0; t < 100 && b.rejected !== null; t++) await new Promise((r) => setTimeout(r, 20));
    expect(b.rejected).toBeNull();
    expect(b.sandbox('sb-39')?.sources).toEqual(['198.18.1.40']);
  });
});

describe('a state fixed behind the processes back', () => {
  it('is followed again', async () => {
    const b = await plane();
    expect((await b.putSandbox('owner', { sources: ['198.18.0.1'] })).ok).toBe(true);
    sneak("INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'thief', 50, ?)", JSON.stringify({ sources: ['198.18.0.1'] }));
    await b.refresh();
    expect(b.rejected).not.toBeNull();
    sneak("DELETE FROM entries WHERE kind = 'sandbox' AND id = 'thief'");
    await b.refresh();
    expect(b.rejected).toBeNull();
    expect((await b.putSandbox('other', { sources: ['198.18.0.7'] })).ok).toBe(true);
  });
});

describe("the config files' sandboxes of the processes on one state (config_claims)", () => {
  const config = (id: string, source: string, org: string | null = null): SandboxRecord => ({
    id,
    sources: [source],
    org,
    network: { mode: 'allow-all' },
    origin: 'config',
  });
  const claims = (): unknown[] => {
    const db = new DatabaseSync(path, { readOnly: true });
    try {
      return db.prepare('SELECT pid, sandbox, sources FROM config_claims ORDER BY sandbox').all();
    } finally {
      db.close();
    }
  };

  it("refuse an API change or a reload of another process that takes a source or id one's config file holds; the same sandbox on the same source is taken", async () => {
    const a = await plane(new StateStore(path), [config('cfg-a', '198.18.0.1')]);
    const b = await plane();
    // Before: 201, and a, following it, rejected the whole state (and could not start again).
    const thief = await b.putSandbox('thief', { sources: ['198.18.0.1'] });
    expect(thief).toMatchObject({ ok: false, error: { kind: 'conflict', field: 'sources[0]' } });
    expect(!thief.ok && thief.error.kind === 'conflict' && thief.error.message).toMatch(
      /^Source "198.18.0.1" belongs to config sandbox "cfg-a" of another egressd process's config file \(pid \d+, on the same state\)$/,
    );
    const sameId = await b.putSandbox('cfg-a', { sources: ['198.18.0.9'] });
    expect(!sameId.ok && sameId.error.kind === 'conflict' && sameId.error.message).toMatch(
      /^Sandbox "cfg-a" comes from the config file of another egressd process/,
    );
    const reload = await b.replaceConfigSandboxes([config('other', '198.18.0.1')]);
    expect(reload).toMatchObject({ ok: false, error: { kind: 'invalid', issues: [{ field: 'sandboxes.other.sources' }] } });
    expect(b.sandbox('other')).toBeUndefined();
    // The rollout: both config files give the source to the same sandbox.
    expect((await b.replaceConfigSandboxes([config('cfg-a', '198.18.0.1')])).ok).toBe(true);
    expect(a.rejected).toBeNull();
    expect((await a.putSandbox('api-1', { sources: ['198.18.0.2'] })).ok).toBe(true);
    expect(claims()).toEqual([
      { pid: process.pid, sandbox: 'cfg-a', sources: '["198.18.0.1"]' },
      { pid: process.pid, sandbox: 'cfg-a', sources: '["198.18.0.1"]' },
    ]);
    // A clean close takes a's claims away; b's stay, and b's reload replaces them.
    await a.close();
    expect(claims()).toEqual([{ pid: process.pid, sandbox: 'cfg-a', sources: '["198.18.0.1"]' }]);
    expect((await b.replaceConfigSandboxes([])).ok).toBe(true);
    expect(claims()).toEqual([]);
    expect((await b.putSandbox('thief', { sources: ['198.18.0.1'] })).ok).toBe(true);
  });

  it("refuse a reload that gives out an API sandbox's source another process wrote a moment before, and a DELETE of an organization another's config names", async () => {
    const a = await plane(new StateStore(path), [config('cfg-a', '198.18.0.1')]);
    const b = await plane();
    expect((await b.putOrg('acme', { tier: 3 })).ok).toBe(true);
    expect((await b.putSandbox('api-1', { sources: ['198.18.0.5'] })).ok).toBe(true);
    // a has not followed yet (no refresh): the reload reads what was committed in its own transaction.
    const r = await a.replaceConfigSandboxes([config('cfg-a', '198.18.0.1', 'acme'), config('cfg-b', '198.18.0.5')]);
    expect(r).toMatchObject({
      ok: false,
      error: { kind: 'invalid', issues: [{ field: 'sandboxes.cfg-b.sources', reason: 'Source "198.18.0.5" belongs to API sandbox "api-1"' }] },
    });
    expect(a.sandbox('cfg-a')?.org).toBeNull();
    expect((await a.replaceConfigSandboxes([config('cfg-a', '198.18.0.1', 'acme')])).ok).toBe(true);
    const del = await b.deleteOrg('acme');
    expect(!del.ok && del.error.kind === 'conflict' && del.error.message).toMatch(
      /^Organization "acme" still has sandbox "cfg-a" in the config file of another egressd process/,
    );
    expect(a.rejected).toBeNull();
  });

  it("stop a start whose config file gives a source to another sandbox than a running process's does, naming it; the same sandbox starts", async () => {
    await plane(new StateStore(path), [config('cfg-a', '198.18.0.1')]);
    const refused = plane(new StateStore(path), [config('other', '198.18.0.1')]);
    await expect(refused).rejects.toBeInstanceOf(StateInvalidError);
    await expect(refused).rejects.toMatchObject({
      code: 'EGRESSD_ERR_STATE_INVALID',
      issues: [{ entry: 'config file', field: 'sandboxes.other.sources', reason: expect.stringContaining('belongs to config sandbox "cfg-a"') }],
    });
    expect((await plane(new StateStore(path), [config('cfg-a', '198.18.0.1')])).rejected).toBeNull();
  });

  it('ignore and delete the claims of an instance whose lock no process holds: gone, at a reused pid, of another boot or PID namespace', async () => {
    const b = await plane();
    const gone = spawnSync('true').pid;
    const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    const db = new DatabaseSync(path);
    const pidns = readlinkSync('/proc/self/ns/pid');
    const ins = db.prepare('INSERT INTO config_claims (instance, pid, started, boot, pidns, sandbox, org, sources) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)');
    ins.run('dead', gone, 1, boot, pidns, 'cfg-dead', '["198.18.0.1"]');
    // This very process's pid, which runs: the lock, not the pid, says whether the instance does.
    ins.run('reused', process.pid, 1, boot, pidns, 'cfg-reused', '["198.18.0.2"]');
    ins.run('rebooted', process.pid, 1, 'another-boot', pidns, 'cfg-rebooted', '["198.18.0.3"]');
    // Before: counted as "unseen", never deleted, and never blocking.
    ins.run('elsewhere', 1, 1, boot, 'pid:[1]', 'cfg-elsewhere', '["198.18.0.4"]');
    db.close();
    expect((await b.putSandbox('x', { sources: ['198.18.0.1', '198.18.0.2', '198.18.0.3', '198.18.0.4'] })).ok).toBe(true);
    expect(claims()).toEqual([]);
  });

  it('count the claims of an instance whose lock another process holds, whatever pid and PID namespace its rows name, until it dies', async () => {
    const b = await plane();
    const lockPath = instanceLockPath(path);
    // Another process, holding the instance's byte as an egressd does (native/instance_lock.c).
    const holder = spawn(
      process.execPath,
      [
        '-e',
        `require(${JSON.stringify(LOCK_ADDON)}).hold(${JSON.stringify(lockPath)}, 0o600, ${lockOffset('elsewhere')}); console.log('held'); setInterval(() => {}, 1000)`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    await once(holder.stdout!, 'data');
    const db = new DatabaseSync(path);
    db.prepare('INSERT INTO config_claims (instance, pid, started, boot, pidns, sandbox, org, sources) VALUES (?, 1, 1, ?, ?, ?, NULL, ?)').run(
      'elsewhere',
      'another-boot',
      'pid:[1]',
      'cfg-elsewhere',
      '["198.18.0.4"]',
    );
    db.close();
    // Before: taken (a claim of another PID namespace was not counted).
    const refused = await b.putSandbox('x', { sources: ['198.18.0.4'] });
    expect(!refused.ok && refused.error).toMatchObject({ kind: 'conflict', field: 'sources[0]' });
    holder.kill('SIGKILL');
    await once(holder, 'exit');
    expect((await b.putSandbox('x', { sources: ['198.18.0.4'] })).ok).toBe(true);
    expect(claims()).toEqual([]);
  });

  // Hand-edited rows of a process that runs: read as "no source" (as before), cfg-a's source was
  // handed to the API's "thief" while a's config file gave it out.
  it.each([
    ['not JSON', '198.18.0.1'],
    ['not a list', '{"0":"198.18.0.1"}'],
    ['a list of other than addresses', '["198.18.0.1",5]'],
  ])("refuse every change while a live process's claim holds sources that are %s, naming the row", async (_name, sources) => {
    const a = await plane(new StateStore(path), [config('cfg-a', '198.18.0.1')]);
    const b = await plane();
    const db = new DatabaseSync(path);
    db.prepare("UPDATE config_claims SET sources = ? WHERE sandbox = 'cfg-a'").run(sources);
    db.close();
    const err = await b.putSandbox('thief', { sources: ['198.18.0.1'] }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(StateWriteError);
    expect((err as StateWriteError).message).toMatch(
      new RegExp(
        `^Cannot write the state ".*": EINVAL \\(the config_claims row of pid ${process.pid} \\(instance "[^"]+", sandbox "cfg-a"\\) holds sources that are not a JSON list of addresses`,
      ),
    );
    expect(b.sandbox('thief')).toBeUndefined();
    // Its process writes its claims again at a reload, and changes are taken again.
    expect((await a.replaceConfigSandboxes([config('cfg-a', '198.18.0.1')])).ok).toBe(true);
    expect(await b.putSandbox('thief', { sources: ['198.18.0.1'] })).toMatchObject({ ok: false, error: { kind: 'conflict', field: 'sources[0]' } });
  });

  it('stop a start that cannot lock the instance lock file, naming it: no other process could see its claims', async () => {
    mkdirSync(instanceLockPath(path));
    const refused = plane();
    await expect(refused).rejects.toBeInstanceOf(StateInvalidError);
    await expect(refused).rejects.toMatchObject({
      issues: [{ reason: expect.stringContaining(`EISDIR (the instance lock file ${JSON.stringify(instanceLockPath(path))}`) }],
    });
  });

  it('while the state stands rejected, a reload that removes the conflict makes it whole at once', async () => {
    const a = await plane(new StateStore(path), [config('cfg-a', '198.18.0.1')]);
    sneak("INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'thief', 50, ?)", JSON.stringify({ sources: ['198.18.0.1'] }));
    sneak("INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'fine', 52, ?)", JSON.stringify({ sources: ['198.18.0.5'] }));
    await a.refresh();
    expect(a.rejected).not.toBeNull();
    expect((await a.replaceConfigSandboxes([])).ok).toBe(true);
    // Before: still rejected, thief and fine unknown, until another change came by.
    expect(a.rejected).toBeNull();
    expect(a.store.ownerOf('198.18.0.1')).toBe('thief');
    expect(a.sandbox('fine')?.sources).toEqual(['198.18.0.5']);
  });

  it('while the state stands rejected, a reload may not give out a source a refused entry holds: the state would stay rejected once fixed', async () => {
    const a = await plane();
    sneak(
      "INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'bad', 50, ?)",
      JSON.stringify({ sources: ['198.18.0.9'], network: { mode: 'nope' } }),
    );
    sneak("INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'x', 52, ?)", JSON.stringify({ sources: ['198.18.0.7'] }));
    await a.refresh();
    expect(a.rejected).not.toBeNull();
    const r = await a.replaceConfigSandboxes([config('cfg-new', '198.18.0.7')]);
    // Before: reloaded; once "bad" was fixed, x and cfg-new held one source and the state stayed rejected.
    expect(r).toMatchObject({
      ok: false,
      error: { kind: 'invalid', issues: [{ field: 'sandboxes.cfg-new.sources', reason: expect.stringContaining('"x"') }] },
    });
    // A reload that gives out no such source is taken meanwhile.
    expect((await a.replaceConfigSandboxes([config('cfg-new', '198.18.0.8')])).ok).toBe(true);
    sneak("DELETE FROM entries WHERE id = 'bad'");
    await a.refresh();
    expect(a.rejected).toBeNull();
    expect(a.store.ownerOf('198.18.0.7')).toBe('x');
  });

  it('keep the instance lock file while any process has the state open, and remove it with the last clean close', async () => {
    const [a, b] = [await plane(), await plane()];
    expect(existsSync(instanceLockPath(path))).toBe(true);
    await a.close();
    // b's lock is on that file: one made anew would not show it to a process starting now.
    expect(existsSync(instanceLockPath(path))).toBe(true);
    await b.close();
    expect(existsSync(instanceLockPath(path))).toBe(false);
  });
});
