// The refusals as real clients see them: Node's TLS stack reads the alert, HTTP clients read
// the 403 (also while still sending a body), a raw TCP client sees the reset, and a drop sends
// nothing. The front listener is made like egressd's (allowHalfOpen) and hands over the socket
// paused, after the client's first bytes, as the pipeline does.

import { once } from 'node:events';
import { request as httpRequest } from 'node:http';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import { request as undiciRequest } from 'undici';
import { describe, expect, it, onTestFinished } from 'vitest';
import { dropSilently, refuseHttp, refuseTcp, refuseTls } from '../../../src/net/refuse.ts';

const noop = (): void => {};

/**
 * A listener that waits for the client's first bytes (or none, when `waitForBytes` is false),
 * pauses the socket and refuses it with `refuse`. Resolves with the port and the accepted sockets.
 */
async function front(refuse: (s: Socket) => void, waitForBytes = true): Promise<{ port: number; accepted: Promise<Socket> }> {
  const sockets: Socket[] = [];
  const server: Server = createServer({ allowHalfOpen: true });
  onTestFinished(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  const accepted = new Promise<Socket>((resolve) =>
    server.on('connection', (s: Socket) => {
      sockets.push(s);
      s.on('error', noop);
      resolve(s);
      if (!waitForBytes) return refuse(s);
      s.once('data', () => {
        s.pause();
        refuse(s);
      });
    }),
  );
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return { port: (server.address() as { port: number }).port, accepted };
}

function rawClient(port: number): Socket {
  const c = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  onTestFinished(() => void c.destroy());
  return c;
}

/** Everything the client receives, and how its connection ended. */
function outcome(c: Socket): Promise<{ bytes: Buffer; end: string }> {
  const chunks: Buffer[] = [];
  c.on('data', (d: Buffer) => chunks.push(d));
  return new Promise((resolve) => {
    let end = 'close';
    c.once('error', (e: NodeJS.ErrnoException) => (end = e.code ?? 'error'));
    c.once('end', () => {
      end = 'end';
      c.end();
    });
    c.once('close', () => resolve({ bytes: Buffer.concat(chunks), end }));
  });
}

describe('refuseTls', () => {
  it("makes Node's TLS client fail with an access_denied alert", async () => {
    const { port } = await front(refuseTls);
    const c = tlsConnect({ port, host: '127.0.0.1', servername: 'blocked.test', rejectUnauthorized: false });
    onTestFinished(() => void c.destroy());
    const [err] = (await once(c, 'error')) as [NodeJS.ErrnoException];
    expect(err.code).toBe('ERR_SSL_TLSV1_ALERT_ACCESS_DENIED');
  });

  it('sends exactly one fatal access_denied alert record and closes', async () => {
    const { port } = await front(refuseTls);
    const c = rawClient(port);
    const o = outcome(c);
    c.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00]));
    // RFC 8446 §5.1 record header (alert, 0x0303, length 2), §6 body (fatal, access_denied).
    expect(await o).toEqual({ bytes: Buffer.from([21, 3, 3, 0, 2, 2, 49]), end: 'end' });
  });
});

