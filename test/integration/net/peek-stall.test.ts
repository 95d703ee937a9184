// The peek's stall wait on real loopback sockets: bytes that could still open TLS or an HTTP
// request line, then silence, end the peek as `stalled` after the wait, not at the deadline.
// Both ways of peeking keep the same rules: peekSocket on a Node socket, and the native loop's
// peek (native-setup.ts), whose timers run in C.

import { connect, createServer, type Socket } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { anyStepper, mayStall, PEEK_CAPS, type Peeked, type PeekStep } from '../../../src/peek/peek-steps.ts';
import { peekSocket, type PeekOptions, type PeekOutcome } from '../../../src/net/peek-socket.ts';
import { nativeSetup, type NativeClient } from '../../../src/net/native-setup.ts';
import { useNativeLoops } from '../../helpers/data-plane.ts';

type Peek = (step: (buf: Buffer) => PeekStep<Peeked>, o: PeekOptions) => Promise<PeekOutcome<Peeked>>;

async function nodePair(): Promise<{ client: Socket; peek: Peek }> {
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
  return { client, peek: (step, o) => peekSocket(server, step, o) };
}

async function nativePair(): Promise<{ client: Socket; peek: Peek }> {
  useNativeLoops();
  const setup = nativeSetup();
  if (!setup.ok) throw new Error(setup.reason);
  let accepted!: (c: NativeClient) => void;
  const server = new Promise<NativeClient>((r) => (accepted = r));
  const { tag, port } = setup.plane.listen('tcp', { host: '127.0.0.1', port: 0, text: '127.0.0.1:0' }, { onAccept: (c) => accepted(c), onShed: () => {} });
  onTestFinished(() => setup.plane.unlisten(tag));
  const client = connect(port, '127.0.0.1');
  client.on('error', () => {});
  const c = await server;
  onTestFinished(() => {
    client.destroy();
    c.reset();
  });
  return { client, peek: (step, o) => c.peek(step, o) };
}

const opts = (stallMs: number) => ({
  deadline: performance.now() + 10_000,
  maxBytes: PEEK_CAPS.any,
  stall: { ms: stallMs, undecided: mayStall },
});

describe.each([
  { via: 'a Node socket', pair: nodePair },
  { via: 'the native loop', pair: process.platform === 'linux' ? nativePair : nodePair },
])('the peek stall, on $via', ({ pair }) => {
  it.each(['ping', 'HELO', 'GET /x'])('ends as stalled with the bytes when %j is followed by silence', async (text) => {
    const { client, peek } = await pair();
    client.write(text);
    const r = await peek(anyStepper(), opts(200));
    expect(r.kind).toBe('stalled');
    expect(r.bytes.toString()).toBe(text);
  });

  it.each([
    ['a TLS record header', '1603010200'],
    ['one byte 0x16', '16'],
  ])('never stalls on %s: a ClientHello dripping in keeps the whole deadline', async (_what, hex) => {
    const { client, peek } = await pair();
    client.write(Buffer.from(hex, 'hex'));
    const r = await peek(anyStepper(), { ...opts(100), deadline: performance.now() + 600 });
    expect(r.kind).toBe('timeout');
  });

  it('keeps waiting once the bytes are known to be HTTP, until the head completes', async () => {
    const { client, peek } = await pair();
    client.write('GET / HTTP/1.1\r\nHost: a.test\r\n');
    setTimeout(() => client.write('\r\n'), 400);
    const r = await peek(anyStepper(), opts(100));
    expect(r.kind).toBe('done');
  });
});
