// The policy store on disk: a state that cannot be read whole, or whose entries no longer
// validate, stops start-up naming the file, the entry and the field, and is left exactly as it
// was; today's JSON file is converted once and kept; every change carries a revision.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, renameSync, existsSync, statSync, symlinkSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ControlPlane, type SandboxRecord } from '../../../src/control/control-plane.ts';
import { MAX_JSON_STATE_BYTES, StateStore } from '../../../src/control/state-store.ts';
import { PolicyStore } from '../../../src/control/store.ts';
import { StateInvalidError, StateWriteError } from '../../../src/errors.ts';
import { verdict } from '../../../src/policy/verdict.ts';
import { runProcess } from '../../helpers/run-process.ts';

const EMPTY = { domains: [], cidrs: [], ports: [] };

function plane(path: string): ControlPlane {
  const store = new PolicyStore(
    { protected: { extra: [], except: ['198.18.0.0/15'], nat64Prefixes: [] }, catalog: [], dnsServers: [] },
    { dialect: 'sandbox0', policy: { mode: 'block-all', allow: EMPTY, deny: EMPTY }, essentialServices: false, dnsServersAllowed: false },
  );
  return new ControlPlane(store, new StateStore(path));
}

const V1 = {
  version: 1,
  sandboxes: [
    { id: 'sb-1', sources: ['198.18.0.1'], org: 'acme', network: { mode: 'block-all', egress: { allowed_domains: ['api.example.test'] } } },
    { id: 'sb-2', sources: ['198.18.0.2', '2001:db8::2'], org: null, network: { networkBlockAll: true } },
  ],
  orgs: [
    { id: 'acme', tier: 3, network: null },
    { id: 'beta', tier: null, network: { mode: 'allow-all' } },
  ],
};

let dir: string;
let path: string;
const open: ControlPlane[] = [];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'egressd-state-'));
  path = join(dir, 'state.json');
});
afterEach(async () => {
  for (const c of open.splice(0)) await c.close();
  rmSync(dir, { recursive: true, force: true });
});

async function load(p = path, config: SandboxRecord[] = []): Promise<ControlPlane> {
  const cp = plane(p);
  open.push(cp);
  await cp.load(config);
  return cp;
}

async function refused(p = path, config: SandboxRecord[] = []): Promise<StateInvalidError> {
  const cp = plane(p);
  open.push(cp);
  const err = await cp.load(config).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StateInvalidError);
  const e = err as StateInvalidError;
  expect(e.code).toBe('EGRESSD_ERR_STATE_INVALID');
  expect(e.file).toBe(p);
  expect(e.message).toContain(`"${p}"`);
  return e;
}

const files = (): string[] => readdirSync(dir).sort();

