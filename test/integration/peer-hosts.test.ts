// egressd's name beside the name real peers read from the same bytes, over loopback sockets:
// nginx ($host: the absolute-form target's host, else Host's, port and trailing dot removed),
// Node's http server (req.url, req.headers.host) and OpenSSL (Python's ssl, an sni_callback).
// Wherever egressd reads a name and the peer reads one too, they must be the same name, however
// it is spelled: a change to a parser that makes egressd judge another host than a server routes
// to fails here. Where egressd refuses what a peer reads (docs/limits.md "Spellings some server
// takes and egressd refuses"), the list is pinned, so a new difference is a decision, not an
// accident. The heads and hellos are the peer-case tables' (test/unit/peek/peer-cases-*.test.ts).

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { normalizeWireName } from '../../src/match/names.ts';
import { parseHttpHead } from '../../src/peek/http-head.ts';
import { parseClientHello } from '../../src/peek/tls-client-hello.ts';
import { buildHello, ext, u8, vec16 } from '../helpers/hello-builder.ts';

const has = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const skip = has('nginx') && has('python3') ? null : 'nginx or python3 is not installed (scripts/ensure-test-tools.sh installs them)';
if (skip) console.warn(`peer hosts skipped: ${skip}`);

/** A name as egressd judges it, from a raw host (port and brackets as the peer gives them). */
function judged(raw: string): string {
  let host = raw;
  if (host.startsWith('[')) host = host.slice(0, host.indexOf(']') + 1);
  else if (host.includes(':')) host = host.slice(0, host.indexOf(':'));
  const n = normalizeWireName(host);
  return n.ok ? ('name' in n ? n.name : `ip ${n.ip}`) : `invalid ${JSON.stringify(raw)}`;
}

/** egressd's name for a request head: the normalized name, or why there is none. */
function egressdHttp(head: string): string {
  const r = parseHttpHead(Buffer.from(head, 'latin1'));
  return r.kind === 'head' ? judged(r.host) : r.kind === 'malformed' ? `malformed ${r.reason}` : r.kind;
}

const get = (host: string, target = '/'): string => `GET ${target} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`;
const alone = (target: string, version = '1.1'): string => `GET ${target} HTTP/${version}\r\nConnection: close\r\n\r\n`;

const HEADS: readonly string[] = [
  get('allowed.test'),
  get('DENIED.TEST.'),
  get('denied.test:80'),
  get('denied.test:'),
  get('denied.test.:80'),
  get('[2001:db8::1]:8080'),
  get('_srv._tcp.allowed.test'),
  get('xn--bcher-kva.test'),
  get('XN--BCHER-KVA.test'),
  get('denied.test:007'),
  get('x..denied.test'),
  get('.denied.test'),
  get('allowed.test:http'),
  get('denied.test:80:81'),
  get('allowed.test/denied.test'),
  get('allowed.test\\denied.test'),
  get('[allowed.test]:80'),
  get('allowed.test:91337'),
  get('d\u00e9nied.test'),
  get('allowed.test,denied.test'),
  get('denied%2etest'),
  get('allowed.test', 'http://denied.test/'),
  get('denied.test', 'HTTP://Denied.Test:8080/'),
  get('denied.test', 'https://denied.test/'),
  alone('http://x.denied.test/p', '1.0'),
  alone('http://allowed.test@denied.test/'),
  alone('http://denied.test\\@allowed.test/', '1.0'),
  alone('http://allowed.test#@denied.test/', '1.0'),
  alone('http://allowed.test?@denied.test/', '1.0'),
  'GET / HTTP/1.1\r\nHost: allowed.test\r\nhost: denied.test\r\nConnection: close\r\n\r\n',
  'GET / HTTP/1.1\r\nHost : denied.test\r\nHost: allowed.test\r\nConnection: close\r\n\r\n',
  'GET / HTTP/1.1\r\nHost: allowed.test\r\n .denied.test\r\nConnection: close\r\n\r\n',
  'GET / HTTP/1.1\r\nX-Forwarded-Host: allowed.test\r\nHost: denied.test\r\nConnection: close\r\n\r\n',
  'GET / HTTP/1.1\r\nHost:\tdenied.test \t\r\nConnection: close\r\n\r\n',
  '\r\n\r\nGET / HTTP/1.1\r\nHost: denied.test\r\nConnection: close\r\n\r\n',
  'OPTIONS * HTTP/1.1\r\nHost: denied.test\r\nConnection: close\r\n\r\n',
  'BREW / HTTP/1.1\r\nHost: denied.test\r\nConnection: close\r\n\r\n',
];

/**
 * The heads egressd refuses while a peer reads a name from them (docs/limits.md "Spellings some
 * server takes and egressd refuses"), as nginx 1.22 and Node 26's http answered on this machine.
 * Not one is a head egressd lets through: each difference refuses.
 */
