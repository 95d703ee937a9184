// Whether a build output is current, by the content of its inputs (scripts/build-native.ts,
// scripts/build-js.ts). A stamp file in the output holds the SHA-256 of every input's path and
// bytes, plus whatever else shapes the output (compiler, flags); the build is skipped while the
// stamp matches. Content, not modification times: a `git pull`, a branch switch or a copy that
// keeps old times all leave mtimes that can lie, a hash cannot. Hashing the ~120 input files
// takes a few milliseconds, so `npm test` and `npm start` can ask every time.

import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';

/** Every file under `dir`, recursively, as absolute paths sorted by name. */
export function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? filesUnder(join(dir, e.name)) : [join(dir, e.name)]))
    .sort();
}

/**
 * The hex SHA-256 of `files` (each its path relative to `root`, then its bytes) and of `extra`
 * (strings that shape the output but are not files: a compiler's name, flags).
 */
export function inputsHash(root: string, files: readonly string[], extra: readonly string[] = []): string {
  const h = createHash('sha256');
  for (const f of [...files].sort()) {
    const bytes = readFileSync(f);
    h.update(`${relative(root, f)}\0${bytes.length}\0`);
    h.update(bytes);
  }
  for (const e of extra) h.update(`\0extra\0${e}`);
  return h.digest('hex');
}

/**
 * True when `stamp` exists and records `hash`. Then its modification time is also set to now, so
 * a check by time (bin/egressd runs dist/ only when no file in src/ is newer than the stamp)
 * agrees that the output matches sources whose times moved while their bytes did not.
 */
export function stampMatches(stamp: string, hash: string): boolean {
  if (!existsSync(stamp) || readFileSync(stamp, 'utf8').trim() !== hash) return false;
  const now = new Date();
  utimesSync(stamp, now, now);
  return true;
}

/** Records `hash` in `stamp`, once the output it vouches for is complete. */
export function writeStamp(stamp: string, hash: string): void {
  writeFileSync(stamp, `${hash}\n`);
}
