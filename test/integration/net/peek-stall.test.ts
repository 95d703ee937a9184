// peekSocket's stall wait on real loopback sockets: bytes that could still open TLS or an HTTP
// request line, then silence, end the peek as `stalled` after the wait, not at the deadline.

import { connect, createServer, type Socket } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { anyStepper, mayStall, PEEK_CAPS } from '../../../src/peek/peek-steps.ts';
import { peekSocket } from '../../../src/net/peek-socket.ts';

async function pair(): Promise<{ client: Socket; server: Socket }> {
  const srv = createServer({ allowHalfOpen: true });
  onTestFinished(() => {
    srv.close();
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const accepted = new Promise<Socket>((r) => srv.once('connection', r));
  const client = connect((srv.address() as { port: number }).port, '127.0.0.1');
  const server = await accepted;
  onTestFinished(() => {
    client.destroy();
    server.destroy();
  });
  return { client, server };
}

const opts = (stallMs: number) => ({
  deadline: Date.now() + 10_000,
  maxBytes: PEEK_CAPS.any,
  stall: { ms: stallMs, undecided: mayStall },
});

describe('peekSocket stall', () => {
  it.each(['ping', 'HELO', 'GET /x'])('ends as stalled with the bytes when %j is followed by silence', async (text) => {
    const { client, server } = await pair();
    client.write(text);
    const r = await peekSocket(server, anyStepper(), opts(200));
    expect(r.kind).toBe('stalled');
    expect(r.bytes.toString()).toBe(text);
  });

  it.each([
    ['a TLS record header', '1603010200'],
    ['one byte 0x16', '16'],
  ])('never stalls on %s: a ClientHello dripping in keeps the whole deadline', async (_what, hex) => {
    const { client, server } = await pair();
    client.write(Buffer.from(hex, 'hex'));
    const r = await peekSocket(server, anyStepper(), { ...opts(100), deadline: Date.now() + 600 });
    expect(r.kind).toBe('timeout');
  });

  it('keeps waiting once the bytes are known to be HTTP, until the head completes', async () => {
    const { client, server } = await pair();
    client.write('GET / HTTP/1.1\r\nHost: a.test\r\n');
    setTimeout(() => client.write('\r\n'), 400);
    const r = await peekSocket(server, anyStepper(), opts(100));
    expect(r.kind).toBe('done');
  });
});
