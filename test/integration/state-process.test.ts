// The policy store through real egressd processes and the real API: a damaged state stops
// start-up; a full and a read-only state folder (a small tmpfs this test mounts, as root) turn
// changes into 503s that change nothing and leave nothing behind; and kill -9 in a loop while
// PUTs stream loses no acknowledged PUT.

import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { Agent, request } from 'undici';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loopbackDocument, writeConfig } from '../helpers/config-file.ts';
import { watchDaemon, type DaemonProcess } from '../helpers/daemon-process.ts';
import { action } from '../helpers/log-line.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const TOKEN = 'state-test-token';
/** Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN); the reason when it may not. */
function mountSkipReason(): string | null {
  if (process.getuid?.() !== 0) return 'not root';
  const probe = mkdtempSync(join(tmpdir(), 'egressd-mount-probe-'));
  try {
    const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe]);
    if (r.status !== 0) return `cannot mount a tmpfs: ${r.stderr?.toString().trim() ?? r.error?.message}`;
    spawnSync('umount', [probe]);
    return null;
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
}
const mountSkip = mountSkipReason();
if (mountSkip !== null) console.warn(`state-process: full/read-only folder tests skipped (${mountSkip})`);

let dir: string;
const running: DaemonProcess[] = [];
const mounts: string[] = [];
const agent = new Agent({ keepAliveTimeout: 1000, connections: 8 });

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'egressd-state-proc-'));
});
afterEach(async () => {
  for (const d of running.splice(0)) await d.stop('SIGKILL');
  for (const m of mounts.splice(0).reverse()) spawnSync('umount', ['-l', m]);
  rmSync(dir, { recursive: true, force: true });
});

function configFile(statePath: string): string {
  return writeConfig(dir, loopbackDocument({ state: { path: statePath } }, { token: TOKEN }));
}