describe('a version-1 JSON state that cannot be used stops start-up and is left as it was', () => {
  const cases: [string, string, { entry: string; field: string; reason: RegExp }][] = [
    ['null', 'null', { entry: '', field: '', reason: /Expected an object .* got "null"/ }],
    ['{}', '{}', { entry: '', field: 'version', reason: /Expected 1/ }],
    ['garbage', '\u0000\u0013garbage\u00ff not a state', { entry: '', field: '', reason: /not valid JSON/ }],
    [
      'a truncated file',
      JSON.stringify(V1, null, 2).slice(0, 200),
      { entry: '', field: '', reason: /not valid JSON \(damaged or truncated\?\) at line \d+, column \d+: / },
    ],
    ['an empty file', '', { entry: '', field: '', reason: /empty/ }],
    [
      'an entry with an unknown mode',
      JSON.stringify({ ...V1, sandboxes: [V1.sandboxes[0], { ...V1.sandboxes[1], network: { mode: 'open-sesame' } }] }),
      { entry: 'sandbox "sb-2"', field: 'network.mode', reason: /open-sesame/ },
    ],
    [
      'a sandbox with no id',
      JSON.stringify({ version: 1, sandboxes: [{ sources: [] }], orgs: [] }),
      { entry: 'sandboxes[0]', field: 'id', reason: /Expected a string/ },
    ],
    [
      'a sandbox whose organization is missing',
      JSON.stringify({ version: 1, sandboxes: [V1.sandboxes[0]], orgs: [] }),
      { entry: 'sandbox "sb-1"', field: '', reason: /Organization "acme" does not exist/ },
    ],
    [
      'an org with a bad tier',
      JSON.stringify({ version: 1, sandboxes: [], orgs: [{ id: 'o', tier: 9 }] }),
      { entry: 'org "o"', field: 'tier', reason: /tier from 1 to 4/ },
    ],
  ];
  it.each(cases)('%s', async (_name, text, want) => {
    writeFileSync(path, text);
    const e = await refused();
    expect(e.issues).toContainEqual(expect.objectContaining({ entry: want.entry, field: want.field, reason: expect.stringMatching(want.reason) }));
    // Nothing erased, nothing converted, nothing left beside it.
    expect(readFileSync(path, 'utf8')).toBe(text);
    expect(files()).toEqual(['state.json']);
  });

  // Read strictly, as the config file and the API's bodies are (src/util/json-read.ts): leniently,
  // the first two were read as a state other than the bytes hold (the last of two keys; U+FFFD).
  const strict: [string, Buffer, RegExp][] = [
    [
      'a key given twice',
      Buffer.from('{"version": 1, "orgs": [], "sandboxes": [{"id": "sb-1", "sources": [], "network": {"mode": "block-all", "mode": "allow-all"}}]}'),
      /^The file gives the key "sandboxes\[0\]\.network\.mode" more than once/,
    ],
    [
      'bytes that are not UTF-8 (Latin-1)',
      Buffer.concat([Buffer.from('{"version": 1, "orgs": [{"id": "b'), Buffer.from([0xfc]), Buffer.from('cher"}], "sandboxes": []}')]),
      /^The file is not UTF-8: byte 0xFC \(offset 33, line 1, column 34\)/,
    ],
    ['UTF-16', Buffer.from('\ufeff{"version": 1}', 'utf16le'), /^The file is not UTF-8: byte 0xFF \(offset 0, line 1, column 1\)/],
    [
      'a syntax error, placed',
      Buffer.from('{\n  "version": 1,\n  "orgs": [],\n  "sandboxes": [,]\n}'),
      /^The file is not valid JSON \(damaged or truncated\?\) at line 4, column 17: /,
    ],
  ];
  it.each(strict)('%s', async (_name, bytes, reason) => {
    writeFileSync(path, bytes);
    const e = await refused();
    expect(e.issues).toEqual([{ entry: '', field: '', reason: expect.stringMatching(reason) }]);
    expect(readFileSync(path).equals(bytes)).toBe(true);
    expect(files()).toEqual(['state.json']);
  });

  it('a byte order mark (an editor saved it) is read past, as RFC 8259 §8.1 lets a reader', async () => {
    writeFileSync(path, `\ufeff${JSON.stringify(V1)}`);
    const cp = await load();
    expect(cp.sandboxes().map((s) => s.id)).toEqual(['sb-1', 'sb-2']);
  });

  // Past V8's longest string the file cannot be decoded: it is refused by its size, naming the file,
  // before a byte is read (a sparse file here; read whole it would take half a gigabyte, then throw a
  // RangeError that names no file).
  it('a file longer than the longest string is refused by its size, unread', async () => {
    writeFileSync(path, '{"version": 1, "orgs": [], "sandboxes": []}');
    truncateSync(path, MAX_JSON_STATE_BYTES + 1);
    const e = await refused();
    expect(e.issues).toEqual([
      {
        entry: '',
        field: '',
        reason: `The file is ${MAX_JSON_STATE_BYTES + 1} bytes; a version-1 JSON state is read whole and can be at most ${MAX_JSON_STATE_BYTES} (damaged, or not a state?)`,
      },
    ]);
    expect(statSync(path).size).toBe(MAX_JSON_STATE_BYTES + 1);
    expect(files()).toEqual(['state.json']);
  });

  // The file is sized and read on the one descriptor it was opened as: by its path, a FIFO or a
  // device passed the size check (0 bytes) and was then opened again and read to its end, and a
  // FIFO with no writer held start-up in its first open for ever. In a process of its own, so a
  // read that never ends is cut (SIGKILL) rather than holding the test.
  describe.skipIf(process.platform !== 'linux')('a state path that is not a regular file', () => {
    const ROOT = resolve(import.meta.dirname, '../../..');
    const readIn = async (p: string): Promise<string> => {
      const script = `import { StateStore } from ${JSON.stringify(join(ROOT, 'src/control/state-store.ts'))};
        try { new StateStore(process.argv[1]).read(); console.log('read'); } catch (e) { console.log(JSON.stringify(e.issues ?? e.message)); }
        process.exit(0);`;
      const r = await runProcess(join(ROOT, 'node_modules/.bin/node'), ['--input-type=module', '-e', script, p], { timeoutMs: 10_000 });
      return r.code === null ? `killed after 10 s; stderr: ${r.stderr}` : r.stdout.trim();
    };
    const notRegular = JSON.stringify([
      { entry: '', field: '', reason: 'Cannot read: it is not a regular file (a FIFO, a device, a socket); the state is a file egressd writes' },
    ]);

    it('is refused unread: a FIFO with no writer, one whose writer holds it open, a device', async () => {
      const fifo = join(dir, 'state.fifo');
      expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
      expect(await readIn(fifo)).toBe(notRegular);
      // A writer that gives a valid state and holds the FIFO open.
      const writer = spawn('sh', ['-c', `exec 3>"$1"; printf %s "$2" >&3; sleep 30`, 'sh', fifo, JSON.stringify(V1)], { stdio: 'ignore' });
      try {
        expect(await readIn(fifo)).toBe(notRegular);
      } finally {
        writer.kill('SIGKILL');
      }
      const device = join(dir, 'state.dev');
      symlinkSync('/dev/null', device);
      expect(await readIn(device)).toBe(notRegular);
    }, 40_000);
  });

  it('{} names each missing part', async () => {
    writeFileSync(path, '{}');
    const e = await refused();
    expect(e.issues.map((i) => i.field)).toEqual(['version', 'orgs', 'sandboxes']);
    expect(e.message).toMatch(/version: Expected 1, got "undefined"/);
  });

  it('one bad entry among good ones stops start-up too: no entry is dropped silently', async () => {
    const text = JSON.stringify({ ...V1, sandboxes: [...V1.sandboxes, { id: 'sb-3', sources: ['not-an-ip'], org: null, network: { mode: 'block-all' } }] });
    writeFileSync(path, text);
    const e = await refused();
    expect(e.issues).toEqual([{ entry: 'sandbox "sb-3"', field: 'sources[0]', reason: expect.stringContaining('not-an-ip') }]);
    expect(e.message).toContain('sandbox "sb-3" sources[0]: ');
    expect(readFileSync(path, 'utf8')).toBe(text);
  });

  it('a source now owned by a config-file sandbox stops start-up, naming both', async () => {
    writeFileSync(path, JSON.stringify(V1));
    const config: SandboxRecord[] = [{ id: 'from-file', sources: ['198.18.0.2'], org: null, network: { mode: 'allow-all' }, origin: 'config' }];
    const e = await refused(path, config);
    expect(e.issues).toContainEqual({ entry: 'sandbox "sb-2"', field: 'sources[0]', reason: 'Source "198.18.0.2" belongs to sandbox "from-file"' });
  });
});

