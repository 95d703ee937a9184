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
import { listenOn } from '../../helpers/listen.ts';
import { dropSilently, lingeringConnections, refuseHttp, refuseTcp, refuseTls } from '../../../src/net/refuse.ts';

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
  return { port: await listenOn(server), accepted };
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
    const { port } = await front((s) => refuseHttp(s, { host: 'blocked.test', reason: 'deny-rule', rule: 'deny blocked.test' }));
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

  it('quotes a hostile host with escapes, leaving the headers as they were and the value readable', async () => {
    const host = `evil.test\r\nSet-Cookie: a=b\r\n\r\n\u001b[31m"\\é\u202e${'x'.repeat(10_000)}`;
    const { port } = await front((s) => refuseHttp(s, { host, reason: 'invalid-name' }));
    const c = rawClient(port);
    const o = outcome(c);
    c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    const text = (await o).bytes.toString('latin1');
    const [head, body] = [text.slice(0, text.indexOf('\r\n\r\n')), text.slice(text.indexOf('\r\n\r\n') + 4)];
    expect(head).not.toContain('Set-Cookie');
    expect(Number(/Content-Length: (\d+)/.exec(head)?.[1])).toBe(Buffer.byteLength(body));
    expect(
      body.startsWith('egressd refused the connection to "evil.test\\u{d}\\u{a}Set-Cookie: a=b\\u{d}\\u{a}\\u{d}\\u{a}\\u{1b}[31m\\"\\\\\\u{e9}\\u{202e}xxx'),
    ).toBe(true);
    expect(body).toMatch(/x\.\.\.": invalid-name\n$/);
    expect(body).toMatch(/^[\x20-\x7e]*\n$/);
    expect(body.length).toBeLessThan(400);
  });

  it.each([
    ['a"b', '"a\\"b"'],
    ['back\\slash.test', '"back\\\\slash.test"'],
    ['bücher.test', '"b\\u{fc}cher.test"'],
    ['tab\there', '"tab\\u{9}here"'],
  ])('writes the host %j as %s, not mangled', async (host, quoted) => {
    const { port } = await front((s) => refuseHttp(s, { host, reason: 'deny-rule' }));
    const c = rawClient(port);
    const o = outcome(c);
    c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    const text = (await o).bytes.toString('latin1');
    expect(text.slice(text.indexOf('\r\n\r\n') + 4)).toBe(`egressd refused the connection to ${quoted}: deny-rule\n`);
  });

  it('names the port, says when the port decided, and carries the reason in Proxy-Status (RFC 9209)', async () => {
    const { port } = await front((s) => refuseHttp(s, { host: 'mail.test', reason: 'deny-rule', rule: 'denied_ports "25"', port: 25, portDecided: true }));
    const res = await undiciRequest(`http://127.0.0.1:${port}/`);
    expect(res.statusCode).toBe(403);
    expect(res.headers['proxy-status']).toBe('egressd; error=http_request_denied; details="deny-rule"');
    expect(await res.body.text()).toBe('egressd refused the connection to "mail.test" port 25: deny-rule (denied_ports "25"); the destination port decided\n');
    const p2 = await front((s) => refuseHttp(s, { host: '10.0.0.1', reason: 'protected-address', rule: 'protected "10.0.0.0/8"', port: 80 }));
    const res2 = await undiciRequest(`http://127.0.0.1:${p2.port}/`);
    expect(res2.headers['proxy-status']).toBe('egressd; error=destination_ip_prohibited; details="protected-address"');
    expect(await res2.body.text()).toBe('egressd refused the connection to "10.0.0.1" port 80: protected-address (protected "10.0.0.0/8")\n');
  });

  it('keeps reading a slow upload past the old 2 s, so the client reads the 403 once it has sent everything', async () => {
    const { port } = await front((s) => refuseHttp(s, { host: 'upload.test', reason: 'default-block' }));
    const c = rawClient(port);
    const o = outcome(c);
    const total = 1024 * 1024;
    c.write(`PUT /upload HTTP/1.1\r\nHost: upload.test\r\nContent-Length: ${total}\r\n\r\n`);
    // 16 chunks of 64 KiB, 200 ms apart: the body takes about 3 s, and this client only reads
    // after it has sent it all (as Python's http.client does).
    c.pause();
    let writeError: string | null = null;
    c.on('error', (e: NodeJS.ErrnoException) => (writeError = e.code ?? 'error'));
    for (let i = 0; i < 16 && !c.destroyed; i++) {
      c.write(Buffer.alloc(total / 16, 0x63));
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(writeError).toBeNull();
    c.resume();
    const { bytes } = await o;
    expect(bytes.toString('latin1')).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
  });

  it('stops reading a refused client after lingerMaxBytes', async () => {
    const { port, accepted } = await front((s) =>
      refuseHttp(s, { host: 'flood.test', reason: 'default-block', linger: { lingerMs: 60_000, lingerMaxBytes: 256 * 1024, lingerMaxConnections: 100 } }),
    );
    const c = rawClient(port);
    c.on('error', noop);
    c.write('PUT / HTTP/1.1\r\nHost: flood.test\r\nContent-Length: 8388608\r\n\r\n');
    const s = await accepted;
    const closed = once(s, 'close');
    // At most 8 MiB, whether or not the server cuts it first.
    for (let i = 0; i < 128 && !c.destroyed; i++) {
      if (!c.write(Buffer.alloc(64 * 1024))) {
        await new Promise((r) => {
          c.once('drain', r);
          c.once('close', r);
        });
      }
    }
    await closed;
    expect(s.bytesRead).toBeLessThan(8 * 1024 * 1024);
  });

  it('closes a client that neither reads nor closes once the linger has passed', async () => {
    const { port, accepted } = await front((s) =>
      refuseHttp(s, { host: 'stuck.test', reason: 'default-block', linger: { lingerMs: 300, lingerMaxBytes: 1024, lingerMaxConnections: 100 } }),
    );
    const c = rawClient(port);
    c.write('GET / HTTP/1.1\r\nHost: stuck.test\r\n\r\n');
    c.pause();
    const s = await accepted;
    await once(s, 'close');
    expect(s.destroyed).toBe(true);
  });
});

