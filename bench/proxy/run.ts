// The side-by-side proxy benchmark (issue 12): egressd against nginx `stream` + `ssl_preread`
// and HAProxy `req.ssl_sni`, with "no proxy" (Direct) as the baseline, every column in the same
// run, rounds interleaved (the column order rotates each round), medians reported.
//
//   sudo bash bench/proxy/setup.sh      # once: nginx, its stream module, HAProxy, dnsmasq, curl
//   npm run bench:proxy                 # ≈ 9 min, alone on the machine; rewrites bench/RESULTS.md's section
//   npm run bench:proxy -- --smoke      # ≈ 1 min, tiny sizes: checks the harness, figures meaningless
//
// Topology (test/helpers/netns-rig.ts): a client namespace routed through a router namespace to
// an upstream namespace. In the router, iptables REDIRECTs the client's port-443 traffic to the
// column's proxy (Direct: no rule, plain forwarding). Upstream: an nginx TLS origin
// (allowed.test → 198.18.1.2: a 1 GiB file and a 2-byte response) and a raw origin
// (raw.allowed.test → 198.18.1.3, bench/proxy/origin.ts). Every proxy allows the same two names
// and nothing else; egressd resolves them through the rig's dnsmasq (`upstream.dial: resolved`,
// as in production) and writes its log line per connection to a file.
//
// Each proxy runs twice: one worker (nginx `worker_processes 1`, HAProxy `nbthread 1`, egressd
// one data-plane thread) and one worker per core. Proxy CPU is user+system time of the proxy's
// whole process tree (/proc/PID/stat); RSS is the tree's VmRSS.
//
// Two floor columns, bulk workloads only, say what the rig allows before any proxy's own cost:
// "kernel DNAT" (no proxy process: the router DNATs port 443 to the origins' second port, 8443,
// so the path is Direct's plus conntrack's NAT rewrite, one TCP connection) and "splice floor"
// (bench/proxy/splice-floor.c, built here with cc: the least a userspace proxy does, REDIRECT,
// SO_ORIGINAL_DST, a second TCP connection, blocking splice(2) through a 1 MiB pipe, a thread per
// direction). Direct ÷ kernel DNAT is what NAT costs; splice floor ÷ Direct is the best bulk
// ratio any proxy can reach here; egressd ÷ splice floor is what egressd's loop costs on top.
// A third floor column, connection workloads only, says what egressd's JavaScript costs: "loop
// floor" (bench/proxy/loop-floor.ts) is egressd's own native loop, one, hosted on Node's event
// loop, behind the same REDIRECT, whose report handler dials the original destination at once:
// no admission, parse, verdict, DNS, log line or metrics. egressd ÷ loop floor is the cost of
// egressd's JavaScript per connection; loop floor ÷ nginx, the cost of the C loop and its crossings.
//
// Bounded: a run stops starting new measurements after 9 minutes and reports what it has.

import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { createRig, rigUnavailableReason, type Rig } from '../../test/helpers/netns-rig.ts';
import { RAW_ORIGIN, RAW_NAME, TLS_NAME, TLS_ORIGIN } from './wire.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const EGRESSD = join(ROOT, 'bin/egressd');
const CA = join(ROOT, 'certs/ca.pem');
const RESULTS = join(ROOT, 'bench/RESULTS.md');
const BEGIN = '<!-- bench:proxy begin (written by bench/proxy/run.ts) -->';
const END = '<!-- bench:proxy end -->';
const BUDGET_MS = 9 * 60_000;
const HELD = 5000;

const { values: args } = parseArgs({
  options: {
    smoke: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    // Subsets, for looking at one thing (the RESULTS.md section is then partial):
    // --only egressd,nginx (Direct always runs), --workloads raw-bulk,hold
    only: { type: 'string' },
    workloads: { type: 'string' },
    'no-write': { type: 'boolean', default: false },
    // The bulk transfers' size in MiB (default 1024), for a quicker look at the data phase.
    'bulk-mib': { type: 'string' },
  },
  strict: true,
});
const smoke = args.smoke === true;
const P = smoke
  ? { rounds: 1, bulkBytes: 64 << 20, connMs: 500, warmMs: 300, held: 300 }
  : { rounds: 3, bulkBytes: 1 << 30, connMs: 2000, warmMs: 5000, held: HELD };
if (args.rounds !== undefined) P.rounds = Number(args.rounds);
if (args['bulk-mib'] !== undefined) P.bulkBytes = Number(args['bulk-mib']) * 2 ** 20;
const started = Date.now();
const overBudget = (): boolean => Date.now() - started > BUDGET_MS;

// ---- columns --------------------------------------------------------------------------------

type Product = 'nginx' | 'haproxy' | 'egressd';
/**
 * The floor columns: the kernel forwarding with DNAT and a minimal splice proxy (bulk only), and
 * egressd's loop with the least JavaScript (connection workloads only).
 */
type Floor = 'dnat' | 'floor' | 'loop';
interface Column {
  readonly key: string;
  readonly product: Product | Floor | 'direct';
  readonly workers: 'one' | 'per-core';
  readonly port: number;
  /** egressd's admin port (its /metrics), set when the column starts. */
  admin?: number;
  proc?: ChildProcess;
  stderr: string;
}
const perCore = cpus().length;
const columns: Column[] = [{ key: 'direct', product: 'direct', workers: 'one', port: 0, stderr: '' }];
{
  let port = 17001;
  for (const workers of ['one', 'per-core'] as const) {
    for (const product of ['nginx', 'haproxy', 'egressd'] as const) {
      if (args.only !== undefined && !args.only.split(',').includes(product)) continue;
      columns.push({ key: `${product}-${workers}`, product, workers, port: port++, stderr: '' });
    }
  }
  for (const product of ['dnat', 'floor', 'loop'] as const) {
    if (args.only !== undefined && !args.only.split(',').includes(product)) continue;
    columns.push({ key: product, product, workers: 'one', port: port++, stderr: '' });
  }
}
/** The workloads a floor column runs: the bulk floors say nothing about connection set-up or memory, the loop floor nothing about bulk. */
const FLOOR_WORKLOADS: Readonly<Record<Floor, readonly string[]>> = {
  dnat: ['tls-bulk', 'raw-bulk'],
  floor: ['tls-bulk', 'raw-bulk'],
  loop: ['raw-conn@1', 'raw-conn@50', 'tls-conn@1', 'tls-conn@50'],
};
const isFloor = (c: Column): c is Column & { product: Floor } => c.product === 'dnat' || c.product === 'floor' || c.product === 'loop';
/** The origins' second port, for the kernel DNAT column (a DNAT to the same port would rewrite nothing). */
const DNAT_PORT = 8443;