describe('converting the version-1 JSON state', () => {
  it('reads it whole, converts it once, keeps the old file, and serves the same entries', async () => {
    const text = JSON.stringify(V1, null, 2);
    writeFileSync(path, text);
    const cp = await load();
    expect(cp.sandboxes().map((s) => [s.id, s.sources, s.org])).toEqual([
      ['sb-1', ['198.18.0.1'], 'acme'],
      ['sb-2', ['198.18.0.2', '2001:db8::2'], null],
    ]);
    expect(cp.orgRecord('acme')).toEqual({ id: 'acme', tier: 3, network: null });
    expect(verdict(cp.store.policyOf('sb-1')!, { name: 'api.example.test', ip: '198.18.1.1', port: 443 }).verdict).toBe('allow');
    await cp.close();
    expect(readFileSync(path).subarray(0, 15).toString()).toBe('SQLite format 3');
    expect(readFileSync(`${path}.v1.json`, 'utf8')).toBe(text);
    expect(files()).toEqual(['state.json', 'state.json.v1.json']);
    // The second start reads the database; the kept file is not read again.
    writeFileSync(`${path}.v1.json`, 'changed after the conversion');
    const again = await load();
    expect(again.sandboxes().map((s) => s.id)).toEqual(['sb-1', 'sb-2']);
    expect(again.orgRecord('beta')?.network).toEqual({ mode: 'allow-all' });
  });

  it('finishes a conversion interrupted after the old file was renamed away', async () => {
    writeFileSync(path, JSON.stringify(V1));
    await (await load()).close();
    // Recreate the instant between the two renames: the database under its temporary name.
    renameSync(path, `${path}.migrating`);
    expect(existsSync(path)).toBe(false);
    const cp = await load();
    expect(cp.sandboxes().map((s) => s.id)).toEqual(['sb-1', 'sb-2']);
    // What a running egressd keeps beside the database aside (SQLite's, and the instance lock file).
    expect(files().filter((f) => !/-(wal|shm|instances)$/.test(f))).toEqual(['state.json', 'state.json.v1.json']);
  });

  it('keeps an earlier kept file: a second conversion gets a time-stamped name', async () => {
    writeFileSync(`${path}.v1.json`, 'an earlier one');
    writeFileSync(path, JSON.stringify(V1));
    await (await load()).close();
    expect(readFileSync(`${path}.v1.json`, 'utf8')).toBe('an earlier one');
    expect(files().filter((f) => /^state\.json\.v1\..+\.json$/.test(f))).toHaveLength(1);
  });
});

