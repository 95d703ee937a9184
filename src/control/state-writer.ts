// The state's writes, in a worker thread of their own. node:sqlite is synchronous: a commit in
// synchronous=FULL mode waits for an fsync (milliseconds on a disk, hundreds under load), and on
// the main thread that wait would stall every connection egressd carries. Here it stalls only
// this thread; the main thread awaits the answer (state-store.ts) before the API answers.
//
// Messages in: {op: 'open', path, busyTimeoutMs, journalSizeLimit}, {op: 'put', seq, kind, id,
// revision, body}, {op: 'delete', seq, kind, id, revision}, {op: 'close', seq}. Each is answered
// {seq, ok: true} or {seq, ok: false, errcode, errstr, errno, message}, in order.

import { statSync } from 'node:fs';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { parentPort } from 'node:worker_threads';

export type WriterRequest =
  | { op: 'open'; seq: number; path: string; busyTimeoutMs: number; journalSizeLimit: number }
  | { op: 'put'; seq: number; kind: string; id: string; revision: number; body: string }
  | { op: 'delete'; seq: number; kind: string; id: string; revision: number }
  | { op: 'close'; seq: number };

/** `errno`: set when the failure is no SQLite error (the files moved: ENOENT, ESTALE); else null. */
export type WriterReply =
  { seq: number; ok: true } | { seq: number; ok: false; errcode: number | null; errstr: string | null; errno: string | null; message: string };

let db: DatabaseSync | null = null;
let put: StatementSync | null = null;
let del: StatementSync | null = null;
let bump: StatementSync | null = null;
/** The files this connection writes, as `dev:ino`: the database's from the open, the WAL's from the first write. */
let files: { path: string; db: string | null; wal: string | null } | null = null;

/** `dev:ino` of the file at `p`, or null when there is none. */
function fileId(p: string): string | null {
  try {
    const s = statSync(p, { bigint: true });
    return `${s.dev}:${s.ino}`;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/**
 * Throws unless state.path still names the database and WAL this connection wrote to. SQLite
 * writes on through its open descriptors after its files were deleted, moved or replaced, and a
 * change written there would be acknowledged, then missing at the next start (which reads the
 * path). Asked after the commit, so that a move during it is seen too.
 */
function stillAtPath(): void {
  const f = files!;
  const db = fileId(f.path);
  const wal = fileId(`${f.path}-wal`);
  const moved = (errno: string, what: string): Error =>
    Object.assign(new Error(`${what}; restart egressd to use what is at the path now`), { errno, errstr: what });
  if (db === null) throw moved('ENOENT', 'the database was moved or deleted while egressd runs');
  if (db !== f.db) throw moved('ESTALE', 'another database was put in place of the one egressd opened');
  // A commit in WAL mode leaves the log in place (a checkpoint truncates it, never removes it).
  if (wal === null) throw moved('ENOENT', 'the write-ahead log was moved or deleted while egressd runs');
  if (f.wal !== null && wal !== f.wal) throw moved('ESTALE', 'another write-ahead log was put in place of the one egressd writes');
  f.wal = wal;
}

function handle(m: WriterRequest): void {
  if (m.op === 'open') {
    db = new DatabaseSync(m.path);
    // WAL: a change appends its pages to the log; FULL: the log is fsynced at every commit.
    const mode = db.prepare('PRAGMA journal_mode = WAL').get();
    if (String(Object.values(mode ?? {})[0]) !== 'wal') throw new Error('Cannot switch the database to WAL mode');
    db.exec(`PRAGMA synchronous = FULL; PRAGMA busy_timeout = ${m.busyTimeoutMs}; PRAGMA journal_size_limit = ${m.journalSizeLimit};`);
    put = db.prepare(
      'INSERT INTO entries (kind, id, revision, body) VALUES (?, ?, ?, ?) ON CONFLICT (kind, id) DO UPDATE SET revision = excluded.revision, body = excluded.body',
    );
    del = db.prepare('DELETE FROM entries WHERE kind = ? AND id = ?');
    bump = db.prepare("UPDATE meta SET value = ? WHERE key = 'revision'");
    files = { path: m.path, db: fileId(m.path), wal: null };
    return;
  }
  if (m.op === 'close') {
    const d = db;
    db = put = del = bump = null;
    files = null;
    if (d?.isOpen) d.close();
    return;
  }
  if (db === null) throw new Error('The state is not open');
  try {
    db.exec('BEGIN IMMEDIATE');
    if (m.op === 'put') put!.run(m.kind, m.id, m.revision, m.body);
    else del!.run(m.kind, m.id);
    bump!.run(m.revision);
    db.exec('COMMIT');
  } catch (err) {
    if (db.isTransaction) {
      try {
        db.exec('ROLLBACK');
      } catch {
        // SQLite rolled back already (SQLITE_FULL and SQLITE_IOERR do)
      }
    }
    throw err;
  }
  stillAtPath();
}

parentPort?.on('message', (m: WriterRequest) => {
  let reply: WriterReply;
  try {
    handle(m);
    reply = { seq: m.seq, ok: true };
  } catch (err) {
    const e = err as Error & { errcode?: number; errstr?: string; errno?: string };
    reply = { seq: m.seq, ok: false, errcode: e.errcode ?? null, errstr: e.errstr ?? null, errno: e.errno ?? null, message: e.message };
  }
  parentPort!.postMessage(reply);
});
