// The benchmark's client (bench/proxy/run.ts runs it in the client namespace, whose port-443
// traffic iptables sends to the proxy under test). One measurement per run, printed as one JSON
// line on stdout. Bounded: every mode stops by count or by time.
//
//   raw-bulk BYTES            one raw connection downloading BYTES → { bytes, seconds, cpu } (cpu: this client's CPU seconds)
//   raw-conn CLIENTS MS       CLIENTS loops of connect / first flight / 2-byte reply / close, for MS
//   tls-conn CLIENTS MS CA    the same with a full TLS handshake and GET /tiny (no resumption)
//   hold N                    N raw connections held open; prints {"held":N} then waits for stdin to close

import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { PORT, RAW_ORIGIN, TLS_NAME, TLS_ORIGIN, request } from './wire.ts';

const [mode, a, b, c] = process.argv.slice(2);

function out(o: object): void {
  process.stdout.write(`${JSON.stringify(o)}\n`);
}

function rawOnce(cmd: 'D' | 'T', n: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let got = 0;
    const s = connect({ host: RAW_ORIGIN, port: PORT, noDelay: true }, () => s.write(request(cmd, n)));
    s.on('data', (d: Buffer) => (got += d.length));
    s.once('end', () => {
      s.end();
      // 'T' is answered with exactly "ok": anything else (a proxy's refusal, a TLS alert) is an error.
      resolve(cmd === 'T' && got !== 2 ? 0 : got);
    });
    s.once('error', reject);
  });
}

const ca = c ? readFileSync(c) : undefined;
const GET = `GET /tiny HTTP/1.1\r\nHost: ${TLS_NAME}\r\nConnection: close\r\n\r\n`;
function tlsOnce(): Promise<number> {
  return new Promise((resolve, reject) => {
    let got = 0;
    const s = tlsConnect({ host: TLS_ORIGIN, port: PORT, servername: TLS_NAME, ca, ALPNProtocols: ['http/1.1'] }, () => s.write(GET));
    s.on('data', (d: Buffer) => (got += d.length));
    s.once('end', () => {
      s.end();
      resolve(got);
    });
    s.once('error', reject);
  });
}

async function connLoop(clients: number, ms: number, once: () => Promise<number>): Promise<void> {
  const lat: number[] = [];
  let errors = 0;
  const start = performance.now();
  const stopAt = start + ms;
  const worker = async (): Promise<void> => {
    while (performance.now() < stopAt) {
      const t = performance.now();
      try {
        if ((await once()) === 0) errors++;
        else lat.push(performance.now() - t);
      } catch {
        errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: clients }, worker));
  const seconds = (performance.now() - start) / 1000;
  lat.sort((x, y) => x - y);
  const q = (p: number): number => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? NaN;
  out({ count: lat.length, errors, seconds, rate: lat.length / seconds, p50: q(0.5), p99: q(0.99) });
}

async function hold(n: number): Promise<void> {
  const held: Socket[] = [];
  let errors = 0;
  // 200 at a time: a burst of 5,000 SYNs would overflow the proxies' listen backlogs.
  for (let i = 0; i < n; i += 200) {
    await Promise.all(
      Array.from(
        { length: Math.min(200, n - i) },
        () =>
          new Promise<void>((resolve) => {
            const s = connect({ host: RAW_ORIGIN, port: PORT }, () => s.write(request('H')));
            // Held only once the origin's "h" arrived: the connection went through the proxy to the
            // origin. A refusal (an alert, a reset, a close) is an error, not a held connection.
            s.once('data', (d: Buffer) => {
              if (d.length === 1 && d[0] === 0x68) held.push(s);
              else {
                errors++;
                s.destroy();
              }
              resolve();
            });
            s.once('error', () => {
              errors++;
              resolve();
            });
            s.once('close', () => resolve());
          }),
      ),
    );
  }
  out({ held: held.filter((s) => !s.destroyed).length, errors });
  process.stdin.resume();
  process.stdin.once('end', () => {
    // A reset, not a FIN: the client's side would otherwise sit in TIME_WAIT for 60 s holding its
    // port, and the next column's 5,000 connections would run out of ephemeral ports.
    for (const s of held) s.resetAndDestroy();
    process.exit(0);
  });
}

const timeout = setTimeout(() => {
  process.stderr.write(`load ${mode}: gave up after 120 s\n`);
  process.exit(3);
}, 120_000);
timeout.unref();

switch (mode) {
  case 'raw-bulk': {
    const n = Number(a);
    const t = performance.now();
    const cpu0 = process.cpuUsage();
    const got = await rawOnce('D', n);
    const cpu = process.cpuUsage(cpu0);
    out({ bytes: got, seconds: (performance.now() - t) / 1000, cpu: (cpu.user + cpu.system) / 1e6 });
    break;
  }
  case 'raw-conn':
    await connLoop(Number(a), Number(b), () => rawOnce('T', 0));
    break;
  case 'tls-conn':
    await connLoop(Number(a), Number(b), tlsOnce);
    break;
  case 'hold':
    clearTimeout(timeout);
    await hold(Number(a));
    break;
  default:
    process.stderr.write(`load: unknown mode "${mode}"\n`);
    process.exit(2);
}
