// The memory overload guard, after Envoy's overload manager: resource monitors each report a
// pressure in [0, 1] (used / limit), sampled on a timer (Envoy's refresh_interval, 250 ms by
// default); when the highest crosses `shedAt`, new connections are refused at accept (Envoy's
// `envoy.load_shed_points.tcp_listener_accept`) until it falls back below `shedAt - 0.05`.
// Spliced connections are left alone: shedding new work is what keeps the process under the
// kernel's OOM killer without cutting anyone's running transfer. As shedding starts, and then
// at most once a second while it lasts (less often while shrinks give little back), the heap is
// shrunk (Envoy's shrink_heap): a full collection (memory-reducing when V8's young generation
// has outgrown the limit, see collect) and malloc_trim; under a memory limit the young
// generation is also held at its size when V8 was sized for more (holdYoungGeneration). Past the critical mark,
// halfway from `shedAt` to 1 (0.9 by default), `onCritical` runs on every sample: the caller
// resets the connections still being peeked, the cheapest to lose and what a slow-hello flood
// is made of (Envoy's reduce_timeouts action, taken to zero for the peek).
//
// Monitors:
//   cgroup  the working set (memory.current minus inactive_file, as the kubelet counts it:
//           page cache the kernel can drop is not pressure) over memory.max, for the
//           process's cgroup and every ancestor with a limit (cgroup v2; on a cgroup v1
//           memory hierarchy, memory.usage_in_bytes minus total_inactive_file over
//           memory.limit_in_bytes)
//   rss     the process's resident set over `limits.memory.maxBytes`, when set
//   heap    V8's used heap over its heap_size_limit (--max-old-space-size)

