// The flood of issue 11, shared by the e2e tests (test/e2e/limits.test.ts: bounded, behaviour
// only) and the benchmark (bench/flood.ts: the full size, with the timings). On the netns rig:
// egressd in the router namespace (optionally under a descriptor limit, via prlimit, or in a
// memory cgroup of its own), sandbox 1 (rig.sandboxV4) flooding with idle, silent and dripping
// connections (flood-client.ts) while sandbox 2 (rig.sandbox2V4) downloads over HTTPS and makes
// short requests (workload-client.ts) and /healthz is probed every 100 ms (probe-client.ts).

import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { watchDaemon, type DaemonProcess, type LogLine } from './daemon-process.ts';
import type { Rig } from './netns-rig.ts';
import { adminIn } from './curl.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
export const FLOOD_SERVER = '198.18.1.2';
export const FLOOD_PORTS = { http: 15080, tls: 15443, tcp: 15001 };
const ADMIN = '127.0.0.1:9901';

export interface FloodOptions {
  /** Sandbox 1's connections (null: no flood, the baseline). */
  readonly flood: { readonly count: number; readonly holdMs: number; readonly kinds?: string; readonly sni?: string } | null;
  /** Sandbox 2's download, bytes, and its short requests. */
  readonly download: number;
  readonly requests: number;
  /** Sandbox 1's `limits` object. */
  readonly limits1?: Record<string, number>;
  /** More names dnsmasq answers (with allowed.test), each allowed to sandbox 1 too. */
  readonly names1?: Record<string, string[]>;
  /** More config keys (merged at the top level). */
  readonly config?: Record<string, unknown>;
  /** Start egressd with RLIMIT_NOFILE soft = hard = this (prlimit). */
  readonly nofile?: number;
  /** Put egressd in a memory cgroup whose limit is its usage once started plus this many bytes. */
  readonly memoryHeadroom?: number;
  readonly probeMs?: number;
  /** When sandbox 2 starts after the flood, ms (default: a quarter of the hold, at most 3 s). */
  readonly workloadAfterMs?: number;
}

export interface FloodResult {
  readonly flood: Record<string, any> | null;
  readonly workload: Record<string, any>;
  readonly probe: Record<string, any>;
  readonly metrics: string;
  readonly limitsApi: Record<string, any> | null;
  readonly sandbox1: Record<string, any> | null;
  readonly lines: readonly LogLine[];
  /** The daemon's exit code or signal when it died during the run (null: it survived). */
  readonly died: string | null;
  readonly memoryLimit: number | null;
  readonly peakMemory: number | null;
  /**
   * How many times the kernel's OOM killer acted in egressd's memory cgroup (cgroup v2
   * memory.events, v1 memory.oom_control `oom_kill`), or null outside one.
   */
  readonly oomKills: number | null;
}

const TOKEN = 'flood-token';

/** Where this machine's cgroup memory controller lives for this process (v2 or v1), or null. */
export function memoryCgroupDir(): { dir: string; v1: boolean } | null {
  try {
    const lines = readFileSync('/proc/self/cgroup', 'utf8').split('\n');
    const v1 = lines.find((l) => /^\d+:([^:]*,)?memory(,[^:]*)?:/.test(l));
    if (v1) return { dir: join('/sys/fs/cgroup/memory', v1.slice(v1.lastIndexOf(':') + 1)), v1: true };
    const v2 = lines.find((l) => l.startsWith('0::'));
    if (v2) {
      const dir = join('/sys/fs/cgroup', v2.slice(3));
      readFileSync(join(dir, 'memory.max'));
      return { dir, v1: false };
    }
  } catch {
    // no usable memory controller
  }
  return null;
}

