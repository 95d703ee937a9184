// The DNS listener against dnsmasq forwarding the same queries, in the same run, on loopback:
//
//   authoritative dnsmasq (127.0.0.1:A, answers *.bench.test)  ← the upstream of both
//   forwarding dnsmasq    (127.0.0.1:B, server=127.0.0.1#A)    ← the reference
//   egressd's DNS listener (127.0.0.1:C, dns.servers A)         ← what is measured
//
// Each target gets the same two loads, one after the other (never side by side: they would share
// the two cores): `hit`, one name asked again and again (answered from each forwarder's cache),
// and `miss`, a new name every query (each one forwarded upstream). A load keeps `concurrency`
// queries outstanding for `count` queries; each query's latency is measured from send to answer.
// The authoritative server itself is measured too; "vs fwd p50" is egressd's p50 minus the
// forwarding dnsmasq's, the latency egressd adds over the reference forwarder.
//
// Needs dnsmasq (scripts/ensure-test-tools.sh installs it); skipped with the reason without.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import * as packet from 'dns-packet';

const COUNT = Number(process.env['BENCH_DNS_COUNT'] ?? 20_000);
const CONCURRENCY = 32;
const DNSMASQ = ['/usr/sbin/dnsmasq', '/usr/bin/dnsmasq', '/sbin/dnsmasq'].find((p) => spawnSync(p, ['--version'], { stdio: 'ignore' }).status === 0);

interface LoadResult {
  readonly qps: number;
  readonly p50: number;
  readonly p99: number;
  readonly errors: number;
}

/** Keeps `concurrency` queries in flight until `count` were answered (or timed out after 2 s). */
function load(port: number, name: (i: number) => string, count: number, concurrency: number): Promise<LoadResult> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    const sentAt = new Map<number, number>();
    const lat: number[] = [];
    let next = 0;
    let done = 0;
    let errors = 0;
    const started = performance.now();
    const send = (): void => {
      if (next >= count) return;
      const i = next++;
      const id = i & 0xffff;
      sentAt.set(id, performance.now());
      s.send(packet.encode({ type: 'query', id, flags: packet.RECURSION_DESIRED, questions: [{ name: name(i), type: 'A' }] }), port, '127.0.0.1');
    };
    const finish = (): void => {
      clearInterval(sweep);
      s.close();
      const elapsed = (performance.now() - started) / 1000;
      lat.sort((a, b) => a - b);
      const q = (p: number): number => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? NaN;
      resolve({ qps: done / elapsed, p50: q(0.5), p99: q(0.99), errors });
    };
    s.on('message', (m) => {
      const id = m.readUInt16BE(0);
      const t = sentAt.get(id);
      if (t === undefined) return;
      sentAt.delete(id);
      if ((m[3]! & 0xf) !== 0) errors++;
      lat.push(performance.now() - t);
      if (++done === count) finish();
      else send();
    });
    // A lost datagram counts as an error and frees its slot.
    const sweep = setInterval(() => {
      const now = performance.now();
      for (const [id, t] of sentAt) {
        if (now - t < 2000) continue;
        sentAt.delete(id);
        errors++;
        if (++done === count) return finish();
        send();
      }
    }, 200);
    s.bind(0, '127.0.0.1', () => {
      for (let i = 0; i < concurrency; i++) send();
    });
  });
}

/** CPU time a process has used (user + system), in ms, from /proc (clock ticks of 10 ms). */
function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    s.bind(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

async function dnsmasq(dir: string, tag: string, lines: string[]): Promise<ChildProcess> {
  const conf = join(dir, `${tag}.conf`);
  writeFileSync(conf, ['no-resolv', 'no-hosts', 'bind-interfaces', 'listen-address=127.0.0.1', 'user=root', ...lines, ''].join('\n'));
  const child = spawn(DNSMASQ!, ['--keep-in-foreground', `--conf-file=${conf}`], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 300));
  return child;
}