describe('the SQLite state', () => {
  const dbPath = (): string => join(dir, 'state.db');

  it('starts empty when absent, keeps every change with a revision that is never reused, and survives a reopen', async () => {
    const cp = await load(dbPath());
    expect(files()).toContain('state.db');
    expect((await cp.putOrg('acme', { tier: 2 })).ok).toBe(true);
    expect((await cp.putSandbox('sb-1', { sources: ['198.18.0.1'], org: 'acme', network: { mode: 'allow-all' } })).ok).toBe(true);
    const r1 = cp.revisionOf('sandbox', 'sb-1')!;
    expect(r1).toBeGreaterThan(cp.revisionOf('org', 'acme')!);
    expect((await cp.putSandbox('sb-1', { sources: ['198.18.0.1'], network: { mode: 'block-all' } })).ok).toBe(true);
    const r2 = cp.revisionOf('sandbox', 'sb-1')!;
    expect(r2).toBeGreaterThan(r1);
    expect((await cp.deleteSandbox('sb-1')).ok).toBe(true);
    expect(cp.revisionOf('sandbox', 'sb-1')).toBeUndefined();
    expect((await cp.putSandbox('sb-1', { sources: ['198.18.0.9'] })).ok).toBe(true);
    const r3 = cp.revisionOf('sandbox', 'sb-1')!;
    expect(r3).toBeGreaterThan(r2 + 1);
    expect((await cp.putSandbox('sb-2', { sources: ['198.18.0.2'], org: 'acme' })).ok).toBe(true);
    await cp.close();
    expect(files()).toEqual(['state.db']);
    const back = await load(dbPath());
    expect(back.sandboxes().map((s) => [s.id, s.sources, s.org])).toEqual([
      ['sb-1', ['198.18.0.9'], null],
      ['sb-2', ['198.18.0.2'], 'acme'],
    ]);
    expect(back.revisionOf('sandbox', 'sb-1')).toBe(r3);
    expect(back.orgRecord('acme')).toEqual({ id: 'acme', tier: 2, network: null });
  });

  /** Makes a database with two good sandboxes, then lets `damage` change it behind egressd's back. */
  async function damaged(damage: (db: DatabaseSync) => void): Promise<StateInvalidError> {
    const cp = await load(dbPath());
    await cp.putSandbox('sb-1', { sources: ['198.18.0.1'] });
    await cp.putSandbox('sb-2', { sources: ['198.18.0.2'] });
    await cp.close();
    const db = new DatabaseSync(dbPath());
    damage(db);
    db.close();
    const before = readFileSync(dbPath());
    const e = await refused(dbPath());
    for (const c of open.splice(0)) await c.close();
    // Nothing written: the database is byte for byte what it was, both rows still in it.
    expect(readFileSync(dbPath()).equals(before)).toBe(true);
    const check = new DatabaseSync(dbPath(), { readOnly: true });
    expect(check.prepare("SELECT count(*) AS n FROM entries WHERE kind = 'sandbox'").get()?.['n']).toBe(2);
    check.close();
    return e;
  }

  it('an entry with an unknown mode', async () => {
    const e = await damaged((db) =>
      db
        .prepare("UPDATE entries SET body = ?, revision = (SELECT value FROM meta WHERE key = 'revision') + 1 WHERE id = 'sb-2'")
        .run(JSON.stringify({ sources: ['198.18.0.2'], network: { mode: 'wide-open' } })),
    );
    expect(e.issues).toEqual([expect.objectContaining({ entry: 'sandbox "sb-2"', field: 'network.mode' })]);
  });

  it('an entry whose body is null', async () => {
    const e = await damaged((db) =>
      db.prepare("UPDATE entries SET body = 'null', revision = (SELECT value FROM meta WHERE key = 'revision') + 1 WHERE id = 'sb-1'").run(),
    );
    expect(e.issues).toEqual([{ entry: 'sandbox "sb-1"', field: '', reason: 'Expected an object, got "null"' }]);
  });

  it('an entry whose body is {}', async () => {
    const e = await damaged((db) =>
      db.prepare("UPDATE entries SET body = '{}', revision = (SELECT value FROM meta WHERE key = 'revision') + 1 WHERE id = 'sb-1'").run(),
    );
    expect(e.issues).toEqual([{ entry: 'sandbox "sb-1"', field: 'sources', reason: 'Missing required field "sources"' }]);
  });

  it('an entry whose body is garbage', async () => {
    const e = await damaged((db) =>
      db.prepare("UPDATE entries SET body = '{\"sources\": [', revision = (SELECT value FROM meta WHERE key = 'revision') + 1 WHERE id = 'sb-1'").run(),
    );
    expect(e.issues).toEqual([{ entry: 'sandbox "sb-1"', field: '', reason: expect.stringContaining('not valid JSON') }]);
  });

  // Written by hand (sqlite3): read leniently, the first was served as allow-all (JSON.parse
  // keeps the last of two keys) and the second with U+FFFD in the organization's name.
  const bodies: [string, string, RegExp][] = [
    [
      'a key given twice',
      `CAST('{"sources":["198.18.0.1"],"network":{"mode":"block-all","mode":"allow-all"}}' AS TEXT)`,
      /^The stored body gives the key "network\.mode" more than once/,
    ],
    ['bytes that are not UTF-8', `CAST(X'7B22736F7572636573223A5B5D2C226F7267223A2262FC227D' AS TEXT)`, /^The stored body is not UTF-8: byte 0xFC \(offset 22/],
    ['a blob', `X'7B22736F7572636573223A5B5D7D'`, /^The stored body is a SQLite blob, not JSON text$/],
  ];
  it.each(bodies)('an entry whose body is %s', async (_name, value, reason) => {
    const e = await damaged((db) =>
      db.exec(`UPDATE entries SET body = ${value}, revision = (SELECT value FROM meta WHERE key = 'revision') + 1 WHERE id = 'sb-1'`),
    );
    expect(e.issues).toEqual([{ entry: 'sandbox "sb-1"', field: '', reason: expect.stringMatching(reason) }]);
  });

  // SQLite orders any text above every number, so the triggers take a text revision (and copy it
  // into meta.revision); read with Number(), it was NaN: the entry served with the entity tag
  // "NaN-...", and the next revision handed out NaN.
  it('an entry whose revision is text', async () => {
    const e = await damaged((db) => db.exec("UPDATE entries SET revision = 'abc' WHERE id = 'sb-1'"));
    expect(e.issues).toEqual([
      { entry: '', field: '', reason: 'meta.revision is "abc", not a revision (a non-negative integer)' },
      { entry: 'sandbox "sb-1"', field: 'revision', reason: 'Expected a positive integer, got "abc"' },
    ]);
  });

  it('a bare link-local source an egressd before link-local zones wrote, until repaired as docs/config.md says', async () => {
    const e = await damaged((db) =>
      db
        .prepare("UPDATE entries SET body = ?, revision = (SELECT value FROM meta WHERE key = 'revision') + 1 WHERE id = 'sb-2'")
        .run(JSON.stringify({ sources: ['198.18.0.2', 'fe80::b1'] })),
    );
    expect(e.issues).toEqual([{ entry: 'sandbox "sb-2"', field: 'sources[1]', reason: expect.stringContaining('needs the interface it is seen on') }]);
    // "Recovering the state", as written there (with this entry's id).
    const db = new DatabaseSync(dbPath());
    db.exec(
      "UPDATE entries SET body = json_replace(body, '$.sources[1]', 'fe80::b1%eth1'), revision = (SELECT value FROM meta WHERE key = 'revision') + 1 WHERE kind = 'sandbox' AND id = 'sb-2'",
    );
    db.close();
    const cp = await load(dbPath());
    expect(cp.store.ownerOf('fe80::b1%eth1')).toBe('sb-2');
    expect(cp.store.ownerOf('fe80::b1')).toBeNull();
  });

  it('a database of another schema', async () => {
    const e = await damaged((db) => db.exec("UPDATE meta SET value = 99 WHERE key = 'schema'"));
    expect(e.issues[0]!.reason).toMatch(/Unknown state schema "99"/);
  });

  it('a truncated database', async () => {
    const cp = await load(dbPath());
    for (let i = 0; i < 300; i++)
      await cp.putSandbox(`sb-${i}`, {
        sources: [`198.18.${i >> 8}.${i & 255}`],
        network: { mode: 'block-all', egress: { allowed_domains: [`n${i}.example.test`] } },
      });
    await cp.close();
    const whole = readFileSync(dbPath());
    expect(whole.length).toBeGreaterThan(3 * 4096);
    const cut = whole.subarray(0, Math.floor(whole.length / 2 / 4096) * 4096 + 100);
    writeFileSync(dbPath(), cut);
    const e = await refused(dbPath());
    expect(e.issues[0]!.reason).toMatch(/damaged|malformed|truncated/i);
    expect(readFileSync(dbPath()).equals(cut)).toBe(true);
  });

  it('garbage after the SQLite header', async () => {
    writeFileSync(dbPath(), Buffer.concat([Buffer.from('SQLite format 3\0'), Buffer.alloc(5000, 0x41)]));
    const e = await refused(dbPath());
    expect(e.issues[0]!.reason).toMatch(/Cannot (open|read) the database/);
  });

  it('a WAL without its database', async () => {
    writeFileSync(`${dbPath()}-wal`, 'orphan');
    const e = await refused(dbPath());
    expect(e.issues[0]!.reason).toMatch(/state\.db-wal/);
    expect(files()).toEqual(['state.db-wal']);
  });
});

describe('creating the state', () => {
  it('in a folder that does not exist stops start-up with ENOENT, creating nothing', async () => {
    const e = await refused(join(dir, 'missing', 'state.db'));
    expect(e.issues[0]!.reason).toBe(
      `Cannot create the state: ENOENT (the folder ${JSON.stringify(join(dir, 'missing'))} does not exist; create it, writable by egressd)`,
    );
    // A problem of the whole file is its reason alone, with no empty "entry field:" before it.
    expect(e.message).toMatch(/\n {2}Cannot create the state: /);
    expect(files()).toEqual([]);
  });
});

describe('writing', () => {
  it('happens off the main thread: the event loop turns while a change is being fsynced', async () => {
    const cp = await load(join(dir, 'state.db'));
    const order: string[] = [];
    setImmediate(() => order.push('event loop turned'));
    const r = await cp.putSandbox('sb-1', { sources: ['198.18.0.1'] });
    order.push('change acknowledged');
    expect(r.ok).toBe(true);
    expect(order).toEqual(['event loop turned', 'change acknowledged']);
  });

  // The files at state.path are what a restart reads: a change written to files that were
  // moved or deleted meanwhile (a "reset" with rm, a restore that put another file in place)
  // would be acknowledged and then be gone.
  describe('refuses a change once state.path no longer names the files it writes, changing nothing', () => {
    const db = (): string => join(dir, 'state.db');
    async function afterward(act: () => void): Promise<{ cp: ControlPlane; err: unknown }> {
      const cp = await load(db());
      expect((await cp.putSandbox('sb-1', { sources: ['198.18.0.1'] })).ok).toBe(true);
      act();
      const err = await cp.putSandbox('sb-2', { sources: ['198.18.0.2'] }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(cp.sandbox('sb-2')).toBeUndefined();
      expect(cp.store.ownerOf('198.18.0.2')).toBeNull();
      return { cp, err };
    }

    it('the database and its WAL moved away: ENOENT', async () => {
      const away = mkdtempSync(join(tmpdir(), 'egressd-state-away-'));
      try {
        const { err } = await afterward(() => {
          for (const f of files()) renameSync(join(dir, f), join(away, f));
        });
        expect(err).toBeInstanceOf(StateWriteError);
        expect(err).toMatchObject({ errno: 'ENOENT' });
      } finally {
        rmSync(away, { recursive: true, force: true });
      }
    });

    it('only the WAL deleted: ENOENT', async () => {
      const { err } = await afterward(() => rmSync(`${db()}-wal`));
      expect(err).toMatchObject({ errno: 'ENOENT' });
    });

    it('another database put in its place: ESTALE', async () => {
      const { err } = await afterward(() => {
        writeFileSync(`${db()}.other`, readFileSync(db()));
        renameSync(`${db()}.other`, db());
      });
      expect(err).toMatchObject({ errno: 'ESTALE' });
    });
  });

  it('keeps changes in the order they were made', async () => {
    const cp = await load(join(dir, 'state.db'));
    await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        cp.putSandbox('sb-1', { sources: ['198.18.0.1'], network: { mode: 'block-all', egress: { allowed_ports: [1000 + i] } } }),
      ),
    );
    await cp.close();
    const back = await load(join(dir, 'state.db'));
    expect(back.sandbox('sb-1')?.network).toEqual({ mode: 'block-all', egress: { allowed_ports: [1019] } });
  });
});
