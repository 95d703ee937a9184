// Loopback listeners for the socket tests: listen, learn the port, clean up when the test ends.

import { execFileSync, spawn } from 'node:child_process';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { onTestFinished } from 'vitest';

/** Starts `server` on host:port (0: a free port); resolves with the port, rejects on a listen error. */
export async function listenOn(server: Server, host = '127.0.0.1', port = 0): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  return (server.address() as { port: number }).port;
}

/** A server on host that keeps every socket it accepts; closed, its sockets destroyed, when the test finishes. */
export async function acceptingServer(host: string, port = 0): Promise<{ server: Server; port: number; accepted: Socket[] }> {
  const accepted: Socket[] = [];
  const server = createServer((s) => accepted.push(s));
  onTestFinished(() => {
    for (const s of accepted) s.destroy();
    server.close();
  });
  return { server, port: await listenOn(server, host, port), accepted };
}

/** A loopback server started by trackedServer, with the sockets it holds open. */
export interface TrackedServer {
  readonly server: Server;
  readonly port: number;
  /** Its accepted sockets that have not closed yet. */
  readonly sockets: Set<Socket>;
  /** Destroys the sockets it holds and closes the server. */
  close(): void;
}

/**
 * A server on `host` (127.0.0.1), on an ephemeral port, that hands each connection to `onSocket`
 * (its errors swallowed) and keeps the open ones in `sockets`; half-open by default (a client's
 * FIN does not end the server's side: `allowHalfOpen: false` for Node's default). The caller
 * tears it down with close(), from whichever hook started it; echoServer is the same within a test.
 */
export async function trackedServer(onSocket: (s: Socket) => void, o: { host?: string; allowHalfOpen?: boolean } = {}): Promise<TrackedServer> {
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: o.allowHalfOpen ?? true }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    onSocket(s);
  });
  const port = await listenOn(server, o.host ?? '127.0.0.1');
  return {
    server,
    port,
    sockets,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

/** Sends back what it reads, and ends when the client has (with a half-open server). */
export const echoBack = (s: Socket): void => void s.pipe(s);

/** An echo server on host (not half-open); closed, its sockets destroyed, when the test finishes. */
export async function echoServer(host = '127.0.0.1'): Promise<TrackedServer> {
  const server = await trackedServer(echoBack, { host, allowHalfOpen: false });
  onTestFinished(() => server.close());
  return server;
}

// A connect that never completes, without touching the machine's loopback (no iptables DROP): a
// child process listens with a backlog of one and then blocks its event loop, so it never calls
// accept(2); once its accept queue is full the kernel drops further SYNs, and a connect hangs.
// Linux keeps backlog + 1 connections in the accept queue (sk_acceptq_is_full is `>`).
const BACKLOG = 1;
const QUEUE = BACKLOG + 1;
const NEVER_ACCEPTS = `
const net = require('node:net');
const s = net.createServer();
s.listen({ host: process.argv[1], port: 0, backlog: ${BACKLOG} }, () => {
  process.stdout.write(s.address().port + '\\n');
  // Blocks the event loop without using CPU, so accept(2) is never called; bounded so the
  // child ends on its own even if the test process dies first.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60000);
  process.exit(0);
});`;

/**
 * A loopback port where a connect hangs in SYN_SENT: the accept queue is full and never drained.
 * On 127.0.0.1, or with `dualStack` on `::` (one queue for both families), so that 127.0.0.1 and
 * ::1 both hang on it: a dial with attempts of both families in flight at once (RFC 8305).
 */
export async function blackholePort(o: { dualStack?: boolean } = {}): Promise<number> {
  const host = o.dualStack === true ? '::' : '127.0.0.1';
  const child = spawn(process.execPath, ['-e', NEVER_ACCEPTS, host], { stdio: ['ignore', 'pipe', 'inherit'] });
  onTestFinished(() => {
    child.kill('SIGKILL');
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`The listener child exited early (${code})`)));
    child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
  });
  const fillers: Socket[] = [];
  onTestFinished(() => {
    for (const f of fillers) f.destroy();
  });
  await Promise.all(
    Array.from({ length: QUEUE }, (_, i) => {
      const f = connect(port, o.dualStack === true && i % 2 === 1 ? '::1' : '127.0.0.1');
      fillers.push(f);
      return new Promise<void>((resolve, reject) => {
        f.once('connect', resolve);
        f.once('error', reject);
      });
    }),
  );
  return port;
}

/** Sockets in SYN_SENT toward `port`, machine-wide, either family (ss): the dial attempts in flight to a blackholePort. */
export function synSent(port: number): number {
  const out = execFileSync('ss', ['-Htn', 'state', 'syn-sent', `( dport = :${port} )`], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.trim() !== '').length;
}

/** This process's UDP sockets (a daemon started in-process: its lookups' sockets), as `ss` lists them. */
export function udpSockets(): number {
  const out = execFileSync('ss', ['-Huanp'], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.includes(`pid=${process.pid},`)).length;
}

/** Polls `check` every 20 ms for up to `ms`; whether it held. */
export async function within(ms: number, check: () => boolean): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 20))) if (check()) return true;
  return check();
}
