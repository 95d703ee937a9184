// The memory addon (native/memory.c) behind the guard's shrink: malloc_trim hands memory freed
// to the C allocator back to the kernel. Freed Buffers of a few MiB must come back as a smaller
// resident set.

import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';

const addon = createRequire(import.meta.url)('../../../native/build/memory.node') as { releaseFreeMemory: () => boolean };
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime !== undefined;

/** Anonymous resident memory, bytes (/proc/self/status RssAnon). */
function rssAnon(): number {
  const m = /^RssAnon:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}

describe('native/memory.c releaseFreeMemory', () => {
  it.skipIf(!glibc)('returns memory freed to malloc to the kernel', () => {
    addon.releaseFreeMemory();
    // Many small chunks (below glibc's mmap threshold), so they live in malloc's arenas and
    // stay resident once freed; every other one is kept so that the top of the heap is in use.
    const chunks: (Buffer | null)[] = Array.from({ length: 4000 }, () => Buffer.allocUnsafeSlow(16 * 1024).fill(1));
    for (let i = 0; i < chunks.length; i += 2) chunks[i] = null;
    gc();
    const before = rssAnon();
    expect(addon.releaseFreeMemory()).toBe(true);
    expect(rssAnon()).toBeLessThan(before);
    expect(chunks.filter((c) => c !== null)).toHaveLength(2000);
  });
});