// ---- process accounting ---------------------------------------------------------------------

const TICK = 100; // USER_HZ: /proc/PID/stat times are in 1/100 s on Linux
function tree(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(d));
      children.set(ppid, list);
    } catch {
      // gone meanwhile
    }
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) out.push(...(children.get(out[i]!) ?? []));
  return out;
}
/** User+system CPU seconds of the process and its descendants. */
function cpuSeconds(pid: number): number {
  let ticks = 0;
  for (const p of tree(pid)) {
    try {
      const f = readFileSync(`/proc/${p}/stat`, 'utf8');
      const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
      ticks += Number(rest[11]) + Number(rest[12]);
    } catch {
      // gone
    }
  }
  return ticks / TICK;
}
/**
 * CPU seconds of the main threads alone (each process's thread whose id is the process's): for
 * egressd, the JavaScript thread (which runs loop 0 by default, EGRESSD_DATA_PLANE_HOST), apart from
 * the loops on threads of their own, libuv's pool and V8's helpers.
 */
function mainThreadCpuSeconds(pid: number): number {
  let ticks = 0;
  for (const p of tree(pid)) {
    try {
      const f = readFileSync(`/proc/${p}/task/${p}/stat`, 'utf8');
      const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
      ticks += Number(rest[11]) + Number(rest[12]);
    } catch {
      // gone
    }
  }
  return ticks / TICK;
}
/** VmRSS of the process and its descendants, KiB. */
function rssKiB(pid: number): number {
  let kib = 0;
  for (const p of tree(pid)) {
    try {
      const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p}/status`, 'utf8'));
      kib += Number(m?.[1] ?? 0);
    } catch {
      // gone
    }
  }
  return kib;
}

// ---- configurations -------------------------------------------------------------------------

function nginxConf(dir: string, c: Column): string {
  return `worker_processes ${c.workers === 'one' ? 1 : perCore};
worker_rlimit_nofile 19000;
daemon off;
master_process on;
pid ${dir}/nginx-${c.key}.pid;
error_log ${dir}/nginx-${c.key}.error.log warn;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events { worker_connections 12000; }
stream {
  map $ssl_preread_server_name $upstream {
    ${TLS_NAME} ${TLS_ORIGIN}:443;
    ${RAW_NAME} ${RAW_ORIGIN}:443;
    default 127.0.0.1:9;
  }
  server {
    listen 0.0.0.0:${c.port} reuseport backlog=4096;
    ssl_preread on;
    proxy_pass $upstream;
  }
}
`;
}

function haproxyConf(c: Column): string {
  return `global
  nbthread ${c.workers === 'one' ? 1 : perCore}
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend bench
  bind 0.0.0.0:${c.port}
  tcp-request inspect-delay 10s
  tcp-request content accept if { req.ssl_hello_type 1 }
  use_backend tls if { req.ssl_sni -i ${TLS_NAME} }
  use_backend raw if { req.ssl_sni -i ${RAW_NAME} }
backend tls
  server origin ${TLS_ORIGIN}:443
backend raw
  server origin ${RAW_ORIGIN}:443
`;
}

function egressdConf(dir: string, c: Column, i: number): string {
  c.admin = 19901 + i;
  return JSON.stringify({
    // Each column's own DNS port too: the columns run at once in one namespace, and an egressd
    // without state.path refuses to share a port with another (EGRESSD_ERR_PORTS_SHARED).
    listen: { tls: `0.0.0.0:${c.port}`, http: `0.0.0.0:${c.port + 100}`, tcp: `0.0.0.0:${c.port + 200}`, dns: `0.0.0.0:${c.port + 300}` },
    admin: { listen: `127.0.0.1:${c.admin}` },
    dns: { servers: ['198.18.1.53'] },
    upstream: { dial: 'resolved' },
    protected: { except: ['198.18.0.0/15'] },
    sandboxes: [
      {
        id: 'bench',
        sources: ['198.18.0.2'],
        network: { mode: 'block-all', egress: { allowed_domains: [TLS_NAME, `*.${TLS_NAME}`], allowed_ports: [443] } },
      },
    ],
    log: { level: 'info', destination: join(dir, `egressd-${c.key}.log`) },
    // The benchmark is one sandbox opening thousands of connections: the default per-sandbox
    // limits (1,024 open, 200/s, half the descriptor budget) would refuse most of the hold and
    // part of the connection tests, and the figures would measure refusals, not splices.
    limits: {
      sandbox: { connections: 1_000_000, undecided: 1_000_000, perSecond: 1_000_000, burst: 1_000_000 },
      global: { sandboxShare: 1 },
    },
  });
}

function originConf(dir: string): string {
  return `worker_processes ${perCore};
daemon off;
master_process on;
pid ${dir}/origin.pid;
error_log ${dir}/origin.error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path ${dir}/tmp; proxy_temp_path ${dir}/tmp; fastcgi_temp_path ${dir}/tmp;
  uwsgi_temp_path ${dir}/tmp; scgi_temp_path ${dir}/tmp;
  server {
    listen ${TLS_ORIGIN}:443 ssl backlog=4096;
    listen ${TLS_ORIGIN}:${DNAT_PORT} ssl backlog=4096;
    ssl_certificate ${ROOT}/certs/server.pem;
    ssl_certificate_key ${ROOT}/certs/server-key.pem;
    ssl_session_cache off;
    ssl_session_tickets off;
    location = /1g { alias ${dir}/1g; default_type application/octet-stream; }
    location = /tiny { default_type text/plain; return 200 "ok"; }
  }
}
`;
}

// ---- measurements ---------------------------------------------------------------------------

interface Sample {
  [figure: string]: number;
}
const samples = new Map<string, Map<string, Sample[]>>(); // workload → column → samples
function record(workload: string, column: string, s: Sample): void {
  const w = samples.get(workload) ?? new Map<string, Sample[]>();
  samples.set(workload, w);
  const list = w.get(column) ?? [];
  list.push(s);
  w.set(column, list);
  // Each sample as it is taken (counts and errors included), for runs read by eye or by script.
  process.stderr.write(`${JSON.stringify({ workload, column, ...s })}\n`);
}

/** The origins' process ids (their trees' CPU is counted per bulk transfer). */
const origins: { tls?: number | undefined; raw?: number | undefined } = {};
/** Seconds from bash's `times` line for its children ("0m1.234s 0m0.567s": user, system). */
function timesSeconds(line: string): number {
  let t = 0;
  for (const m of line.matchAll(/(\d+)m([\d.]+)s/g)) t += Number(m[1]) * 60 + Number(m[2]);
  return t;
}

async function load(rig: Rig, argv: string[]): Promise<Record<string, number>> {
  const r = await rig.execIn('sandbox', NODE, [join(ROOT, 'bench/proxy/load.ts'), ...argv], { timeoutMs: 150_000 });
  if (r.code !== 0) throw new Error(`load ${argv.join(' ')} failed (exit ${r.code}): ${r.stderr.trim()}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, number>;
}

