// The raw origin of the side-by-side benchmark (bench/proxy/run.ts starts it in the upstream
// namespace): reads a first flight (wire.ts) and serves its command. Prints "listening" once
// bound. Every socket is closed when the process is killed. An optional argument is a second port
// it also serves (run.ts's kernel DNAT column rewrites port 443 to it).

import { createServer, type Socket } from 'node:net';
import { PORT, RAW_ORIGIN, requestLength } from './wire.ts';

const block = Buffer.alloc(256 * 1024, 0x61);

function serve(s: Socket): void {
  s.setNoDelay(true);
  s.on('error', () => {});
  let head = Buffer.alloc(0);
  const onData = (d: Buffer): void => {
    head = Buffer.concat([head, d]);
    const need = requestLength(head);
    if (need === null || head.length < need) return;
    s.off('data', onData);
    const cmd = String.fromCharCode(head[need - 9]!);
    const n = Number(head.readBigUInt64BE(need - 8));
    if (cmd === 'T') return void s.end('ok');
    if (cmd === 'H') {
      s.write('h');
      s.resume();
      s.once('end', () => s.end());
      return;
    }
    // 'D': n bytes as fast as the socket takes them.
    let left = n;
    const pump = (): void => {
      while (left > 0) {
        const c = left >= block.length ? block : block.subarray(0, left);
        left -= c.length;
        if (!s.write(c)) return void s.once('drain', pump);
      }
      s.end();
    };
    s.resume();
    pump();
  };
  s.on('data', onData);
}

const ports = [PORT, ...process.argv.slice(2).map(Number)];
let listening = 0;
for (const port of ports)
  createServer({ allowHalfOpen: true }, serve).listen({ host: RAW_ORIGIN, port, backlog: 4096 }, () => {
    if (++listening === ports.length) process.stdout.write('listening\n');
  });
