// The "internet" side of the netns rig: run with the repo's Node inside the internet namespace,
// `node test/helpers/upstream-server.ts ADDR...`. On every address it serves
//   80    HTTP/1.1     200 with a JSON body naming this server's address and the Host it saw
//                      (GET /bytes/N: N bytes, at most 256 MiB, for throughput tests)
//   443   TLS          the same over TLS (certs/server.pem, ALPN http/1.1)
//   2525  banner       server speaks first ("220 hello\r\n", like SMTP), then "250 ok\r\n" per chunk
//   22    banner       the same on SSH's port: a server-first service a name rule must reach by DNS
//   7000  echo         every byte back
// and prints one JSON line per connection event on stdout: accept, data (each chunk received,
// counted on the raw TCP stream, so a TLS ClientHello counts) and close (all bytes received),
// so a test can prove that an address received no byte at all. One `{"event":"listening"}` line
// says every socket is bound.

import { readFileSync } from 'node:fs';
import { isIP, type Socket, createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { type Duplex, duplexPair } from 'node:stream';
import { TLSSocket, createSecureContext } from 'node:tls';

type Service = 'http' | 'tls' | 'banner' | 'echo';

const CERTS = resolve(import.meta.dirname, '../../certs');
const secureContext = createSecureContext({
  cert: readFileSync(join(CERTS, 'server.pem')),
  key: readFileSync(join(CERTS, 'server-key.pem')),
});
const HEAD_CAP = 16 * 1024;
const IDLE_MS = 30_000;

function endpoint(address: string | undefined, port: number | undefined): string {
  const a = address ?? '?';
  return isIP(a) === 6 ? `[${a}]:${port}` : `${a}:${port}`;
}

function emit(e: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(e)}\n`);
}

interface Conn {
  readonly service: Service;
  readonly local: string;
  readonly remote: string;
  readonly localAddress: string;
  sni: string | null;
  host: string | null;
}

const MAX_BULK = 256 * 1_048_576;
const BULK_CHUNK = Buffer.alloc(64 * 1024, 0x61);

/** `GET /bytes/N`: N bytes of "a" (at most 256 MiB), written with backpressure, then close. */
function sendBulk(stream: Duplex, n: number): void {
  stream.write(`HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${n}\r\nConnection: close\r\n\r\n`);
  let left = n;
  const pump = (): void => {
    while (left > 0) {
      const chunk = left >= BULK_CHUNK.length ? BULK_CHUNK : BULK_CHUNK.subarray(0, left);
      left -= chunk.length;
      if (!stream.write(chunk)) return void stream.once('drain', pump);
    }
    stream.end();
  };
  pump();
}

/** Reads one request head, answers it with who we are (or GET /bytes/N: N bytes), and closes. */
function serveHttp(stream: Duplex, conn: Conn): void {
  let head = '';
  const onData = (chunk: Buffer): void => {
    head += chunk.toString('latin1');
    const end = head.indexOf('\r\n\r\n');
    if (end < 0 && head.length < HEAD_CAP) return;
    stream.off('data', onData);
    const lines = head.slice(0, end < 0 ? head.length : end).split('\r\n');
    const [method = '', path = ''] = (lines[0] ?? '').split(' ');
    conn.host =
      lines
        .slice(1)
        .find((l) => /^host:/i.test(l))
        ?.slice(5)
        .trim() ?? null;
    const bulk = /^\/bytes\/(\d{1,9})$/.exec(path);
    if (end >= 0 && bulk && Number(bulk[1]) <= MAX_BULK) return sendBulk(stream, Number(bulk[1]));
    const body = `${JSON.stringify({ server: conn.localAddress, local: conn.local, service: conn.service, host: conn.host, sni: conn.sni, method, path })}\n`;
    const status = end < 0 ? '431 Request Header Fields Too Large' : '200 OK';
    stream.end(`HTTP/1.1 ${status}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  };
  stream.on('data', onData);
}

function handle(service: Service, raw: Socket): void {
  const conn: Conn = {
    service,
    local: endpoint(raw.localAddress, raw.localPort),
    remote: endpoint(raw.remoteAddress, raw.remotePort),
    localAddress: raw.localAddress ?? '?',
    sni: null,
    host: null,
  };
  const base = (): Record<string, unknown> => ({ service, local: conn.local, remote: conn.remote });
  let received = 0;
  emit({ event: 'accept', ...base() });
  raw.setTimeout(IDLE_MS, () => raw.destroy());
  raw.on('error', () => {});
  raw.on('close', () => emit({ event: 'close', ...base(), bytes: received, sni: conn.sni, host: conn.host }));
  raw.on('data', (chunk: Buffer) => {
    received += chunk.length;
    emit({ event: 'data', ...base(), bytes: chunk.length, sni: conn.sni, host: conn.host });
  });

  switch (service) {
    case 'http':
      serveHttp(raw, conn);
      return;
    case 'banner':
      raw.write('220 hello\r\n');
      raw.on('data', () => raw.write('250 ok\r\n'));
      return;
    case 'echo':
      raw.on('data', (chunk: Buffer) => raw.write(chunk));
      return;
    case 'tls': {
      // TLS runs over an in-memory pair so the raw socket's 'data' events (our byte count) keep
      // firing; a TLSSocket handed the net.Socket itself would read its handle directly.
      const [inner, outer] = duplexPair();
      raw.on('data', (chunk: Buffer) => outer.write(chunk));
      raw.on('end', () => outer.end());
      outer.on('data', (chunk: Buffer) => raw.write(chunk));
      outer.on('end', () => raw.end());
      outer.on('error', () => raw.destroy());
      const tls = new TLSSocket(inner, {
        isServer: true,
        secureContext,
        ALPNProtocols: ['http/1.1'],
        SNICallback: (name, cb) => {
          conn.sni = name;
          cb(null, secureContext);
        },
      });
      tls.on('error', () => raw.destroy());
      raw.on('close', () => tls.destroy());
      serveHttp(tls, conn);
      return;
    }
  }
}

const PORTS: ReadonlyArray<readonly [Service, number]> = [
  ['http', 80],
  ['tls', 443],
  ['banner', 2525],
  ['banner', 22],
  ['echo', 7000],
];

async function main(addresses: string[]): Promise<void> {
  if (addresses.length === 0 || addresses.some((a) => isIP(a) === 0)) {
    process.stderr.write('Usage: upstream-server.ts ADDR... (IPv4 or IPv6 addresses)\n');
    process.exit(2);
  }
  for (const address of addresses) {
    for (const [service, port] of PORTS) {
      const server = createServer((socket) => handle(service, socket));
      await new Promise<void>((ok, fail) => {
        server.once('error', fail);
        server.listen({ host: address, port, ipv6Only: isIP(address) === 6 }, () => {
          server.off('error', fail);
          ok();
        });
      });
    }
  }
  emit({ event: 'listening', addresses });
}

main(process.argv.slice(2)).catch((e: Error) => {
  process.stderr.write(`upstream-server: ${e.message}\n`);
  process.exit(1);
});