async function point(rig: Rig, c: Column): Promise<void> {
  // A fresh rule per column: connections already tracked keep their NAT, new ones take this.
  const rules =
    c.product === 'direct'
      ? []
      : c.product === 'dnat'
        ? [TLS_ORIGIN, RAW_ORIGIN].map((a) => ['-t', 'nat', '-A', 'BENCH', '-d', a, '-p', 'tcp', '-j', 'DNAT', '--to-destination', `${a}:${DNAT_PORT}`])
        : [['-t', 'nat', '-A', 'BENCH', '-p', 'tcp', '-j', 'REDIRECT', '--to-ports', String(c.port)]];
  for (const r of [['-t', 'nat', '-F', 'BENCH'], ...rules]) {
    const x = await rig.execIn('router', 'iptables', r);
    if (x.code !== 0) throw new Error(`iptables ${r.join(' ')}: ${x.stderr}`);
  }
}

/**
 * BENCH_CONN_HOOK: a shell command run while a connection workload is measured (a tracer such as
 * `perf stat -e 'syscalls:sys_enter_*' -p "$PIDS"`), with PIDS (the proxy's process tree, comma
 * separated), COL and W (the column and the workload) in its environment; it is given 1 s to
 * attach, and SIGINT when the workload ends. The sample's count says how many connections it saw.
 */
async function startConnHook(pid: number, c: Column, workload: string): Promise<ChildProcess | undefined> {
  const cmd = process.env['BENCH_CONN_HOOK'];
  if (!cmd) return undefined;
  const child = spawn('sh', ['-c', cmd], { stdio: 'inherit', detached: true, env: { ...process.env, PIDS: tree(pid).join(','), COL: c.key, W: workload } });
  await new Promise((res) => setTimeout(res, 1000));
  return child;
}

async function stopConnHook(child: ChildProcess): Promise<void> {
  const exited = new Promise((res) => child.once('exit', res));
  // Its own process group (detached): the shell and the tracer it started both get the signal.
  if (child.pid) process.kill(-child.pid, 'SIGINT');
  await exited;
}

async function measure(rig: Rig, c: Column, workload: string): Promise<void> {
  await point(rig, c);
  const pid = c.proc?.pid;
  const cpu0 = pid ? cpuSeconds(pid) : 0;
  const origin = workload === 'tls-bulk' ? origins.tls : workload === 'raw-bulk' ? origins.raw : undefined;
  const origin0 = origin ? cpuSeconds(origin) : 0;
  const main0 = pid ? mainThreadCpuSeconds(pid) : 0;
  let s: Sample;
  switch (workload) {
    case 'tls-bulk': {
      // Through bash, whose `times` gives curl's CPU seconds (its children's user and system time).
      const r = await rig.execIn(
        'sandbox',
        'bash',
        [
          '-c',
          'curl "$@" && times',
          'curl',
          '-sS',
          '--cacert',
          CA,
          '--resolve',
          `${TLS_NAME}:443:${TLS_ORIGIN}`,
          '-o',
          '/dev/null',
          '-w',
          '%{size_download} %{time_total}\n',
          `https://${TLS_NAME}/1g`,
        ],
        { timeoutMs: 150_000 },
      );
      if (r.code !== 0) throw new Error(`curl failed (exit ${r.code}): ${r.stderr}`);
      const [result, , children] = r.stdout.trim().split('\n');
      const [bytes, seconds] = result!.split(' ').map(Number) as [number, number];
      if (bytes !== P.bulkBytes) throw new Error(`curl got ${bytes} bytes, expected ${P.bulkBytes}`);
      s = { mbps: bytes / 1e6 / seconds, bytes, clientCpu: timesSeconds(children ?? '') };
      break;
    }
    case 'raw-bulk': {
      const r = await load(rig, ['raw-bulk', String(P.bulkBytes)]);
      if (r['bytes'] !== P.bulkBytes) throw new Error(`raw-bulk got ${r['bytes']} bytes, expected ${P.bulkBytes}`);
      s = { mbps: r['bytes']! / 1e6 / r['seconds']!, bytes: r['bytes']!, clientCpu: r['cpu']! };
      break;
    }
    default: {
      const [kind, clients] = workload.split('@') as [string, string];
      const hook = pid ? await startConnHook(pid, c, workload) : undefined;
      const r = await load(rig, [kind, clients, String(P.connMs), CA]);
      if (hook) await stopConnHook(hook);
      s = { rate: r['rate']!, p50: r['p50']!, p99: r['p99']!, count: r['count']!, errors: r['errors']! };
    }
  }
  // The whole rig's CPU per GB (client + origin + proxy): with every byte's work on two shared
  // cores, what bounds a bulk rate when the machine is otherwise idle, and a figure a busy
  // machine does not distort as it does the rates. The kernel's forwarding and the softirqs that
  // deliver to a socket mostly run in the sending task's context and are counted there (tick
  // accounting); what ksoftirqd does is not counted.
  if (origin && 'bytes' in s) {
    const proxy = pid ? cpuSeconds(pid) - cpu0 : 0;
    s['originCpuPerGB'] = (cpuSeconds(origin) - origin0) / (s['bytes']! / 1e9);
    s['clientCpuPerGB'] = s['clientCpu']! / (s['bytes']! / 1e9);
    s['rigCpuPerGB'] = s['originCpuPerGB'] + s['clientCpuPerGB'] + proxy / (s['bytes']! / 1e9);
    delete s['clientCpu'];
  }
  if (pid) {
    const cpu = cpuSeconds(pid) - cpu0;
    if ('bytes' in s) s['cpuPerGB'] = cpu / (s['bytes']! / 1e9);
    else {
      s['cpuUsPerConn'] = (cpu / Math.max(1, s['count']!)) * 1e6;
      s['mainThreadUsPerConn'] = ((mainThreadCpuSeconds(pid) - main0) / Math.max(1, s['count']!)) * 1e6;
    }
  }
  record(workload, c.key, s);
}