import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { getHeapSpaceStatistics, getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

export interface MemoryGuardOptions {
  /** A cap on RSS in bytes, or null for none (the cgroup's memory.max still applies). */
  readonly maxBytes: number | null;
  /** The pressure (0..1) at which new connections are shed. */
  readonly shedAt: number;
  /** How often to sample, ms; sampled twice as often above shedAt - 0.1. */
  readonly intervalMs: number;
  /** The cgroup v2 mount point and the process's cgroup file (tests point them elsewhere). */
  readonly cgroupRoot?: string;
  readonly procCgroup?: string;
  /**
   * The connections held now (admitted and not yet closed), or absent: what a shrink that gave
   * little back found the memory in use by, so their leaving makes the next shrink worth its cost
   * again (SHRINK_EVERY_MS).
   */
  readonly held?: () => number;
  /**
   * A monotonic ms clock for the sample's age and the shrinks' spacing (default performance.now():
   * on the wall clock, a step back left a stale sample and a shedding heap unshrunk for the
   * step's length); tests replace it to move time without waiting.
   */
  readonly clock?: () => number;
}

export interface MemorySample {
  /** The highest pressure of any monitor, 0..1 (can exceed 1 briefly). */
  readonly pressure: number;
  /** Which monitor gave it: cgroup, rss or heap. */
  readonly monitor: 'cgroup' | 'rss' | 'heap';
  readonly rssBytes: number;
  /** The tightest memory.max above this process, or null without one. */
  readonly cgroupLimitBytes: number | null;
  readonly cgroupWorkingSetBytes: number | null;
}

const HYSTERESIS = 0.05;
/** New connections since the last sample before one at accept may resample (sheddingNow). */
const SAMPLE_BURST = 32;
/**
 * Resting: no connection was asked about since the last sample and the pressure is under half of
 * shedAt. The timer then looks this many times less often (2 s at the default 250 ms), so an idle
 * egressd is not woken 4 times a second for a figure nothing reads; the next connection samples
 * at once (sheddingNow) and the usual pace resumes. With no new connection, nothing is admitted
 * on a stale figure, and none is still being peeked for a critical sample to reset.
 */
const RESTING_FACTOR = 8;
/**
 * The shortest time between two shrinks while shedding. A shrink that gave back less than
 * SHRINK_WORTHWHILE of the limit doubles the wait, up to SHRINK_EVERY_MAX_MS: the memory is in
 * use by the connections held, and each shrink stops the event loop (a 10,000-connection flood
 * held at 0.78-0.80 ran 24 of them, 0.1-0.4 s each, 22 giving back under 0.03, bench/RESULTS.md).
 * Shedding anew starts over, and so does SHRINK_HELD_GONE of the connections held at the last
 * shrink having closed: what they held is garbage now, and only a shrink hands it back. Without
 * that, a flood that closed just after a shrink that gave little left the guard shedding for up
 * to 8 s with the flood gone (the memory e2e test measured 7.3 s of its 10 s window).
 */
const SHRINK_EVERY_MS = 1000;
const SHRINK_EVERY_MAX_MS = 8000;
const SHRINK_WORTHWHILE = 0.03;
const SHRINK_HELD_GONE = 0.25;
/**
 * A young generation (V8's new space) this large was sized for the machine, not the limit: V8
 * keeps it within 4 MiB when it sees a 160 MiB limit at start. Only then is the memory-reducing
 * collection worth its cost: several full collections, 0.7–1 s of stopped event loop measured on
 * the loaded 2-core test machine, against 0.25 s for a plain one.
 */
const YOUNG_GENERATION_SHRINK_BYTES = 8 * 1_048_576;

/**
 * V8's memory-reducing full collection, for Envoy's shrink_heap action. V8 sizes its young
 * generation from the memory it sees at start (under a 160 MiB cgroup limit, at most 4 MiB),
 * so a limit set or resized after start (Kubernetes' in-place resize; the memory e2e test) is
 * never seen: under a flood the young generation grew from 7 to 31 MiB, sized for the machine,
 * two thirds of a 48 MiB headroom, and kept that size after the flood with 2 MiB of it in use,
 * so the guard went on shedding long after the flood was gone. A plain `gc()` collects but
 * keeps the space; the `last-resort` flavour (V8's CollectAllAvailableGarbage) also shrinks the
 * young generation and releases pooled pages (measured: new space 16 → 0.3 MiB, RSS 103 → 56
 * MiB). `--expose-gc` set at run time and read in a fresh context gives `gc` without a
 * command-line flag; null if this V8 refuses.
 */
const gc: ((options?: { type: 'major'; execution: 'sync'; flavor: 'regular' | 'last-resort' }) => void) | null = (() => {
  try {
    setFlagsFromString('--expose-gc');
    const f: unknown = runInNewContext('gc');
    return typeof f === 'function' ? (f as () => void) : null;
  } catch {
    return null;
  }
})();

/** A full collection; memory-reducing when the young generation has outgrown a limited process. */
function collect(): void {
  if (gc === null) return;
  const young = getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_size ?? 0;
  gc({ type: 'major', execution: 'sync', flavor: young >= YOUNG_GENERATION_SHRINK_BYTES ? 'last-resort' : 'regular' });
}

/**
 * glibc's malloc_trim through the small memory addon (native/memory.c): memory freed to the C
 * allocator (Buffers, libuv handles) handed back to the kernel. Null without the addon (npm ci
 * builds it) or off glibc.
 */
const memoryAddon: { releaseFreeMemory?: unknown; dropExecutablePages?: unknown } = (() => {
  try {
    return createRequire(import.meta.url)('../../native/build/memory.node') as { releaseFreeMemory?: unknown; dropExecutablePages?: unknown };
  } catch {
    return {};
  }
})();
const releaseFreeMemory: (() => boolean) | null = typeof memoryAddon.releaseFreeMemory === 'function' ? (memoryAddon.releaseFreeMemory as () => boolean) : null;
const dropExecutablePages: (() => number) | null =
  typeof memoryAddon.dropExecutablePages === 'function' ? (memoryAddon.dropExecutablePages as () => number) : null;

/** What releaseStartupMemory handed back, in bytes of RSS (a figure of the start-up log line). */
export interface StartupRelease {
  /** RSS before and after, from /proc/self/status (null off Linux). */
  readonly rssBefore: number | null;
  readonly rssAfter: number | null;
  /** The node executable's pages unmapped from this process (native/memory.c dropExecutablePages). */
  readonly executableBytes: number;
}

/**
 * Hands back what start-up used and serving does not, once the listeners are up (issue 12: idle
 * RSS). Start-up compiles every module, parses the config, the catalog and the schemas, and
 * leaves: a young generation grown to ≈ 7 MiB for that burst, garbage, and freed C memory
 * glibc keeps in its arenas (≈ 13 MiB together), and ≈ 50 MB of the node executable's pages
 * mapped (the loader, the parser, the compilers' first tiers, ICU), ≈ 4 MB of which serving
 * touches again. So: V8's memory-reducing collection (the young generation shrinks and grows
 * back with load), malloc_trim, and the executable's clean pages unmapped (they stay in the page
 * cache and map back on use; native/memory.c says which mappings qualify). Runs once, for tens
 * of milliseconds, before the first connection is accepted.
 */
export function releaseStartupMemory(): StartupRelease {
  const rss = (): number | null => {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
      return m ? Number(m[1]) * 1024 : null;
    } catch {
      return null;
    }
  };
  const rssBefore = rss();
  gc?.({ type: 'major', execution: 'sync', flavor: 'last-resort' });
  releaseFreeMemory?.();
  const executableBytes = dropExecutablePages?.() ?? 0;
  return { rssBefore, rssAfter: rss(), executableBytes };
}

