// A client run inside the sandbox namespace by the end-to-end suite (node sandbox-client.ts
// MODE --key value ...). It prints one JSON line with what happened, and always exits on its own
// within --timeout ms.
//
//   tls     a real Node TLS client (HTTP/1.1 GET over it); --split bytes|records|none chooses how
//           the ClientHello is put on the wire: one byte per TCP segment, or re-framed into
//           several TLS records (RFC 8446 §5.1), or as the TLS stack wrote it
//   silent  connects and sends nothing; reports how the connection ended
//   drip    sends a ClientHello's first bytes one byte every --interval ms
//   banner  connects and reads what a server-first service says first
//   hold    keeps a connection to an echo service busy (--chunk bytes every --interval ms) for
//           --duration ms, then closes it; reports how many bytes came back and whether the
//           connection was cut before the end
//
// --bind ADDR picks the source address (a namespace with several sandbox addresses).

import { connect, type Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { parseArgs } from 'node:util';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    host: { type: 'string' },
    port: { type: 'string' },
    sni: { type: 'string' },
    ca: { type: 'string' },
    split: { type: 'string', default: 'none' },
    path: { type: 'string', default: '/' },
    interval: { type: 'string', default: '1000' },
    timeout: { type: 'string', default: '15000' },
    duration: { type: 'string', default: '3000' },
    chunk: { type: 'string', default: '1' },
    bind: { type: 'string' },
  },
});
const mode = positionals[0];
const host = values.host!;
const port = Number(values.port);
const started = Date.now();
const done = (result: Record<string, unknown>): never => {
  process.stdout.write(`${JSON.stringify({ ...result, elapsedMs: Date.now() - started })}\n`);
  process.exit(0);
};
setTimeout(() => done({ outcome: 'client-timeout' }), Number(values.timeout)).unref();

const local = values.bind !== undefined ? { localAddress: values.bind } : {};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Carries the TLS stack's bytes to a TCP socket, changing only how the first flight is framed
 * or segmented; everything after the ClientHello goes as written.
 */
function splitter(raw: Socket, split: string): Duplex {
  let first = true;
  const d = new Duplex({
    read() {
      raw.resume();
    },
    write(chunk: Buffer, _enc, cb) {
      if (!first || split === 'none') {
        raw.write(chunk, cb);
        return;
      }
      first = false;
      void (async () => {
        let out = chunk;
        if (split === 'records' && chunk[0] === 0x16) {
          // Re-frame the handshake into records of at most 64 bytes of fragment each.
          const body = chunk.subarray(5, 5 + chunk.readUInt16BE(3));
          const parts: Buffer[] = [];
          for (let i = 0; i < body.length; i += 64) {
            const frag = body.subarray(i, i + 64);
            const h = Buffer.from([0x16, chunk[1]!, chunk[2]!, 0, 0]);
            h.writeUInt16BE(frag.length, 3);
            parts.push(h, frag);
          }
          parts.push(chunk.subarray(5 + body.length));
          out = Buffer.concat(parts);
          raw.write(out, () => cb());
          return;
        }
        // One byte per write with Nagle off, each in its own turn of the event loop: every write
        // is its own send(2), so every byte leaves in its own TCP segment.
        raw.setNoDelay(true);
        for (let i = 0; i < out.length; i++) {
          raw.write(out.subarray(i, i + 1));
          await new Promise((r) => setImmediate(r));
        }
        cb();
      })();
    },
    final(cb) {
      raw.end();
      cb();
    },
  });
  raw.on('data', (b) => {
    if (!d.push(b)) raw.pause();
  });
  raw.on('end', () => d.push(null));
  raw.on('error', (e) => d.destroy(e));
  raw.on('close', () => d.destroy());
  return d;
}

async function tlsMode(): Promise<void> {
  const raw = connect({ host, port, ...local });
  raw.on('error', (e: NodeJS.ErrnoException) => done({ outcome: 'error', code: e.code, message: e.message }));
  await new Promise((r) => raw.once('connect', r));
  const s = tls.connect({
    socket: splitter(raw, values.split!) as unknown as Socket,
    servername: values.sni!,
    ca: values.ca ? readFileSync(values.ca) : undefined,
    ALPNProtocols: ['http/1.1'],
  });
  s.on('error', (e: NodeJS.ErrnoException) => done({ outcome: 'tls-error', code: e.code, message: e.message }));
  s.once('secureConnect', () => {
    s.write(`GET ${values.path} HTTP/1.1\r\nHost: ${values.sni}\r\nConnection: close\r\n\r\n`);
  });
  let text = '';
  s.setEncoding('utf8');
  s.on('data', (t: string) => {
    text += t;
  });
  s.on('end', () => {
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1] ?? 0);
    done({ outcome: 'response', status, body: text.slice(text.indexOf('\r\n\r\n') + 4) });
  });
}

function waitEnd(sock: Socket, sent: () => number): void {
  let received = 0;
  sock.on('data', (b) => {
    received += b.length;
  });
  sock.on('error', (e: NodeJS.ErrnoException) => done({ outcome: 'closed', how: e.code ?? 'error', sent: sent(), received }));
  sock.on('close', () => done({ outcome: 'closed', how: 'close', sent: sent(), received }));
}

async function main(): Promise<void> {
  switch (mode) {
    case 'tls':
      return tlsMode();
    case 'silent': {
      const sock = connect({ host, port, ...local });
      waitEnd(sock, () => 0);
      return;
    }
    case 'drip': {
      // The first bytes of a ClientHello record header and handshake header: a peek can never
      // complete on them, so only the deadline ends the connection.
      const hello = Buffer.from('160301020001000200030300', 'hex');
      const sock = connect({ host, port, ...local });
      let sent = 0;
      waitEnd(sock, () => sent);
      await new Promise((r) => sock.once('connect', r));
      sock.setNoDelay(true);
      for (let i = 0; i < 600 && !sock.destroyed; i++) {
        sock.write(hello.subarray(i % hello.length, (i % hello.length) + 1));
        sent++;
        await sleep(Number(values.interval));
      }
      return;
    }
    case 'banner': {
      const sock = connect({ host, port, ...local });
      sock.setEncoding('utf8');
      sock.on('error', (e: NodeJS.ErrnoException) => done({ outcome: 'error', code: e.code }));
      sock.once('data', (t: string) => {
        done({ outcome: 'banner', banner: t });
      });
      return;
    }
    case 'hold': {
      const sock = connect({ host, port, ...local });
      let echoed = 0;
      let sent = 0;
      let finished = false;
      sock.on('data', (b) => (echoed += b.length));
      const cut = (how: string) => () => {
        if (!finished) done({ outcome: 'cut', how, sent, echoed });
      };
      sock.on('error', (e: NodeJS.ErrnoException) => cut(e.code ?? 'error')());
      sock.on('close', cut('close'));
      sock.on('end', cut('end'));
      await new Promise((r) => sock.once('connect', r));
      const chunk = Buffer.alloc(Number(values.chunk), 0x78);
      const until = Date.now() + Number(values.duration);
      while (Date.now() < until && !sock.destroyed) {
        sock.write(chunk);
        sent += chunk.length;
        await sleep(Number(values.interval));
      }
      // Let the echo of the last bytes come back (bounded).
      for (let i = 0; i < 100 && echoed < sent && !sock.destroyed; i++) await sleep(50);
      finished = true;
      sock.destroy();
      done({ outcome: 'held', sent, echoed });
      return;
    }
    default:
      done({ outcome: 'usage', message: `Unknown mode "${mode}"` });
  }
}

void main();