/** Connections the column's proxy has accepted and holds established on its port (in the router namespace). */
async function establishedOn(rig: Rig, port: number): Promise<number> {
  const r = await rig.execIn('router', 'ss', ['-Htn', 'state', 'established', `sport = :${port}`]);
  return r.stdout.split('\n').filter((l) => l.trim() !== '').length;
}

/** The sum of a metric's samples in egressd's /metrics (all label sets). */
async function egressdMetric(rig: Rig, c: Column, name: string): Promise<number> {
  const r = await rig.execIn('router', 'curl', ['-sS', '--max-time', '5', `http://127.0.0.1:${c.admin}/metrics`]);
  if (r.code !== 0) throw new Error(`${c.key}: /metrics: ${r.stderr.trim()}`);
  let sum = 0;
  for (const l of r.stdout.split('\n')) if (l.startsWith(`${name}{`) || l.startsWith(`${name} `)) sum += Number(l.slice(l.lastIndexOf(' ') + 1));
  return sum;
}

/**
 * RSS per held connection: the proxy's RSS before and while the client holds P.held connections
 * spliced through it to the raw origin. Refuses to record a figure unless every connection is
 * really held through this column: the client counts a connection only once the origin's byte
 * came back through it, the proxy's port shows that many established connections, and egressd
 * (its /metrics) has that many open. Any shortfall (a limit refusing, ports running out, the
 * REDIRECT pointing elsewhere) would divide the RSS growth by the wrong count.
 */
/** Starts the client holding `n` connections; resolves once it says how many it holds (end its stdin to release them). */
async function startHold(rig: Rig, n: number): Promise<{ child: ChildProcess; r: { held: number; errors: number } }> {
  const child = rig.spawnIn('sandbox', NODE, [join(ROOT, 'bench/proxy/load.ts'), 'hold', String(n)]);
  const line = await new Promise<string>((resolveLine, reject) => {
    const timer = setTimeout(() => reject(new Error('hold: no answer within 120 s')), 120_000);
    createInterface({ input: child.stdout! }).once('line', (l) => {
      clearTimeout(timer);
      resolveLine(l);
    });
    child.once('exit', (code) => reject(new Error(`hold exited (${code})`)));
  });
  return { child, r: JSON.parse(line) as { held: number; errors: number } };
}

async function releaseHold(child: ChildProcess): Promise<void> {
  const exited = new Promise((res) => child.once('exit', res));
  child.stdin!.end();
  await exited;
}

async function holdTest(rig: Rig, c: Column): Promise<void> {
  await point(rig, c);
  const pid = c.proc!.pid!;
  // A warm-up hold first, released: the code a held connection runs is mapped and compiled
  // before "before" is read, as it is when the hold follows the other workloads, so a hold run
  // on its own (--workloads hold) measures the connections, not the first connection's code.
  await releaseHold((await startHold(rig, 200)).child);
  await new Promise((res) => setTimeout(res, 500));
  const before = rssKiB(pid);
  const { child, r } = await startHold(rig, P.held);
  await new Promise((res) => setTimeout(res, 1000));
  const during = rssKiB(pid);
  // BENCH_HOLD_HOOK: a shell command run while the connections are held (PID and COL in its
  // environment), e.g. to read /proc/$PID/smaps or take a heap snapshot.
  if (process.env['BENCH_HOLD_HOOK'])
    execFileSync('sh', ['-c', process.env['BENCH_HOLD_HOOK']], { stdio: 'inherit', env: { ...process.env, PID: String(pid), COL: c.key } });
  const established = await establishedOn(rig, c.port);
  const open = c.product === 'egressd' ? await egressdMetric(rig, c, 'egressd_active_connections') : NaN;
  await releaseHold(child);
  const faults = [
    r.held !== P.held || r.errors !== 0 ? `the client held ${r.held} of ${P.held} (${r.errors} errors)` : '',
    established < r.held ? `only ${established} established on port ${c.port}` : '',
    c.product === 'egressd' && open !== r.held ? `egressd_active_connections is ${open}` : '',
  ].filter((f) => f !== '');
  if (faults.length > 0) {
    process.stderr.write(`bench:proxy: hold ${c.key}: not recorded: ${faults.join('; ')}\n`);
    return;
  }
  record('hold', c.key, { before, during, held: r.held, errors: r.errors, kbPerConn: ((during - before) * 1.024) / r.held });
}

// ---- report ---------------------------------------------------------------------------------

