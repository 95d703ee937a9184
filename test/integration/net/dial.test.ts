// dial() against loopback listeners. The timeout case needs a peer that never completes the
// handshake (blackholePort, test/helpers/listen.ts).

import { createServer, type Socket } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { acceptingServer, blackholePort, listenOn } from '../../helpers/listen.ts';
import { dial } from '../../../src/net/dial.ts';

const listening = (host: string) => acceptingServer(host);

/** A port whose listener was just closed: nothing listens there. */
async function closedPort(): Promise<number> {
  const server = createServer();
  const port = await listenOn(server);
  await new Promise<void>((resolve) => server.close(() => resolve()));
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