const REFUSED_WHERE_NGINX_READS = [
  get('.denied.test'),
  get('allowed.test:http'),
  get('denied.test:80:81'),
  get('allowed.test\\denied.test'),
  get('[allowed.test]:80'),
  get('allowed.test:91337'),
  get('d\u00e9nied.test'),
  get('allowed.test,denied.test'),
  get('denied%2etest'),
  get('allowed.test', 'http://denied.test/'),
];
const REFUSED_WHERE_NODE_READS = [
  get('x..denied.test'),
  get('.denied.test'),
  get('allowed.test:http'),
  get('denied.test:80:81'),
  get('allowed.test/denied.test'),
  get('allowed.test\\denied.test'),
  get('[allowed.test]:80'),
  get('allowed.test:91337'),
  get('d\u00e9nied.test'),
  get('allowed.test,denied.test'),
  get('denied%2etest'),
  get('allowed.test', 'http://denied.test/'),
  'GET / HTTP/1.1\r\nHost: allowed.test\r\nhost: denied.test\r\nConnection: close\r\n\r\n',
];

/** Sends the bytes to a loopback port and gives back what came back before the close (at most 2 s). */
function exchange(port: number, bytes: Uint8Array): Promise<string> {
  return new Promise((resolve) => {
    let got = '';
    const s = net.connect(port, '127.0.0.1', () => s.write(bytes));
    const timer = setTimeout(() => s.destroy(), 2000);
    s.on('data', (d: Buffer) => (got += d.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(got);
    });
  });
}

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });

