// Records the ClientHello each TLS client on this machine sends into test/fixtures/hellos/,
// with a manifest (expected SNI and ALPN, client, version, exact command, date) and a README
// generated from it. The tests replay every recorded file.
//
//   node scripts/record-fixtures.ts            every client
//   node scripts/record-fixtures.ts curl java  only these (the others' entries are kept)
//
// How: a TCP server on 127.0.0.1 keeps a connection's bytes until parseClientHello has a whole
// hello, saves them, and drops the connection; the client then fails its handshake, which is
// expected. Every client is told to ask for `fixture.test`; the ALPN each offers is what its
// command asks for (or its documented default), written down here, never read back from the
// bytes, so the tests check the parser against the clients and not against itself.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseClientHello } from '../src/peek/tls-client-hello.ts';

const ROOT = resolve(import.meta.dirname, '..');
const OUT = join(ROOT, 'test/fixtures/hellos');
const NODE26 = join(ROOT, 'node_modules/.bin/node');
const SNI = 'fixture.test';
const CAPTURE_TIMEOUT_MS = 30_000;

export interface FixtureEntry {
  readonly file: string;
  readonly client: string;
  readonly version: string;
  readonly command: string;
  readonly date: string;
  readonly sni: string;
  readonly alpn: readonly string[];
  readonly bytes: number;
}

interface Client {
  readonly id: string;
  readonly client: string;
  /** What to ask the client: a version string, or null when it is not installed/able. */
  readonly version: () => string | null;
  /** Why `version` may answer null, for the README. */
  readonly unavailable?: string;
  /** The exact command, with PORT standing for the listener's port. */
  readonly command: string;
  readonly alpn: readonly string[];
  readonly spawn: (port: number, scratch: string) => ChildProcess;
}

const firstLine = (cmd: string, args: string[]): string | null => {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 20_000 });
  if (r.error || r.status !== 0) return null;
  return (
    `${r.stdout}${r.stderr}`
      .split('\n')
      .find((l) => l.trim() !== '')
      ?.trim() ?? null
  );
};
const openssl = (): string | null => firstLine('openssl', ['version'])?.replace(/^(OpenSSL \S+).*$/, '$1') ?? null;
const sh = (command: string, port: number, env: NodeJS.ProcessEnv = {}): ChildProcess =>
  spawn('bash', ['-c', command.replaceAll('PORT', String(port))], { stdio: ['ignore', 'ignore', 'ignore'], detached: true, env: { ...process.env, ...env } });

const NODE_CLIENT = `const tls = require('node:tls'); tls.connect({ host: '127.0.0.1', port: +process.argv[1], servername: '${SNI}', ALPNProtocols: ['h2', 'http/1.1'], rejectUnauthorized: false }).on('error', () => {});`;
const PYTHON_CLIENT = [
  'import socket, ssl, sys',
  'ctx = ssl.create_default_context()',
  'ctx.check_hostname = False',
  'ctx.verify_mode = ssl.CERT_NONE',
  "ctx.set_alpn_protocols(['h2', 'http/1.1'])",
  "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))",
  'try:',
  `    ctx.wrap_socket(s, server_hostname='${SNI}')`,
  'except Exception:',
  '    pass',
].join('\n');
const JAVA_CLIENT = `import javax.net.ssl.*;
import java.util.List;

public class HelloClient {
  public static void main(String[] args) throws Exception {
    SSLSocketFactory f = (SSLSocketFactory) SSLSocketFactory.getDefault();
    try (SSLSocket s = (SSLSocket) f.createSocket("127.0.0.1", Integer.parseInt(args[0]))) {
      SSLParameters p = s.getSSLParameters();
      p.setServerNames(List.of(new SNIHostName("${SNI}")));
      p.setApplicationProtocols(new String[] {"h2", "http/1.1"});
      s.setSSLParameters(p);
      s.startHandshake();
    } catch (Exception e) {
      // The recorder drops the connection once it has the hello.
    }
  }
}
`;
const CHROMIUM_FLAGS =
  '--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking --disable-component-update --disable-sync';