function median(xs: number[]): number {
  const s = [...xs].filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
function fig(workload: string, column: string, f: string): number {
  return median((samples.get(workload)?.get(column) ?? []).map((s) => s[f] ?? NaN));
}
function fmt(x: number): string {
  if (!Number.isFinite(x)) return '—';
  const a = Math.abs(x);
  return a >= 100 ? x.toFixed(0) : a >= 10 ? x.toFixed(1) : a >= 1 ? x.toFixed(2) : x.toFixed(3);
}
const ratio = (a: number, b: number): string => (Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? `${(a / b).toFixed(2)}×` : '—');

interface Row {
  readonly label: string;
  readonly get: (column: string) => number;
  readonly direct: boolean;
}
const ROWS: Row[] = [
  { label: 'TLS bulk MB/s (curl, 1 GiB)', get: (c) => fig('tls-bulk', c, 'mbps'), direct: true },
  { label: 'raw bulk MB/s (a ClientHello, then 1 GiB)', get: (c) => fig('raw-bulk', c, 'mbps'), direct: true },
  { label: 'proxy CPU s per GB, TLS', get: (c) => fig('tls-bulk', c, 'cpuPerGB'), direct: false },
  { label: 'proxy CPU s per GB, raw', get: (c) => fig('raw-bulk', c, 'cpuPerGB'), direct: false },
  { label: 'raw new connections/s, sequential', get: (c) => fig('raw-conn@1', c, 'rate'), direct: true },
  { label: 'raw connection p50 / p99 ms, sequential', get: (c) => fig('raw-conn@1', c, 'p99'), direct: true },
  { label: 'raw new connections/s, 50 clients', get: (c) => fig('raw-conn@50', c, 'rate'), direct: true },
  { label: 'raw connection p50 ms, 50 clients', get: (c) => fig('raw-conn@50', c, 'p50'), direct: true },
  { label: 'raw connection p99 ms, 50 clients', get: (c) => fig('raw-conn@50', c, 'p99'), direct: true },
  { label: 'TLS new connections/s, sequential', get: (c) => fig('tls-conn@1', c, 'rate'), direct: true },
  { label: 'TLS connection p50 / p99 ms, sequential', get: (c) => fig('tls-conn@1', c, 'p99'), direct: true },
  { label: 'TLS new connections/s, 50 clients', get: (c) => fig('tls-conn@50', c, 'rate'), direct: true },
  { label: 'TLS connection p50 ms, 50 clients', get: (c) => fig('tls-conn@50', c, 'p50'), direct: true },
  { label: 'TLS connection p99 ms, 50 clients', get: (c) => fig('tls-conn@50', c, 'p99'), direct: true },
  { label: 'proxy CPU µs per connection, raw', get: (c) => fig('raw-conn@50', c, 'cpuUsPerConn'), direct: false },
  { label: 'proxy CPU µs per connection, TLS', get: (c) => fig('tls-conn@50', c, 'cpuUsPerConn'), direct: false },
  { label: 'RSS idle, MB (after start)', get: (c) => fig('idle', c, 'mb'), direct: false },
  { label: `RSS holding ${P.held} connections, MB`, get: (c) => fig('hold', c, 'during') / 1024, direct: false },
  { label: 'RSS per held connection, KB', get: (c) => fig('hold', c, 'kbPerConn'), direct: false },
];
// The p50 of the sequential rows is shown with the p99: one cell "p50 / p99".
function cell(row: Row, column: string): string {
  if (row.label.includes('p50 / p99')) {
    const w = row.label.startsWith('raw') ? 'raw-conn@1' : 'tls-conn@1';
    return `${fmt(fig(w, column, 'p50'))} / ${fmt(fig(w, column, 'p99'))}`;
  }
  return fmt(row.get(column));
}

interface Target {
  readonly text: string;
  /** [egressd's figure, the bound, true when higher is better]. */
  readonly check: (w: 'one' | 'per-core') => [number, number, boolean];
}
const TARGETS: Target[] = [
  { text: 'raw bulk ≥ 0.9× Direct', check: (w) => [fig('raw-bulk', `egressd-${w}`, 'mbps'), 0.9 * fig('raw-bulk', 'direct', 'mbps'), true] },
  { text: 'TLS bulk ≥ 0.9× Direct', check: (w) => [fig('tls-bulk', `egressd-${w}`, 'mbps'), 0.9 * fig('tls-bulk', 'direct', 'mbps'), true] },
  {
    text: "proxy CPU per GB (raw) ≤ 0.5× nginx's",
    check: (w) => [fig('raw-bulk', `egressd-${w}`, 'cpuPerGB'), 0.5 * fig('raw-bulk', `nginx-${w}`, 'cpuPerGB'), false],
  },
  {
    text: "proxy CPU per GB (TLS) ≤ 0.5× nginx's",
    check: (w) => [fig('tls-bulk', `egressd-${w}`, 'cpuPerGB'), 0.5 * fig('tls-bulk', `nginx-${w}`, 'cpuPerGB'), false],
  },
  {
    text: "proxy CPU per connection (raw) ≤ nginx's",
    check: (w) => [fig('raw-conn@50', `egressd-${w}`, 'cpuUsPerConn'), fig('raw-conn@50', `nginx-${w}`, 'cpuUsPerConn'), false],
  },
  {
    text: "proxy CPU per connection (TLS) ≤ nginx's",
    check: (w) => [fig('tls-conn@50', `egressd-${w}`, 'cpuUsPerConn'), fig('tls-conn@50', `nginx-${w}`, 'cpuUsPerConn'), false],
  },
  {
    text: "raw connections/s (50 clients) ≥ nginx's",
    check: (w) => [fig('raw-conn@50', `egressd-${w}`, 'rate'), fig('raw-conn@50', `nginx-${w}`, 'rate'), true],
  },
  { text: "raw p99 (50 clients) ≤ nginx's", check: (w) => [fig('raw-conn@50', `egressd-${w}`, 'p99'), fig('raw-conn@50', `nginx-${w}`, 'p99'), false] },
  { text: "TLS p99 (50 clients) ≤ nginx's", check: (w) => [fig('tls-conn@50', `egressd-${w}`, 'p99'), fig('tls-conn@50', `nginx-${w}`, 'p99'), false] },
  { text: '≤ 4 KB RSS per held connection', check: (w) => [fig('hold', `egressd-${w}`, 'kbPerConn'), 4, false] },
  { text: 'idle RSS ≤ 60 MB', check: (w) => [fig('idle', `egressd-${w}`, 'mb'), 60, false] },
];
function verdict(t: Target, w: 'one' | 'per-core'): string {
  const [v, bound, higher] = t.check(w);
  if (!Number.isFinite(v) || !Number.isFinite(bound)) return 'not measured';
  const met = higher ? v >= bound : v <= bound;
  if (met) return `met (${fmt(v)} against ${fmt(bound)})`;
  const by = higher ? (1 - v / bound) * 100 : (v / bound - 1) * 100;
  return `**missed** by ${by.toFixed(0)}% (${fmt(v)} against ${fmt(bound)})`;
}

function report(machine: string, note: string): string {
  const lines: string[] = [BEGIN, '', '## Side by side with nginx and HAProxy (`npm run bench:proxy`)', '', machine, '', note, ''];
  for (const w of ['one', 'per-core'] as const) {
    const label =
      w === 'one'
        ? 'one worker each'
        : `one worker per core each (${perCore}: nginx \`worker_processes ${perCore}\`, HAProxy \`nbthread ${perCore}\`, egressd ${perCore} data-plane loops)`;
    lines.push(`### ${label[0]!.toUpperCase()}${label.slice(1)}`, '');
    lines.push('| figure | Direct | nginx | HAProxy | egressd | nginx ÷ Direct | HAProxy ÷ Direct | egressd ÷ Direct | HAProxy ÷ nginx | egressd ÷ nginx |');
    lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const row of ROWS) {
      const [d, n, h, e] = ['direct', `nginx-${w}`, `haproxy-${w}`, `egressd-${w}`].map((c) => row.get(c)) as [number, number, number, number];
      const dd = row.direct ? d : NaN;
      const dc = row.direct ? cell(row, 'direct') : '—';
      lines.push(
        `| ${row.label} | ${dc} | ${cell(row, `nginx-${w}`)} | ${cell(row, `haproxy-${w}`)} | ${cell(row, `egressd-${w}`)} | ${ratio(n, dd)} | ${ratio(h, dd)} | ${ratio(e, dd)} | ${ratio(h, n)} | ${ratio(e, n)} |`,
      );
    }
    lines.push('', '| target (issue 12) | egressd |', '|---|---|');
    for (const t of TARGETS) lines.push(`| ${t.text} | ${verdict(t, w)} |`);
    lines.push('');
  }
  lines.push(...floorReport());
  lines.push(END);
  return lines.join('\n');
}

