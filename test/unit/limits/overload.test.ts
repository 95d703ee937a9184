import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { MemoryGuard, cgroupChain } from '../../../src/limits/overload.ts';
import { acceptSlots, connectionBudget, openDescriptors, raiseNofile } from '../../../src/limits/descriptors.ts';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A fake cgroup v2 tree: /sys/fs/cgroup/<parent>/<child>, the process in child. */
function tree(files: { parentMax: string; childMax: string; childCurrent: string; childInactive?: number; parentCurrent?: string }) {
  const root = mkdtempSync(join(tmpdir(), 'egressd-cg-'));
  dirs.push(root);
  const parent = join(root, 'parent.slice');
  const child = join(parent, 'egressd.scope');
  mkdirSync(child, { recursive: true });
  writeFileSync(join(parent, 'memory.max'), files.parentMax);
  writeFileSync(join(parent, 'memory.current'), files.parentCurrent ?? files.childCurrent);
  writeFileSync(join(child, 'memory.max'), files.childMax);
  writeFileSync(join(child, 'memory.current'), files.childCurrent);
  writeFileSync(join(child, 'memory.stat'), `anon 1\ninactive_file ${files.childInactive ?? 0}\nactive_file 0\n`);
  const proc = join(root, 'cgroup');
  writeFileSync(proc, '0::/parent.slice/egressd.scope\n');
  return { root, proc };
}

describe('cgroupChain', () => {
  it('lists the process cgroup and every ancestor, nearest first', () => {
    const t = tree({ parentMax: 'max', childMax: 'max', childCurrent: '0' });
    expect(cgroupChain(t.root, t.proc)).toEqual([join(t.root, 'parent.slice/egressd.scope'), join(t.root, 'parent.slice'), t.root]);
  });
  it('is empty without cgroup v2', () => {
    expect(cgroupChain('/nonexistent', '/nonexistent/cgroup')).toEqual([]);
  });
});