/**
 * The cgroup directories from this process's own up to the root: cgroup v2's (the `0::` line),
 * or with `v1`, those of the cgroup v1 memory hierarchy (the `memory` line, under root/memory).
 */
export function cgroupChain(root = '/sys/fs/cgroup', procCgroup = '/proc/self/cgroup', v1 = false): string[] {
  let rel: string;
  try {
    const lines = readFileSync(procCgroup, 'utf8').split('\n');
    const line = v1 ? lines.find((l) => /^\d+:([^:]*,)?memory(,[^:]*)?:/.test(l)) : lines.find((l) => l.startsWith('0::'));
    if (line === undefined) return [];
    rel = line.slice(line.indexOf(':', line.indexOf(':') + 1) + 1).trim();
    if (v1) root = join(root, 'memory');
  } catch {
    return [];
  }
  const out: string[] = [];
  const parts = rel.split('/').filter(Boolean);
  for (let i = parts.length; i >= 0; i--) out.push(join(root, ...parts.slice(0, i)));
  return out;
}

/**
 * One cgroup file, read again on every sample (a limit can change while egressd runs) through a
 * descriptor kept open: pread(2) at offset 0 re-reads a cgroup file as a fresh open does, and a
 * sample costs one system call a file rather than readFileSync's open, fstat, read, read and
 * close (the guard samples up to every 50 ms under a flood; issue 12). A file that cannot be
 * opened (absent, EMFILE) is tried again at the next sample; an absent one (the root cgroup has
 * no memory.max) is found so by stat(2), without the cost of an exception.
 */
class CgroupFile {
  readonly #path: string;
  #fd = -1;
  #buf = Buffer.allocUnsafe(256);

  constructor(path: string) {
    this.#path = path;
  }