async function main(): Promise<void> {
  if (!DNSMASQ) {
    console.log('dns.ts skipped: dnsmasq is not installed (bash scripts/ensure-test-tools.sh)');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'egressd-bench-dns-'));
  const children: ChildProcess[] = [];
  try {
    const [auth, fwd, egressd] = [await freePort(), await freePort(), await freePort()];
    // Authoritative for bench.test: every name under it is 198.18.1.1, TTL 300.
    children.push(await dnsmasq(dir, 'auth', [`port=${auth}`, 'address=/bench.test/198.18.1.1', 'local-ttl=300', 'cache-size=0']));
    // The reference forwarder, with its default-sized cache.
    children.push(await dnsmasq(dir, 'fwd', [`port=${fwd}`, `server=127.0.0.1#${auth}`, 'cache-size=10000']));
    // egressd as its own process, as dnsmasq is: the load generator must not share its loop.
    const config = join(dir, 'egressd.json');
    writeFileSync(
      config,
      JSON.stringify({
        listen: { http: '127.0.0.1:0', tls: '127.0.0.1:0', tcp: '127.0.0.1:0', dns: `127.0.0.1:${egressd}` },
        admin: { listen: '127.0.0.1:0' },
        log: { level: 'info' },
        dns: { servers: [`127.0.0.1:${auth}`], limits: { perSecond: 1_000_000, burst: 1_000_000, inflightPerSandbox: 10_000 } },
        sandboxes: [{ id: 'bench', sources: ['127.0.0.1'], network: { mode: 'block-all', egress: { allowed_domains: ['*.bench.test'] } } }],
      }),
    );
    const daemon = spawn(process.execPath, [join(import.meta.dirname, '../src/main.ts'), 'serve', '--config', config], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(daemon);
    await new Promise<void>((ready, fail) => {
      createInterface({ input: daemon.stdout! }).on('line', (l) => l.includes('"started"') && ready());
      daemon.once('exit', (code) => fail(new Error(`egressd exited (${code}) before serving`)));
    });

    // The process whose CPU a load is charged to (the forwarder's; the upstream's is the same for both).
    const targets: [string, number, number | undefined][] = [
      ['direct (authoritative dnsmasq)', auth, children[0]!.pid],
      ['dnsmasq forwarding', fwd, children[1]!.pid],
      ['egressd DNS listener', egressd, daemon.pid],
    ];
    const rows: string[] = [];
    const results = new Map<string, LoadResult>();
    const run = Date.now().toString(36);
    for (const kind of ['hit', 'miss'] as const) {
      for (const [label, port, pid] of targets) {
        // Each target and phase gets its own miss names, so nothing is answered from a cache
        // another load filled.
        const tag = label.split(' ')[0]!;
        const nameOf =
          (phase: string) =>
          (i: number): string =>
            kind === 'hit' ? 'www.bench.test' : `n${i}.${phase}-${tag}-${run}.bench.test`;
        await load(port, nameOf('warm'), 500, CONCURRENCY);
        const cpu0 = cpuMs(pid);
        const res = await load(port, nameOf('run'), COUNT, CONCURRENCY);
        const cpuPerQuery = ((cpuMs(pid) - cpu0) * 1000) / COUNT;
        results.set(`${kind} ${label}`, res);
        const base = results.get(`${kind} ${targets[1]![0]}`);
        const added = label === targets[2]![0] && base ? `${(res.p50 - base.p50).toFixed(3)}` : '';
        rows.push(
          [
            kind.padEnd(5),
            label.padEnd(31),
            res.qps.toFixed(0).padStart(8),
            res.p50.toFixed(3).padStart(9),
            res.p99.toFixed(3).padStart(9),
            added.padStart(11),
            cpuPerQuery.toFixed(0).padStart(9),
            String(res.errors).padStart(7),
          ].join(' '),
        );
      }
    }
    console.log(`${COUNT} A queries per load, ${CONCURRENCY} outstanding, UDP on loopback; latency in ms`);
    console.log(
      [
        'load '.padEnd(5),
        'target'.padEnd(31),
        'q/s'.padStart(8),
        'p50'.padStart(9),
        'p99'.padStart(9),
        'vs fwd p50'.padStart(11),
        'cpu µs/q'.padStart(9),
        'errors'.padStart(7),
      ].join(' '),
    );
    for (const row of rows) console.log(row);
  } finally {
    for (const c of children) c.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