/**
 * The floor table: what the rig allows for bulk before any proxy's own cost (see the header), each
 * figure as a ratio to Direct, and egressd and nginx (one worker) against the splice floor.
 */
function floorReport(): string[] {
  return [...bulkFloorReport(), ...loopFloorReport()];
}

function bulkFloorReport(): string[] {
  if (!columns.some((c) => c.product === 'dnat' || c.product === 'floor')) return [];
  const cols = [
    ['Direct', 'direct'],
    ['kernel DNAT', 'dnat'],
    ['splice floor', 'floor'],
    ['nginx', 'nginx-one'],
    ['egressd', 'egressd-one'],
  ] as const;
  const lines = [
    '### The floor: bulk through the rig with the least a forwarder can do (one worker)',
    '',
    'kernel DNAT: no proxy process, the router rewrites the destination (conntrack NAT), one TCP connection end to end. ' +
      'splice floor: a few dozen lines of C (bench/proxy/splice-floor.c) behind the same REDIRECT, a second TCP connection, ' +
      'blocking splice(2) through a 1 MiB pipe, a thread per direction, no policy: the least any proxy does, so its ratio to Direct is ' +
      "about the most a proxy can reach on this machine. Rig CPU is the client's, the origin's and the proxy's CPU per GB together: " +
      "where the three keep both cores busy, a column's rate is about Direct's times Direct's rig CPU ÷ its own, and a busy machine " +
      "distorts this figure far less than the rates (compare a column's samples on stderr).",
    '',
    `| figure | ${cols.map(([l]) => l).join(' | ')} | ${cols
      .slice(1)
      .map(([l]) => `${l} ÷ Direct`)
      .join(' | ')} | nginx ÷ splice floor | egressd ÷ splice floor |`,
    `|---|${cols.map(() => '---:').join('|')}|${cols
      .slice(1)
      .map(() => '---:')
      .join('|')}|---:|---:|`,
  ];
  for (const [label, w, f] of [
    ['raw bulk MB/s', 'raw-bulk', 'mbps'],
    ['TLS bulk MB/s', 'tls-bulk', 'mbps'],
    ['proxy CPU s per GB, raw', 'raw-bulk', 'cpuPerGB'],
    ['proxy CPU s per GB, TLS', 'tls-bulk', 'cpuPerGB'],
    ['rig CPU s per GB (client + origin + proxy), raw', 'raw-bulk', 'rigCpuPerGB'],
    ['rig CPU s per GB (client + origin + proxy), TLS', 'tls-bulk', 'rigCpuPerGB'],
  ] as const) {
    const v = cols.map(([, c]) => fig(w, c, f));
    const perDirect = f === 'cpuPerGB' ? v.slice(1).map(() => '—') : v.slice(1).map((x) => ratio(x, v[0]!));
    lines.push(`| ${label} | ${v.map(fmt).join(' | ')} | ${perDirect.join(' | ')} | ${ratio(v[3]!, v[2]!)} | ${ratio(v[4]!, v[2]!)} |`);
  }
  lines.push('');
  return lines;
}

/**
 * The loop floor table: connection set-up through egressd's own loop with the least JavaScript,
 * against nginx and egressd (one worker each), and what egressd's JavaScript adds per connection.
 */
function loopFloorReport(): string[] {
  if (!columns.some((c) => c.product === 'loop')) return [];
  const cols = [
    ['nginx', 'nginx-one'],
    ['loop floor', 'loop'],
    ['egressd', 'egressd-one'],
  ] as const;
  const lines = [
    '### The loop floor: connection set-up with the least JavaScript (one worker)',
    '',
    "loop floor: egressd's own native loop (bench/proxy/loop-floor.ts), one, hosted on Node's event loop, behind the same REDIRECT: " +
      "it accepts, reads the original destination and the first flight under egressd's peek rules, reports to JavaScript, and the " +
      "report's handler dials the original destination at once. No admission, parse, verdict, DNS lookup, log line or metrics. " +
      "loop floor ÷ nginx is what the C loop and its crossings to JavaScript cost; egressd ÷ loop floor, what egressd's JavaScript adds.",
    '',
    `| figure | ${cols.map(([l]) => l).join(' | ')} | loop floor ÷ nginx | egressd ÷ nginx | egressd ÷ loop floor |`,
    `|---|${cols.map(() => '---:').join('|')}|---:|---:|---:|`,
  ];
  const rows = [
    ['proxy CPU µs per connection, raw', 'raw-conn@50', 'cpuUsPerConn'],
    ['proxy CPU µs per connection, TLS', 'tls-conn@50', 'cpuUsPerConn'],
    ['raw new connections/s, 50 clients', 'raw-conn@50', 'rate'],
    ['raw connection p99 ms, 50 clients', 'raw-conn@50', 'p99'],
    ['new TLS connections/s, 50 clients', 'tls-conn@50', 'rate'],
    ['TLS connection p99 ms, 50 clients', 'tls-conn@50', 'p99'],
    ['raw new connections/s, sequential', 'raw-conn@1', 'rate'],
    ['new TLS connections/s, sequential', 'tls-conn@1', 'rate'],
  ] as const;
  for (const [label, w, f] of rows) {
    const [n, l, e] = cols.map(([, c]) => fig(w, c, f)) as unknown as [number, number, number];
    lines.push(`| ${label} | ${fmt(n)} | ${fmt(l)} | ${fmt(e)} | ${ratio(l, n)} | ${ratio(e, n)} | ${ratio(e, l)} |`);
  }
  const js = (w: string): string => fmt(fig(w, 'egressd-one', 'cpuUsPerConn') - fig(w, 'loop', 'cpuUsPerConn'));
  lines.push('', `egressd's JavaScript per connection (egressd's CPU less the loop floor's): raw ${js('raw-conn@50')} µs, TLS ${js('tls-conn@50')} µs.`, '');
  return lines;
}

