// A file read whole is read only up to its bound: a regular file is refused by its size before a
// byte is read (sparse files here, gigabytes long, take no disk and no time), anything else when
// the bound is passed; what is within the bound is read exactly.

import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputTooLargeError, MAX_INPUT_FILE_BYTES, readBounded, readBoundedSync } from '../../../src/util/read-bounded.ts';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'egressd-read-bounded-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

const readers = [
  ['readBoundedSync', (p: string, max?: number) => Promise.resolve().then(() => readBoundedSync(p, max))],
  ['readBounded', (p: string, max?: number) => readBounded(p, max)],
] as const;

describe.each(readers)('%s', (_name, read) => {
  it('reads a file within the bound exactly, the bound itself included', async () => {
    const file = join(dir, 'exact');
    const bytes = Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 251));
    writeFileSync(file, bytes);
    expect((await read(file, 3000)).equals(bytes)).toBe(true);
    writeFileSync(join(dir, 'empty'), '');
    expect((await read(join(dir, 'empty'), 10)).length).toBe(0);
  });

  it('refuses a regular file one byte past the bound by its size', async () => {
    const file = join(dir, 'one-over');
    writeFileSync(file, Buffer.alloc(3001, 0x61));
    const err = await read(file, 3000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputTooLargeError);
    expect((err as InputTooLargeError).bytes).toBe(3001);
    expect((err as Error).message).toBe('it is 3001 bytes; at most 3000 are read');
  });

  it('refuses a sparse file of 4 GiB at the default bound without reading it', async () => {
    const file = join(dir, 'huge');
    writeFileSync(file, '');
    truncateSync(file, 4 * 1024 ** 3);
    const err = await read(file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputTooLargeError);
    expect((err as InputTooLargeError).bytes).toBe(4 * 1024 ** 3);
    expect((err as InputTooLargeError).max).toBe(MAX_INPUT_FILE_BYTES);
  });

  it('stops reading a device that never ends once the bound is passed (/dev/zero)', async () => {
    const err = await read('/dev/zero', 5_000_000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputTooLargeError);
    expect((err as InputTooLargeError).bytes).toBeNull();
    expect((err as Error).message).toBe('it is longer than 5000000 bytes, the most read');
  });

  it("gives the system's error for what cannot be read", async () => {
    await expect(read(join(dir, 'absent'))).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(read(dir)).rejects.toMatchObject({ code: 'EISDIR' });
  });
});
