// SO_ORIGINAL_DST on real loopback sockets. Nothing here is REDIRECTed (no iptables outside the
// e2e suite), so every real connection must come back `not-redirected` — whichever way this
// kernel says so (no conntrack module: ENOPROTOOPT; conntrack without NAT: the listener's own
// tuple) — and the errno path is driven with descriptors that are not connected sockets.

import { closeSync, openSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { listenOn } from '../../helpers/listen.ts';
import { OriginalDstError } from '../../../src/errors.ts';
import { nativeAddonStatus, originalDestination } from '../../../src/net/original-dst.ts';

/** Listens on host:0 and resolves with the server side of one client connection to it. */
async function acceptedSocket(listenHost: string, connectHost: string): Promise<Socket> {
  const server: Server = createServer();
  const sockets: Socket[] = [];
  onTestFinished(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  const port = await listenOn(server, listenHost);
  const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
  const client = connect(port, connectHost);
  sockets.push(client);
  const s = await accepted;
  sockets.push(s);
  return s;
}

function fakeSocket(fd: number, localAddress = '127.0.0.1'): Socket {
  return { _handle: { fd }, localAddress, localPort: 15443 } as unknown as Socket;
}

describe('originalDestination', () => {
  it('reports the addon loaded', () => {
    expect(nativeAddonStatus()).toEqual({ ok: true });
  });

  it('calls a direct IPv4 loopback connection not redirected', async () => {
    const s = await acceptedSocket('127.0.0.1', '127.0.0.1');
    const od = originalDestination(s);
    expect(od.kind).toBe('not-redirected');
    console.info(`direct IPv4 connection: ${JSON.stringify(od)}`);
  });

  it('calls a direct IPv6 loopback connection not redirected', async () => {
    const s = await acceptedSocket('::1', '::1');
    expect(originalDestination(s).kind).toBe('not-redirected');
  });

  it('asks the IPv4 option for an IPv4 client on an IPv6 socket (a ::ffff: mapped local address)', async () => {
    const s = await acceptedSocket('::ffff:127.0.0.1', '127.0.0.1');
    expect(s.localAddress).toBe('::ffff:127.0.0.1');
    expect(originalDestination(s).kind).toBe('not-redirected');
  });

  it('calls a socket that closed before it was looked at not redirected, without throwing', async () => {
    const s = await acceptedSocket('127.0.0.1', '127.0.0.1');
    s.destroy();
    expect(originalDestination(s)).toEqual({ kind: 'not-redirected', why: 'The socket is already closed' });
  });

  it('throws OriginalDstError naming the errno for a descriptor that is not open', () => {
    // Far above any process's descriptor limit, so never open.
    const err = captureError(() => originalDestination(fakeSocket(2 ** 30)));
    expect(err).toBeInstanceOf(OriginalDstError);
    expect(err).toMatchObject({ code: 'EGRESSD_ERR_ORIGINAL_DST', errno: 'EBADF' });
  });

  it('throws OriginalDstError naming the errno for a descriptor that is not a socket', () => {
    const fd = openSync('/dev/null', 'r');
    onTestFinished(() => closeSync(fd));
    const err = captureError(() => originalDestination(fakeSocket(fd, '::1')));
    expect(err).toBeInstanceOf(OriginalDstError);
    expect(err).toMatchObject({ errno: 'ENOTSOCK' });
    expect((err as Error).message).toContain('"ENOTSOCK"');
  });
});

function captureError(f: () => unknown): unknown {
  try {
    f();
  } catch (err) {
    return err;
  }
  throw new Error('Expected a throw, got a return');
}