describe('MemoryGuard', () => {
  const opts = { maxBytes: null, shedAt: 0.9, intervalMs: 250 };

  it('finds the limit on an ancestor when the own cgroup has none', () => {
    const t = tree({ parentMax: String(100 << 20), childMax: 'max', childCurrent: String(50 << 20) });
    const g = new MemoryGuard({ ...opts, cgroupRoot: t.root, procCgroup: t.proc });
    expect(g.cgroupLimitBytes).toBe(100 << 20);
  });

  it('reads a limit file it cannot make out (empty) as no limit, not as a limit of 0 bytes that sheds everything', () => {
    const t = tree({ parentMax: 'max', childMax: '', childCurrent: String(50 << 20) });
    const g = new MemoryGuard({ ...opts, cgroupRoot: t.root, procCgroup: t.proc });
    expect(g.cgroupLimitBytes).toBeNull();
    expect(g.refresh()).toBe(false);
  });

  it('sheds at shedAt, not before, and stops 0.05 below it', () => {
    const t = tree({ parentMax: 'max', childMax: String(100 << 20), childCurrent: String(85 << 20) });
    const changes: boolean[] = [];
    const g = new MemoryGuard({ ...opts, cgroupRoot: t.root, procCgroup: t.proc }, (s) => changes.push(s));
    expect(g.refresh()).toBe(false);
    writeFileSync(join(t.root, 'parent.slice/egressd.scope/memory.current'), String(91 << 20));
    expect(g.refresh()).toBe(true);
    expect(g.last.monitor).toBe('cgroup');
    writeFileSync(join(t.root, 'parent.slice/egressd.scope/memory.current'), String(87 << 20));
    expect(g.refresh()).toBe(true);
    writeFileSync(join(t.root, 'parent.slice/egressd.scope/memory.current'), String(84 << 20));
    expect(g.refresh()).toBe(false);
    expect(changes).toEqual([true, false]);
  });

  it('stops below shedAt itself once it holds no connection: a residue the flood left must not shed an idle daemon for good', () => {
    const t = tree({ parentMax: 'max', childMax: String(100 << 20), childCurrent: String(91 << 20) });
    const current = join(t.root, 'parent.slice/egressd.scope/memory.current');
    let held = 40;
    const changes: boolean[] = [];
    const g = new MemoryGuard({ ...opts, cgroupRoot: t.root, procCgroup: t.proc, held: () => held }, (s) => changes.push(s));
    expect(g.refresh()).toBe(true);
    // Between shedAt - 0.05 and shedAt: held connections keep it shedding (no flapping under load).
    writeFileSync(current, String(87 << 20));
    expect(g.refresh()).toBe(true);
    // The flood gone, the residue unchanged: it admits again.
    held = 0;
    expect(g.refresh()).toBe(false);
    // And sheds again only at shedAt.
    held = 3;
    expect(g.refresh()).toBe(false);
    writeFileSync(current, String(91 << 20));
    expect(g.refresh()).toBe(true);
    held = 0;
    expect(g.refresh()).toBe(true);
    expect(changes).toEqual([true, false, true]);
  });

  it('reads each file again on every sample: a limit set later, a value rewritten shorter, a long memory.stat', () => {
    const t = tree({ parentMax: 'max', childMax: 'max', childCurrent: String(50 << 20) });
    const child = join(t.root, 'parent.slice/egressd.scope');
    const g = new MemoryGuard({ ...opts, cgroupRoot: t.root, procCgroup: t.proc });
    expect(g.cgroupLimitBytes).toBeNull();
    // A limit set while running (Kubernetes' in-place resize), on the root too, where the file was absent.
    writeFileSync(join(child, 'memory.max'), String(1 << 30));
    writeFileSync(join(t.root, 'memory.max'), String(100 << 20));
    writeFileSync(join(t.root, 'memory.current'), String(91 << 20));
    expect(g.refresh()).toBe(true);
    expect(g.last.cgroupLimitBytes).toBe(100 << 20);
    // Shorter text than before: no stale digits left over from the longer one.
    writeFileSync(join(t.root, 'memory.current'), '7');
    // The inactive page cache far past the first bytes of memory.stat.
    writeFileSync(join(child, 'memory.stat'), `${Array.from({ length: 200 }, (_, i) => `key_${i} ${i}`).join('\n')}\ninactive_file ${40 << 20}\n`);
    expect(g.refresh()).toBe(false);
    expect(g.last.cgroupWorkingSetBytes).toBe(10 << 20);
    g.stop();
  });

  it('resamples at accept only after a burst of new connections and once the last sample is stale', async () => {
    const t = tree({ parentMax: 'max', childMax: String(100 << 20), childCurrent: String(50 << 20) });
    const current = join(t.root, 'parent.slice/egressd.scope/memory.current');
    const g = new MemoryGuard({ ...opts, cgroupRoot: t.root, procCgroup: t.proc });
    g.refresh();
    writeFileSync(current, String(95 << 20));
    await new Promise((r) => setTimeout(r, 60));
    // Stale, but a trickle of connections: the last sample stands (the timer resamples).
    for (let i = 0; i < 30; i++) expect(g.sheddingNow(50, 32)).toBe(false);
    // The burst's next connection resamples and sheds.
    expect(g.sheddingNow(50, 32)).toBe(false);
    expect(g.sheddingNow(50, 32)).toBe(true);
    // Fresh again: a burst within maxAgeMs does not resample.
    writeFileSync(current, String(50 << 20));
    for (let i = 0; i < 40; i++) expect(g.sheddingNow(50, 32)).toBe(true);
  });

  it('rests while no connection comes and the pressure is low: samples 8 times less often, and the next connection samples at once', async () => {
    const t = tree({ parentMax: 'max', childMax: String(100 << 20), childCurrent: String(10 << 20) });
    const current = join(t.root, 'parent.slice/egressd.scope/memory.current');
    const g = new MemoryGuard({ ...opts, intervalMs: 40, cgroupRoot: t.root, procCgroup: t.proc });
    g.start();
    try {
      writeFileSync(current, String(20 << 20));
      // Three usual intervals: a guard at its usual pace would have sampled twice; resting, it waits 320 ms.
      await new Promise((r) => setTimeout(r, 120));
      expect(g.last.cgroupWorkingSetBytes).toBe(10 << 20);
      // The first connection: a fresh sample, not the one from before the rest.
      writeFileSync(current, String(95 << 20));
      expect(g.sheddingNow()).toBe(true);
      expect(g.last.cgroupWorkingSetBytes).toBe(95 << 20);
      // Connections keep coming: the usual pace (twice as often near shedAt).
      writeFileSync(current, String(60 << 20));
      const deadline = Date.now() + 2000;
      while (g.last.cgroupWorkingSetBytes !== 60 << 20 && Date.now() < deadline) {
        g.sheddingNow();
        await new Promise((r) => setTimeout(r, 5));
      }
      expect(g.last.cgroupWorkingSetBytes).toBe(60 << 20);
      expect(g.shedding).toBe(false);
    } finally {
      g.stop();
    }
  });

  it('shrinks the heap once shedding starts, after the pending accepts, then at most once a second, and never while not shedding', async () => {
    const t = tree({ parentMax: 'max', childMax: String(100 << 20), childCurrent: String(50 << 20) });
    const current = join(t.root, 'parent.slice/egressd.scope/memory.current');
    const shrinks: { ms: number; before: number; after: number }[] = [];
    const g = new MemoryGuard({ ...opts, cgroupRoot: t.root, procCgroup: t.proc }, undefined, undefined, (ms, before, after) =>
      shrinks.push({ ms, before: before.pressure, after: after.pressure }),
    );
    const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
    g.refresh();
    await turn();
    expect(shrinks).toEqual([]);
    writeFileSync(current, String(95 << 20));
    expect(g.refresh()).toBe(true);
    // Not within the same turn: the accepts already waiting are refused first.
    expect(shrinks).toHaveLength(0);
    await turn();
    expect(shrinks).toHaveLength(1);
    expect(shrinks[0]!.before).toBeCloseTo(0.95);
    expect(shrinks[0]!.ms).toBeGreaterThanOrEqual(0);
    // Still shedding a moment later: no second shrink within the second.
    g.refresh();
    await turn();
    expect(shrinks).toHaveLength(1);
  });

  it('backs off shrinks that give little back, and shrinks again within the second once a quarter of the connections held have closed', async () => {
    const t = tree({ parentMax: 'max', childMax: String(100 << 20), childCurrent: String(95 << 20) });
    let held = 1000;
    const shrinks: number[] = [];
    let now = 0;
    const g = new MemoryGuard({ ...opts, cgroupRoot: t.root, procCgroup: t.proc, held: () => held, clock: () => now }, undefined, undefined, () =>
      shrinks.push(now),
    );
    const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
    try {
      const at = (ms: number): Promise<void> => {
        now = ms;
        g.refresh();
        return turn();
      };
      // Each shrink gives nothing back (memory.current stays): the wait doubles, 2 s then 4 s.
      for (const ms of [0, 1000, 2000, 3000, 4000, 5000, 6000, 7000]) await at(1_000_000 + ms);
      expect(shrinks.map((ms) => ms - 1_000_000)).toEqual([0, 2000, 6000]);
      // A few connections close: still 8 s to wait.
      held = 900;
      await at(1_008_100);
      expect(shrinks).toHaveLength(3);
      // A quarter of them have gone (the flood let go): what they held is garbage, shrink now.
      held = 700;
      await at(1_008_200);
      expect(shrinks).toHaveLength(4);
      // And with nothing left to free, the wait grows again.
      await at(1_009_000);
      expect(shrinks).toHaveLength(4);
      await at(1_010_200);
      expect(shrinks).toHaveLength(5);
    } finally {
      g.stop();
    }
  });

  // A step of the wall clock (NTP) back by an hour, made in this process alone (Date.now()
  // stepped); the guard's own clock is left as the daemon has it.
  it('resamples a stale sample at a burst after a step of the wall clock back', async () => {
    const t = tree({ parentMax: 'max', childMax: String(100 << 20), childCurrent: String(50 << 20) });
    const current = join(t.root, 'parent.slice/egressd.scope/memory.current');
    const g = new MemoryGuard({ ...opts, cgroupRoot: t.root, procCgroup: t.proc });
    g.refresh();
    const wall = Date.now.bind(Date);
    const spy = vi.spyOn(Date, 'now').mockImplementation(() => wall() - 3_600_000);
    try {
      writeFileSync(current, String(95 << 20));
      await new Promise((r) => setTimeout(r, 60));
      // Measured on Date.now(), the sample was an hour in the future and never stale.
      for (let i = 0; i < 31; i++) g.sheddingNow(50, 32);
      expect(g.sheddingNow(50, 32)).toBe(true);
    } finally {
      spy.mockRestore();
    }
  });

  it('shrinks a shedding heap again after its second though the wall clock stepped back', async () => {
    const t = tree({ parentMax: 'max', childMax: String(100 << 20), childCurrent: String(95 << 20) });
    let shrinks = 0;
    const g = new MemoryGuard({ ...opts, cgroupRoot: t.root, procCgroup: t.proc }, undefined, undefined, () => shrinks++);
    const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
    expect(g.refresh()).toBe(true);
    await turn();
    expect(shrinks).toBe(1);
    const wall = Date.now.bind(Date);
    const spy = vi.spyOn(Date, 'now').mockImplementation(() => wall() - 3_600_000);
    try {
      // SHRINK_EVERY_MS (1 s) later, bounded: measured on Date.now(), the next shrink waited out the hour.
      for (let i = 0; i < 40 && shrinks < 2; i++) {
        await new Promise((r) => setTimeout(r, 100));
        g.refresh();
        await turn();
      }
      expect(shrinks).toBe(2);
    } finally {
      spy.mockRestore();
      g.stop();
    }
  });

  it('does not count page cache the kernel can drop (inactive_file) as pressure', () => {
    const t = tree({ parentMax: 'max', childMax: String(100 << 20), childCurrent: String(95 << 20), childInactive: 40 << 20 });
    const g = new MemoryGuard({ ...opts, cgroupRoot: t.root, procCgroup: t.proc });
    expect(g.refresh()).toBe(false);
    expect(g.last.cgroupWorkingSetBytes).toBe(55 << 20);
  });

  it('reads a cgroup v1 memory hierarchy (limit_in_bytes, usage_in_bytes, total_inactive_file)', () => {
    const root = mkdtempSync(join(tmpdir(), 'egressd-cg1-'));
    dirs.push(root);
    const dir = join(root, 'memory', 'box');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(root, 'memory', 'memory.limit_in_bytes'), '9223372036854771712');
    writeFileSync(join(dir, 'memory.limit_in_bytes'), String(100 << 20));
    writeFileSync(join(dir, 'memory.usage_in_bytes'), String(96 << 20));
    writeFileSync(join(dir, 'memory.stat'), `inactive_file 1\ntotal_inactive_file ${2 << 20}\n`);
    const proc = join(root, 'cgroup');
    writeFileSync(proc, '4:memory:/box\n1:cpu:/\n0::/\n');
    const g = new MemoryGuard({ ...opts, cgroupRoot: root, procCgroup: proc });
    expect(g.cgroupLimitBytes).toBe(100 << 20);
    expect(g.refresh()).toBe(true);
    expect(g.last.cgroupWorkingSetBytes).toBe(94 << 20);
  });

  it('watches RSS against limits.memory.maxBytes', () => {
    const g = new MemoryGuard({ ...opts, maxBytes: 16 << 20, cgroupRoot: '/nonexistent' });
    expect(g.refresh()).toBe(true);
    expect(g.last.monitor).toBe('rss');
  });
});

