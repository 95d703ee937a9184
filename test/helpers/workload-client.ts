// The well-behaved sandbox of the flood tests, run inside the rig's sandbox namespace:
//   node workload-client.ts --bind ADDR --server IP --ca FILE --download BYTES --requests N
// Downloads BYTES over HTTPS (GET /bytes/BYTES from the rig's upstream server, SNI
// allowed.test) while making N short HTTPS requests one after another beside it; then prints
// one JSON line: the download's size and time, and how many short requests succeeded. Exits
// on its own within 120 s.

import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import * as tls from 'node:tls';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    bind: { type: 'string' },
    server: { type: 'string' },
    ca: { type: 'string' },
    download: { type: 'string', default: String(50 * 1_048_576) },
    requests: { type: 'string', default: '20' },
    name: { type: 'string', default: 'allowed.test' },
  },
});
const ca = readFileSync(values.ca!);

/** One HTTPS GET; resolves with the body's length (the head stripped) or an error text. */
function get(path: string, timeoutMs: number): Promise<{ ok: boolean; bytes: number; ms: number; error?: string }> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const raw = connect({ host: values.server!, port: 443, localAddress: values.bind! });
    const s = tls.connect({ socket: raw, servername: values.name!, ca });
    let headDone = false;
    let head = '';
    let bytes = 0;
    let status = '';
    const timer = setTimeout(() => fin(`timeout after ${timeoutMs} ms`), timeoutMs);
    const fin = (error?: string): void => {
      clearTimeout(timer);
      s.destroy();
      const ok = error === undefined && status.startsWith('HTTP/1.1 200');
      resolve({ ok, bytes, ms: Date.now() - t0, ...(ok ? {} : { error: error ?? `status ${JSON.stringify(status)}` }) });
    };
    s.on('secureConnect', () => s.write(`GET ${path} HTTP/1.1\r\nHost: ${values.name}\r\nConnection: close\r\n\r\n`));
    s.on('data', (d: Buffer) => {
      if (headDone) return void (bytes += d.length);
      head += d.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      headDone = true;
      status = head.slice(0, head.indexOf('\r\n'));
      bytes += Buffer.byteLength(head.slice(end + 4), 'latin1');
    });
    s.on('end', () => fin());
    s.on('error', (e) => fin(e.message));
  });
}

const size = Number(values.download);
const requests = Number(values.requests);
const download = get(`/bytes/${size}`, 110_000);
const short: { ok: boolean; ms: number; error?: string }[] = [];
let downloading = true;
void download.then(() => (downloading = false));
for (let i = 0; i < requests; i++) {
  const r = await get('/', 10_000);
  short.push(r);
  // Spread the short requests over the download where it lasts.
  if (downloading) await new Promise((res) => setTimeout(res, 50));
}
const d = await download;
console.log(
  JSON.stringify({
    event: 'done',
    download: {
      ok: d.ok && d.bytes === size,
      bytes: d.bytes,
      ms: d.ms,
      mibPerSecond: Math.round((d.bytes / 1_048_576 / (d.ms / 1000)) * 10) / 10,
      error: d.error,
    },
    short: {
      total: short.length,
      ok: short.filter((r) => r.ok).length,
      maxMs: Math.max(0, ...short.map((r) => r.ms)),
      errors: short.filter((r) => !r.ok).map((r) => r.error),
    },
  }),
);
process.exit(0);