describe('refusal lingering, bounded across connections', () => {
  it('lingers the full time for the first lingerMaxConnections refusals and 2 s for the rest', async () => {
    const linger = { lingerMs: 60_000, lingerMaxBytes: 1024 * 1024, lingerMaxConnections: lingeringConnections() + 1 };
    const { port, accepted } = await front((s) => refuseHttp(s, { host: 'one.test', reason: 'default-block', linger }));
    const first = rawClient(port);
    first.on('error', noop);
    first.write('GET / HTTP/1.1\r\nHost: one.test\r\n\r\n');
    first.pause(); // neither reads nor closes: it holds the one lingering place
    const held = await accepted;
    const second = await front((s) => refuseHttp(s, { host: 'two.test', reason: 'default-block', linger }));
    const c = rawClient(second.port);
    c.on('error', noop);
    c.write('GET / HTTP/1.1\r\nHost: two.test\r\n\r\n');
    c.pause();
    const s2 = await second.accepted;
    // The second is cut after the short linger although its own lingerMs is a minute.
    await once(s2, 'close');
    expect(held.destroyed).toBe(false);
    held.destroy();
  });
});

describe('refusal lingering, placed by admission (linger.hold)', () => {
  it('closes right after the answer when admission gives the linger up, with a FIN the client reads after the answer', async () => {
    let asked = 0;
    const linger = {
      lingerMs: 60_000,
      lingerMaxBytes: 1024 * 1024,
      lingerMaxConnections: 100,
      hold: () => {
        asked++;
        return null;
      },
    };
    const { port, accepted } = await front((s) => refuseHttp(s, { host: 'full.test', reason: 'default-block', linger }));
    const c = rawClient(port);
    c.on('error', noop);
    c.write('GET / HTTP/1.1\r\nHost: full.test\r\n\r\n');
    c.pause(); // neither reads nor closes: only the given-up linger closes it
    const s = await accepted;
    await once(s, 'close');
    expect(asked).toBe(1);
    const o = outcome(c);
    c.resume();
    const { bytes, end } = await o;
    expect(bytes.toString('latin1')).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(end).toBe('end');
  });

  it("lingers with admission's hold, and releases it once when the connection closes", async () => {
    let released = 0;
    const linger = { lingerMs: 60_000, lingerMaxBytes: 1024 * 1024, lingerMaxConnections: 100, hold: () => ({ release: () => released++ }) };
    const { port, accepted } = await front((s) => refuseTls(s, linger));
    const c = rawClient(port);
    c.on('error', noop);
    c.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x01, 0x01]));
    const s = await accepted;
    await new Promise((r) => setTimeout(r, 200));
    // Still lingering: the client has not closed.
    expect(s.destroyed).toBe(false);
    expect(released).toBe(0);
    c.end();
    await once(s, 'close');
    expect(released).toBe(1);
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
