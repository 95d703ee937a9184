// The JavaScript thread's cost per connection (issue 12), measured without the network namespace
// rig: an egressd Daemon in this very process on loopback (native set-up by default), a raw
// origin and the clients in child processes, so this process's main thread runs egressd alone.
//
//   node bench/conn-js.ts [--count 2000] [--clients 1] [--warm 200] [--workload raw|tls] [--setup native|node] [--hold N] [--floor] [--prof DIR] [--heap-prof DIR] [--bound S]
//
// Each client loops: connect, the raw workload's first flight (a ClientHello naming
// raw.allowed.test, then the 'T' command of bench/proxy/wire.ts), read the origin's 2 bytes, close.
// `--workload tls`: a full TLS handshake with a Node TLS origin instead (certs/, no resumption),
// GET /tiny, the 2-byte answer, close_notify both ways: bench/proxy's tls-conn, on loopback.
// Printed: the main thread's CPU µs per connection (process.threadCpuUsage, user + system, so the
// kernel work the thread does is in), the whole process's, connections/s (meaningless on a busy
// machine), and counts per connection: the loops' reports, the main thread's sleeps, and the turns
// of Node's event loop. `--prof DIR` writes a V8 CPU profile of the measured part (inspector), to read
// with inclusive time ÷ connections; `--heap-prof DIR` a sampling heap profile of every allocation
// (collected ones included), to read as bytes ÷ connections. `--floor`: the loop floor
// (bench/proxy/loop-floor.ts) in place of the daemon, so that egressd's figures less the floor's are
// its JavaScript's, measured on one harness. Loopback has no REDIRECT: the original destination is the
// origin, given as the daemon's originalDst (as test/helpers/loopback-daemon.ts does), and the
// dial is `original` (no DNS). `--warm N` connections go first, unmeasured: V8 compiles the
// per-connection code over the first tens of thousands, and its helper threads' cost per
// connection falls from 25-55 µs over the first 10,000 to about 6 after 30,000, so
// `--warm 30000` measures a daemon that has run a while. `--hold N`: N more connections, from
// another source address to an origin that never answers nor closes, are opened and spliced
// before the measured part and held idle through it, as a sandbox holding connections open does
// (what N held connections cost every other connection's set-up). Bounded by the counts and a timer:
// 120 s, or `--bound S` seconds (a run under valgrind is some twenty times slower).

import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { getHeapStatistics } from 'node:v8';
import { availableParallelism } from 'node:os';
import { validateConfig } from '../src/config/schema.ts';
import { Daemon } from '../src/daemon.ts';
import { createLogger } from '../src/observability/logger.ts';
import { startLoopFloor, type LoopFloor } from './proxy/loop-floor.ts';
import { RAW_NAME } from './proxy/wire.ts';

const { values: args } = parseArgs({
  options: {
    count: { type: 'string', default: '2000' },
    warm: { type: 'string', default: '200' },
    clients: { type: 'string', default: '1' },
    setup: { type: 'string', default: 'native' },
    prof: { type: 'string' },
    'heap-prof': { type: 'string' },
    workload: { type: 'string', default: 'raw' },
    hold: { type: 'string', default: '0' },
    bound: { type: 'string', default: '120' },
    floor: { type: 'boolean', default: false },
    child: { type: 'string' },
    port: { type: 'string' },
  },
  strict: true,
});
for (const k of ['count', 'clients', 'warm', 'hold', 'bound'] as const) {
  const n = Number(args[k]);
  const zero = k === 'warm' || k === 'hold';
  if (!Number.isInteger(n) || n < (zero ? 0 : 1)) {
    console.error(`conn-js: --${k} must be a whole number${zero ? '' : ' of at least 1'}, got ${JSON.stringify(args[k])}`);
    process.exit(2);
  }
}

if (args.workload !== 'raw' && args.workload !== 'tls') {
  console.error(`conn-js: --workload must be raw or tls, got ${JSON.stringify(args.workload)}`);
  process.exit(2);
}
const tls = args.workload === 'tls';
/** The source address of --hold's connections, routed to the origin that never answers. */
const HOLD_SOURCE = '127.0.0.2';
const certs = join(import.meta.dirname, '../certs');