function spawnDaemon(statePath: string) {
  return spawn(NODE, [join(ROOT, 'src/main.ts'), 'serve', '--config', configFile(statePath)], { stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Starts egressd on a state it must refuse: expects exit code 1, returns what it wrote to stderr. */
async function refusedStart(statePath: string): Promise<string> {
  const child = spawnDaemon(statePath);
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  child.stdout.resume();
  // Bounded, and never left running: a process that starts after all must not outlive the test.
  const kill = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const [code] = (await once(child, 'exit').finally(() => clearTimeout(kill))) as [number];
  expect(code, stderr).toBe(1);
  return stderr;
}

async function start(statePath: string): Promise<{ d: DaemonProcess; admin: string }> {
  const d = await watchDaemon(spawnDaemon(statePath));
  running.push(d);
  return { d, admin: `http://127.0.0.1:${d.lines.find((l) => action(l) === 'started')!['adminPort']}` };
}

async function api(admin: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const res = await request(`${admin}${path}`, {
    method: method as 'GET',
    dispatcher: agent,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.body.text();
  return { status: res.statusCode, body: text ? JSON.parse(text) : null };
}

const sandbox = (n: number, domain = `n${n}.example.test`) => ({
  sources: [`2001:db8::${(n >> 16).toString(16)}:${(n & 0xffff).toString(16)}`],
  network: { mode: 'block-all', egress: { allowed_domains: [domain] } },
});

/** Mounts a tmpfs of `size` at a new folder under the test's folder; unmounted after the test. */
function tmpfs(size: string): string {
  const m = join(dir, 'mnt');
  mkdirSync(m);
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', m]);
  if (r.status !== 0) throw new Error(`mount failed: ${r.stderr.toString()}`);
  mounts.push(m);
  return m;
}

describe('a state that does not validate stops the process', () => {
  it('exits 1 naming the file, the entry and the field, and leaves the file as it was', async () => {
    const path = join(dir, 'state.json');
    const text = JSON.stringify({
      version: 1,
      orgs: [],
      sandboxes: [
        { id: 'sb-ok', sources: ['198.18.0.1'], org: null, network: { mode: 'allow-all' } },
        { id: 'sb-bad', sources: ['198.18.0.2'], org: null, network: { mode: 'promiscuous' } },
      ],
    });
    writeFileSync(path, text);
    const stderr = await refusedStart(path);
    expect(stderr).toContain(`Cannot use the state "${path}"`);
    expect(stderr).toMatch(/sandbox "sb-bad" network\.mode: .*promiscuous/);
    expect(readFileSync(path, 'utf8')).toBe(text);
    expect(readdirSync(dir).sort()).toEqual(['egressd.json', 'state.json']);
  });
});

describe('a state read strictly', () => {
  it('a key given twice stops the process naming the file and the key (read leniently, the last value was served)', async () => {
    const path = join(dir, 'state.json');
    const text =
      '{"version": 1, "orgs": [], "sandboxes": [{"id": "sb-1", "sources": ["198.18.0.1"], "org": null, "network": {"mode": "block-all", "mode": "allow-all"}}]}';
    writeFileSync(path, text);
    const stderr = await refusedStart(path);
    expect(stderr).toContain(`EGRESSD_ERR_STATE_INVALID: Cannot use the state "${path}"`);
    expect(stderr).toContain('The file gives the key "sandboxes[0].network.mode" more than once');
    expect(readFileSync(path, 'utf8')).toBe(text);
    expect(readdirSync(dir).sort()).toEqual(['egressd.json', 'state.json']);
  });

  it('a stored body that is not UTF-8 stops the process naming the entry and the byte', async () => {
    const path = join(dir, 'state.db');
    const { d } = await start(path);
    await d.stop('SIGTERM');
    running.splice(0);
    const db = new DatabaseSync(path);
    db.exec(
      "INSERT INTO entries (kind, id, revision, body) VALUES ('sandbox', 'sb-1', (SELECT value FROM meta WHERE key = 'revision') + 1, CAST(X'7B22736F7572636573223A5B5D2C226F7267223A2262FC227D' AS TEXT))",
    );
    db.close();
    const stderr = await refusedStart(path);
    expect(stderr).toContain(`Cannot use the state "${path}"`);
    expect(stderr).toContain('sandbox "sb-1": The stored body is not UTF-8: byte 0xFC (offset 22, line 1, column 23)');
  });
});

describe("a version-1 JSON state from today's egressd", () => {
  it('is converted once at start-up, kept beside the database, and served as it was', async () => {
    const path = join(dir, 'state.json');
    const text = JSON.stringify(
      {
        version: 1,
        sandboxes: [{ id: 'sb-old', sources: ['198.18.0.7'], org: 'acme', network: { mode: 'block-all', egress: { allowed_domains: ['api.example.test'] } } }],
        orgs: [{ id: 'acme', tier: 3, network: null }],
      },
      null,
      2,
    );
    writeFileSync(path, text);
    const first = await start(path);
    expect(await first.d.waitFor((l) => action(l) === 'state-migrated')).toMatchObject({ path, keptAs: `${path}.v1.json`, sandboxes: 1, orgs: 1 });
    expect((await api(first.admin, 'GET', '/api/v1/sandboxes/sb-old')).body).toMatchObject({ id: 'sb-old', org: 'acme', sources: ['198.18.0.7'] });
    expect((await api(first.admin, 'PUT', '/api/v1/sandboxes/sb-new', sandbox(5))).status).toBe(201);
    expect(readFileSync(`${path}.v1.json`, 'utf8')).toBe(text);
    await first.d.stop('SIGKILL');
    running.splice(0);
    const second = await start(path);
    expect(second.d.lines.some((l) => action(l) === 'state-migrated')).toBe(false);
    const ids = (await api(second.admin, 'GET', '/api/v1/sandboxes')).body.sandboxes.map((x: { id: string }) => x.id);
    expect(ids).toEqual(['sb-new', 'sb-old']);
    expect((await api(second.admin, 'GET', '/api/v1/orgs/acme')).body).toMatchObject({ id: 'acme', tier: 3 });
  });
});

describe.skipIf(mountSkip !== null)('a full or read-only state folder (root: mounts a tmpfs)', () => {
  it('a full folder: 503 with the cause, an error log with path and errno, a count, nothing changed, nothing left behind', async () => {
    const m = tmpfs('1m');
    const path = join(m, 'state.db');
    const { d, admin } = await start(path);
    for (let i = 1; i <= 3; i++) expect((await api(admin, 'PUT', `/api/v1/sandboxes/sb-${i}`, sandbox(i))).status).toBe(201);
    const filesBefore = readdirSync(m).sort();
    // Fill what is left of the folder.
    const filler = join(m, 'filler');
    spawnSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=64k'], { stdio: 'ignore' });
    let full: { status: number; body: any } | null = null;
    // The WAL may still have room for a few pages; the first change that needs more fails.
    for (let i = 4; i < 40 && full === null; i++) {
      const r = await api(admin, 'PUT', `/api/v1/sandboxes/sb-${i}`, sandbox(i, `${'x'.repeat(60)}.n${i}.example.test`));
      if (r.status !== 201) full = { ...r, body: { ...r.body, id: `sb-${i}` } };
    }
    expect(full).not.toBeNull();
    expect(full!.status).toBe(503);
    expect(full!.body.error).toMatchObject({ code: 'state_write_failed', field: null });
    expect(full!.body.error.message).toContain(path);
    expect(full!.body.error.message).toContain('ENOSPC');
    const failedId = full!.body.id as string;
    // Nothing changed in memory: the sandbox is not there, its source belongs to no one.
    expect((await api(admin, 'GET', `/api/v1/sandboxes/${failedId}`)).status).toBe(404);
    const log = await d.waitFor((l) => action(l) === 'state-write-failed');
    expect(log).toMatchObject({ 'log.level': 'error', path, errno: 'ENOSPC', id: failedId, action: 'put', kind: 'sandbox' });
    const metrics = await (await request(`${admin}/metrics`, { dispatcher: agent })).body.text();
    expect(metrics).toMatch(/^egressd_state_write_failures_total\{errno="ENOSPC"\} 1$/m);
    // A refused delete changes nothing either.
    expect(readdirSync(m).sort()).toEqual([...filesBefore, 'filler'].sort());
    // Space comes back: the same change now succeeds, and everything acknowledged survives kill -9.
    unlinkSync(filler);
    expect((await api(admin, 'PUT', `/api/v1/sandboxes/${failedId}`, sandbox(99))).status).toBe(201);
    await d.stop('SIGKILL');
    running.splice(0);
    const again = await start(path);
    const ids = (await api(again.admin, 'GET', '/api/v1/sandboxes')).body.sandboxes.map((s: { id: string }) => s.id);
    expect(ids).toContain(failedId);
    for (let i = 1; i <= 3; i++) expect(ids).toContain(`sb-${i}`);
    expect(readdirSync(m).filter((f) => f.includes('tmp') || f.includes('migrating'))).toEqual([]);
  });

  it('a read-only folder: the policies are served, every change is 503 EROFS, logged and counted, nothing written', async () => {
    const m = tmpfs('4m');
    const path = join(m, 'state.db');
    const first = await start(path);
    expect((await api(first.admin, 'PUT', '/api/v1/orgs/acme', { tier: 3 })).status).toBe(201);
    expect((await api(first.admin, 'PUT', '/api/v1/sandboxes/sb-1', { ...sandbox(1), org: 'acme' })).status).toBe(201);
    expect(await first.d.stop('SIGTERM')).toBe(0);
    running.splice(0);
    expect(spawnSync('mount', ['-o', 'remount,ro', m]).status).toBe(0);
    const before = readFileSync(path);
    const { d, admin } = await start(path);
    expect(await d.waitFor((l) => action(l) === 'state-read-only')).toMatchObject({ 'log.level': 'error', path });
    expect((await api(admin, 'GET', '/api/v1/sandboxes/sb-1')).body).toMatchObject({ id: 'sb-1', org: 'acme' });
    const put = await api(admin, 'PUT', '/api/v1/sandboxes/sb-2', sandbox(2));
    expect(put.status).toBe(503);
    expect(put.body.error.code).toBe('state_write_failed');
    expect(put.body.error.message).toContain('EROFS');
    const del = await api(admin, 'DELETE', '/api/v1/sandboxes/sb-1');
    expect(del.status).toBe(503);
    expect((await api(admin, 'GET', '/api/v1/sandboxes')).body.sandboxes.map((s: { id: string }) => s.id)).toEqual(['sb-1']);
    expect(await d.waitFor((l) => action(l) === 'state-write-failed' && l['action'] === 'delete')).toMatchObject({
      'log.level': 'error',
      path,
      errno: 'EROFS',
      id: 'sb-1',
    });
    const metrics = await (await request(`${admin}/metrics`, { dispatcher: agent })).body.text();
    expect(metrics).toMatch(/^egressd_state_write_failures_total\{errno="EROFS"\} 2$/m);
    expect(readdirSync(m)).toEqual(['state.db']);
    expect(readFileSync(path).equals(before)).toBe(true);
  });

  it('a read-only folder whose WAL still holds changes stops start-up (they cannot be replayed)', async () => {
    const m = tmpfs('4m');
    const path = join(m, 'state.db');
    const first = await start(path);
    expect((await api(first.admin, 'PUT', '/api/v1/sandboxes/sb-1', sandbox(1))).status).toBe(201);
    await first.d.stop('SIGKILL');
    running.splice(0);
    expect(existsSync(`${path}-wal`)).toBe(true);
    expect(spawnSync('mount', ['-o', 'remount,ro', m]).status).toBe(0);
    const stderr = await refusedStart(path);
    expect(stderr).toContain(`Cannot use the state "${path}"`);
    expect(stderr).toMatch(/not writable \(EROFS\).*state\.db-wal/);
  });
});

/** Every page of the sandbox list: the writers may have acknowledged more sandboxes than one page holds. */
async function everySandbox(admin: string): Promise<{ id: string; network: unknown }[]> {
  const all: { id: string; network: unknown }[] = [];
  for (let cursor: string | null = '', pages = 0; cursor !== null && pages < 1000; pages++) {
    const page = (await api(admin, 'GET', `/api/v1/sandboxes?limit=1000${cursor ? `&cursor=${cursor}` : ''}`)).body;
    all.push(...(page.sandboxes as { id: string; network: unknown }[]));
    cursor = page.next_cursor as string | null;
  }
  return all;
}

describe('kill -9 while PUTs stream', () => {
  it('keeps every acknowledged PUT, round after round (bounded: 5 rounds, 4 writers)', async () => {
    const path = join(dir, 'state.db');
    /**
     * id → the domain of its last acknowledged body, and those sent since whose answer never came
     * (cut by a kill): any of them may be what is stored.
     */
    const acked = new Map<string, { domain: string; unanswered: string[] }>();
    let n = 0;
    for (let round = 0; round < 5; round++) {
      const { d, admin } = await start(path);
      // After a restart everything acknowledged so far is there, as last acknowledged (or as a
      // change sent after it whose answer the kill cut off).
      const listed = new Map<string, string>((await everySandbox(admin)).map((s) => [s.id, JSON.stringify(s.network)]));
      for (const [id, a] of acked) {
        expect(listed.has(id), `${id} after round ${round}`).toBe(true);
        const net = listed.get(id)!;
        expect(
          [a.domain, ...a.unanswered].some((x) => net.includes(JSON.stringify(x))),
          `${id}: ${net} has ${a.domain} or one of ${a.unanswered.join(', ')}`,
        ).toBe(true);
      }
      let stop = false;
      const writer = async (w: number): Promise<void> => {
        for (let i = 0; !stop && i < 400; i++) {
          // Half new sandboxes, half updates of one that keeps changing.
          const id = i % 2 === 0 ? `r${round}-w${w}-${i}` : `w${w}-latest`;
          const num = ++n;
          const domain = `v${num}.example.test`;
          const prev = acked.get(id);
          const sourceNum = id === `w${w}-latest` ? 100_000 + w : num;
          prev?.unanswered.push(domain);
          try {
            const r = await api(admin, 'PUT', `/api/v1/sandboxes/${id}`, { ...sandbox(sourceNum, domain) });
            if (r.status === 200 || r.status === 201) acked.set(id, { domain, unanswered: [] });
            else throw new Error(`PUT ${id}: ${r.status} ${JSON.stringify(r.body)}`);
          } catch (err) {
            if (!stop) throw err;
            return;
          }
        }
      };
      const writers = [0, 1, 2, 3].map(writer);
      await new Promise((r) => setTimeout(r, 200 + Math.floor(Math.random() * 400)));
      stop = true;
      d.child.kill('SIGKILL');
      await Promise.allSettled(writers);
      await d.stop('SIGKILL');
      running.splice(0);
      for (const w of await Promise.allSettled(writers)) if (w.status === 'rejected') throw w.reason;
    }
    expect(acked.size).toBeGreaterThan(20);
    const { admin } = await start(path);
    const ids = new Set((await everySandbox(admin)).map((s) => s.id));
    for (const id of acked.keys()) expect(ids.has(id), id).toBe(true);
  }, 90_000);
});