export async function floodScenario(rig: Rig, opts: FloodOptions): Promise<FloodResult> {
  await rig.servers([FLOOD_SERVER]);
  await rig.dns({ 'allowed.test': [FLOOD_SERVER], ...opts.names1 });
  const network = { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } };
  const network1 = { mode: 'block-all', egress: { allowed_domains: ['allowed.test', ...Object.keys(opts.names1 ?? {})] } };
  const config = {
    listen: { http: ['0.0.0.0:15080'], tls: ['0.0.0.0:15443'], tcp: ['0.0.0.0:15001'] },
    admin: { listen: ADMIN, token: TOKEN },
    dns: { servers: [rig.dnsServer] },
    protected: { except: ['198.18.0.0/15'] },
    peek: { timeoutMs: 30_000, firstByteTimeoutMs: 1000 },
    sandboxes: [
      { id: 'flood-1', sources: [rig.sandboxV4], network: network1, ...(opts.limits1 ? { limits: opts.limits1 } : {}) },
      { id: 'calm-2', sources: [rig.sandbox2V4], network },
    ],
    ...opts.config,
  };
  const dir = join('/tmp', `egressd-flood-${rig.prefix}`);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'egressd.json');
  writeFileSync(file, JSON.stringify(config));

  let cgroup: string | null = null;
  const mem = opts.memoryHeadroom !== undefined ? memoryCgroupDir() : null;
  if (opts.memoryHeadroom !== undefined) {
    if (!mem) throw new Error('No cgroup memory controller here');
    cgroup = join(mem.dir, `egressd-${rig.prefix}`);
    mkdirSync(cgroup);
  }
  const serve = [join(ROOT, 'src/main.ts'), 'serve', '--config', file];
  const argv: [string, string[]] = opts.nofile ? ['prlimit', [`--nofile=${opts.nofile}:${opts.nofile}`, NODE, ...serve]] : [NODE, serve];
  // `ip netns exec` mounts a sysfs of its own, without the cgroup tree, where egressd could not
  // read its memory limit: the process joins its cgroup from the root namespace, then enters
  // the router's network namespace alone (nsenter --net; exec keeps the cgroup).
  const start = (): ChildProcess => {
    if (cgroup === null) return rig.spawnIn('router', argv[0], argv[1]);
    const child = spawn(
      'sh',
      ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec "$@"`, 'sh', 'nsenter', `--net=/run/netns/${rig.ns.router}`, argv[0], ...argv[1]],
      {
        stdio: ['pipe', 'pipe', 'pipe'],
        detached: true,
        env: { ...process.env, PATH: `${process.env['PATH'] ?? ''}:/usr/sbin:/sbin` },
      },
    );
    child.on('error', () => {});
    return child;
  };
  let daemon: DaemonProcess | null = null;
  let memoryLimit: number | null = null;
  let peakMemory: number | null = null;
  let oomKills: number | null = null;
  try {
    daemon = await watchDaemon(start());
    await rig.redirect(FLOOD_PORTS);
    const admin = (path: string): Promise<string> => adminIn(rig, TOKEN, 'GET', path, undefined, { admin: ADMIN, maxTimeS: 5 }).then((r) => r.stdout);
    const json = async (path: string): Promise<Record<string, any> | null> => {
      try {
        return JSON.parse(await admin(path)) as Record<string, any>;
      } catch {
        return null;
      }
    };
    const run = (ns: 'sandbox' | 'router', script: string, args: string[], timeoutMs: number): Promise<Record<string, any>> =>
      rig.execIn(ns, NODE, [join(ROOT, 'test/helpers', script), ...args], { timeoutMs }).then((r) => {
        const last = r.stdout.trim().split('\n').pop() ?? '';
        try {
          return JSON.parse(last) as Record<string, any>;
        } catch {
          return { error: `${script} printed no result (exit ${r.code}): ${r.stderr.slice(-500)}` };
        }
      });
    if (cgroup !== null && mem) {
      // The limit sits above what serving costs at rest, not above the figure right after
      // start: egressd hands start-up's memory back then (releaseStartupMemory drops the
      // executable's clean pages, for one), and the first connections map the data path's own
      // code back in — on the JS path Node's net and stream machinery, a few MiB more than the
      // native one. One quiet round of sandbox 2's traffic first, then the usage is read.
      await run(
        'sandbox',
        'workload-client.ts',
        ['--bind', rig.sandbox2V4, '--server', FLOOD_SERVER, '--ca', join(ROOT, 'certs/ca.pem'), '--download', String(65_536), '--requests', '5'],
        60_000,
      );
      const usage = Number(readFileSync(join(cgroup, mem.v1 ? 'memory.usage_in_bytes' : 'memory.current'), 'utf8'));
      memoryLimit = usage + opts.memoryHeadroom!;
      writeFileSync(join(cgroup, mem.v1 ? 'memory.limit_in_bytes' : 'memory.max'), String(memoryLimit));
      if (mem.v1) writeFileSync(join(cgroup, 'memory.max_usage_in_bytes'), '0');
    }
    const holdMs = opts.flood?.holdMs ?? 0;
    const flood = opts.flood
      ? run(
          'sandbox',
          'flood-client.ts',
          [
            ...['--bind', rig.sandboxV4, '--server', FLOOD_SERVER, '--count', String(opts.flood.count), '--hold-ms', String(holdMs)],
            ...(opts.flood.kinds ? ['--kinds', opts.flood.kinds] : []),
            ...(opts.flood.sni ? ['--sni', opts.flood.sni] : []),
          ],
          holdMs + 60_000,
        )
      : Promise.resolve(null);
    // Sandbox 2 starts once the flood is under way, and the figures are read while it holds.
    if (opts.flood) await new Promise((r) => setTimeout(r, opts.workloadAfterMs ?? Math.min(3000, holdMs / 4)));
    const probe = run(
      'router',
      'probe-client.ts',
      ['--url', `http://${ADMIN}/healthz`, '--interval-ms', String(opts.probeMs ?? 100), '--duration-ms', String(Math.max(3000, holdMs / 2))],
      holdMs + 60_000,
    );
    const workload = await run(
      'sandbox',
      'workload-client.ts',
      [
        '--bind',
        rig.sandbox2V4,
        '--server',
        FLOOD_SERVER,
        '--ca',
        join(ROOT, 'certs/ca.pem'),
        '--download',
        String(opts.download),
        '--requests',
        String(opts.requests),
      ],
      130_000,
    );
    const metrics = await admin('/metrics');
    const limitsApi = await json('/api/v1/limits');
    const sandbox1 = await json('/api/v1/sandboxes/flood-1');
    const [floodResult, probeResult] = await Promise.all([flood, probe]);
    if (cgroup !== null && mem) {
      try {
        peakMemory = Number(readFileSync(join(cgroup, mem.v1 ? 'memory.max_usage_in_bytes' : 'memory.peak'), 'utf8'));
      } catch {
        peakMemory = null;
      }
      oomKills = oomKillCount(cgroup, mem.v1);
    }
    const code = daemon.child.exitCode;
    const signal = daemon.child.signalCode;
    const died = code !== null || signal !== null ? `${code ?? signal}` : null;
    return { flood: floodResult, workload, probe: probeResult, metrics, limitsApi, sandbox1, lines: daemon.lines, died, memoryLimit, peakMemory, oomKills };
  } finally {
    await daemon?.stop('SIGKILL', 5000);
    if (cgroup !== null) {
      for (let i = 0; i < 50; i++) {
        try {
          rmdirSync(cgroup);
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    }
  }
}

/** The `oom_kill` count of a memory cgroup (v2 memory.events, v1 memory.oom_control), or null when the kernel does not keep one. */
function oomKillCount(dir: string, v1: boolean): number | null {
  try {
    const m = /^oom_kill (\d+)$/m.exec(readFileSync(join(dir, v1 ? 'memory.oom_control' : 'memory.events'), 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** The sum of a counter's samples whose labels include all of `labels`. */
export function metricSum(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}