const CLIENTS: readonly Client[] = [
  {
    id: 'curl',
    client: 'curl',
    version: () => firstLine('curl', ['--version'])?.replace(/^curl (\S+).*?(OpenSSL\/\S+).*$/, 'curl $1 ($2)') ?? null,
    command: `curl -sk --max-time 20 --resolve ${SNI}:PORT:127.0.0.1 https://${SNI}:PORT/`,
    // curl built with nghttp2 offers h2 first on https (curl --version lists HTTP2).
    alpn: ['h2', 'http/1.1'],
    spawn(port) {
      return sh(this.command, port);
    },
  },
  {
    id: 'openssl',
    client: 'openssl s_client',
    version: () => openssl(),
    command: `openssl s_client -connect 127.0.0.1:PORT -servername ${SNI} </dev/null`,
    alpn: [],
    spawn(port) {
      return sh(this.command, port);
    },
  },
  {
    id: 'openssl-alpn',
    client: 'openssl s_client -alpn',
    version: () => openssl(),
    command: `openssl s_client -connect 127.0.0.1:PORT -servername ${SNI} -alpn h2,http/1.1 </dev/null`,
    alpn: ['h2', 'http/1.1'],
    spawn(port) {
      return sh(this.command, port);
    },
  },
  {
    id: 'openssl-mlkem',
    client: 'openssl s_client -groups X25519MLKEM768',
    // OpenSSL 3.5 added ML-KEM; an older one refuses the group name before connecting.
    version: () => {
      const v = openssl();
      const probe = spawnSync('openssl', ['list', '-kem-algorithms'], { encoding: 'utf8', timeout: 20_000 });
      return v !== null && /ML-?KEM/i.test(`${probe.stdout}`) ? v : null;
    },
    unavailable: 'the installed OpenSSL lists no ML-KEM (X25519MLKEM768 needs OpenSSL 3.5 or later; node.bin carries it)',
    command: `openssl s_client -connect 127.0.0.1:PORT -servername ${SNI} -groups X25519MLKEM768 </dev/null`,
    alpn: [],
    spawn(port) {
      return sh(this.command, port);
    },
  },
  {
    id: 'node',
    client: 'Node.js tls.connect',
    version: () => firstLine(NODE26, ['-p', '`node ${process.version}, OpenSSL ${process.versions.openssl}`']),
    command: "node_modules/.bin/node -e '<NODE_CLIENT in scripts/record-fixtures.ts>' PORT",
    alpn: ['h2', 'http/1.1'],
    spawn(port) {
      return spawn(NODE26, ['-e', NODE_CLIENT, String(port)], { stdio: 'ignore', detached: true });
    },
  },
  {
    id: 'python',
    client: 'Python ssl',
    version: () => firstLine('python3', ['-c', 'import ssl, sys; print("Python", sys.version.split()[0] + ",", ssl.OPENSSL_VERSION)']),
    command: `python3 -c '<PYTHON_CLIENT in scripts/record-fixtures.ts>' PORT`,
    alpn: ['h2', 'http/1.1'],
    spawn(port) {
      return spawn('python3', ['-c', PYTHON_CLIENT, String(port)], { stdio: 'ignore', detached: true });
    },
  },
  {
    id: 'java',
    client: 'Java SSLSocket',
    version: () => firstLine('java', ['-version']),
    command: 'java HelloClient.java PORT   # HelloClient.java: JAVA_CLIENT in scripts/record-fixtures.ts',
    alpn: ['h2', 'http/1.1'],
    spawn(port, scratch) {
      const file = join(scratch, 'HelloClient.java');
      writeFileSync(file, JAVA_CLIENT);
      return spawn('java', [file, String(port)], { stdio: 'ignore', detached: true });
    },
  },
  {
    id: 'chromium',
    client: 'Chromium (headless)',
    version: () => firstLine('chromium', ['--version'])?.replace(/ built on .*$/, '') ?? null,
    command: `chromium ${CHROMIUM_FLAGS} --user-data-dir=$(mktemp -d) --host-resolver-rules="MAP ${SNI} 127.0.0.1" --dump-dom https://${SNI}:PORT/`,
    // Chromium always offers h2 and http/1.1 over TLS.
    alpn: ['h2', 'http/1.1'],
    spawn(port, scratch) {
      const profile = join(scratch, 'profile');
      mkdirSync(profile);
      const args = [
        ...CHROMIUM_FLAGS.split(' '),
        `--user-data-dir=${profile}`,
        `--host-resolver-rules=MAP ${SNI} 127.0.0.1`,
        '--dump-dom',
        `https://${SNI}:${port}/`,
      ];
      return spawn('chromium', args, { stdio: 'ignore', detached: true });
    },
  },
];

