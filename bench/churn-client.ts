// The load side of bench/churn.ts, run inside the rig's sandbox namespace:
//   node churn-client.ts --bind ADDR[,ADDR...] --rate N --duration-ms MS --server IP --ca FILE
// From each bound source address it opens N connections a second for the duration: three in
// four a TLS GET to an allowed name (spliced, then closed by the server), one in four a
// ClientHello for a refused name (answered with an alert). At most 64 per source are in flight;
// a connection that takes longer than 10 s is cut. One JSON line of totals every 10 s and at
// the end; it exits on its own.

import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import * as tls from 'node:tls';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    bind: { type: 'string' },
    rate: { type: 'string', default: '40' },
    'duration-ms': { type: 'string', default: '60000' },
    server: { type: 'string' },
    ca: { type: 'string' },
  },
});
const sources = values.bind!.split(',');
const rate = Number(values.rate);
const durationMs = Number(values['duration-ms']);
const ca = readFileSync(values.ca!);
const MAX_IN_FLIGHT = 64;

const totals = { started: 0, ok: 0, refused: 0, failed: 0, skipped: 0 };
const inFlight = new Map<string, number>(sources.map((s) => [s, 0]));

function one(source: string, n: number): void {
  const refusedName = n % 4 === 3;
  const name = refusedName ? 'denied.test' : 'allowed.test';
  inFlight.set(source, inFlight.get(source)! + 1);
  totals.started++;
  let done = false;
  const finish = (kind: 'ok' | 'refused' | 'failed'): void => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    inFlight.set(source, inFlight.get(source)! - 1);
    totals[kind]++;
    s.destroy();
  };
  const s = tls.connect({ socket: connect({ host: values.server!, port: 443, localAddress: source }), servername: name, ca });
  const timer = setTimeout(() => finish('failed'), 10_000);
  let body = '';
  s.on('secureConnect', () => s.write(`GET / HTTP/1.1\r\nHost: ${name}\r\nConnection: close\r\n\r\n`));
  s.on('data', (d: Buffer) => {
    body += d.toString('latin1');
  });
  s.on('end', () => finish(body.startsWith('HTTP/1.1 200') ? 'ok' : 'failed'));
  s.on('error', (e: NodeJS.ErrnoException) => finish(refusedName && /alert|access denied|ECONNRESET/i.test(`${e.message} ${e.code}`) ? 'refused' : 'failed'));
  s.on('close', () => finish(body.startsWith('HTTP/1.1 200') ? 'ok' : refusedName ? 'refused' : 'failed'));
}

const start = Date.now();
let n = 0;
const tickMs = 25;
let owed = 0;
const tick = setInterval(() => {
  owed += (rate * tickMs) / 1000;
  while (owed >= 1) {
    owed--;
    n++;
    for (const src of sources) {
      if (inFlight.get(src)! >= MAX_IN_FLIGHT) totals.skipped++;
      else one(src, n);
    }
  }
  if (Date.now() - start >= durationMs) {
    clearInterval(tick);
    clearInterval(report);
    setTimeout(() => {
      console.log(JSON.stringify({ event: 'done', elapsedMs: Date.now() - start, ...totals }));
      process.exit(0);
    }, 11_000);
  }
}, tickMs);
const report = setInterval(() => console.log(JSON.stringify({ event: 'progress', elapsedMs: Date.now() - start, ...totals })), 10_000);
