// The API's sandboxes and organizations on disk: one SQLite database (node:sqlite, shipped with
// the pinned Node) in WAL mode with synchronous=FULL. A change is one row written in one
// transaction, and the WAL is fsynced before `put`/`delete` return, so the API acknowledges
// only what a crash (kill -9, power loss) cannot take back, and a change costs the same with
// 10 sandboxes stored as with 10,000.
//
// Why SQLite rather than a log of our own: its WAL already gives atomic, checksummed commits,
// recovery of a torn tail, checkpointing (our "compaction") and an index for ordered listing,
// all tested far beyond what we could test here. node:sqlite is synchronous, so the writes run
// in a worker thread (state-writer.ts): the fsync never stalls the connections egressd carries.
//
// Life of a state: `read()` reads every entry without writing anything; the control plane
// validates them all and refuses to start on any problem; only then does `commit()` convert a
// version-1 JSON file (today's format) or create a new database, and changes may be written.

import { constants as bufferConstants } from 'node:buffer';
import { randomUUID } from 'node:crypto';
import { accessSync, closeSync, constants, existsSync, fstatSync, fsyncSync, openSync, readSync, renameSync, statSync, unlinkSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';
import { Worker } from 'node:worker_threads';
import { basename, dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { StateInvalidError, StateWriteError, type StateIssue } from '../errors.ts';
import { isPlainObject, quote } from '../util/fields.ts';
import { readJsonText } from '../util/json-read.ts';
import { lineColumn } from '../util/text-position.ts';
import { utf8Text } from '../util/utf8-text.ts';
import { BODY_COLUMNS, STATE_SCHEMA_VERSION, STATE_SCHEMAS_READ } from './state-schema.ts';
import type { ConfigClaim, OtherClaim, StateChanges, WriteBegun, WriterReply, WriterRequest } from './state-writer.ts';

export type { ConfigClaim, OtherClaim, StateChanges } from './state-writer.ts';

export type EntryKind = 'sandbox' | 'org';

/** One stored entry: the body as the client sent it (without its id) and its revision. */
export interface StoredEntry {
  readonly kind: EntryKind;
  readonly id: string;
  readonly body: Readonly<Record<string, unknown>>;
  /**
   * Increases on every change of the whole store (never reused, also across deletes), so it
   * serves as an entry's version (an ETag) and as a cursor for listing in change order.
   */
  readonly revision: number;
}

export type StateFormat = 'absent' | 'sqlite' | 'json-v1';

const SQLITE_MAGIC = 'SQLite format 3\0';
// The schema written and those read: state-schema.ts.
const SCHEMA_VERSION = STATE_SCHEMA_VERSION;
const SCHEMAS_READ = STATE_SCHEMAS_READ;
/** A WAL larger than this is truncated after a checkpoint (bytes). */
const JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024;
/**
 * How long a change waits for another process's write lock before it fails with EBUSY (ms). The
 * other process holds it for one change (its validation and one fsync); the wait blocks only
 * the writer thread and the API request behind it.
 */
const BUSY_TIMEOUT_MS = 2000;

const SCHEMA = `
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE entries (
  kind TEXT NOT NULL CHECK (kind IN ('sandbox', 'org')),
  id TEXT NOT NULL,
  revision INTEGER NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX entries_by_revision ON entries (revision);
`;

/**
 * The config file's sandboxes of each egressd process on the state, which are not entries: one
 * row per process (`instance`, a random id per start) and sandbox; `sources` is a JSON list of
 * canonical addresses. The pid (in the PID namespace `pidns`), start time (clock ticks after
 * boot, /proc/<pid>/stat) and boot id are for a reader of the table: whether the process runs
 * is whether it holds its instance's byte of `<state.path>-instances` (state-writer.ts
 * instanceAlive), which every PID namespace sees. Written at start and at each reload, removed
 * at a clean exit, and a dead process's rows are deleted by the next change that reads them.
 * Created in a new state, and in an older one when opened for writing.
 */
export const CLAIMS_TABLE = `
CREATE TABLE IF NOT EXISTS config_claims (
  instance TEXT NOT NULL,
  pid INTEGER NOT NULL,
  started INTEGER NOT NULL,
  boot TEXT NOT NULL,
  pidns TEXT NOT NULL,
  sandbox TEXT NOT NULL,
  org TEXT,
  sources TEXT NOT NULL,
  PRIMARY KEY (instance, sandbox)
) WITHOUT ROWID;
`;

/**
 * Every row written, by whichever program (another egressd, sqlite3 by hand), takes a
 * revision above every one the state holds or held (meta.revision), and meta.revision follows
 * it: what the others follow by (state-writer.ts, rows past the newest revision held, and the
 * count and sum of all) then misses no change. Without them, a hand edit of a body that kept
 * its revision, or a deletion and an insertion at the deleted row's revision, was never seen
 * by a running process. Created in a new state, and in an older one when opened for writing.
 */
export const TRIGGERS = `
CREATE TRIGGER IF NOT EXISTS entries_revision_insert BEFORE INSERT ON entries
WHEN NEW.revision <= max(coalesce((SELECT value FROM meta WHERE key = 'revision'), 0), coalesce((SELECT max(revision) FROM entries), 0))
BEGIN SELECT RAISE(ABORT, 'egressd: a new entry needs a revision above meta.revision (docs/config.md, "Several processes on one state")'); END;
CREATE TRIGGER IF NOT EXISTS entries_revision_update BEFORE UPDATE ON entries
WHEN NEW.revision <= max(coalesce((SELECT value FROM meta WHERE key = 'revision'), 0), coalesce((SELECT max(revision) FROM entries), 0))
BEGIN SELECT RAISE(ABORT, 'egressd: a changed entry needs a revision above meta.revision (docs/config.md, "Several processes on one state")'); END;
CREATE TRIGGER IF NOT EXISTS entries_revision_meta_insert AFTER INSERT ON entries
BEGIN UPDATE meta SET value = NEW.revision WHERE key = 'revision' AND value < NEW.revision; END;
CREATE TRIGGER IF NOT EXISTS entries_revision_meta_update AFTER UPDATE ON entries
BEGIN UPDATE meta SET value = NEW.revision WHERE key = 'revision' AND value < NEW.revision; END;
CREATE TRIGGER IF NOT EXISTS meta_revision_grows BEFORE UPDATE ON meta
WHEN OLD.key = 'revision' AND NEW.value < OLD.value
BEGIN SELECT RAISE(ABORT, 'egressd: meta.revision never goes back (revisions are never reused)'); END;
`;
/** The names of TRIGGERS, to tell whether a state has them all. */
export const TRIGGER_NAMES = [...TRIGGERS.matchAll(/CREATE TRIGGER IF NOT EXISTS (\w+)/g)].map((m) => m[1]!);

// SQLite's primary result codes (https://sqlite.org/rescode.html) as the errno they stand for.
const ERRNO_OF: Record<number, string> = {
  3: 'EACCES',
  5: 'EBUSY',
  6: 'EBUSY',
  7: 'ENOMEM',
  8: 'EROFS',
  10: 'EIO',
  11: 'EIO',
  13: 'ENOSPC',
  14: 'EACCES',
  23: 'EACCES',
  26: 'EIO',
};

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function unlinkQuiet(p: string): void {
  try {
    unlinkSync(p);
  } catch {
    // absent already
  }
}

/** The state file as opened once: a version-1 JSON file keeps its descriptor, to be sized and read from it. */
type OpenedState = { readonly format: 'absent' | 'sqlite' } | { readonly format: 'json-v1'; readonly fd: number; readonly size: number };

/**
 * 'absent', 'sqlite' (by the header's magic string) or anything else, read as JSON version 1,
 * told on one descriptor: a version-1 file is sized (fstat) and read on the same one, never by
 * its path again, so the size checked is the size of what is read (between a stat and a second
 * open, another file could take the path). Opened without waiting (O_NONBLOCK), and refused
 * unless a regular file: a FIFO's open waits for a writer (start-up held for ever), and a FIFO's
 * or device's size (0) bounds nothing of what it gives. The caller closes a json-v1 `fd`.
 */
function openState(path: string): OpenedState {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { format: 'absent' };
    throw err;
  }
  let kept = false;
  try {
    const st = fstatSync(fd);
    // A folder keeps the system's word for it (EISDIR, as its read gives).
    if (!st.isFile() && !st.isDirectory()) throw new Error('it is not a regular file (a FIFO, a device, a socket); the state is a file egressd writes');
    const head = Buffer.alloc(16);
    const n = readSync(fd, head, 0, 16, 0);
    if (n === 16 && head.toString('latin1') === SQLITE_MAGIC) return { format: 'sqlite' };
    kept = true;
    return { format: 'json-v1', fd, size: st.size };
  } finally {
    if (!kept) closeSync(fd);
  }
}

/** The whole of a version-1 file from its own descriptor (positioned reads from 0), `size` bytes as fstat gave them. */
function readWhole(fd: number, size: number): Buffer {
  const bytes = Buffer.allocUnsafe(size);
  let at = 0;
  while (at < size) {
    const n = readSync(fd, bytes, at, size - at, at);
    if (n === 0) break;
    at += n;
  }
  return at === size ? bytes : bytes.subarray(0, at);
}

const whole = (reason: string): StateIssue => ({ entry: '', field: '', reason });

/**
 * Stored JSON bytes (the version-1 file, an entry's body) as the value they hold, or why not: the
 * same strict reading as the config file's and the API's (RFC 8259, UTF-8, each key once). Read
 * leniently, a byte that is not UTF-8 became U+FFFD and a key given twice kept its last value, so
 * a state edited by hand or by another tool was served as something other than what it holds.
 * `what` begins the reason ("The stored body", "The file").
 */
function storedJson(bytes: Uint8Array, what: string): { ok: true; value: unknown } | { ok: false; reason: string } {
  const t = utf8Text(bytes);
  if (!t.ok) {
    const { line, column } = t.position;
    return { ok: false, reason: `${what} is not UTF-8: byte ${t.byte} (offset ${t.offset}, line ${line}, column ${column}) starts no UTF-8 character there` };
  }
  // RFC 8259 §8.1: a reader may ignore a byte order mark (an editor's); positions stay the editor's.
  const text = t.text.startsWith('\ufeff') ? t.text.slice(1) : t.text;
  const r = readJsonText(text);
  if (r.ok) return { ok: true, value: r.value };
  if (r.kind === 'duplicate') {
    return {
      ok: false,
      reason: `${what} gives the key ${quote(r.detail)} more than once, which readers take differently (RFC 8259 §4); keep one`,
    };
  }
  const { line, column } = lineColumn(text, r.offset);
  return { ok: false, reason: `${what} is not valid JSON (damaged or truncated?) at line ${line}, column ${column}: ${r.detail}` };
}

/**
 * A stored entry's body as the object it must be, from the column's type (SQLite's typeof) and its
 * bytes (CAST AS BLOB: node:sqlite would decode a text that is not UTF-8 with U+FFFD in place of
 * its bad bytes), else the problem, named by the entry (`sandbox "id"`), as start-up reports it
 * and as following another process's changes does.
 */
export function storedBody(
  kind: string,
  id: string,
  type: string,
  bytes: Uint8Array,
): { ok: true; body: Record<string, unknown> } | { ok: false; issue: StateIssue } {
  const entry = `${kind} ${quote(id)}`;
  // egressd writes text; a blob or a number put there by hand is not a body, whatever it spells.
  if (type !== 'text') return { ok: false, issue: { entry, field: '', reason: `The stored body is a SQLite ${type}, not JSON text` } };
  const r = storedJson(bytes, 'The stored body');
  if (!r.ok) return { ok: false, issue: { entry, field: '', reason: r.reason } };
  if (!isPlainObject(r.value)) return { ok: false, issue: { entry, field: '', reason: `Expected an object, got ${quote(r.value)}` } };
  return { ok: true, body: r.value };
}

/**
 * A stored revision as the positive integer it must be, else the problem, named by the entry. The
 * triggers compare with SQLite's ordering, in which any text is above every number, so a row
 * written by hand with revision 'abc' is taken by the database and was read as NaN (an entity tag
 * "NaN-...", a next revision of NaN).
 */
export function storedRevision(kind: string, id: string, raw: unknown): { ok: true; revision: number } | { ok: false; issue: StateIssue } {
  if (typeof raw === 'number' && Number.isSafeInteger(raw) && raw >= 1) return { ok: true, revision: raw };
  // NaN: a value the writer thread found was not a number as stored (state-writer.ts diff).
  const got = typeof raw === 'number' && Number.isNaN(raw) ? 'a stored value that is not a number' : quote(raw);
  return { ok: false, issue: { entry: `${kind} ${quote(id)}`, field: 'revision', reason: `Expected a positive integer, got ${got}` } };
}

/** Whether a process reading `schema` may go on with the state; the reason when not. */
export function schemaProblem(schema: number | null): string | null {
  return schema !== null && SCHEMAS_READ.includes(schema) ? null : unknownSchema(schema);
}

const unknownSchema = (schema: unknown): string =>
  `Unknown state schema ${quote(schema)}; this egressd reads schemas ${SCHEMAS_READ.slice(0, -1).join(', ')} and ${SCHEMAS_READ.at(-1)} (a newer egressd wrote it?)`;

/** The largest version-1 JSON state read: V8's longest string, in bytes (UTF-8 decodes to at most as many UTF-16 units). */
export const MAX_JSON_STATE_BYTES = bufferConstants.MAX_STRING_LENGTH;

/** Reads a version-1 JSON state ({version: 1, sandboxes: [{id, ...}], orgs: [{id, ...}]}) from the file's bytes. */
export function parseJsonState(bytes: Uint8Array): { entries: StoredEntry[]; issues: StateIssue[] } {
  const issues: StateIssue[] = [];
  const entries: StoredEntry[] = [];
  // JSON's whitespace (RFC 8259 §2) alone.
  if (bytes.every((b) => b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d))
    return { entries, issues: [whole('The file is empty; expected a version-1 JSON state or a SQLite state')] };
  const r = storedJson(bytes, 'The file');
  if (!r.ok) return { entries, issues: [whole(r.reason)] };
  const doc = r.value;
  if (!isPlainObject(doc)) return { entries, issues: [whole(`Expected an object {version, sandboxes, orgs}, got ${quote(doc)}`)] };
  if (doc['version'] !== 1) issues.push({ entry: '', field: 'version', reason: `Expected 1, got ${quote(doc['version'])}` });
  for (const k of Object.keys(doc)) {
    if (!['version', 'sandboxes', 'orgs'].includes(k))
      issues.push({ entry: '', field: k, reason: `Unknown field ${quote(k)}; known fields are version, sandboxes, orgs` });
  }
  let revision = 0;
  for (const [list, kind] of [
    ['orgs', 'org'],
    ['sandboxes', 'sandbox'],
  ] as const) {
    const items = doc[list];
    if (!Array.isArray(items)) {
      issues.push({ entry: '', field: list, reason: `Expected a list, got ${quote(items)}` });
      continue;
    }
    const seen = new Set<string>();
    items.forEach((item, i) => {
      if (!isPlainObject(item)) return issues.push({ entry: `${list}[${i}]`, field: '', reason: `Expected an object, got ${quote(item)}` });
      const id = item['id'];
      if (typeof id !== 'string') return issues.push({ entry: `${list}[${i}]`, field: 'id', reason: `Expected a string, got ${quote(id)}` });
      if (seen.has(id)) return issues.push({ entry: `${list}[${i}]`, field: 'id', reason: `Duplicate ${kind} ${quote(id)}` });
      seen.add(id);
      const { id: _id, ...body } = item;
      entries.push({ kind, id, body, revision: ++revision });
    });
  }
  return { entries, issues };
}

export class StateStore {
  readonly path: string;
  #format: StateFormat | null = null;
  #db: DatabaseSync | null = null;
  #readOnly = false;
  #entries: StoredEntry[] = [];
  #revision = 0;
  /** The thread that writes (state-writer.ts), once the state is committed. */
  #worker: Worker | null = null;
  #seq = 0;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>();
  /** Whether a change's write transaction is open (between `begin` and `put`/`delete`/`setClaims`/`rollback`). */
  #inWrite = false;
  /** The other live processes' config claims, read by `begin` in the open transaction. */
  #claims: readonly OtherClaim[] = [];
  /** When this process's last change held the write lock and ended (performance.now(), ms): begin's wait counts from no earlier. */
  #lastWritten = 0;
  #onChanged: (() => void) | null = null;
  #onWatch: ((watching: boolean, message: string | null) => void) | null = null;
  /** This process's id in config_claims (a pid alone is reused after the process is gone). */
  readonly #instance = randomUUID();

  constructor(path: string) {
    this.path = path;
  }

  get format(): StateFormat | null {
    return this.#format;
  }

  /** True when the state could be read but its folder is not writable: every change fails. */
  get readOnly(): boolean {
    return this.#readOnly;
  }

  /** The newest revision written. */
  get revision(): number {
    return this.#revision;
  }

  /**
   * Reads every entry, writing nothing (beyond SQLite's own replay of its WAL). Throws
   * StateInvalidError naming the file when it is not a state, damaged or truncated.
   */
  read(): StoredEntry[] {
    this.#spawnWriter();
    try {
      return this.#read();
    } catch (err) {
      void this.close();
      throw err;
    }
  }

  #read(): StoredEntry[] {
    this.#finishInterruptedMigration();
    let opened: OpenedState;
    try {
      opened = openState(this.path);
    } catch (err) {
      throw new StateInvalidError(this.path, [whole(`Cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)], err);
    }
    const format: StateFormat = opened.format;
    this.#format = format;
    if (format === 'absent') {
      for (const side of ['-wal', '-shm', '-journal']) {
        if (existsSync(this.path + side)) {
          throw new StateInvalidError(this.path, [
            whole(`The database is missing but its ${quote(basename(this.path) + side)} is there; restore the database or remove that file`),
          ]);
        }
      }
      this.#entries = [];
      return [];
    }
    if (opened.format === 'json-v1') {
      let bytes: Buffer = Buffer.alloc(0);
      const size = opened.size;
      try {
        // Read whole and decoded to one string: past V8's longest string the decode would throw
        // a RangeError naming no file, after reading it all into memory.
        if (size <= MAX_JSON_STATE_BYTES) bytes = readWhole(opened.fd, size);
      } catch (err) {
        throw new StateInvalidError(this.path, [whole(`Cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)], err);
      } finally {
        closeSync(opened.fd);
      }
      if (size > MAX_JSON_STATE_BYTES) {
        throw new StateInvalidError(this.path, [
          whole(`The file is ${size} bytes; a version-1 JSON state is read whole and can be at most ${MAX_JSON_STATE_BYTES} (damaged, or not a state?)`),
        ]);
      }
      const r = parseJsonState(bytes);
      if (r.issues.length > 0) throw new StateInvalidError(this.path, r.issues);
      this.#entries = r.entries;
      this.#revision = r.entries.length;
      return r.entries;
    }
    this.#openSqlite();
    return this.#entries;
  }

  #openSqlite(): void {
    const writable = this.#dirWritable();
    if (writable !== null) {
      // A read-only folder: SQLite cannot make its shared-memory file, so the database is read
      // as immutable. That is only right if no committed change waits in the WAL.
      const wal = this.path + '-wal';
      if (existsSync(wal) && statSync(wal).size > 0) {
        throw new StateInvalidError(this.path, [
          whole(
            `The folder is not writable (${writable}) and ${quote(basename(wal))} holds changes not yet in the database; make the folder writable so they can be replayed`,
          ),
        ]);
      }
      this.#readOnly = true;
    }
    let db: DatabaseSync;
    try {
      db = this.#readOnly ? new DatabaseSync(new URL(`${pathToFileURL(this.path).href}?immutable=1`), { readOnly: true }) : new DatabaseSync(this.path);
    } catch (err) {
      throw new StateInvalidError(this.path, [whole(`Cannot open the database: ${(err as Error).message}`)], err);
    }
    try {
      const issues = this.#readRows(db);
      if (issues.length > 0) throw new StateInvalidError(this.path, issues);
    } catch (err) {
      db.close();
      if (err instanceof StateInvalidError) throw err;
      throw new StateInvalidError(this.path, [whole(`Cannot read the database (damaged or truncated?): ${(err as Error).message}`)], err);
    }
    this.#db = db;
  }

  #dirWritable(): string | null {
    try {
      accessSync(dirname(this.path), constants.W_OK);
      return null;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code ?? 'EACCES';
    }
  }

  #readRows(db: DatabaseSync): StateIssue[] {
    const check = db
      .prepare('PRAGMA quick_check')
      .all()
      .map((r) => String(Object.values(r)[0]));
    if (check.length !== 1 || check[0] !== 'ok') return check.slice(0, 10).map((c) => whole(`The database is damaged: ${c}`));
    const tables = new Set(
      db
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
        .all()
        .map((r) => String(r['name'])),
    );
    if (!tables.has('meta') || !tables.has('entries')) return [whole('Not an egressd state: the tables "meta" and "entries" are missing')];
    const raw = new Map(
      db
        .prepare('SELECT key, value FROM meta')
        .all()
        .map((r) => [String(r['key']), r['value']]),
    );
    // Numbers as SQLite stores them: Number() took the text '3' as 3 and '' as 0.
    const meta = new Map([...raw].map(([k, v]) => [k, typeof v === 'number' ? v : NaN]));
    if (!SCHEMAS_READ.includes(meta.get('schema') ?? -1)) return [whole(unknownSchema(raw.get('schema')))];
    if (meta.get('complete') !== 1) return [whole('The state was never completed (an interrupted conversion?)')];
    const issues: StateIssue[] = [];
    const entries: StoredEntry[] = [];
    const metaRevision = meta.get('revision') ?? 0;
    const metaOk = Number.isSafeInteger(metaRevision) && metaRevision >= 0;
    if (!metaOk) issues.push(whole(`meta.revision is ${quote(raw.get('revision'))}, not a revision (a non-negative integer)`));
    let top = metaOk ? metaRevision : 0;
    for (const r of db.prepare(`SELECT kind, id, revision, ${BODY_COLUMNS} FROM entries ORDER BY kind, id`).all()) {
      const kind = String(r['kind']) as EntryKind;
      const id = String(r['id']);
      const parsed = storedBody(kind, id, String(r['type']), r['body'] as Uint8Array);
      if (!parsed.ok) {
        issues.push(parsed.issue);
        continue;
      }
      const body = parsed.body;
      const rev = storedRevision(kind, id, r['revision']);
      if (!rev.ok) {
        issues.push(rev.issue);
        continue;
      }
      const revision = rev.revision;
      top = Math.max(top, revision);
      entries.push({ kind, id, body, revision });
    }
    this.#entries = entries;
    this.#revision = top;
    return issues;
  }

  /**
   * Makes the state writable once every entry has been accepted: converts a version-1 JSON
   * file (kept beside it as `<path>.v1.json`) or creates a new database. Returns where the old
   * file was kept, when there was one.
   */
  async commit(): Promise<{ migratedTo: string | null; created: boolean }> {
    if (this.#format === null) throw new Error('StateStore.commit before read');
    // The reading connection is done with: from here on the writer thread owns the database.
    this.#db?.close();
    this.#db = null;
    if (this.#format === 'sqlite') {
      if (!this.#readOnly) await this.#startWriter();
      else await this.close();
      return { migratedTo: null, created: false };
    }
    const tmp = `${this.path}.migrating`;
    let keptAs: string | null = null;
    try {
      this.#build(tmp, this.#entries);
      if (this.#format === 'json-v1') {
        keptAs = `${this.path}.v1.json`;
        if (existsSync(keptAs)) keptAs = `${this.path}.v1.${new Date().toISOString().replace(/[:.]/g, '-')}.json`;
        renameSync(this.path, keptAs);
        fsyncDir(dirname(this.path));
      }
      renameSync(tmp, this.path);
      fsyncDir(dirname(this.path));
    } catch (err) {
      if (keptAs === null) for (const s of ['', '-journal']) unlinkQuiet(tmp + s);
      // The writer thread started when reading began: a state that cannot be made leaves it
      // nothing to do, and it must not outlive the start-up it was part of.
      await this.close();
      const e = err as NodeJS.ErrnoException;
      const errno = e.code && /^E[A-Z]+$/.test(e.code) ? e.code : this.#writeError(err).errno;
      // SQLite words a missing folder as "unable to open database file": say which folder.
      const folder = dirname(this.path);
      const detail = errno === 'ENOENT' && !existsSync(folder) ? `the folder ${quote(folder)} does not exist; create it, writable by egressd` : e.message;
      throw new StateInvalidError(
        this.path,
        [whole(`Cannot ${this.#format === 'json-v1' ? 'convert the version-1 JSON state' : 'create the state'}: ${errno} (${detail})`)],
        err,
      );
    }
    this.#format = 'sqlite';
    await this.#startWriter();
    return { migratedTo: keptAs, created: keptAs === null };
  }

  /** Writes a complete database at `file` in one transaction (rollback journal: one file when closed). */
  #build(file: string, entries: readonly StoredEntry[]): void {
    for (const s of ['', '-journal', '-wal', '-shm']) unlinkQuiet(file + s);
    const db = new DatabaseSync(file);
    try {
      db.exec('PRAGMA journal_mode = DELETE; PRAGMA synchronous = FULL;');
      db.exec('BEGIN');
      db.exec(SCHEMA);
      db.exec(CLAIMS_TABLE);
      const ins = db.prepare('INSERT INTO entries (kind, id, revision, body) VALUES (?, ?, ?, ?)');
      let top = 0;
      for (const e of entries) {
        ins.run(e.kind, e.id, e.revision, JSON.stringify(e.body));
        top = Math.max(top, e.revision);
      }
      const meta = db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)');
      meta.run('schema', SCHEMA_VERSION);
      meta.run('revision', top);
      // After the entries (each row would otherwise be checked against the ones before it).
      db.exec(TRIGGERS);
      // Written last, in the same transaction: a database without it was interrupted.
      meta.run('complete', 1);
      db.exec('COMMIT');
      this.#revision = top;
    } finally {
      db.close();
    }
  }

  /**
   * A conversion that stopped after the old file was renamed away but before the new database
   * took its name: the database is complete (it was closed before the rename), so finish.
   */
  #finishInterruptedMigration(): void {
    const tmp = `${this.path}.migrating`;
    if (existsSync(this.path) || !existsSync(tmp)) return;
    let complete = false;
    try {
      const db = new DatabaseSync(tmp, { readOnly: true });
      try {
        complete = db.prepare("SELECT value FROM meta WHERE key = 'complete'").get()?.['value'] === 1;
      } finally {
        db.close();
      }
    } catch {
      complete = false;
    }
    if (complete && existsSync(`${this.path}.v1.json`)) {
      renameSync(tmp, this.path);
      fsyncDir(dirname(this.path));
    } else {
      // A new database that never got its name: nothing in it was ever acknowledged.
      for (const s of ['', '-journal']) unlinkQuiet(tmp + s);
    }
  }

  /**
   * Starts the writer thread. Called when reading begins, so that the thread boots (loads its
   * module and node:sqlite) while the main thread reads and validates the entries.
   */
  #spawnWriter(): void {
    if (this.#worker !== null) return;
    // The writer's own file beside this one: state-writer.ts when Node runs src/, state-writer.js
    // when it runs the compiled dist/ (tsc rewrites imports, never a URL string).
    const worker = new Worker(new URL(import.meta.url.endsWith('.ts') ? './state-writer.ts' : './state-writer.js', import.meta.url));
    // The writer never keeps the process alive on its own; a write in flight is awaited by
    // an API request, which does.
    worker.unref();
    worker.on('message', (r: WriterReply | { changed: true } | { watch: boolean; message: string | null }) => {
      if ('changed' in r) return this.#onChanged?.();
      if ('watch' in r) return this.#onWatch?.(r.watch, r.message);
      const p = this.#pending.get(r.seq);
      this.#pending.delete(r.seq);
      if (!p) return;
      if (r.ok) p.resolve(r.value);
      else p.reject(r);
    });
    const died = (why: string): void => {
      this.#worker = null;
      for (const p of this.#pending.values()) p.reject({ errcode: 10, errstr: why, message: why });
      this.#pending.clear();
    };
    worker.on('error', (err: Error) => died(`the state writer failed: ${err.message}`));
    worker.on('exit', (code) => died(`the state writer exited (${code})`));
    this.#worker = worker;
  }

  async #startWriter(): Promise<void> {
    this.#spawnWriter();
    try {
      await this.#send({
        op: 'open',
        path: this.path,
        busyTimeoutMs: BUSY_TIMEOUT_MS,
        journalSizeLimit: JOURNAL_SIZE_LIMIT,
        schema: SCHEMA_VERSION,
        triggers: TRIGGERS,
        triggerNames: TRIGGER_NAMES,
        claimsTable: CLAIMS_TABLE,
        instance: this.#instance,
        known: this.#entries.map((e) => [e.kind, e.id, e.revision] as const),
      });
    } catch (err) {
      await this.close();
      const e = this.#writeError(err);
      throw new StateInvalidError(this.path, [whole(`Cannot open the database for writing: ${e.errno} (${e.detail})`)], err);
    }
  }

  #send<T = null>(m: DistributiveOmit<WriterRequest, 'seq'>): Promise<T> {
    const worker = this.#worker;
    if (worker === null) return Promise.reject({ errcode: 10, errstr: 'the state writer is not running', message: 'the state writer is not running' });
    const seq = ++this.#seq;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(seq, { resolve: resolve as (v: unknown) => void, reject });
      worker.postMessage({ ...m, seq });
    });
  }

  /** Called (with no argument) when another process committed a change to the state; at most one listener. */
  onChanged(l: () => void): void {
    this.#onChanged = l;
  }

  /**
   * Called with false (and the system's message) when the state's WAL cannot be watched, so
   * other processes' commits are followed by polling (every 100 ms), and with true when it is
   * watched again; at most one listener.
   */
  onWatch(l: (watching: boolean, message: string | null) => void): void {
    this.#onWatch = l;
  }

  /** True when the state can be written and followed: a committed, writable SQLite state. */
  get shared(): boolean {
    return this.#worker !== null && !this.#readOnly && this.#format === 'sqlite';
  }

  /**
   * What other processes committed since this one last accepted (null: nothing), read from one
   * snapshot. After applying it, call `accept`; changes not accepted are listed again at the
   * next `begin` (and at the next `changes` after another commit). Rejects with StateWriteError.
   */
  async changes(): Promise<StateChanges | null> {
    if (!this.shared) return null;
    try {
      return await this.#send<StateChanges | null>({ op: 'changes', write: false });
    } catch (err) {
      throw this.#writeError(err);
    }
  }

  /**
   * Opens a change's write transaction (BEGIN IMMEDIATE: other processes' changes wait) and
   * returns what other processes committed since this one last accepted, as `changes` does.
   * Exactly one `put`, `delete` or `rollback` must follow. `asked`: when the change was asked
   * for (performance.now(), ms). The lock is waited for until the busy timeout past the later
   * of that and the end of this process's last change: a change queued behind others that
   * waited out a lock held elsewhere (a process stopped inside its change) fails at once, not
   * after a wait of its own; one queued behind changes that were written (slow fsyncs) gets
   * the whole wait. Rejects with StateWriteError (EBUSY when another process held the lock
   * past that), with no transaction open.
   */
  async begin(asked = performance.now()): Promise<StateChanges | null> {
    if (this.#readOnly) throw new StateWriteError(this.path, this.#dirWritable() ?? 'EROFS', 'the state folder is not writable');
    try {
      const since = Math.max(asked, this.#lastWritten);
      const busyMs = Math.max(0, Math.ceil(BUSY_TIMEOUT_MS - (performance.now() - since)));
      const r = await this.#send<WriteBegun>({ op: 'changes', write: true, busyMs });
      this.#inWrite = true;
      this.#claims = r.claims;
      return r.changes;
    } catch (err) {
      throw this.#writeError(err);
    }
  }

  /**
   * The last changes listed were applied in memory: they are no longer listed, but for
   * `except` (an entry left out of them, which the change in the open transaction replaces or
   * deletes: listed again should that change not be written).
   */
  async accept(except: readonly [EntryKind, string] | null = null): Promise<void> {
    if (this.#worker !== null) await this.#send({ op: 'accept', except }).catch(() => {});
  }

  /** Whether a change's write transaction is open. */
  get inWrite(): boolean {
    return this.#inWrite;
  }

  /**
   * The config claims of every other egressd process on the state that runs still, read when
   * `begin` opened the write transaction (so that none changes before this change commits); the
   * rows of processes gone are deleted with it. Empty outside of a write transaction.
   */
  claims(): readonly OtherClaim[] {
    return this.#inWrite ? this.#claims : [];
  }

  /**
   * Replaces this process's config claims in the transaction `begin` opened, and commits
   * (fsynced as a change is). Rejects with StateWriteError, having changed nothing.
   */
  async setClaims(claims: readonly ConfigClaim[]): Promise<void> {
    if (!this.#inWrite) throw new Error('StateStore.setClaims outside of a write transaction');
    this.#inWrite = false;
    try {
      await this.#send({ op: 'set-claims', claims });
    } catch (err) {
      throw this.#writeError(err);
    } finally {
      this.#lastWritten = performance.now();
    }
  }

  /** Removes this process's config claims (a clean exit), in a transaction of its own. Never rejects: a dead process's claims expire anyway. */
  async dropClaims(): Promise<void> {
    if (this.shared) await this.#send({ op: 'drop-claims' }).catch(() => {});
  }

  /** Ends the open write transaction without writing (a refused change). Never rejects. */
  async rollback(): Promise<void> {
    if (!this.#inWrite) return;
    this.#inWrite = false;
    await this.#send({ op: 'rollback' }).catch(() => {});
    this.#lastWritten = performance.now();
  }

  /**
   * Durably stores one entry in the transaction `begin` opened, and commits: resolves with its
   * new revision (the database's next, whoever wrote the last) once SQLite has fsynced it.
   * Rejects with StateWriteError, having changed nothing.
   */
  async put(kind: EntryKind, id: string, body: Readonly<Record<string, unknown>>): Promise<number> {
    return this.#write({ op: 'put', kind, id, body: JSON.stringify(body) });
  }

  /** Durably removes one entry, as `put`; resolves with the revision of the removal. Rejects with StateWriteError. */
  async delete(kind: EntryKind, id: string): Promise<number> {
    return this.#write({ op: 'delete', kind, id });
  }

  async #write(m: DistributiveOmit<WriterRequest, 'seq'>): Promise<number> {
    if (this.#readOnly) throw new StateWriteError(this.path, this.#dirWritable() ?? 'EROFS', 'the state folder is not writable');
    // The change's transaction ends here, committed or rolled back, whatever the answer.
    this.#inWrite = false;
    try {
      const revision = await this.#send<number>(m);
      this.#revision = Math.max(this.#revision, revision);
      return revision;
    } catch (err) {
      throw this.#writeError(err);
    } finally {
      this.#lastWritten = performance.now();
    }
  }

  #writeError(err: unknown): StateWriteError {
    const e = err as { errcode?: number | null; errstr?: string | null; errno?: string | null; message?: string };
    if (typeof e.errno === 'string') return new StateWriteError(this.path, e.errno, e.errstr ?? e.message ?? String(err), err);
    const primary = (e.errcode ?? 0) & 0xff;
    // SQLite reports "read-only" for a read-only file system and for missing permission alike;
    // asking the folder tells which, with the system's own errno.
    const errno = primary === 8 || primary === 14 ? (this.#dirWritable() ?? ERRNO_OF[primary]!) : (ERRNO_OF[primary] ?? 'EIO');
    return new StateWriteError(this.path, errno, e.errstr ?? e.message ?? String(err), err);
  }

  /** Closes the database (SQLite checkpoints the WAL into it and removes the WAL). */
  async close(): Promise<void> {
    this.#db?.close();
    this.#db = null;
    const worker = this.#worker;
    if (worker === null) return;
    try {
      await this.#send({ op: 'close' });
    } catch {
      // closing anyway
    }
    this.#worker = null;
    await worker.terminate();
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** The files a state at `path` may leave beside it (the WAL and its index), for tests and docs. */
export function stateSideFiles(path: string): string[] {
  return [`${path}-wal`, `${path}-shm`, `${path}-journal`, join(dirname(path), `${basename(path)}.migrating`)];
}
