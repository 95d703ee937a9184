// dial() against loopback listeners. The timeout case needs a peer that never completes the
// handshake without touching the machine's loopback (no iptables DROP): a child process listens
// with a backlog of one and then blocks its event loop, so it never calls accept(2); once its
// accept queue is full the kernel drops further SYNs, and a connect there hangs.

import { spawn } from 'node:child_process';
import { connect, createServer, type Socket } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { acceptingServer, listenOn } from '../../helpers/listen.ts';
import { dial } from '../../../src/net/dial.ts';

const listening = (host: string) => acceptingServer(host);

/** A port whose listener was just closed: nothing listens there. */
async function closedPort(): Promise<number> {
  const server = createServer();
  const port = await listenOn(server);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

// Linux keeps backlog + 1 connections in the accept queue (sk_acceptq_is_full is `>`).
const BACKLOG = 1;
const QUEUE = BACKLOG + 1;
const NEVER_ACCEPTS = `
const net = require('node:net');
const s = net.createServer();
s.listen({ host: '127.0.0.1', port: 0, backlog: ${BACKLOG} }, () => {
  process.stdout.write(s.address().port + '\\n');
  // Blocks the event loop without using CPU, so accept(2) is never called; bounded so the
  // child ends on its own even if the test process dies first.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60000);
  process.exit(0);
});`;

/** A loopback port where a connect hangs in SYN_SENT: the accept queue is full and never drained. */
async function blackholePort(): Promise<number> {
  const child = spawn(process.execPath, ['-e', NEVER_ACCEPTS], { stdio: ['ignore', 'pipe', 'inherit'] });
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
    Array.from({ length: QUEUE }, () => {
      const f = connect(port, '127.0.0.1');
      fillers.push(f);
      return new Promise<void>((resolve, reject) => {
        f.once('connect', resolve);
        f.once('error', reject);
      });
    }),
  );
  return port;
}

describe('dial', () => {
  it('connects to an IPv4 upstream and reports how long the handshake took', async () => {
    const { port, server } = await listening('127.0.0.1');
    const got = new Promise<Socket>((resolve) => server.once('connection', resolve));
    const r = await dial({ address: '127.0.0.1', port, connectTimeoutMs: 5_000, signal: new AbortController().signal });
    if (!r.ok) throw new Error(`Expected a connection, got ${r.cause}: ${r.detail}`);
    onTestFinished(() => void r.socket.destroy());
    expect(r.connectMs).toBeGreaterThanOrEqual(0);
    expect(Number.isFinite(r.connectMs)).toBe(true);
    expect(r.socket.remotePort).toBe(port);
    expect(r.socket.allowHalfOpen).toBe(true);
    // The socket carries bytes: it is the connection, not a leftover.
    const upstream = await got;
    r.socket.write('ping');
    const seen = await new Promise<string>((resolve) => upstream.once('data', (d: Buffer) => resolve(d.toString())));
    expect(seen).toBe('ping');
  });

  it('connects to an IPv6 upstream', async () => {
    const { port } = await listening('::1');
    const r = await dial({ address: '::1', port, connectTimeoutMs: 5_000, signal: new AbortController().signal });
    if (r.ok) onTestFinished(() => void r.socket.destroy());
    expect(r).toMatchObject({ ok: true });
    if (r.ok) expect(r.socket.remoteAddress).toBe('::1');
  });

  it('reports a closed port as refused', async () => {
    const port = await closedPort();
    const r = await dial({ address: '127.0.0.1', port, connectTimeoutMs: 5_000, signal: new AbortController().signal });
    expect(r).toEqual({ ok: false, cause: 'refused', detail: `Connecting to "127.0.0.1:${port}" failed: ECONNREFUSED` });
  });

  it('gives up as a timeout when the handshake does not complete in connectTimeoutMs', async () => {
    const port = await blackholePort();
    const r = await dial({ address: '127.0.0.1', port, connectTimeoutMs: 300, signal: new AbortController().signal });
    expect(r).toMatchObject({ ok: false, cause: 'timeout' });
  });

  it('abandons a dial that is under way when the signal aborts', async () => {
    const port = await blackholePort();
    const ac = new AbortController();
    const pending = dial({ address: '127.0.0.1', port, connectTimeoutMs: 30_000, signal: ac.signal });
    setImmediate(() => ac.abort());
    expect(await pending).toMatchObject({ ok: false, cause: 'aborted' });
  });

  it('does not connect at all when the signal is already aborted', async () => {
    const { port, server, accepted } = await listening('127.0.0.1');
    const ac = new AbortController();
    ac.abort();
    const r = await dial({ address: '127.0.0.1', port, connectTimeoutMs: 5_000, signal: ac.signal });
    expect(r).toMatchObject({ ok: false, cause: 'aborted' });
    // A connection the aborted dial had made would be accepted before this probe's.
    const got = new Promise<void>((resolve) => server.once('connection', () => resolve()));
    const probe = await dial({ address: '127.0.0.1', port, connectTimeoutMs: 5_000, signal: new AbortController().signal });
    if (!probe.ok) throw new Error(`The probe failed: ${probe.detail}`);
    onTestFinished(() => void probe.socket.destroy());
    await got;
    expect(accepted.map((s) => s.remotePort)).toEqual([probe.socket.localPort]);
  });

  it('never resolves a name: only an address literal is dialed', async () => {
    const r = await dial({ address: 'localhost', port: 80, connectTimeoutMs: 5_000, signal: new AbortController().signal });
    expect(r).toEqual({ ok: false, cause: 'other', detail: 'Not an IP address: "localhost"' });
  });
});
