// Run as a process of its own (test/integration/native/hosted-delivery.test.ts): the data plane
// with its only loop hosted on this event loop, two connections handed to it, and an outcome
// handler that throws for the first. Prints, as JSON: { hosted, caught, outcomes, active } once
// both outcomes came, then lets the process end by itself (nothing of the loop keeps it alive).

import { once } from 'node:events';
import { createRequire } from 'node:module';
import { connect, createServer, type Server, type Socket } from 'node:net';

interface Addon {
  start(threads: number, onOutcome: (id: number, up: number, down: number, end: number) => void, onSetup: undefined, peekCap: number, hosted: boolean): void;
  handoff(loop: number, id: number, clientFd: number, upstreamFd: number, up: Buffer | null, down: Buffer | null, idleMs: number): void;
  hostedAvailable(): boolean;
  active(): number;
}
type Handle = { fd: number; readStop(): number };

const addon = createRequire(import.meta.url)('../../native/build/data_plane.node') as Addon;
if (!addon.hostedAvailable()) {
  process.stdout.write(`${JSON.stringify({ hosted: false })}\n`);
  process.exit(0);
}
const caught: string[] = [];
process.on('uncaughtException', (e) => caught.push(e.message));
const outcomes: { id: number; up: number; down: number; end: number }[] = [];
let bothCame: () => void = () => {};
const both = new Promise<void>((resolve) => (bothCame = resolve));
addon.start(
  1,
  (id, up, down, end) => {
    outcomes.push({ id, up, down, end });
    if (outcomes.length === 2) bothCame();
    if (id === 1) throw new Error('the handler failed for connection 1');
  },
  undefined,
  0,
  true,
);

const server: Server = createServer();
server.listen(0, '127.0.0.1');
await once(server, 'listening');
const port = (server.address() as { port: number }).port;
/** A connected pair: [the end this process keeps, the end the loop gets]. */
async function pair(): Promise<[Socket, Socket]> {
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const mine = connect(port, '127.0.0.1');
  await once(mine, 'connect');
  const [theirs] = await accepted;
  return [mine, theirs];
}

for (const id of [1, 2]) {
  const [client, front] = await pair();
  const [back, upstream] = await pair();
  for (const s of [front, back]) (s as unknown as { _handle: Handle })._handle.readStop();
  addon.handoff(0, id, (front as unknown as { _handle: Handle })._handle.fd, (back as unknown as { _handle: Handle })._handle.fd, null, null, 10_000);
  front.destroy();
  back.destroy();
  // Through the loop: the client's bytes and FIN up, the upstream's answer and FIN down.
  upstream.on('data', () => {}).once('end', () => upstream.end('pong'));
  client.on('data', () => {});
  client.end('ping');
}
await both;
server.close();
process.stdout.write(`${JSON.stringify({ hosted: true, caught, outcomes: outcomes.sort((a, b) => a.id - b.id), active: addon.active() })}\n`);
