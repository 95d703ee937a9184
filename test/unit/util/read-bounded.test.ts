// A file read whole is read only up to its bound: a regular file is refused by its size before a
// byte is read (sparse files here, gigabytes long, take no disk and no time), anything else when
// the bound is passed; what is within the bound is read exactly.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AgainTimeoutError,
  InputTooLargeError,
  MAX_INPUT_FILE_BYTES,
  NotRegularFileError,
  NothingAgainError,
  readBounded,
  readBoundedSync,
} from '../../../src/util/read-bounded.ts';

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

// A reload reads its file again: a pipe read to its end at start-up gives nothing then, which is
// not an empty file. A FIFO that is written again, and an empty regular file, are read as they are.
describe.skipIf(process.platform !== 'linux')("readBounded's again", () => {
  it('refuses a file that is not a regular file and gives nothing, and reads the rest', async () => {
    const fifo = join(dir, 'again.fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const readOnce = async (body: string | null): Promise<unknown> => {
      const reading = readBounded(fifo, undefined, { again: true, waitMs: 2000 }).catch((e: unknown) => e);
      const w = await open(fifo, 'w'); // once the read has opened it
      if (body !== null) await w.writeFile(body);
      await w.close();
      return reading;
    };
    expect(await readOnce(null)).toBeInstanceOf(NothingAgainError);
    expect(String(await readOnce('sandboxes: []\n'))).toBe('sandboxes: []\n');
    await expect(readBounded('/dev/null', undefined, { again: true })).rejects.toBeInstanceOf(NothingAgainError);
    await expect(readBounded('/dev/null')).resolves.toHaveLength(0);
    writeFileSync(join(dir, 'empty-again'), '');
    await expect(readBounded(join(dir, 'empty-again'), undefined, { again: true })).resolves.toHaveLength(0);
  });

  // A FIFO's open waits for a writer: with none, a reload's read waited for ever, and every
  // reload after it waited behind it. Read again, it is waited for within waitMs, then refused.
  it('refuses a FIFO no one writes to, and one whose writer never finishes, once the wait is over', async () => {
    const fifo = join(dir, 'unwritten.fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const none = await readBounded(fifo, undefined, { again: true, waitMs: 300 }).catch((e: unknown) => e);
    expect(none).toBeInstanceOf(NothingAgainError);
    expect(String(none)).toContain('it is a FIFO that gave nothing within 300 ms (no writer came');
    // A writer that holds it open, writing half a document and never closing.
    const reading = readBounded(fifo, undefined, { again: true, waitMs: 300 }).catch((e: unknown) => e);
    const w = await open(fifo, 'w');
    try {
      await w.write('sandboxes:');
      const stuck = await reading;
      expect(stuck).toBeInstanceOf(AgainTimeoutError);
      expect(String(stuck)).toContain('its writer did not finish within 300 ms');
    } finally {
      await w.close();
    }
    // A FIFO written after the read began is read whole, as before.
    const later = readBounded(fifo, undefined, { again: true, waitMs: 5000 });
    await new Promise((r) => setTimeout(r, 100));
    const w2 = await open(fifo, 'w');
    await w2.writeFile('sandboxes: []\n');
    await w2.close();
    expect(String(await later)).toBe('sandboxes: []\n');
  });

  // Read on the event loop while serving (the catalog at a reload), a FIFO's open would hold
  // every connection: refused before a byte is read, and never waited for.
  it("readBoundedSync's regularOnly refuses anything but a regular file without waiting for a writer", () => {
    const fifo = join(dir, 'regular-only.fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    expect(() => readBoundedSync(fifo, undefined, { regularOnly: 'read while serving' })).toThrow(NotRegularFileError);
    expect(() => readBoundedSync('/dev/null', undefined, { regularOnly: 'read while serving' })).toThrow(
      'it is not a regular file (a pipe, a device, a socket): read while serving',
    );
    writeFileSync(join(dir, 'regular'), 'x');
    expect(String(readBoundedSync(join(dir, 'regular'), undefined, { regularOnly: 'read while serving' }))).toBe('x');
  });
});

// A pipe gives what its writer has written so far: a policy piped a line at a time is read in
// as many reads. Each read's piece (1 MiB) was kept whole for the few bytes it held, so kilobytes
// written slowly held gigabytes. Here a reader in a process whose address space is limited to
// 512 MiB past what it needs to start (ulimit -v) reads ~2,000 lines written 1 ms apart: the
// pieces kept for them would need ~2 GiB (more than 512 reads fail the limit), what they hold 100 KB.
describe.skipIf(process.platform !== 'linux')('an input written a little at a time', () => {
  // dist/ (global-setup.ts builds it): a .ts module would have Node strip its types with a
  // WebAssembly module whose gigabytes of reserved address space come and go, moving the limit.
  const MODULE = join(import.meta.dirname, '../../../dist/util/read-bounded.js');
  const writer = `let i = 0;
const t = setInterval(() => {
  process.stdout.write('x'.repeat(49) + '\\n');
  if (++i === 2000) { clearInterval(t); process.stdout.end(); }
}, 1);
`;
  const reader = (how: string): string => `import { readFileSync } from 'node:fs';
import * as m from ${JSON.stringify(MODULE)};
if (process.argv[2] === 'size') console.log(/VmSize:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]);
else { const b = ${how}; console.log(b.length, new Set(b.toString()).size); }
`;
  for (const [name, how] of [
    ['readBoundedSync(0)', 'm.readBoundedSync(0)'],
    ["readBounded('/dev/stdin')", "await m.readBounded('/dev/stdin')"],
  ] as const) {
    it(`${name} holds what it read, not a 1 MiB piece for each read`, { timeout: 60_000 }, () => {
      const w = join(dir, 'writer.mjs');
      const r = join(dir, `reader-${name.length}.mjs`);
      writeFileSync(w, writer);
      writeFileSync(r, reader(how));
      const size = spawnSync(process.execPath, [r, 'size'], { encoding: 'utf8' });
      expect(size.status, size.stderr).toBe(0);
      const limitKb = Number(size.stdout.trim()) + 512 * 1024;
      const run = spawnSync('bash', ['-c', 'node "$1" | (ulimit -v "$3" && exec node "$2" read)', 'bash', w, r, String(limitKb)], {
        encoding: 'utf8',
        env: { ...process.env, PATH: `${join(process.execPath, '..')}:${process.env['PATH'] ?? ''}` },
      });
      expect(run.stderr).toBe('');
      expect(run.stdout).toBe('100000 2\n');
      expect(run.status).toBe(0);
    });
  }
});
