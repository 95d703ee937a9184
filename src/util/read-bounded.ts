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
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      // One byte past the bound says the input is longer than it.
      const chunk = Buffer.allocUnsafe(Math.min(1_048_576, max + 1 - total));
      const n = readSome(fd, chunk);
      if (n === 0) break;
      chunks.push(n === chunk.length ? chunk : chunk.subarray(0, n));
      total += n;
      if (total > max) throw new InputTooLargeError(null, max);
    }
    return Buffer.concat(chunks, total);
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

/** As readBoundedSync, for a path, without blocking the event loop (a configuration reloaded while serving). */
export async function readBounded(path: string, max = MAX_INPUT_FILE_BYTES): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const st = await handle.stat();
    if (st.isFile() && st.size > max) throw new InputTooLargeError(st.size, max);
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const chunk = Buffer.allocUnsafe(Math.min(1_048_576, max + 1 - total));
      const { bytesRead } = await handle.read(chunk, 0, chunk.length, null);
      if (bytesRead === 0) break;
      chunks.push(bytesRead === chunk.length ? chunk : chunk.subarray(0, bytesRead));
      total += bytesRead;
      if (total > max) throw new InputTooLargeError(null, max);
    }
    return Buffer.concat(chunks, total);
  } finally {
    await handle.close();
  }
}