/** The first whole ClientHello that reaches a fresh loopback listener while `start` runs. */
async function capture(start: (port: number) => ChildProcess): Promise<Buffer | string> {
  const sockets = new Set<Socket>();
  let child: ChildProcess | null = null;
  const server = createServer();
  try {
    return await new Promise<Buffer | string>((resolvePromise) => {
      const timer = setTimeout(() => resolvePromise(`no ClientHello within ${CAPTURE_TIMEOUT_MS} ms`), CAPTURE_TIMEOUT_MS);
      server.on('connection', (socket) => {
        sockets.add(socket);
        let buf = Buffer.alloc(0);
        socket.on('error', () => {});
        socket.on('data', (chunk: Buffer) => {
          buf = Buffer.concat([buf, chunk]);
          const r = parseClientHello(buf);
          if (r.kind === 'need-more') return;
          clearTimeout(timer);
          resolvePromise(r.kind === 'hello' ? buf : `the parser answered ${JSON.stringify(r)}`);
        });
      });
      server.listen(0, '127.0.0.1', () => {
        const address = server.address();
        if (address === null || typeof address === 'string') return resolvePromise('no port');
        child = start(address.port);
        child.on('error', (err) => resolvePromise(`could not start: ${err.message}`));
      });
    });
  } finally {
    for (const s of sockets) s.destroy();
    server.close();
    const c = child as ChildProcess | null;
    // The client was started in its own process group: end it and whatever it spawned.
    if (c?.pid !== undefined && c.exitCode === null) {
      try {
        process.kill(-c.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }
}

function readManifest(): FixtureEntry[] {
  const file = join(OUT, 'manifest.json');
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as FixtureEntry[]) : [];
}

function writeReadme(entries: readonly FixtureEntry[], skipped: readonly string[]): void {
  const rows = entries.map((e) => `| \`${e.file}\` | ${e.bytes} | ${e.client} | ${e.version} | \`${e.command.replaceAll('|', '\\|')}\` | ${e.date} |`);
  const text = `# Recorded ClientHellos

The first bytes real TLS clients on the project's development machine sent to a loopback
listener, recorded by \`node scripts/record-fixtures.ts\` (which also wrote this file and
\`manifest.json\`). Each file runs from the first TLS record header to the end of the
ClientHello. Every client was asked for \`${SNI}\`; \`manifest.json\` holds the ALPN list each
was told to offer. \`test/unit/peek/tls-corpus.test.ts\` replays them whole, split at every byte
and re-framed into several records.

PORT is the recorder's ephemeral port. The Python and Java client sources are in the script.

| file | bytes | client | version | command | recorded |
|---|---|---|---|---|---|
${rows.join('\n')}
${skipped.length > 0 ? `\nNot recorded on the last run:\n${skipped.map((s) => `- ${s}`).join('\n')}\n` : ''}`;
  writeFileSync(join(OUT, 'README.md'), text);
}

async function main(): Promise<void> {
  const only = process.argv.slice(2);
  mkdirSync(OUT, { recursive: true });
  const manifest = new Map(readManifest().map((e) => [e.file.replace(/\.bin$/, ''), e]));
  const skipped: string[] = [];
  const date = new Date().toISOString().slice(0, 10);
  for (const c of CLIENTS) {
    if (only.length > 0 && !only.includes(c.id)) continue;
    const version = c.version();
    if (version === null) {
      skipped.push(`${c.id}: ${c.unavailable ?? 'not installed here'}`);
      console.log(`${c.id}: skipped`);
      continue;
    }
    const scratch = mkdtempSync(join(tmpdir(), `egressd-hello-${c.id}-`));
    try {
      const got = await capture((port) => c.spawn(port, scratch));
      if (typeof got === 'string') {
        skipped.push(`${c.id}: ${got}`);
        console.log(`${c.id}: ${got}`);
        continue;
      }
      const file = `${c.id}.bin`;
      writeFileSync(join(OUT, file), got);
      manifest.set(c.id, { file, client: c.client, version, command: c.command, date, sni: SNI, alpn: c.alpn, bytes: got.length });
      console.log(`${c.id}: ${got.length} bytes (${version})`);
    } finally {
      rmSync(scratch, { recursive: true, force: true });
    }
  }
  const entries = [...manifest.values()].sort((a, b) => a.file.localeCompare(b.file));
  writeFileSync(join(OUT, 'manifest.json'), `${JSON.stringify(entries, null, 2)}\n`);
  writeReadme(entries, skipped);
}

await main();