  /** The file's whole text, or null when it cannot be read. */
  text(): string | null {
    try {
      if (this.#fd < 0) {
        if (statSync(this.#path, { throwIfNoEntry: false }) === undefined) return null;
        this.#fd = openSync(this.#path, 'r');
      }
      for (;;) {
        const n = readSync(this.#fd, this.#buf, 0, this.#buf.length, 0);
        // A file that filled the buffer may hold more (memory.stat): read it again, whole.
        if (n < this.#buf.length) return this.#buf.toString('latin1', 0, n);
        this.#buf = Buffer.allocUnsafe(this.#buf.length * 4);
      }
    } catch {
      this.close();
      return null;
    }
  }

  /** The file's number ("max" and unreadable: null). */
  number(): number | null {
    // The kernel writes "max" or decimal digits, and a line break. Number() read an empty read
    // as 0, a limit of 0 bytes: every connection shed as overload.
    const m = /^(max|\d{1,20})\n?$/.exec(this.text() ?? '');
    return m === null || m[1] === 'max' ? null : Number(m[1]);
  }

  close(): void {
    if (this.#fd >= 0) {
      try {
        closeSync(this.#fd);
      } catch {
        // already gone
      }
    }
    this.#fd = -1;
  }
}

/** One cgroup of the chain: its limit, its usage, and its memory.stat with the inactive page cache's key. */
interface CgroupFiles {
  readonly max: CgroupFile;
  readonly current: CgroupFile;
  readonly stat: CgroupFile;
  readonly inactive: RegExp;
}

function inactiveFile(c: CgroupFiles): number {
  const t = c.stat.text();
  const m = t === null ? null : c.inactive.exec(t);
  return m ? Number(m[1]) : 0;
}

export class MemoryGuard {
  readonly #opts: MemoryGuardOptions;
  /**
   * The process's cgroups (own and ancestors). Their limits are read on every sample, not once:
   * a limit can be set or resized while egressd runs (Kubernetes' in-place resize).
   */
  readonly #chain: CgroupFiles[] = [];
  #timer: NodeJS.Timeout | null = null;
  /** The timer is waiting RESTING_FACTOR intervals (see RESTING_FACTOR). */
  #resting = false;
  #last: MemorySample;
  #shedding = false;
  readonly #clock: () => number;
  /** When the last sample was taken (#clock ms). */
  #sampledAt = -Infinity;
  /** sheddingNow's calls since the last sample. */
  #askedSince = 0;
  /** When the heap was last shrunk (#clock ms): never yet, so the first shrink need not wait. */
  #shrunkAt = -Infinity;
  #youngHeld = false;
  #shrinkPending = false;
  #shrinkEveryMs = SHRINK_EVERY_MS;
  /** opts.held() at the last shrink. */
  #heldAtShrink = 0;
  readonly #onChange: (shedding: boolean, s: MemorySample) => void;
  readonly #onCritical: (s: MemorySample) => void;
  readonly #onShrink: (ms: number, before: MemorySample, after: MemorySample) => void;

  constructor(
    opts: MemoryGuardOptions,
    onChange: (shedding: boolean, s: MemorySample) => void = () => {},
    onCritical: (s: MemorySample) => void = () => {},
    onShrink: (ms: number, before: MemorySample, after: MemorySample) => void = () => {},
  ) {
    this.#opts = opts;
    this.#clock = opts.clock ?? (() => performance.now());
    this.#onChange = onChange;
    this.#onCritical = onCritical;
    this.#onShrink = onShrink;
    const files = (dir: string, max: string, current: string, inactive: string): CgroupFiles => ({
      max: new CgroupFile(join(dir, max)),
      current: new CgroupFile(join(dir, current)),
      stat: new CgroupFile(join(dir, 'memory.stat')),
      inactive: new RegExp(`^${inactive} (\\d+)$`, 'm'),
    });
    for (const dir of cgroupChain(opts.cgroupRoot, opts.procCgroup)) {
      this.#chain.push(files(dir, 'memory.max', 'memory.current', 'inactive_file'));
    }
    for (const dir of cgroupChain(opts.cgroupRoot, opts.procCgroup, true)) {
      this.#chain.push(files(dir, 'memory.limit_in_bytes', 'memory.usage_in_bytes', 'total_inactive_file'));
    }
    this.#last = this.sample();
  }

  /** The limits found at start, for the start-up log line and the metrics. */
  get cgroupLimitBytes(): number | null {
    return this.#last.cgroupLimitBytes;
  }

  get shedding(): boolean {
    return this.#shedding;
  }

  get last(): MemorySample {
    return this.#last;
  }

  /** Reads every monitor now. */
  sample(): MemorySample {
    // rss() reads /proc/self/stat: with every descriptor taken (EMFILE) it throws, and the
    // guard must never take the process down; the last figure stands in until it can read.
    let rss = this.#last?.rssBytes ?? 0;
    try {
      rss = process.memoryUsage.rss();
    } catch {
      // keep the last figure
    }
    let pressure = 0;
    let monitor: MemorySample['monitor'] = 'rss';
    let ws: number | null = null;
    let limit: number | null = null;
    for (const l of this.#chain) {
      const max = l.max.number();
      // cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages); v2 as "max".
      if (max === null || max >= 2 ** 60) continue;
      const current = l.current.number();
      if (current === null) continue;
      const w = Math.max(0, current - inactiveFile(l));
      const p = w / max;
      if (limit === null || p > pressure) {
        ws = w;
        limit = max;
      }
      if (p > pressure) {
        pressure = p;
        monitor = 'cgroup';
      }
    }
    if (this.#opts.maxBytes !== null && rss / this.#opts.maxBytes > pressure) {
      pressure = rss / this.#opts.maxBytes;
      monitor = 'rss';
    }
    const h = getHeapStatistics();
    if (h.heap_size_limit > 0 && h.used_heap_size / h.heap_size_limit > pressure) {
      pressure = h.used_heap_size / h.heap_size_limit;
      monitor = 'heap';
    }
    return { pressure, monitor, rssBytes: rss, cgroupLimitBytes: limit, cgroupWorkingSetBytes: ws };
  }

  /**
   * Whether new connections are shed (asked once per new connection), resampling first when
   * `burst` connections were asked about since the last sample and it is older than `maxAgeMs`:
   * a flood can climb faster than the timer looks. Memory grows with the connections taken on,
   * so fewer than `burst` of them cannot move it far between the timer's samples; a sample (a few
   * files read, tens of µs) is then not paid every 50 ms by a steady trickle of connections.
   */
  sheddingNow(maxAgeMs = 50, burst = SAMPLE_BURST): boolean {
    if (this.#resting) return this.#wake();
    if (++this.#askedSince < burst) return this.#shedding;
    return this.#clock() - this.#sampledAt > maxAgeMs ? this.refresh() : this.#shedding;
  }

  /** Samples now and updates the shedding state; returns whether new connections are shed. */
  refresh(): boolean {
    this.#sampledAt = this.#clock();
    this.#askedSince = 0;
    this.#last = this.sample();
    this.#holdYoungGeneration(this.#sizedAboveLimit());
    const p = this.#last.pressure;
    // The hysteresis keeps shedding from flapping while connections press on the memory. With none
    // held, nothing flaps and nothing grows: shedding ends below shedAt itself. A flood leaves a
    // residue no shrink hands back (the old generation's fragments, the allocator's arenas), and
    // in the limits e2e test that residue sat at 0.765 of the limit, above shedAt - 0.05, so an
    // idle egressd refused every sandbox's connections long after the flood (1 run in 4).
    const idle = this.#opts.held !== undefined && this.#opts.held() === 0;
    const next = this.#shedding ? p >= this.#opts.shedAt - (idle ? 0 : HYSTERESIS) : p >= this.#opts.shedAt;
    if (next !== this.#shedding) {
      this.#shedding = next;
      this.#onChange(next, this.#last);
    }
    // After this turn's pending accepts are shed (setImmediate runs after the poll phase): the
    // shrink stops the event loop, and the backlog that builds meanwhile must not find it open.
    if (!this.#shedding || (this.#opts.held !== undefined && this.#opts.held() < this.#heldAtShrink * (1 - SHRINK_HELD_GONE))) {
      this.#shrinkEveryMs = SHRINK_EVERY_MS;
    }
    if (this.#shedding && !this.#shrinkPending && this.#sampledAt - this.#shrunkAt >= this.#shrinkEveryMs) {
      this.#shrinkPending = true;
      setImmediate(() => {
        this.#shrinkPending = false;
        if (this.#shedding) this.#shrink();
      }).unref();
    }
    if (p >= this.#opts.shedAt + (1 - this.#opts.shedAt) / 2) this.#onCritical(this.#last);
    return this.#shedding;
  }

  /**
   * Envoy's shrink_heap: a memory-reducing collection, then the C allocator's free pages back
   * to the kernel, and a fresh sample (shedding stops at the next refresh if that was enough).
   * The event loop stops while it runs; `onShrink` gets how long and the samples around it.
   */
  #shrink(): void {
    const t0 = performance.now();
    const before = this.#last;
    collect();
    releaseFreeMemory?.();
    this.#shrunkAt = this.#clock();
    this.#heldAtShrink = this.#opts.held?.() ?? 0;
    const after = this.sample();
    const gave = before.pressure - after.pressure;
    this.#shrinkEveryMs = gave < SHRINK_WORTHWHILE ? Math.min(this.#shrinkEveryMs * 2, SHRINK_EVERY_MAX_MS) : SHRINK_EVERY_MS;
    this.#onShrink(performance.now() - t0, before, after);
  }

  /**
   * Under a memory limit V8 was not sized for (sizedAboveLimit), its young generation is held
   * at the size it has (after a shrink, under 1 MiB), as V8 itself sizes it when it sees a small
   * limit at start (within 4 MiB under 160 MiB). Without a limit at start it is sized for the machine and grows in doublings, to 64 MiB
   * in a second of allocation, each landing between two samples. V8 reads
   * `--semi-space-growth-factor` at every growth decision: 1 holds (measured after a shrink:
   * at most 3.8 MiB over 1.5 s of the allocation that took it to 64 MiB), 2 (V8's default)
   * releases it when the limit goes.
   */
  /**
   * Whether V8 sized its heap for more memory than the limit in force allows (heap_size_limit
   * above it): it did not see the limit at start (24 GB machine, limit set after: 4 GiB against
   * ~100 MiB), or the limit is small (a 160 MiB cgroup at start: 262 MiB, where V8 already keeps
   * the young generation within 4 MiB and holding it costs nothing). A 4 GiB limit seen at start
   * gets a 2 GiB heap and keeps V8's own young-generation sizing.
   */
  #sizedAboveLimit(): boolean {
    const limits = [this.#last.cgroupLimitBytes, this.#opts.maxBytes].filter((x): x is number => x !== null);
    return limits.length > 0 && getHeapStatistics().heap_size_limit > Math.min(...limits);
  }

  #holdYoungGeneration(hold: boolean): void {
    if (hold === this.#youngHeld) return;
    this.#youngHeld = hold;
    try {
      setFlagsFromString(`--semi-space-growth-factor=${hold ? 1 : 2}`);
    } catch {
      // a V8 without the flag: the shrink still hands the young generation back
    }
  }

  start(): void {
    if (this.#timer !== null) return;
    this.#tick();
  }

  readonly #tick = (): void => {
    const asked = this.#askedSince;
    this.refresh();
    const p = this.#last.pressure;
    // Near the threshold, look twice as often: memory can climb fast under a flood.
    const near = p >= this.#opts.shedAt - 0.1;
    this.#resting = asked === 0 && !this.#shedding && p < this.#opts.shedAt / 2;
    const wait = near ? this.#opts.intervalMs / 2 : this.#resting ? this.#opts.intervalMs * RESTING_FACTOR : this.#opts.intervalMs;
    this.#timer = setTimeout(this.#tick, wait);
    this.#timer.unref();
  };

  /** A connection while resting: sample now and resume the usual pace. */
  #wake(): boolean {
    this.#resting = false;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#askedSince++;
    this.#tick();
    return this.#shedding;
  }

  stop(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#resting = false;
    for (const c of this.#chain) for (const f of [c.max, c.current, c.stat]) f.close();
  }
}