if (args.child === 'origin' && tls) {
  // The TLS origin: answers the request with "ok" and closes, as bench/proxy's nginx origin does
  // /tiny with `Connection: close`: TLS 1.2 (nginx 1.22's default protocols end there), no
  // session tickets, so every handshake is a full one with the same round trips.
  const { createServer } = await import('node:tls');
  const { constants } = await import('node:crypto');
  const opts = {
    cert: readFileSync(join(certs, 'server.pem')),
    key: readFileSync(join(certs, 'server-key.pem')),
    maxVersion: 'TLSv1.2' as const,
    secureOptions: constants.SSL_OP_NO_TICKET,
  };
  const server = createServer(opts, (s) => {
    s.on('error', () => {});
    s.once('data', () => s.end('ok'));
  });
  server.listen(0, '127.0.0.1', () => process.send?.((server.address() as { port: number }).port));
} else if (args.child === 'origin') {
  // The raw origin: reads the 9-byte command after the hello, answers "ok", closes.
  const { createServer } = await import('node:net');
  const server = createServer((s) => {
    s.on('error', () => {});
    s.once('data', () => s.end('ok'));
  });
  server.listen(0, '127.0.0.1', () => process.send?.((server.address() as { port: number }).port));
} else if (args.child === 'hold-origin') {
  // Takes held connections and keeps them: reads and discards, never answers, never closes.
  const { createServer } = await import('node:net');
  const server = createServer((s) => {
    s.on('error', () => {});
    s.resume();
  });
  server.listen(0, '127.0.0.1', () => process.send?.((server.address() as { port: number }).port));
} else if (args.child === 'holder') {
  // Opens --count connections from HOLD_SOURCE, 100 at a time, each sending the raw workload's
  // first flight, and keeps them; tells how many were established (a reset one is not).
  const { connect } = await import('node:net');
  const { request } = await import('./proxy/wire.ts');
  const first = request('T');
  const port = Number(args.port);
  const held: unknown[] = [];
  let left = Number(args.count);
  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const s = connect({ host: '127.0.0.1', port, localAddress: HOLD_SOURCE }, () => {
        s.write(first);
        held.push(s);
        resolve();
      });
      s.on('error', () => resolve());
    });
  await Promise.all(
    Array.from({ length: 100 }, async () => {
      while (left > 0) {
        left--;
        await one();
      }
    }),
  );
  process.send?.({ held: held.length });
} else if (args.child === 'clients') {
  const { connect } = await import('node:net');
  const { request } = await import('./proxy/wire.ts');
  const { connect: tlsConnect } = await import('node:tls');
  const first = request('T');
  const ca = readFileSync(join(certs, 'ca.pem'));
  const get = `GET /tiny HTTP/1.1\r\nHost: ${RAW_NAME}\r\nConnection: close\r\n\r\n`;
  const port = Number(args.port);
  let left = Number(args.count);
  let errors = 0;
  const once = (): Promise<void> =>
    new Promise((resolve) => {
      const s = tls
        ? tlsConnect(
            {
              host: '127.0.0.1',
              port,
              servername: RAW_NAME,
              ca,
              ALPNProtocols: ['http/1.1'],
            },
            () => s.write(get),
          )
        : connect({ host: '127.0.0.1', port, noDelay: true }, () => s.write(first));
      s.on('data', () => {});
      s.once('end', () => s.end());
      s.once('error', () => errors++);
      s.once('close', () => resolve());
    });
  const loop = async (): Promise<void> => {
    while (left > 0) {
      left--;
      await once();
    }
  };
  await Promise.all(Array.from({ length: Number(args.clients) }, loop));
  process.send?.({ errors });
  process.disconnect?.();
} else {
  await main();
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'egressd-conn-js-'));
  const children: ChildProcess[] = [];
  const timer = setTimeout(
    () => {
      for (const c of children) c.kill();
      console.error(`conn-js: over ${args.bound} s, stopped`);
      process.exit(1);
    },
    Number(args.bound) * 1000,
  );
  try {
    const origin = fork(import.meta.filename, ['--child', 'origin', '--workload', args.workload!]);
    children.push(origin);
    const originPort = await new Promise<number>((resolve) => origin.once('message', (m) => resolve(m as number)));
    const hold = Number(args.hold);
    let holdPort = originPort;
    if (hold > 0) {
      const h = fork(import.meta.filename, ['--child', 'hold-origin']);
      children.push(h);
      holdPort = await new Promise<number>((resolve) => h.once('message', (m) => resolve(m as number)));
    }
    const r = validateConfig({
      // Every listener on a port of its own choosing: two runs at once (a callgrind run and
      // another) must not find each other's ports taken.
      listen: { tls: '127.0.0.1:0', http: '127.0.0.1:0', tcp: '127.0.0.1:0', dns: '127.0.0.1:0' },
      admin: { listen: '127.0.0.1:0' },
      protected: {
        except: ['127.0.0.0/8'],
        reachableHostAddresses: ['127.0.0.0/8', '::1'],
      },
      upstream: { dial: 'original' },
      limits: {
        sandbox: {
          connections: 100_000,
          undecided: 100_000,
          perSecond: 10_000_000,
          burst: 10_000_000,
        },
      },
      sandboxes: [
        {
          id: 'bench',
          sources: ['127.0.0.1', HOLD_SOURCE],
          network: {
            mode: 'block-all',
            egress: {
              allowed_domains: [RAW_NAME],
              allowed_ports: [...new Set([originPort, holdPort])],
            },
          },
        },
      ],
      log: { level: 'info', destination: join(dir, 'egressd.log') },
    });
    if (!r.ok) throw new Error(`config: ${JSON.stringify(r.issues)}`);
    const daemon = args.floor
      ? loopFloor(originPort)
      : new Daemon(
          r.config,
          createLogger({
            level: 'info',
            destination: join(dir, 'egressd.log'),
          }),
          {
            originalDst: (s) => ({
              kind: 'redirected',
              address: '127.0.0.1',
              port: s.remoteAddress === HOLD_SOURCE ? holdPort : originPort,
            }),
            setup: args.setup === 'node' ? 'node' : 'native',
          },
        );
    await daemon.start();
    const port = daemon.listeners[0]!.port!;
    const run = async (count: number): Promise<{ errors: number }> => {
      const c = fork(import.meta.filename, [
        '--child',
        'clients',
        '--workload',
        args.workload!,
        '--port',
        String(port),
        '--count',
        String(count),
        '--clients',
        args.clients!,
      ]);
      children.push(c);
      return await new Promise((resolve) => c.once('message', (m) => resolve(m as { errors: number })));
    };
    await run(Number(args.warm)); // warm-up: JIT, caches
    let held = 0;
    if (hold > 0) {
      const h = fork(import.meta.filename, ['--child', 'holder', '--port', String(port), '--count', String(hold)]);
      children.push(h);
      held = await new Promise<number>((resolve) => h.once('message', (m) => resolve((m as { held: number }).held)));
      // Every held connection spliced (the daemon's open connections), before the measured part.
      for (let i = 0; i < 200 && (daemon.nativeSetup?.size ?? hold) < held; i++) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    // The main thread's CPU while no connection arrives (timers, monitors): a cost per second,
    // which a workload of fewer connections per second (TLS) pays more of per connection.
    const idle0 = process.threadCpuUsage();
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const idle = process.threadCpuUsage(idle0);
    const session = args.prof !== undefined || args['heap-prof'] !== undefined ? new Session() : null;
    if (session) session.connect();
    if (session && args.prof !== undefined) {
      await session.post('Profiler.enable');
      await session.post('Profiler.start');
    }
    if (session && args['heap-prof'] !== undefined) {
      // Every allocation sampled, the collected ones included: what a connection allocates, not what stays.
      await session.post('HeapProfiler.enable');
      await session.post('HeapProfiler.startSampling', {
        samplingInterval: 256,
        includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: true,
      });
    }
    const count = Number(args.count);
    const t0 = performance.now();
    const reports0 = { ...daemon.nativeSetup?.reports };
    // Garbage collections during the measured part, by kind (scavenges: the young generation).
    const gcs = { scavenge: 0, other: 0 };
    const gcObserver = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) gcs[(e as { detail?: { kind?: number } }).detail?.kind === 1 ? 'scavenge' : 'other']++;
    });
    gcObserver.observe({ entryTypes: ['gc'] });
    const allocated0 = getHeapStatistics().total_allocated_bytes;
    const faults0 = process.resourceUsage().minorPageFault;
    const wakeups0 = mainWakeups();
    const uv0 = performance.nodeTiming.uvMetricsInfo;
    const main0 = process.threadCpuUsage();
    const all0 = process.cpuUsage();
    const { errors } = await run(count);
    const main = process.threadCpuUsage(main0);
    const all = process.cpuUsage(all0);
    const allocated = getHeapStatistics().total_allocated_bytes - allocated0;
    const faults = process.resourceUsage().minorPageFault - faults0;
    const wakeups = mainWakeups() - wakeups0;
    const uv = performance.nodeTiming.uvMetricsInfo;
    await new Promise((resolve) => setImmediate(resolve));
    gcObserver.disconnect();
    const seconds = (performance.now() - t0) / 1000;
    if (session && args['heap-prof'] !== undefined) {
      const { profile } = await session.post('HeapProfiler.stopSampling');
      mkdirSync(args['heap-prof'], { recursive: true });
      const file = join(args['heap-prof'], `conn-js-${Date.now()}.heapprofile`);
      writeFileSync(file, JSON.stringify(profile));
      console.error(`heap profile: ${file}`);
    }
    if (session && args.prof !== undefined) {
      const { profile } = await session.post('Profiler.stop');
      mkdirSync(args.prof!, { recursive: true });
      const file = join(args.prof!, `conn-js-${Date.now()}.cpuprofile`);
      writeFileSync(file, JSON.stringify(profile));
      console.error(`profile: ${file}`);
    }
    const per = (u: { user: number; system: number }): number => Math.round(((u.user + u.system) / count) * 10) / 10;
    console.log(
      JSON.stringify({
        setup: args.floor ? 'floor' : daemon.nativeSetup ? 'native' : 'node',
        workload: args.workload,
        clients: Number(args.clients),
        count,
        errors,
        held,
        mainThreadUsPerConn: per(main),
        mainUserUs: Math.round((main.user / count) * 10) / 10,
        mainSystemUs: Math.round((main.system / count) * 10) / 10,
        processUsPerConn: per(all),
        connPerSecond: Math.round(count / seconds),
        idleMainUsPerSecond: Math.round((idle.user + idle.system) / 2),
        // V8 heap bytes this process allocated per connection (the clients are other processes),
        // and the garbage collections per 1,000 connections.
        heapBytesPerConn: Math.round(allocated / count),
        scavengesPer1000: Math.round((gcs.scavenge / count) * 10_000) / 10,
        // Minor page faults of the whole process per connection: fresh pages touched (a young
        // generation handed back and faulted in again, malloc arenas), each a trap to the kernel.
        pageFaultsPerConn: Math.round((faults / count) * 10) / 10,
        // The main thread's sleeps per connection (voluntary context switches: each epoll_pwait
        // that blocked), and the turns of Node's event loop (libuv's loop count) and the events
        // its polls returned. Counts, steady on a busy machine where times are not: a TLS
        // connection's exchanges come one at a time, and each wake-up costs a context switch,
        // libuv's epoll_pwait (two before a sleep: Node configures UV_METRICS_IDLE_TIME, whose
        // first poll never waits), the hosted loop's own epoll_wait, and Node's phases.
        wakeupsPerConn: Math.round((wakeups / count) * 100) / 100,
        loopTurnsPerConn: Math.round(((uv.loopCount - uv0.loopCount) / count) * 100) / 100,
        uvEventsPerConn: Math.round(((uv.events - uv0.events) / count) * 100) / 100,
        otherGcsPer1000: Math.round((gcs.other / count) * 10_000) / 10,
        // What crossed from the loops to JavaScript, per connection, by kind (native set-up).
        reportsPerConn: Object.fromEntries(
          Object.entries(daemon.nativeSetup?.reports ?? {}).map(([k, v]) => [
            k,
            Math.round(((v - ((reports0 as Record<string, number>)[k] ?? 0)) / count) * 100) / 100,
          ]),
        ),
      }),
    );
    await daemon.stop(0);
  } finally {
    clearTimeout(timer);
    for (const c of children) c.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * `--floor`: bench/proxy/loop-floor.ts's loop on loopback in place of the daemon (as many loops as
 * EGRESSD_DATA_PLANE_THREADS says, else one per core), its accept report's handler dialing the
 * origin at once: no admission, parse, verdict, log line or metrics, so the same harness's figures
 * less these are egressd's JavaScript. Loopback has no REDIRECT: the dial goes to the origin.
 */
function loopFloor(originPort: number): Pick<Daemon, 'start' | 'stop' | 'listeners' | 'nativeSetup'> {
  let floor: LoopFloor | null = null;
  return {
    start: async () => {
      const threads = Number(process.env['EGRESSD_DATA_PLANE_THREADS'] ?? availableParallelism());
      floor = startLoopFloor(threads, '127.0.0.1', 0, () => ['127.0.0.1', originPort]);
      return 'serving' as const;
    },
    stop: async () => floor?.stop(),
    get listeners() {
      return [{ port: floor?.port }] as unknown as Daemon['listeners'];
    },
    get nativeSetup() {
      return {
        reports: { ...floor?.reports },
      } as unknown as Daemon['nativeSetup'];
    },
  };
}

/** The main thread's voluntary context switches so far (Linux; 0 elsewhere). */
function mainWakeups(): number {
  try {
    return Number(/^voluntary_ctxt_switches:\s+(\d+)$/m.exec(readFileSync(`/proc/self/task/${process.pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}
