// Two egressd processes on one state file, as in a rollout (docs/deployment.md: a new egressd
// starts beside one that drains, and SO_REUSEPORT shares the API between them): a change either
// acknowledges is in force in the other, revisions and entity tags stay one sequence, a source
// one holds is refused by the other, and what one process cannot accept (written behind its
// back) is refused loudly, never applied and never written over.

import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DatabaseSync } from 'node:sqlite';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { adminCall, bearer } from '../helpers/admin-api.ts';
import { loopbackDocument, writeConfig } from '../helpers/config-file.ts';
import { watchDaemon, type DaemonProcess } from '../helpers/daemon-process.ts';
import { action, field } from '../helpers/log-line.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const TOKEN = 't';
const running: DaemonProcess[] = [];
let dir = '';
let statePath = '';
beforeEach(() => {
  dir = mkdtempSync('/dev/shm/egressd-shared-');
  statePath = join(dir, 'state.db');
});
afterEach(async () => {
  for (const d of running.splice(0)) await d.stop('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

/** The config file of the process named `name` (its own folder): its sandboxes, on the state. */
function configFile(name: string, sandboxes: readonly unknown[]): string {
  // 198.18.0.0/15 (RFC 2544, protected by default) stands in for the internet in /check.
  const doc = { shutdown: { drainMs: 0 }, state: { path: statePath }, protected: { except: ['198.18.0.0/15'] }, sandboxes };
  const folder = join(dir, name);
  mkdirSync(folder, { recursive: true });
  return writeConfig(folder, loopbackDocument(doc, { token: TOKEN }));
}

/**
 * Starts egressd on the state; `shell`: a shell command run first, in the process that becomes
 * egressd (with `unshare`); `name`: its config file's folder (processes of one name share it);
 * `sandboxes`: its config file's.
 */
async function start(
  opts: { unshare?: string[]; shell?: string; name?: string; sandboxes?: readonly unknown[] } = {},
): Promise<{ d: DaemonProcess; admin: string }> {
  const config = configFile(opts.name ?? 'egressd', opts.sandboxes ?? []);
  const argv = [join(ROOT, 'node_modules/.bin/node'), join(ROOT, 'src/main.ts'), 'serve', '--config', config];
  const child =
    opts.unshare === undefined
      ? spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn('unshare', [...opts.unshare, 'sh', '-c', `${opts.shell ?? 'true'} && exec "$@"`, 'sh', ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  const d = await watchDaemon(child);
  running.push(d);
  return { d, admin: `http://127.0.0.1:${d.lines.find((l) => action(l) === 'started')!['adminPort']}` };
}

const call = (admin: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
  adminCall(admin, method, path, body, { ...bearer(TOKEN), ...headers });

const allowing = (domain: string) => ({ mode: 'block-all', egress: { allowed_domains: [domain] } });

/** A change another process's API acknowledged, seen by `d` without anyone asking it (its log). */
const followed = (d: DaemonProcess, id: string, act: 'put' | 'delete') =>
  d.waitFor((l) => action(l) === 'policy-change' && field(l, 'event.provider') === 'state' && l['id'] === id && l['action'] === act, 5000);

/** The metrics page as text (adminCall parses JSON). */
async function metricsText(admin: string): Promise<string> {
  const res = await fetch(`${admin}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
  return res.text();
}

it('a change acknowledged by one of two processes on one state is in force in the other', async () => {
  const [a, b] = [await start(), await start()];
  expect((await call(a.admin, 'PUT', '/api/v1/sandboxes/on-a', { sources: ['198.18.0.1'] })).status).toBe(201);
  // Before: 503 state_write_failed "EIO (constraint failed)": both processes handed out revision 1.
  expect((await call(b.admin, 'PUT', '/api/v1/sandboxes/on-b', { sources: ['198.18.0.2'] })).status).toBe(201);
  // Before: 404. B never read what A wrote.
  expect((await call(b.admin, 'GET', '/api/v1/sandboxes/on-a')).status).toBe(200);
  // Before: 201. B handed A's source to another sandbox, and neither process could start again.
  const thief = await call(b.admin, 'PUT', '/api/v1/sandboxes/thief', { sources: ['198.18.0.1'] });
  expect(thief.status).toBe(409);
  expect(thief.body.error).toMatchObject({ code: 'conflict', field: 'sources[0]' });
  expect((await call(a.admin, 'GET', '/api/v1/sandboxes/on-b')).status).toBe(200);

  // One revision sequence: each process's entity tag of an entry is the same, and a tag from one
  // is a precondition the other honours.
  const tagA = (await call(a.admin, 'GET', '/api/v1/sandboxes/on-b')).headers['etag'];
  const tagB = (await call(b.admin, 'GET', '/api/v1/sandboxes/on-b')).headers['etag'];
  expect(tagA).toBe(tagB);
  const moved = await call(
    a.admin,
    'PUT',
    '/api/v1/sandboxes/on-b',
    { sources: ['198.18.0.2'], network: allowing('x.example.test') },
    { 'if-match': String(tagB) },
  );
  expect(moved.status).toBe(200);
  const stale = await call(b.admin, 'PUT', '/api/v1/sandboxes/on-b', { sources: ['198.18.0.2'] }, { 'if-match': String(tagB) });
  expect(stale.status).toBe(412);
  expect(stale.headers['etag']).toBe(moved.headers['etag']);

  // Both restart on what they wrote together.
  for (const d of running.splice(0)) await d.stop('SIGTERM');
  const c = await start();
  const list = await call(c.admin, 'GET', '/api/v1/sandboxes');
  expect(list.body.sandboxes.map((s: { id: string }) => s.id)).toEqual(['on-a', 'on-b']);
});

it('a DELETE or a narrowing on one process is in force in the other, without a request to it', async () => {
  const [a, b] = [await start(), await start()];
  expect((await call(a.admin, 'PUT', '/api/v1/sandboxes/sb', { sources: ['198.18.0.5'], network: allowing('a.example.test') })).status).toBe(201);
  await followed(b.d, 'sb', 'put');
  const check = (admin: string) => call(admin, 'POST', '/api/v1/check', { sandbox: 'sb', host: 'a.example.test', ip: '198.18.1.2', port: 443 });
  expect((await check(b.admin)).body.verdict).toBe('allow');

  // Narrowed on A: B re-judges (its policy-change line, which closes what the new policy refuses).
  expect((await call(a.admin, 'PUT', '/api/v1/sandboxes/sb', { sources: ['198.18.0.5'], network: allowing('b.example.test') })).status).toBe(200);
  const narrowed = await followed(b.d, 'sb', 'put');
  expect(narrowed['after']).not.toBe(narrowed['before']);
  expect((await check(b.admin)).body.verdict).toBe('refuse');

  expect((await call(a.admin, 'DELETE', '/api/v1/sandboxes/sb')).status).toBe(204);
  await followed(b.d, 'sb', 'delete');
  expect((await call(b.admin, 'GET', '/api/v1/sandboxes/sb')).status).toBe(404);
  expect((await check(b.admin)).status).toBe(404);
  // The source is free again, on either process.
  expect((await call(b.admin, 'PUT', '/api/v1/sandboxes/sb2', { sources: ['198.18.0.5'] })).status).toBe(201);
});

it('interleaved writes to both (50 each, concurrently) lose none, and both views equal a fresh process view of the file', async () => {
  const [a, b] = [await start(), await start()];
  expect((await call(a.admin, 'PUT', '/api/v1/orgs/acme', { tier: 3 })).status).toBe(201);
  const N = 50;
  // Each process writes its own sandboxes and, in turns, one both write (last writer wins, and
  // its write must be the one stored); every request must be acknowledged.
  const writes = (p: { admin: string }, side: string) =>
    Promise.all(
      Array.from({ length: N }, async (_, i) => {
        const own = await call(p.admin, 'PUT', `/api/v1/sandboxes/${side}-${i}`, {
          sources: [`198.18.${side === 'a' ? 1 : 2}.${i + 1}`],
          org: 'acme',
          network: allowing(`${side}${i}.example.test`),
        });
        const shared = await call(p.admin, 'PUT', '/api/v1/sandboxes/both', { sources: ['198.18.3.1'], network: allowing(`${side}${i}.example.test`) });
        return [own.status, shared.status];
      }),
    );
  const [ra, rb] = await Promise.all([writes(a, 'a'), writes(b, 'b')]);
  expect(ra.flat().filter((s) => s !== 200 && s !== 201)).toEqual([]);
  expect(rb.flat().filter((s) => s !== 200 && s !== 201)).toEqual([]);
  // Deletes from both sides too: every fifth of the other's.
  for (let i = 0; i < N; i += 5) {
    expect((await call(a.admin, 'DELETE', `/api/v1/sandboxes/b-${i}`)).status).toBe(204);
    expect((await call(b.admin, 'DELETE', `/api/v1/sandboxes/a-${i}`)).status).toBe(204);
  }

  const view = async (admin: string) => {
    const list = await call(admin, 'GET', '/api/v1/sandboxes?limit=1000');
    const tags = await Promise.all(
      list.body.sandboxes.map(async (s: { id: string }) => (await call(admin, 'GET', `/api/v1/sandboxes/${s.id}`)).headers['etag']),
    );
    return { sandboxes: list.body.sandboxes, tags };
  };
  const c = await start();
  const fresh = await view(c.admin);
  expect(fresh.sandboxes).toHaveLength(2 * N - 2 * (N / 5) + 1);
  expect(await view(a.admin)).toEqual(fresh);
  expect(await view(b.admin)).toEqual(fresh);
  // Revisions are one sequence: no tag's revision is handed out twice.
  const revisions = fresh.tags.map((t: string) => t.slice(1, t.indexOf('-')));
  expect(new Set(revisions).size).toBe(revisions.length);
}, 60_000);

it('while another process holds the write lock, every queued change is answered 503 within the busy timeout, and reads are not held longer', async () => {
  const a = await start();
  expect((await call(a.admin, 'PUT', '/api/v1/sandboxes/s0', { sources: ['198.18.0.9'] })).status).toBe(201);
  // A process stopped inside its change (SIGSTOP, a sqlite3 session left in BEGIN IMMEDIATE) holds
  // the lock; here for 4.5 s, more than twice the 2 s busy timeout.
  const holder = new DatabaseSync(statePath);
  holder.exec('BEGIN IMMEDIATE');
  let released = false;
  const release = setTimeout(() => {
    released = true;
    holder.exec('ROLLBACK');
  }, 4500);
  try {
    const answered = async (p: Promise<{ status: number; body: { error?: { code?: string } } }>) => {
      const r = await p;
      return { status: r.status, code: r.body.error?.code, whileHeld: !released };
    };
    const puts = [1, 2, 3].map((i) => answered(call(a.admin, 'PUT', `/api/v1/sandboxes/s${i}`, { sources: [`198.18.0.${i}`] })));
    await new Promise((r) => setTimeout(r, 50));
    const get = answered(call(a.admin, 'GET', '/api/v1/sandboxes/s0'));
    // Before: each change waited its own 2 s once its turn came, so the third was answered after
    // 6 s (here: written once the lock was freed, 201), and the GET behind them after 6 s.
    expect(await Promise.all(puts)).toEqual([1, 2, 3].map(() => ({ status: 503, code: 'state_write_failed', whileHeld: true })));
    expect(await get).toEqual({ status: 200, code: undefined, whileHeld: true });
  } finally {
    clearTimeout(release);
    if (!released) holder.exec('ROLLBACK');
    holder.close();
  }
  // Nothing was written, and the state takes changes again.
  expect((await call(a.admin, 'GET', '/api/v1/sandboxes/s1')).status).toBe(404);
  expect((await call(a.admin, 'PUT', '/api/v1/sandboxes/s1', { sources: ['198.18.0.1'] })).status).toBe(201);
});

// A user namespace of its own, where this test may set the inotify limits of its user to 0
// (/proc/sys/user/max_inotify_watches is per user namespace), leaving the host's alone.
const canUnshare = spawnSync('unshare', ['-Ur', 'sh', '-c', 'echo 0 > /proc/sys/user/max_inotify_watches']).status === 0;

it.skipIf(!canUnshare)('a process that cannot watch the WAL (inotify watches spent) starts, follows the other by polling, and says so', async () => {
  const a = await start();
  // Before: B did not start at all ("Cannot open the database for writing: EIO (ENOSPC: System
  // limit for number of file watchers reached").
  const b = await start({ unshare: ['-Ur'], shell: 'echo 0 > /proc/sys/user/max_inotify_watches' });
  expect(b.d.lines.find((l) => action(l) === 'state-watch-failed')).toMatchObject({ path: statePath, reason: expect.stringContaining('ENOSPC') });
  expect((await call(a.admin, 'PUT', '/api/v1/sandboxes/on-a', { sources: ['198.18.0.1'] })).status).toBe(201);
  // Followed with no request to B: its policy-change line.
  await followed(b.d, 'on-a', 'put');
  expect((await call(b.admin, 'PUT', '/api/v1/sandboxes/on-b', { sources: ['198.18.0.2'] })).status).toBe(201);
  await followed(a.d, 'on-b', 'put');
});

describe('what another process wrote that this one cannot accept', () => {
  /** Writes behind egressd's back, as an older egressd or a hand edit would: one transaction. */
  const sneak = (sql: string, ...params: (string | number)[]) => {
    const db = new DatabaseSync(statePath);
    try {
      db.exec('PRAGMA busy_timeout = 2000; BEGIN IMMEDIATE');
      db.prepare(sql).run(...params);
      db.exec("UPDATE meta SET value = value + 1 WHERE key = 'revision'; COMMIT");
    } finally {
      db.close();
    }
  };

  it('is refused, logged and counted; the last good view is served and changes are refused until a DELETE repairs it', async () => {
    const a = await start();
    expect((await call(a.admin, 'PUT', '/api/v1/sandboxes/owner', { sources: ['198.18.0.9'], network: allowing('a.example.test') })).status).toBe(201);
    // Two sandboxes on one source, as an egressd that does not follow the others could write.
    sneak("INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'thief', 100, ?)", JSON.stringify({ sources: ['198.18.0.9'] }));
    const rejected = await a.d.waitFor((l) => action(l) === 'state-rejected', 5000);
    expect(rejected['log.level']).toBe('error');
    expect(JSON.stringify(rejected['issues'])).toContain('Source \\"198.18.0.9\\" belongs to sandbox \\"owner\\"');
    expect(await metricsText(a.admin)).toMatch(/^egressd_state_rejected_total 1$/m);

    expect((await call(a.admin, 'GET', '/api/v1/sandboxes/owner')).status).toBe(200);
    expect((await call(a.admin, 'GET', '/api/v1/sandboxes/thief')).status).toBe(404);
    const refused = await call(a.admin, 'PUT', '/api/v1/sandboxes/other', { sources: ['198.18.0.10'] });
    expect(refused.status).toBe(503);
    expect(refused.body.error.code).toBe('state_rejected');
    expect(refused.body.error.message).toContain('thief');
    expect((await call(a.admin, 'GET', '/api/v1/sandboxes/other')).status).toBe(404);
    // Logged once, not at every read or refused change.
    expect(a.d.lines.filter((l) => action(l) === 'state-rejected')).toHaveLength(1);

    // Repaired through the API: a DELETE of the entry at fault is the one change taken.
    expect((await call(a.admin, 'DELETE', '/api/v1/sandboxes/thief')).status).toBe(204);
    await a.d.waitFor((l) => action(l) === 'state-accepted', 5000);
    expect((await call(a.admin, 'PUT', '/api/v1/sandboxes/other', { sources: ['198.18.0.10'] })).status).toBe(201);
  });

  it('an entry that fails validation, or a schema this egressd does not read, is refused the same way, and a fix behind its back followed', async () => {
    const a = await start();
    sneak(
      "INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'odd', 7, ?)",
      JSON.stringify({ sources: ['198.18.0.1'], network: { mode: 'promiscuous' } }),
    );
    const bad = await a.d.waitFor((l) => action(l) === 'state-rejected', 5000);
    expect(JSON.stringify(bad['issues'])).toContain('sandbox \\"odd\\"');
    expect((await call(a.admin, 'GET', '/api/v1/sandboxes/odd')).status).toBe(404);
    sneak("DELETE FROM entries WHERE kind = 'sandbox' AND id = ?", 'odd');
    await a.d.waitFor((l) => action(l) === 'state-accepted', 5000);

    const db = new DatabaseSync(statePath);
    db.exec("UPDATE meta SET value = 4 WHERE key = 'schema'");
    db.close();
    const newer = await a.d.waitFor((l) => action(l) === 'state-rejected' && JSON.stringify(l['issues']).includes('Unknown state schema'), 5000);
    expect(newer).toBeDefined();
    expect((await call(a.admin, 'PUT', '/api/v1/sandboxes/x', { sources: ['198.18.0.2'] })).body.error.code).toBe('state_rejected');
  });
});

describe('the data path of the other process', () => {
  const daemons: LoopbackDaemon[] = [];
  afterEach(async () => {
    for (const d of daemons.splice(0)) await d.stop();
  });

  const dialFrom = (source: string, port: number): Promise<Socket> =>
    new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port, localAddress: source });
      s.once('connect', () => {
        s.off('error', reject);
        s.on('error', () => {});
        resolve(s);
      });
      s.once('error', reject);
    });

  /** An upstream on loopback that reads and never answers: what the connections are spliced to. */
  const startSink = async (): Promise<{ sink: Server; port: number }> => {
    const sink = createServer((s) => {
      s.on('error', () => {});
      s.resume();
    });
    sink.listen(0, '127.0.0.1');
    await once(sink, 'listening');
    return { sink, port: (sink.address() as { port: number }).port };
  };

  it('closes an open connection a narrowing on the other process refuses, and refuses new ones, with no request to it', async () => {
    const { sink, port } = await startSink();
    try {
      const config = loopbackConfig({ state: { path: statePath }, shutdown: { drainMs: 0 } });
      const a = await startLoopbackDaemon(config);
      daemons.push(a);
      const b = await startLoopbackDaemon(config);
      daemons.push(b);
      b.route('127.0.0.41', '127.0.0.1', port);
      expect((await adminCall(a.adminUrl, 'PUT', '/api/v1/sandboxes/sb-d', { sources: ['127.0.0.41'], network: { mode: 'allow-all' } })).status).toBe(201);
      await b.waitForLog((l) => action(l) === 'policy-change' && field(l, 'event.provider') === 'state' && l['id'] === 'sb-d');

      const upstream = once(sink, 'connection');
      const open = await dialFrom('127.0.0.41', b.port('tcp'));
      open.write('hello');
      await upstream;
      const closed = new Promise((r) => open.once('close', r));
      expect((await adminCall(a.adminUrl, 'PUT', '/api/v1/sandboxes/sb-d/network', { mode: 'allow-all', egress: { denied_ports: [port] } })).status).toBe(200);
      await closed;
      const line = await b.waitForLog((l) => action(l) === 'connection' && field(l, 'source.ip') === '127.0.0.41');
      expect(field(line, 'event.reason')).toBe('policy-changed');

      const again = await dialFrom('127.0.0.41', b.port('tcp'));
      await new Promise((r) => again.once('close', r));
      const refused = await b.waitForLog((l) => action(l) === 'connection' && field(l, 'source.ip') === '127.0.0.41' && l !== line);
      expect(field(refused, 'egressd.verdict')).toBe('refuse');
    } finally {
      sink.close();
    }
  });

  it("judges its open connections once for a batch of another process's changes, not once per change", async () => {
    const { sink, port } = await startSink();
    const opened: Socket[] = [];
    try {
      const b = await startLoopbackDaemon(loopbackConfig({ state: { path: statePath }, shutdown: { drainMs: 0 } }));
      daemons.push(b);
      const N = 12;
      const source = (i: number): string => `127.0.0.${50 + i}`;
      for (let i = 0; i < N; i++) {
        b.route(source(i), '127.0.0.1', port);
        expect((await adminCall(b.adminUrl, 'PUT', `/api/v1/sandboxes/sb-${i}`, { sources: [source(i)], network: { mode: 'allow-all' } })).status).toBe(201);
      }
      let upstream = 0;
      const all = new Promise<void>((resolve) => sink.on('connection', () => ++upstream === N && resolve()));
      for (let i = 0; i < N; i++) {
        const s = await dialFrom(source(i), b.port('tcp'));
        s.write('hello');
        opened.push(s);
      }
      await all;
      // Every open connection's verdict is looked up through the store: count them.
      const store = b.daemon.store as unknown as { lookup: (...a: unknown[]) => unknown };
      const lookup = store.lookup.bind(store);
      let lookups = 0;
      store.lookup = (...a) => (lookups++, lookup(...a));
      // Another process changes half of them in one transaction: one batch for B.
      const db = new DatabaseSync(statePath);
      db.exec('BEGIN IMMEDIATE');
      for (let i = 0; i < N / 2; i++) {
        db.prepare("UPDATE entries SET body = ?, revision = (SELECT value FROM meta WHERE key = 'revision') + 1 WHERE kind = 'sandbox' AND id = ?").run(
          JSON.stringify({ sources: [source(i)], network: { mode: 'allow-all', egress: { denied_ports: [1] } } }),
          `sb-${i}`,
        );
      }
      db.exec('COMMIT');
      db.close();
      for (let i = 0; i < N / 2; i++)
        await b.waitForLog((l) => action(l) === 'policy-change' && field(l, 'event.provider') === 'state' && l['id'] === `sb-${i}`);
      // Before: N/2 × N (every open connection judged once per change of the batch). Once per
      // connection now, and a few lookups of the JavaScript data path's own.
      expect(lookups).toBeGreaterThanOrEqual(N);
      expect(lookups).toBeLessThan(2 * N);
      expect(opened.every((s) => !s.destroyed)).toBe(true);
    } finally {
      for (const s of opened) s.destroy();
      sink.close();
    }
  });
});

describe("the config files' sandboxes of two processes on one state", () => {
  const cfg = (id: string, source: string, network: unknown = { mode: 'allow-all' }) => ({ id, sources: [source], network });

  it("refuse the other's API a source or id one's config file gives out (409); that process keeps taking changes and starts again", async () => {
    const a = await start({ name: 'a', sandboxes: [cfg('cfg-a', '198.18.0.1')] });
    const b = await start({ name: 'b' });
    // Before: 201; a then rejected the whole state (every change 503) and could not start again.
    const thief = await call(b.admin, 'PUT', '/api/v1/sandboxes/thief', { sources: ['198.18.0.1'] });
    expect(thief.status).toBe(409);
    expect(thief.body.error).toMatchObject({ code: 'conflict', field: 'sources[0]' });
    expect(thief.body.error.message).toMatch(/^Source "198.18.0.1" belongs to config sandbox "cfg-a" of another egressd process's config file \(pid \d+/);
    expect((await call(b.admin, 'PUT', '/api/v1/sandboxes/cfg-a', { sources: ['198.18.0.9'] })).status).toBe(409);
    expect((await call(a.admin, 'PUT', '/api/v1/sandboxes/api-1', { sources: ['198.18.0.2'] })).status).toBe(201);
    await followed(b.d, 'api-1', 'put');
    expect(a.d.lines.filter((l) => action(l) === 'state-rejected')).toEqual([]);
    await a.d.stop('SIGTERM');
    const again = await start({ name: 'a', sandboxes: [cfg('cfg-a', '198.18.0.1')] });
    expect((await call(again.admin, 'GET', '/api/v1/sandboxes/api-1')).status).toBe(200);
  });

  it('refuse a reload whole (logged, the running config kept) that gives out a source the other holds, by its config file or its API', async () => {
    const a = await start({ name: 'a', sandboxes: [cfg('cfg-a', '198.18.0.1')] });
    const b = await start({ name: 'b', sandboxes: [cfg('cfg-b', '198.18.0.2')] });
    expect((await call(b.admin, 'PUT', '/api/v1/sandboxes/api-b', { sources: ['198.18.0.5'] })).status).toBe(201);
    const reloadA = async (sandboxes: unknown[]) => {
      const seen = a.d.lines.length;
      configFile('a', sandboxes);
      a.d.child.kill('SIGHUP');
      await a.d.waitFor((l) => ['reload', 'reload-refused'].includes(String(action(l))) && a.d.lines.indexOf(l) >= seen, 5000);
      return a.d.lines.slice(seen).find((l) => ['reload', 'reload-refused'].includes(String(action(l))))!;
    };
    // Before: reloaded; one source then judged by cfg-a2's policy on a and by cfg-b's on b.
    const byConfig = await reloadA([cfg('cfg-a', '198.18.0.1', { mode: 'block-all' }), cfg('cfg-a2', '198.18.0.2')]);
    expect(action(byConfig)).toBe('reload-refused');
    expect(byConfig['reason']).toMatch(
      /^sandboxes\.cfg-a2\.sources: Source "198.18.0.2" belongs to config sandbox "cfg-b" of another egressd process's config file \(pid \d+/,
    );
    const byApi = await reloadA([cfg('cfg-a', '198.18.0.1', { mode: 'block-all' }), cfg('cfg-a5', '198.18.0.5')]);
    expect(action(byApi)).toBe('reload-refused');
    expect(byApi['reason']).toBe('sandboxes.cfg-a5.sources: Source "198.18.0.5" belongs to API sandbox "api-b"');
    // Refused whole: cfg-a keeps its running policy, and no sandbox was added.
    expect((await call(a.admin, 'GET', '/api/v1/sandboxes/cfg-a')).body.network.mode).toBe('allow-all');
    expect((await call(a.admin, 'GET', '/api/v1/sandboxes/cfg-a2')).status).toBe(404);
    // b's API may still not take cfg-a's source: a's claims are those of its running config.
    expect((await call(b.admin, 'PUT', '/api/v1/sandboxes/thief', { sources: ['198.18.0.1'] })).status).toBe(409);
    expect(action(await reloadA([cfg('cfg-a', '198.18.0.1', { mode: 'block-all' })]))).toBe('reload');
  });

  it('take the rollout: the same config file on both, both start, changes flow, and a clean exit takes its claims away', async () => {
    const same = [cfg('cfg-a', '198.18.0.1')];
    const a = await start({ name: 'a', sandboxes: same });
    const b = await start({ name: 'b', sandboxes: same });
    expect((await call(a.admin, 'PUT', '/api/v1/sandboxes/api-1', { sources: ['198.18.0.2'] })).status).toBe(201);
    await followed(b.d, 'api-1', 'put');
    const pids = () => {
      const db = new DatabaseSync(statePath, { readOnly: true });
      try {
        return db
          .prepare("SELECT pid FROM config_claims WHERE sandbox = 'cfg-a' ORDER BY pid")
          .all()
          .map((r) => r['pid']);
      } finally {
        db.close();
      }
    };
    expect(pids()).toEqual([a.d.child.pid, b.d.child.pid].sort((x, y) => x! - y!));
    await a.d.stop('SIGTERM');
    expect(pids()).toEqual([b.d.child.pid]);
  });

  it("do not block once the process is gone: a SIGKILLed process's claims stop counting at once", async () => {
    const a = await start({ name: 'a', sandboxes: [cfg('cfg-a', '198.18.0.1')] });
    const b = await start({ name: 'b' });
    expect((await call(b.admin, 'PUT', '/api/v1/sandboxes/thief', { sources: ['198.18.0.1'] })).status).toBe(409);
    await a.d.stop('SIGKILL');
    expect((await call(b.admin, 'PUT', '/api/v1/sandboxes/thief', { sources: ['198.18.0.1'] })).status).toBe(201);
    const db = new DatabaseSync(statePath, { readOnly: true });
    expect(db.prepare('SELECT count(*) AS n FROM config_claims').get()).toEqual({ n: 0 });
    db.close();
  });
});

// A Kubernetes DaemonSet's rolling update, or two containers on one hostPath state: each egressd
// in a PID namespace of its own, where the other's pid names nothing (or another process).
const canUnsharePid = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', 'true']).status === 0;
describe.skipIf(!canUnsharePid)("the config files' sandboxes of two processes in different PID namespaces", () => {
  const cfg = (id: string, source: string) => ({ id, sources: [source], network: { mode: 'allow-all' } });
  const inItsOwn = ['--pid', '--fork', '--mount-proc', '--kill-child'];
  const claimRows = (): number => {
    const db = new DatabaseSync(statePath, { readOnly: true });
    try {
      return Number(db.prepare('SELECT count(*) AS n FROM config_claims').get()!['n']);
    } finally {
      db.close();
    }
  };

  it("refuse the other's API a source one's config file gives out while it runs, and stop counting the moment it is SIGKILLed", async () => {
    const a = await start({ name: 'a', unshare: inItsOwn, sandboxes: [cfg('cfg-a', '198.18.0.1')] });
    const b = await start({ name: 'b' });
    // Before: 201 (a's claim was not counted across namespaces); a then rejected the whole state
    // (every change 503) and could not start again.
    const thief = await call(b.admin, 'PUT', '/api/v1/sandboxes/thief', { sources: ['198.18.0.1'] });
    expect(thief.status).toBe(409);
    expect(thief.body.error).toMatchObject({ code: 'conflict', field: 'sources[0]' });
    expect((await call(a.admin, 'PUT', '/api/v1/sandboxes/api-1', { sources: ['198.18.0.2'] })).status).toBe(201);
    expect(a.d.lines.filter((l) => action(l) === 'state-rejected')).toEqual([]);
    // unshare --fork: egressd is its child, killed (--kill-child) once unshare is.
    const inner = Number(readFileSync(`/proc/${a.d.child.pid}/task/${a.d.child.pid}/children`, 'utf8').trim());
    await a.d.stop('SIGKILL');
    // Dead once its last thread is: a killed process's leader shows Z while its other threads
    // still exit, and its descriptors (its lock) go with the last of them.
    const dead = (): boolean => {
      try {
        return readFileSync(`/proc/${inner}/stat`, 'utf8').includes(') Z ') && readdirSync(`/proc/${inner}/task`).length <= 1;
      } catch {
        return true;
      }
    };
    for (let i = 0; i < 300 && !dead(); i++) await sleep(50);
    expect(dead()).toBe(true);
    // Before: 409 until someone deleted a's rows by hand (they were never deleted).
    const again = await call(b.admin, 'PUT', '/api/v1/sandboxes/thief', { sources: ['198.18.0.1'] });
    expect(again.status).toBe(201);
    expect(claimRows()).toBe(0);
  });

  it("refuse a reload that gives out a source the other's config file holds, across namespaces", async () => {
    const a = await start({ name: 'a', unshare: inItsOwn, sandboxes: [cfg('cfg-a', '198.18.0.1')] });
    const b = await start({ name: 'b', sandboxes: [cfg('cfg-b', '198.18.0.2')] });
    const seen = b.d.lines.length;
    configFile('b', [cfg('cfg-b', '198.18.0.2'), cfg('cfg-b2', '198.18.0.1')]);
    b.d.child.kill('SIGHUP');
    const r = await b.d.waitFor((l) => ['reload', 'reload-refused'].includes(String(action(l))) && b.d.lines.indexOf(l) >= seen, 5000);
    // Before: reloaded; one source then judged by cfg-b2's policy on b and by cfg-a's on a.
    expect(action(r)).toBe('reload-refused');
    expect(r['reason']).toMatch(/^sandboxes\.cfg-b2\.sources: Source "198.18.0.1" belongs to config sandbox "cfg-a"/);
    // And a, in its namespace, sees b's claims.
    expect((await call(a.admin, 'PUT', '/api/v1/sandboxes/thief', { sources: ['198.18.0.2'] })).status).toBe(409);
  });
});
