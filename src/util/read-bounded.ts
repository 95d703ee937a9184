// A file an operator hands egressd to read whole (a configuration, a policy or captured bytes
// given to the CLI, standard input) is read only up to a bound. Read whole, a mistaken path (a
// disk image, /dev/zero, a log) costs memory out of all proportion, and past V8's longest string
// (about 512 MiB) decoding it throws a RangeError that names no file.

import { closeSync, constants, fstatSync, openSync, readSync, statfsSync } from 'node:fs';
import { open, statfs } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * The most bytes of such a file read: 64 MiB, the largest request body the admin API can be set
 * to take (`admin.maxBodyBytes`), so nothing longer could be sent to it anyway.
 */
export const MAX_INPUT_FILE_BYTES = 64 * 1_048_576;

/** A file longer than the bound; `bytes` is its size where known (a regular file), else null (a pipe). */
export class InputTooLargeError extends Error {
  readonly bytes: number | null;
  readonly max: number;
  constructor(bytes: number | null, max: number) {
    super(bytes === null ? `it is longer than ${max} bytes, the most read` : `it is ${bytes} bytes; at most ${max} are read`);
    this.name = 'InputTooLargeError';
    this.bytes = bytes;
    this.max = max;
  }
}

// What has been read, in up to 1 MiB pieces, holding no more than it read: a pipe or terminal
// gives what its writer has written so far (a line, a pipe's 64 KiB), and a piece of 1 MiB kept
// for each such read held 1 MiB for every few bytes (a policy typed or written a line at a time
// kept gigabytes for kilobytes). A read that fills less than its piece is copied out, and the
// piece read into again.
class Chunks {
  readonly #max: number;
  readonly #chunks: Buffer[] = [];
  #total = 0;
  #piece: Buffer | null = null;
  constructor(max: number) {
    this.#max = max;
  }
  /** Where the next read goes: one byte past the bound says the input is longer than it. */
  room(): Buffer {
    const want = Math.min(1_048_576, this.#max + 1 - this.#total);
    if (this.#piece === null || this.#piece.length < want) this.#piece = Buffer.allocUnsafe(want);
    return this.#piece.subarray(0, want);
  }
  /** `n` bytes (more than 0) were read into `room`. Throws InputTooLargeError past the bound. */
  took(room: Buffer, n: number): void {
    if (n === room.length && room.length === this.#piece?.length) {
      this.#chunks.push(room);
      this.#piece = null;
    } else {
      this.#chunks.push(Buffer.from(room.subarray(0, n)));
    }
    this.#total += n;
    if (this.#total > this.#max) throw new InputTooLargeError(null, this.#max);
  }
  bytes(): Buffer {
    return Buffer.concat(this.#chunks, this.#total);
  }
}

/** A file read where only a regular file may be (readBoundedSync's `regularOnly`), which is not one. */
export class NotRegularFileError extends Error {
  constructor(why: string) {
    super(`it is not a regular file (a pipe, a device, a socket): ${why}`);
    this.name = 'NotRegularFileError';
  }
}

/**
 * The bytes of `file` (a path, or a descriptor such as 0 for standard input), at most `max`.
 * A regular file is refused by its size before a byte is read; anything else (a pipe, a device)
 * is read until it ends or passes `max`. Throws InputTooLargeError past `max`, and the system's
 * error (ENOENT, EISDIR, ...) where it cannot be read.
 * A path is opened without waiting (O_NONBLOCK): a FIFO's open otherwise waits for a writer, for
 * ever when none comes (the CLI's `--token-file`, `--file`, `--policy`, `validate FILE` on a
 * `mkfifo` no one writes to waited for good). One that is not a regular file is then read as
 * its writer comes and writes, within `waitMs` (AGAIN_WAIT_MS) in all, else refused
 * (NothingAgainError: no writer came or it wrote nothing; AgainTimeoutError: it did not finish);
 * an anonymous pipe (`<(generate)`) has its writer already. A descriptor (standard input) is
 * read as it is given, without a bound in time.
 * `regularOnly` (a path read on the event loop while serving: the catalog at a reload): anything
 * but a regular file is refused before a byte is read (NotRegularFileError, saying
 * `regularOnly`'s reason).
 */
export function readBoundedSync(file: string | number, max = MAX_INPUT_FILE_BYTES, opts: { regularOnly?: string; waitMs?: number } = {}): Buffer {
  const fd = typeof file === 'number' ? file : openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (opts.regularOnly !== undefined && !st.isFile()) throw new NotRegularFileError(opts.regularOnly);
    if (st.isFile() && st.size > max) throw new InputTooLargeError(st.size, max);
    const into = new Chunks(max);
    if (typeof file === 'number' || st.isFile()) {
      for (;;) {
        const room = into.room();
        const n = readSome(fd, room);
        if (n === 0) break;
        into.took(room, n);
      }
      return into.bytes();
    }
    // As readBounded's reload: a FIFO opened without waiting reads as ended (0) until a writer
    // opens it, and as EAGAIN while one holds it with nothing written yet; its end is a 0 once a
    // writer was seen. Anything else (an anonymous pipe, a device) has its writer: its 0 is its end.
    const waitMs = opts.waitMs ?? AGAIN_WAIT_MS;
    const until = performance.now() + waitMs;
    let writer = !st.isFIFO() || anonymousPipe(file);
    for (;;) {
      const room = into.room();
      let n: number;
      try {
        n = readSync(fd, room, 0, room.length, null);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
        writer = true;
        n = -1;
      }
      if (n > 0) {
        writer = true;
        into.took(room, n);
        continue;
      }
      if (n === 0 && writer) break;
      if (performance.now() >= until) {
        if (!writer) throw new NothingAgainError(waitMs);
        throw new AgainTimeoutError(waitMs);
      }
      Atomics.wait(pause, 0, 0, AGAIN_POLL_MS);
    }
    return into.bytes();
  } finally {
    if (typeof file !== 'number') closeSync(fd);
  }
}

/** Whether `path` names an anonymous pipe (`<(generate)`'s /dev/fd/63), whose writer is there from the start. */
function anonymousPipe(path: string): boolean {
  try {
    return statfsSync(path).type === PIPEFS_MAGIC;
  } catch {
    return false;
  }
}

// Standard input may be in non-blocking mode though nothing here reads it as a stream: importing
// `node:process` as an ES module (commander does) builds process.stdin, and libuv sets O_NONBLOCK
// on a pipe or socket it opens. A writer slower than this reader then gives EAGAIN, which
// readFileSync(0) threw as it is ("Cannot read policy \"-\": EAGAIN"). Waited out here, 2 ms at a
// time: a command-line read, blocking as a blocking descriptor would.
const pause = new Int32Array(new SharedArrayBuffer(4));
function readSome(fd: number, chunk: Buffer): number {
  for (;;) {
    try {
      return readSync(fd, chunk, 0, chunk.length, null);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
      Atomics.wait(pause, 0, 0, 2);
    }
  }
}

/** A file read again (readBounded's `again`) that is not a regular file and gave nothing. */
export class NothingAgainError extends Error {
  constructor(waitedMs: number | null = null) {
    super(
      waitedMs === null
        ? 'it is not a regular file and gave nothing (a pipe read to its end before: what it held is not there to read again)'
        : `it is a FIFO that gave nothing within ${waitedMs} ms (no writer came, whose open would have waited for ever, or one wrote nothing)`,
    );
    this.name = 'NothingAgainError';
  }
}

/** A file read again (readBounded's `again`) that is not a regular file, whose writer did not finish within the wait. */
export class AgainTimeoutError extends Error {
  constructor(waitMs: number) {
    super(`it is not a regular file, and its writer did not finish within ${waitMs} ms`);
    this.name = 'AgainTimeoutError';
  }
}

/** statfs(2)'s f_type of the kernel's anonymous pipes (linux/magic.h). */
const PIPEFS_MAGIC = 0x50495045;

/** How long a reload waits for a file that is not a regular file (a FIFO) to be written whole. */
export const AGAIN_WAIT_MS = 10_000;
/** How often such a file is read again while its writer has not come or not finished. */
const AGAIN_POLL_MS = 20;

/**
 * As readBoundedSync, for a path, without blocking the event loop (a configuration reloaded while
 * serving). `again`: the file was read before (a reload), and one that is not a regular file and
 * gives nothing is refused (NothingAgainError): a pipe given at start-up (`<(generate)`,
 * `/dev/stdin`) was read to its end then, and its nothing is not an empty file. Read again, the
 * file is opened without waiting (O_NONBLOCK): a FIFO's open waits for a writer, for ever when
 * none comes, and every later reload waited behind it (main.ts runs one at a time). A FIFO is
 * then read as its writer comes and writes, within `waitMs` (AGAIN_WAIT_MS) in all, else
 * refused (AgainTimeoutError).
 */
export async function readBounded(path: string, max = MAX_INPUT_FILE_BYTES, opts: { again?: boolean; waitMs?: number } = {}): Promise<Buffer> {
  const again = opts.again === true;
  const handle = await open(path, again ? constants.O_RDONLY | constants.O_NONBLOCK : 'r');
  try {
    const st = await handle.stat();
    if (st.isFile() && st.size > max) throw new InputTooLargeError(st.size, max);
    const into = new Chunks(max);
    const waitMs = opts.waitMs ?? AGAIN_WAIT_MS;
    const until = performance.now() + waitMs;
    // A FIFO opened without waiting reads as ended (0) until a writer opens it, and as EAGAIN
    // while a writer holds it with nothing written yet: its end is a 0 once a writer was seen.
    // An anonymous pipe (`<(generate)`, /dev/stdin) is never waited for by the kernel: its 0 is its end.
    let writer =
      !again ||
      !st.isFIFO() ||
      (await statfs(path).then(
        (f) => f.type === PIPEFS_MAGIC,
        () => false,
      ));
    for (;;) {
      const room = into.room();
      let n: number;
      try {
        n = (await handle.read(room, 0, room.length, null)).bytesRead;
      } catch (err) {
        if (!again || (err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
        writer = true;
        n = -1;
      }
      if (n > 0) {
        writer = true;
        into.took(room, n);
        continue;
      }
      if (n === 0 && writer) break;
      if (performance.now() >= until) {
        if (!writer) throw new NothingAgainError(waitMs);
        throw new AgainTimeoutError(waitMs);
      }
      await sleep(AGAIN_POLL_MS);
    }
    const bytes = into.bytes();
    if (again && bytes.length === 0 && !st.isFile()) throw new NothingAgainError();
    return bytes;
  } finally {
    await handle.close();
  }
}
