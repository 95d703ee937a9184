// The memory addon (native/memory.c) behind the guard's shrink: malloc_trim hands memory freed
// to the C allocator back to the kernel. Freed Buffers of a few MiB must come back as a smaller
// resident set.

import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';

const addon = createRequire(import.meta.url)('../../../native/build/memory.node') as { releaseFreeMemory: () => boolean; dropExecutablePages: () => number };
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime !== undefined;

/** Anonymous resident memory, bytes (/proc/self/status RssAnon). */
function rssAnon(): number {
  return statusBytes('RssAnon');
}
/** A /proc/self/status figure in bytes. */
function statusBytes(key: 'RssAnon' | 'RssFile'): number {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB$`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
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

describe('native/memory.c dropExecutablePages', () => {
  it.runIf(process.platform === 'linux')("unmaps the node executable's pages, and the code they hold maps back on use", async () => {
    // Touch code that is surely not hot yet: crypto, zlib, Intl.
    const { createHash } = await import('node:crypto');
    const { deflateSync, inflateSync } = await import('node:zlib');
    const digest = createHash('sha256').update('egressd').digest('hex');
    const before = statusBytes('RssFile');
    const dropped = addon.dropExecutablePages();
    expect(dropped).toBeGreaterThan(1024 * 1024);
    expect(statusBytes('RssFile')).toBeLessThan(before);
    // The same code runs again from the page cache, with the same results.
    expect(createHash('sha256').update('egressd').digest('hex')).toBe(digest);
    expect(inflateSync(deflateSync(Buffer.from('abc'.repeat(1000)))).toString()).toBe('abc'.repeat(1000));
    expect(new Intl.NumberFormat('de-DE').format(1234.5)).toBe('1.234,5');
    // Calling it again is harmless.
    expect(addon.dropExecutablePages()).toBeGreaterThanOrEqual(0);
  });
});
