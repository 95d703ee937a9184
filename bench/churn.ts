// Part 4 of issue 11: does egressd's memory stay flat under connect/close churn?
//   sudo node bench/churn.ts [--minutes 30] [--rate 40] [--out FILE]
// Builds the netns rig (test/helpers/netns-rig.ts: real iptables REDIRECT), runs egressd in the
// router namespace with two sandboxes, and from each sandbox's source address opens --rate
// connections a second for --minutes (bench/churn-client.ts: TLS GETs to an allowed name, one
// in four a refused name). Every 10 s it samples egressd's RSS, V8 heap (from /metrics) and
// open descriptors. The verdict: RSS growth over the second half, comparing the median of the
// samples in the minute after the half-way mark with the median of the last minute; flat means
// under 5 %. Not run in CI (30 minutes); the figures of record are in bench/RESULTS.md.

import { readFileSync, readdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { createRig, rigUnavailableReason } from '../test/helpers/netns-rig.ts';

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '30' },
    rate: { type: 'string', default: '40' },
    out: { type: 'string' },
  },
});
const minutes = Number(values.minutes);
const rate = Number(values.rate);
const ROOT = resolve(import.meta.dirname, '..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const REAL = '198.18.1.2';
const DENIED = '198.18.1.3';

const why = rigUnavailableReason();
if (why) {
  console.error(`churn: cannot run: ${why}`);
  process.exit(2);
}

interface Sample {
  t: number;
  rssMiB: number;
  heapUsedMiB: number | null;
  fds: number;
  connections: number;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor(s.length / 2)]!;
};

const rig = await createRig();
const dir = mkdtempSync(join(tmpdir(), 'egressd-churn-'));
let exitCode = 0;
try {
  await rig.servers([REAL, DENIED]);
  await rig.dns({ 'allowed.test': [REAL], 'denied.test': [DENIED] });
  const network = { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } };
  const config = {
    listen: { http: ['0.0.0.0:15080'], tls: ['0.0.0.0:15443'], tcp: ['0.0.0.0:15001'] },
    admin: { listen: '127.0.0.1:9901' },
    dns: { servers: [rig.dnsServer] },
    protected: { except: ['198.18.0.0/15'] },
    sandboxes: [
      { id: 'churn-1', sources: [rig.sandboxV4], network },
      { id: 'churn-2', sources: [rig.sandbox2V4], network },
    ],
  };
  const file = join(dir, 'egressd.json');
  writeFileSync(file, JSON.stringify(config));
  const daemon = rig.spawnIn('router', NODE, [join(ROOT, 'src/main.ts'), 'serve', '--config', file]);
  let connections = 0;
  const started = new Promise<void>((res, rej) => {
    const t = setTimeout(() => rej(new Error('egressd did not start within 20 s')), 20_000);
    createInterface({ input: daemon.stdout! }).on('line', (l) => {
      if (l.includes('"event":{"action":"connection"')) connections++;
      else if (l.includes('"event":{"action":"started"')) {
        clearTimeout(t);
        res();
      }
    });
    daemon.stderr!.resume();
  });
  await started;
  await rig.redirect({ http: 15080, tls: 15443, tcp: 15001 });
  const pid = daemon.pid!;

  const heapUsed = async (): Promise<number | null> => {
    const r = await rig.execIn('router', 'curl', ['-s', '--max-time', '2', 'http://127.0.0.1:9901/metrics']);
    const m = /^nodejs_heap_size_used_bytes (\S+)$/m.exec(r.stdout);
    return m ? Number(m[1]) / 1048576 : null;
  };
  const sample = async (t0: number): Promise<Sample> => {
    const rssKb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
    return {
      t: Math.round((Date.now() - t0) / 1000),
      rssMiB: Math.round((rssKb / 1024) * 10) / 10,
      heapUsedMiB: await heapUsed().then((h) => (h === null ? null : Math.round(h * 10) / 10)),
      fds: readdirSync(`/proc/${pid}/fd`).length,
      connections,
    };
  };

  const durationMs = minutes * 60_000;
  const t0 = Date.now();
  const client = rig.spawnIn('sandbox', NODE, [
    join(ROOT, 'bench/churn-client.ts'),
    '--bind',
    `${rig.sandboxV4},${rig.sandbox2V4}`,
    '--rate',
    String(rate),
    '--duration-ms',
    String(durationMs),
    '--server',
    REAL,
    '--ca',
    join(ROOT, 'certs/ca.pem'),
  ]);
  let last: Record<string, unknown> = {};
  createInterface({ input: client.stdout! }).on('line', (l) => {
    try {
      last = JSON.parse(l) as Record<string, unknown>;
    } catch {
      // not ours
    }
  });
  client.stderr!.resume();
  const clientDone = new Promise<void>((res) => client.once('exit', () => res()));
  const samples: Sample[] = [await sample(t0)];
  while (Date.now() - t0 < durationMs + 12_000 && client.exitCode === null) {
    await Promise.race([new Promise((r) => setTimeout(r, 10_000)), clientDone]);
    const s = await sample(t0);
    samples.push(s);
    console.log(JSON.stringify({ ...s, client: last }));
  }
  const half = durationMs / 2000;
  const end = durationMs / 1000;
  const at = (from: number, to: number): Sample[] => samples.filter((s) => s.t >= from && s.t <= to);
  const mid = median(at(half, half + 60).map((s) => s.rssMiB));
  const fin = median(at(end - 60, end + 15).map((s) => s.rssMiB));
  const summary = {
    minutes,
    ratePerSource: rate,
    sources: 2,
    client: last,
    connectionsLogged: connections,
    rssStartMiB: samples[0]!.rssMiB,
    rssHalfMiB: mid,
    rssEndMiB: fin,
    rssGrowthSecondHalfPercent: Math.round(((fin - mid) / mid) * 1000) / 10,
    heapHalfMiB: median(at(half, half + 60).map((s) => s.heapUsedMiB ?? NaN)),
    heapEndMiB: median(at(end - 60, end + 15).map((s) => s.heapUsedMiB ?? NaN)),
    fdsHalf: median(at(half, half + 60).map((s) => s.fds)),
    fdsEnd: median(at(end - 60, end + 15).map((s) => s.fds)),
  };
  console.log(JSON.stringify({ event: 'summary', ...summary }));
  if (values.out) writeFileSync(values.out, JSON.stringify({ summary, samples }, null, 1));
  exitCode = summary.rssGrowthSecondHalfPercent < 5 ? 0 : 1;
} finally {
  await rig.teardown();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(exitCode);