describe('refuseHttp', () => {
  it('answers an HTTP client with 403 naming the host and the reason', async () => {
    const { port } = await front((s) => refuseHttp(s, { host: 'blocked.test', reason: 'deny-rule (deny blocked.test)' }));
    const res = await new Promise<{ status: number; headers: Record<string, unknown>; body: string }>((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, path: '/', headers: { host: 'blocked.test' } }, (r) => {
        let body = '';
        r.setEncoding('utf8');
        r.on('data', (d: string) => (body += d));
        r.on('end', () => resolve({ status: r.statusCode ?? 0, headers: r.headers, body }));
      });
      req.on('error', reject);
      req.end();
    });
    expect(res.status).toBe(403);
    expect(res.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(res.headers['connection']).toBe('close');
    expect(res.body).toBe('egressd refused the connection to "blocked.test": deny-rule (deny blocked.test)\n');
  });

  it('delivers the whole 403 to a client that keeps sending a request body', async () => {
    const { port } = await front((s) => refuseHttp(s, { host: 'upload.test', reason: 'default-block' }));
    const c = rawClient(port);
    const o = outcome(c);
    const total = 64 * 1024 * 1024;
    c.write(`POST /upload HTTP/1.1\r\nHost: upload.test\r\nContent-Length: ${total}\r\n\r\n`);
    // Keep the body coming until the answer is in, as a client streaming an upload does.
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    let sent = 0;
    let answered = false;
    c.once('data', () => (answered = true));
    const pump = (): void => {
      while (!answered && !c.destroyed && sent < total) {
        sent += chunk.length;
        if (!c.write(chunk)) return void c.once('drain', pump);
      }
    };
    pump();
    const { bytes, end } = await o;
    const text = bytes.toString('latin1');
    expect(text.startsWith('HTTP/1.1 403 Forbidden\r\n')).toBe(true);
    expect(text.endsWith('\r\n\r\negressd refused the connection to "upload.test": default-block\n')).toBe(true);
    // A FIN, not a reset: egressd read what was still arriving, so closing sent no RST that
    // could have destroyed the answer on its way.
    expect(end).toBe('end');
  });

  it('gives undici the 403 while it is still streaming an upload', async () => {
    const { port } = await front((s) => refuseHttp(s, { host: 'upload.test', reason: 'default-block' }));
    let produced = 0;
    const body = new Readable({
      read() {
        // Bounded: 64 MiB at most, whether or not the refusal stops it first.
        if (produced >= 64 * 1024 * 1024) return void this.push(null);
        produced += 64 * 1024;
        this.push(Buffer.alloc(64 * 1024, 0x62));
      },
    });
    const res = await undiciRequest(`http://127.0.0.1:${port}/upload`, { method: 'POST', body, headers: { 'content-length': String(64 * 1024 * 1024) } });
    expect(res.statusCode).toBe(403);
    expect(await res.body.text()).toBe('egressd refused the connection to "upload.test": default-block\n');
  });

  it('writes a hostile host as short printable ASCII, leaving the headers as they were', async () => {
    const host = `evil.test\r\nSet-Cookie: a=b\r\n\r\n\u001b[31m"\\é${'x'.repeat(10_000)}`;
    const { port } = await front((s) => refuseHttp(s, { host, reason: 'invalid-name' }));
    const c = rawClient(port);
    const o = outcome(c);
    c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    const text = (await o).bytes.toString('latin1');
    const [head, body] = [text.slice(0, text.indexOf('\r\n\r\n')), text.slice(text.indexOf('\r\n\r\n') + 4)];
    expect(head).not.toContain('Set-Cookie');
    expect(Number(/Content-Length: (\d+)/.exec(head)?.[1])).toBe(Buffer.byteLength(body));
    expect(body).toMatch(/^egressd refused the connection to "evil\.test\?\?Set-Cookie: a=b\?\?\?\?\?\[31m\?\?\?x+\.\.\.": invalid-name\n$/);
    expect(body.length).toBeLessThan(400);
  });

  it('closes a client that neither reads nor closes once the linger has passed', async () => {
    const { port, accepted } = await front((s) => refuseHttp(s, { host: 'stuck.test', reason: 'default-block' }));
    const c = rawClient(port);
    c.write('GET / HTTP/1.1\r\nHost: stuck.test\r\n\r\n');
    c.pause();
    const s = await accepted;
    await once(s, 'close');
    expect(s.destroyed).toBe(true);
  });
});

describe('refuseTcp', () => {
  it('resets the connection', async () => {
    const { port } = await front(refuseTcp);
    const c = rawClient(port);
    const o = outcome(c);
    c.write('SSH-2.0-client\r\n');
    expect(await o).toEqual({ bytes: Buffer.alloc(0), end: 'ECONNRESET' });
  });

  it('resets a client that has sent nothing', async () => {
    const { port } = await front(refuseTcp, false);
    const c = rawClient(port);
    expect(await outcome(c)).toEqual({ bytes: Buffer.alloc(0), end: 'ECONNRESET' });
  });
});

describe('dropSilently', () => {
  it('closes without sending a byte', async () => {
    const { port } = await front(dropSilently, false);
    const c = rawClient(port);
    expect(await outcome(c)).toEqual({ bytes: Buffer.alloc(0), end: 'end' });
  });
});

describe('every refusal', () => {
  it('does nothing to a socket that is already closed', async () => {
    for (const refuse of [refuseTls, refuseTcp, dropSilently, (s: Socket) => refuseHttp(s, { host: 'x.test', reason: 'r' })]) {
      const { port, accepted } = await front(noop, false);
      const c = rawClient(port);
      c.on('error', noop);
      const s = await accepted;
      s.destroy();
      expect(() => refuse(s)).not.toThrow();
    }
  });
});