function writeResults(section: string): void {
  const text = existsSync(RESULTS) ? readFileSync(RESULTS, 'utf8') : '# Benchmark results\n';
  const a = text.indexOf(BEGIN);
  const b = text.indexOf(END);
  const next = a >= 0 && b > a ? `${text.slice(0, a)}${section}${text.slice(b + END.length)}` : `${text.trimEnd()}\n\n${section}\n`;
  writeFileSync(RESULTS, next);
}

function version(cmd: string, argv: string[]): string {
  // nginx -v answers on stderr (and exits 0), the others on stdout.
  const r = spawnSync(cmd, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const line = (text: string | null): string => (text ?? '').split('\n')[0]!.trim();
  return line(r.stdout) || line(r.stderr) || 'unknown';
}

// ---- main -----------------------------------------------------------------------------------

async function waitListening(rig: Rig, port: number, what: string): Promise<void> {
  for (let i = 0; i < 150; i++) {
    const r = await rig.execIn('router', 'ss', ['-Hltn', `sport = :${port}`]);
    if (r.stdout.trim() !== '') return;
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error(`${what} did not listen on port ${port} within 15 s`);
}

async function main(): Promise<void> {
  const why = rigUnavailableReason();
  if (why !== null) throw new Error(`bench:proxy needs root and network namespaces: ${why}`);
  for (const [cmd, pkg] of [
    ['nginx', 'nginx'],
    ['haproxy', 'haproxy'],
    ['curl', 'curl'],
    ['dnsmasq', 'dnsmasq'],
  ] as const) {
    try {
      execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore', env: { PATH: `/usr/sbin:/sbin:${process.env['PATH']}` } });
    } catch {
      throw new Error(`"${cmd}" is missing (package ${pkg}): run "sudo bash bench/proxy/setup.sh" first`);
    }
  }
  if (!existsSync('/usr/lib/nginx/modules/ngx_stream_module.so'))
    throw new Error('nginx has no stream module (libnginx-mod-stream): run "sudo bash bench/proxy/setup.sh"');
  // egressd runs as npm ci ships it: bin/egressd runs dist/ only when no source is newer than
  // it, and otherwise type-strips src/ at start (≈ 25 MB more idle RSS, a slower start), as it
  // did in a checkout updated since the last build.
  // The addons likewise: a checkout whose native/*.c changed since the last build would run the
  // old loop (a changed call fails every connection with "bad arguments").
  execFileSync(NODE, [join(ROOT, 'scripts/build-native.ts')], { stdio: ['ignore', 'ignore', 'inherit'] });
  execFileSync(NODE, [join(ROOT, 'scripts/build-js.ts')], { stdio: ['ignore', 'ignore', 'inherit'] });
  const load0 = loadavg()[0]!;
  const dir = mkdtempSync(join(tmpdir(), 'egressd-bench-'));
  const rig = await createRig();
  const stop = (): void => void rig.teardown().finally(() => process.exit(130));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    // nginx's workers run as nobody: the origin's file must be readable by them.
    execFileSync('chmod', ['755', dir]);
    execFileSync('truncate', ['-s', String(P.bulkBytes), join(dir, '1g')]);
    execFileSync('chmod', ['644', join(dir, '1g')]);
    execFileSync('mkdir', ['-p', join(dir, 'tmp')]);
    if (columns.some((c) => c.product === 'floor'))
      execFileSync(process.env['CC'] ?? 'cc', ['-O2', '-pthread', '-o', join(dir, 'splice-floor'), join(ROOT, 'bench/proxy/splice-floor.c')], {
        stdio: 'inherit',
      });
    const inIf = `${rig.prefix}in`;
    for (const a of [TLS_ORIGIN, RAW_ORIGIN]) {
      const r = await rig.execIn('internet', 'ip', ['addr', 'add', `${a}/24`, 'dev', inIf]);
      if (r.code !== 0) throw new Error(`ip addr add ${a}: ${r.stderr}`);
    }
    await rig.dns({ [TLS_NAME]: [TLS_ORIGIN], [RAW_NAME]: [RAW_ORIGIN] });
    for (const r of [
      ['-t', 'nat', '-N', 'BENCH'],
      ['-t', 'nat', '-A', 'PREROUTING', '-i', rig.sandboxIf, '-p', 'tcp', '--dport', '443', '-j', 'BENCH'],
    ]) {
      const x = await rig.execIn('router', 'iptables', r);
      if (x.code !== 0) throw new Error(`iptables ${r.join(' ')}: ${x.stderr}`);
    }

    writeFileSync(join(dir, 'origin.conf'), originConf(dir));
    origins.tls = rig.spawnIn('internet', 'nginx', ['-c', join(dir, 'origin.conf'), '-p', dir]).pid;
    const raw = rig.spawnIn('internet', NODE, [join(ROOT, 'bench/proxy/origin.ts'), String(DNAT_PORT)]);
    origins.raw = raw.pid;
    await new Promise<void>((res, rej) => {
      createInterface({ input: raw.stdout! }).once('line', () => res());
      raw.once('exit', (code) => rej(new Error(`origin.ts exited (${code})`)));
    });

    columns.forEach((c, i) => {
      if (c.product === 'nginx') {
        writeFileSync(join(dir, `${c.key}.conf`), nginxConf(dir, c));
        c.proc = rig.spawnIn('router', 'nginx', ['-c', join(dir, `${c.key}.conf`), '-p', dir]);
      } else if (c.product === 'haproxy') {
        writeFileSync(join(dir, `${c.key}.cfg`), haproxyConf(c));
        c.proc = rig.spawnIn('router', 'haproxy', ['-db', '-f', join(dir, `${c.key}.cfg`)]);
      } else if (c.product === 'floor') {
        c.proc = rig.spawnIn('router', join(dir, 'splice-floor'), [String(c.port)]);
      } else if (c.product === 'loop') {
        c.proc = rig.spawnIn('router', NODE, [join(ROOT, 'bench/proxy/loop-floor.ts'), String(c.port)]);
      } else if (c.product === 'egressd') {
        writeFileSync(join(dir, `${c.key}.json`), egressdConf(dir, c, i));
        const threads = c.workers === 'one' ? '1' : String(perCore);
        // BENCH_NODE_OPTIONS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") and BENCH_EGRESSD_ENV (a JSON
        // object) reach egressd's process only, for profiling one column.
        const env = {
          EGRESSD_DATA_PLANE_THREADS: threads,
          ...(process.env['BENCH_NODE_OPTIONS'] ? { NODE_OPTIONS: process.env['BENCH_NODE_OPTIONS'] } : {}),
          ...(JSON.parse(process.env['BENCH_EGRESSD_ENV'] ?? '{}') as Record<string, string>),
        };
        c.proc = rig.spawnIn('router', EGRESSD, ['serve', '--config', join(dir, `${c.key}.json`)], { env });
      }
      c.proc?.stdout?.resume();
      c.proc?.stderr?.setEncoding('utf8').on('data', (d: string) => (c.stderr = (c.stderr + d).slice(-4096)));
    });
    for (const c of columns) {
      if (!c.proc) continue;
      try {
        await waitListening(rig, c.port, c.key);
      } catch (e) {
        throw new Error(`${(e as Error).message}; its stderr:\n${c.stderr}`);
      }
    }
    await new Promise((res) => setTimeout(res, 1500));
    for (const c of columns) if (c.proc?.pid && !isFloor(c)) record('idle', c.key, { mb: rssKiB(c.proc.pid) / 1024 });

    const wanted = args.workloads?.split(',');
    const workloads = ['tls-bulk', 'raw-bulk', 'raw-conn@1', 'raw-conn@50', 'tls-conn@1', 'tls-conn@50'].filter((w) => !wanted || wanted.includes(w));
    // Warm-up, discarded: the columns that run on Node (egressd, the loop floor) first carry
    // connections for a while, as a daemon that has run for more than a few seconds has. Their
    // JavaScript is compiled and optimized by V8 over the first tens of thousands of connections
    // (bench/conn-js.ts, 50 clients: V8's helper threads cost 25-55 µs per connection over the
    // first 4,000-10,000 and 6 after 30,000); nginx and HAProxy have no JIT to warm.
    for (const c of columns) {
      if (c.product !== 'egressd' && c.product !== 'loop') continue;
      for (const w of ['raw-conn@50', 'tls-conn@50'].filter((x) => !wanted || wanted.includes(x))) {
        if (overBudget()) break;
        await point(rig, c);
        const [kind, clients] = w.split('@') as [string, string];
        await load(rig, [kind, clients, String(P.warmMs), CA]);
      }
    }
    let rounds = 0;
    for (let round = 0; round < P.rounds && !overBudget(); round++) {
      for (const w of workloads) {
        // The order rotates each round so no column always runs first (or last) after a change.
        const order = columns.map((_, i) => columns[(i + round) % columns.length]!);
        for (const c of order) {
          if (overBudget()) break;
          if (isFloor(c) && !FLOOR_WORKLOADS[c.product].includes(w)) continue;
          await measure(rig, c, w);
        }
      }
      rounds++;
      process.stderr.write(`bench:proxy: round ${round + 1}/${P.rounds} done at ${((Date.now() - started) / 1000).toFixed(0)} s\n`);
    }
    if (!wanted || wanted.includes('hold')) for (const c of columns) if (c.proc && !isFloor(c) && !overBudget()) await holdTest(rig, c);
    // Which data plane each egressd ran (its start line), so a JavaScript fallback is never mistaken for the native one.
    const planes = columns
      .filter((c) => c.product === 'egressd')
      .map((c) => {
        let line: { plane?: string; setup?: string; threads?: number; host?: string; reason?: string } = {};
        try {
          const l = readFileSync(join(dir, `egressd-${c.key}.log`), 'utf8')
            .split('\n')
            .find((x) => x.includes('"data-plane"'));
          if (l) line = JSON.parse(l) as typeof line;
        } catch {
          // no log: reported as unknown
        }
        const setup = line.setup ? `, set up on ${line.setup}` : '';
        const loops = line.threads
          ? ` (${line.threads} loop${line.threads > 1 ? 's' : ''}${line.host === 'event-loop' ? ', loop 0 on the event loop' : line.host ? ', each on its own thread' : ''})`
          : '';
        return `${c.key}: ${line.plane ?? 'unknown'}${loops}${setup}${line.reason ? ` (${line.reason})` : ''}`;
      });

    const cpu = cpus()[0]?.model ?? 'unknown CPU';
    const machine =
      `Machine: ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, ${perCore} × ${cpu}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, ` +
      `Linux ${release()}, Node ${process.version}, ${version('nginx', ['-v'])}, ${version('haproxy', ['-v'])}, ` +
      `${version('curl', ['--version'])}; load average ${load0.toFixed(2)} at start.`;
    const note =
      `${smoke ? '**SMOKE RUN: sizes and durations cut down to check the harness; the figures mean nothing.** ' : ''}` +
      `${rounds} interleaved round(s), medians; bulk ${(P.bulkBytes / 2 ** 20).toFixed(0)} MiB, connection tests ${P.connMs} ms each, ` +
      `${P.held} held connections; the Node columns (egressd, the loop floor) warmed up first with ${P.warmMs / 1000} s of each 50-client connection workload, discarded. Bounded at ${BUDGET_MS / 60_000} min; took ${((Date.now() - started) / 1000).toFixed(0)} s. ` +
      "Proxy CPU is user+system time of the proxy process tree; RSS is the tree's VmRSS (nginx counts master and workers). " +
      "Client, origins and proxy share the machine's cores, as on a sandbox host. Neither nginx nor HAProxy logs a line per connection here; egressd does. " +
      `egressd's data plane: ${planes.join('; ')}.`;
    const section = report(machine, note);
    process.stdout.write(`${section}\n`);
    if (!args['no-write']) {
      writeResults(section);
      process.stderr.write(`bench:proxy: wrote ${RESULTS}\n`);
    }
  } finally {
    await rig.teardown();
    if (process.env['BENCH_KEEP']) process.stderr.write(`kept ${dir}\n`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

await main();
