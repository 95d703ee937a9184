// A file an operator hands egressd to read whole (a configuration, a policy or captured bytes
// given to the CLI, standard input) is read only up to a bound. Read whole, a mistaken path (a
// disk image, /dev/zero, a log) costs memory out of all proportion, and past V8's longest string
// (about 512 MiB) decoding it throws a RangeError that names no file.

import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';

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

/**
 * The bytes of `file` (a path, or a descriptor such as 0 for standard input), at most `max`.
 * A regular file is refused by its size before a byte is read; anything else (a pipe, a device)
 * is read until it ends or passes `max`. Throws InputTooLargeError past `max`, and the system's
 * error (ENOENT, EISDIR, ...) where it cannot be read.
 */
export function readBoundedSync(file: string | number, max = MAX_INPUT_FILE_BYTES): Buffer {
  const fd = typeof file === 'number' ? file : openSync(file, 'r');
  try {
    const st = fstatSync(fd);
    if (st.isFile() && st.size > max) throw new InputTooLargeError(st.size, max);
    const into = new Chunks(max);
    for (;;) {
      const room = into.room();
      const n = readSome(fd, room);
      if (n === 0) break;
      into.took(room, n);
    }
    return into.bytes();
  } finally {
    if (typeof file !== 'number') closeSync(fd);
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
  constructor() {
    super('it is not a regular file and gave nothing (a pipe read to its end before: what it held is not there to read again)');
    this.name = 'NothingAgainError';
  }
}

/**
 * As readBoundedSync, for a path, without blocking the event loop (a configuration reloaded while
 * serving). `again`: the file was read before (a reload), and one that is not a regular file and
 * gives nothing is refused (NothingAgainError): a pipe given at start-up (`<(generate)`,
 * `/dev/stdin`) was read to its end then, and its nothing is not an empty file.
 */
export async function readBounded(path: string, max = MAX_INPUT_FILE_BYTES, opts: { again?: boolean } = {}): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const st = await handle.stat();
    if (st.isFile() && st.size > max) throw new InputTooLargeError(st.size, max);
    const into = new Chunks(max);
    for (;;) {
      const room = into.room();
      const { bytesRead } = await handle.read(room, 0, room.length, null);
      if (bytesRead === 0) break;
      into.took(room, bytesRead);
    }
    const bytes = into.bytes();
    if (opts.again === true && bytes.length === 0 && !st.isFile()) throw new NothingAgainError();
    return bytes;
  } finally {
    await handle.close();
  }
}