describe('descriptors', () => {
  it('raises the soft RLIMIT_NOFILE to the hard limit through the addon', () => {
    const r = raiseNofile();
    expect(r.error).toBeNull();
    expect(r.after.soft).toBe(r.after.hard);
    expect(openDescriptors()).toBeGreaterThan(3);
  });
  it('budgets two descriptors a connection after what is open and the reserve', () => {
    expect(connectionBudget(256, 30, 64)).toBe(81);
    expect(connectionBudget(100, 60, 64)).toBe(0);
    expect(connectionBudget(null, 30, 64)).toBeNull();
  });
  it('gives each native loop a quarter of the descriptors left for connections as accept slots, 1 to 512, out of the budget', () => {
    // 256 - 30 - 64 = 162 left: 40 slots for two loops, and a budget of (162 - 40) / 2 = 61.
    expect(acceptSlots(256, 30, 64, 2)).toBe(20);
    expect(connectionBudget(256, 30 + 2 * 20, 64)).toBe(61);
    expect(acceptSlots(1_048_576, 30, 64, 2)).toBe(512);
    expect(acceptSlots(100, 60, 64, 2)).toBe(1);
    // No limit, or no loop accepting (the JS path admits in accept's own callback): none.
    expect(acceptSlots(null, 30, 64, 2)).toBeNull();
    expect(acceptSlots(256, 30, 64, 0)).toBeNull();
  });
});
