// The API's state on disk. Written atomically before the API answers — write a temporary
// file, fsync it, rename it over the old one, fsync the folder — so a crash at any instant
// (kill -9 included) leaves the old state or the new one, never a torn file and never a lost
// acknowledged change. Writes are serialized: a later write never lands before an earlier one.

import { open, readFile, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export class StateFile<T> {
  readonly path: string;
  #queue: Promise<void> = Promise.resolve();
  #seq = 0;

  constructor(path: string) {
    this.path = path;
  }

  /** Reads the state, or null when there is none yet. A corrupt file is an error, not "none". */
  async read(): Promise<T | null> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    return JSON.parse(text) as T;
  }

  /** Resolves once the state is durable on disk. */
  write(state: T): Promise<void> {
    const text = `${JSON.stringify(state, null, 2)}\n`;
    const run = this.#queue.then(() => this.#writeNow(text));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #writeNow(text: string): Promise<void> {
    const dir = dirname(this.path);
    const tmp = join(dir, `.${basename(this.path)}.${process.pid}.${++this.#seq}.tmp`);
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(text, 'utf8');
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await rename(tmp, this.path);
    } catch (err) {
      await unlink(tmp).catch(() => {});
      throw err;
    }
    // The rename is durable only once the folder's entry is on disk.
    const d = await open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  }
}