describe.skipIf(skip !== null)('the name egressd reads is the name the peers read', () => {
  let dir: string;
  let nginx: ChildProcess | null = null;
  let nginxPort = 0;
  let node: http.Server;
  let nodePort = 0;
  let nodeSaw: { url?: string | undefined; host?: string | undefined } | null = null;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'egressd-peer-hosts-'));
    nginxPort = await freePort();
    writeFileSync(
      join(dir, 'nginx.conf'),
      `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path ${dir}; proxy_temp_path ${dir}; fastcgi_temp_path ${dir}; uwsgi_temp_path ${dir}; scgi_temp_path ${dir};
  server { listen 127.0.0.1:${nginxPort}; server_name _; return 200 "host=$host\\n"; }
}
`,
    );
    nginx = spawn('nginx', ['-c', join(dir, 'nginx.conf'), '-p', dir, '-e', join(dir, 'error.log')], { stdio: 'ignore' });
    // Up once its port answers; bounded to 100 tries of 50 ms.
    for (let i = 0; ; i++) {
      if ((await exchange(nginxPort, Buffer.from(get('allowed.test')))).includes('200 OK')) break;
      if (i > 100 || nginx.exitCode !== null) throw new Error('nginx did not start');
      await new Promise((r) => setTimeout(r, 50));
    }
    node = http.createServer((req, res) => {
      nodeSaw = { url: req.url, host: req.headers.host };
      res.end('ok');
    });
    node.on('clientError', (_e, s) => s.destroy());
    await new Promise<void>((r) => node.listen(0, '127.0.0.1', r));
    nodePort = (node.address() as net.AddressInfo).port;
  }, 30_000);

  afterAll(async () => {
    nginx?.kill('SIGTERM');
    await new Promise<void>((r) => (node ? node.close(() => r()) : r()));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('nginx ($host) names the host egressd names whenever both read one', async () => {
    const refusedRead: string[] = [];
    for (const head of HEADS) {
      const ours = egressdHttp(head);
      const reply = await exchange(nginxPort, Buffer.from(head, 'latin1'));
      const theirs = /^host=(.*)$/m.exec(reply)?.[1];
      if (theirs === undefined || !reply.startsWith('HTTP/1.1 200')) continue;
      if (ours.startsWith('malformed') || ours.startsWith('invalid')) {
        refusedRead.push(head);
        continue;
      }
      expect(ours, JSON.stringify(head)).toBe(judged(theirs));
    }
    expect(refusedRead).toEqual(REFUSED_WHERE_NGINX_READS);
  });

  it("Node's http names the host egressd names whenever both read one (the target's when absolute-form, else Host's)", async () => {
    const refusedRead: string[] = [];
    for (const head of HEADS) {
      const ours = egressdHttp(head);
      nodeSaw = null;
      await exchange(nodePort, Buffer.from(head, 'latin1'));
      const saw = nodeSaw as { url?: string; host?: string } | null;
      if (saw === null) continue;
      let theirs = saw.host;
      if (saw.url !== undefined && /^https?:\/\//i.test(saw.url)) theirs = new URL(saw.url).host;
      if (theirs === undefined) continue;
      if (ours.startsWith('malformed') || ours.startsWith('invalid')) {
        refusedRead.push(head);
        continue;
      }
      expect(ours, JSON.stringify(head)).toBe(judged(theirs));
    }
    expect(refusedRead).toEqual(REFUSED_WHERE_NODE_READS);
  });
});

const SNI_SERVER = `
import json, socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
seen = []
def cb(sock, name, c):
    seen.append(name)
ctx.sni_callback = cb
s = socket.socket()
s.bind(('127.0.0.1', 0))
s.listen(8)
s.settimeout(30)
print(s.getsockname()[1], flush=True)
for _ in range(int(sys.argv[3])):
    c, _ = s.accept()
    c.settimeout(2)
    seen.clear()
    err = None
    try:
        ctx.wrap_socket(c, server_side=True)
    except Exception as e:
        err = type(e).__name__
    print(json.dumps({'sni': seen[0] if seen else None, 'err': err}), flush=True)
    c.close()
`;

const enc = new TextEncoder();
const serverNames = (...entries: [number, string][]): Uint8Array => vec16(Uint8Array.from(entries.flatMap(([t, n]) => [...u8(t), ...vec16(enc.encode(n))])));
const LONG = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}`;

const HELLOS: readonly (readonly [string, Uint8Array])[] = [
  ['plain', buildHello({ sni: ['allowed.test'] })],
  ['upper case, trailing dot', buildHello({ sni: ['X.Denied.Test.'] })],
  ['another name_type before the host_name', buildHello({ sni: null, extra: [ext(0, serverNames([1, 'denied.test'], [0, 'allowed.test']))] })],
  ['another name_type after the host_name', buildHello({ sni: null, extra: [ext(0, serverNames([0, 'allowed.test'], [1, 'denied.test']))] })],
  ['two host_names', buildHello({ sni: ['allowed.test', 'denied.test'] })],
  ['two server_name extensions', buildHello({ sni: ['allowed.test'], sniExtensions: 2 })],
  ['a NUL', buildHello({ sni: ['allowed.test\0.denied.test'] })],
  ['253 characters', buildHello({ sni: [`${LONG}.${'d'.repeat(48)}.allowed.test`] })],
  ['254 characters', buildHello({ sni: [`${LONG}.${'d'.repeat(49)}.allowed.test`] })],
  ['256 characters', buildHello({ sni: [`${LONG}.${'d'.repeat(51)}.allowed.test`] })],
  ['an address', buildHello({ sni: ['198.18.1.3'] })],
  ['a space', buildHello({ sni: ['a b.denied.test'] })],
  ['an A-label in upper case', buildHello({ sni: ['XN--BCHER-KVA.test'] })],
  ['ECH beside the name', buildHello({ sni: ['public.allowed.test'], ech: true })],
];

/** egressd's name for a hello: the normalized name, `none`, or why it is refused. */
function egressdTls(bytes: Uint8Array): string {
  const r = parseClientHello(bytes);
  if (r.kind === 'malformed') return `malformed ${r.reason}`;
  if (r.kind !== 'hello') return r.kind;
  return r.sni === null ? 'none' : judged(r.sni);
}

/** The hellos egressd refuses while OpenSSL reads their name (docs/limits.md). */
const REFUSED_WHERE_OPENSSL_READS = ['254 characters', 'a space'];

describe.skipIf(skip !== null)('the SNI egressd reads is the SNI OpenSSL reads', () => {
  it('names the same host whenever both read one, and refuses all OpenSSL refuses', async () => {
    const py = spawn('python3', ['-c', SNI_SERVER, join('certs', 'server.pem'), join('certs', 'server-key.pem'), String(HELLOS.length)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      const lines = createInterface({ input: py.stdout });
      const it = lines[Symbol.asyncIterator]();
      const port = Number((await it.next()).value);
      const refusedRead: string[] = [];
      for (const [label, bytes] of HELLOS) {
        await exchange(port, bytes);
        const seen = JSON.parse(String((await it.next()).value)) as { sni: string | null; err: string | null };
        const ours = egressdTls(bytes);
        if (seen.sni === null) {
          // OpenSSL refused the hello before naming it (or it names nothing): so does egressd.
          expect(ours, label).toMatch(/^(malformed|invalid|none)/);
          continue;
        }
        if (ours.startsWith('malformed') || ours.startsWith('invalid')) {
          refusedRead.push(label);
          continue;
        }
        expect(ours, label).toBe(judged(seen.sni));
      }
      expect(refusedRead).toEqual(REFUSED_WHERE_OPENSSL_READS);
    } finally {
      py.kill('SIGTERM');
    }
  }, 60_000);
});
