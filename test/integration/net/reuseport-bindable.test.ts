// The trial a refused second `egressd serve` makes of its ports (daemon.ts: without state.path it
// will not start beside another process on them): whether it could bind beside the holder with
// SO_REUSEPORT, asked by bind(2) alone. A trial that listened, even for an instant, joined the
// holder's SO_REUSEPORT group, and the kernel handed it some of the connections meant for the
// running egressd, reset when it closed: a sandbox's connection lost to a mistaken start.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { reusePortBindable } from '../../../src/net/original-dst.ts';

async function holder(host: string, reusePort: boolean): Promise<{ server: Server; port: number }> {
  // Each connection is answered "ok" at once: a client that reads anything else was reset.
  const server = createServer((s) => {
    s.on('error', () => {});
    s.end('ok');
  });
  onTestFinished(() => void server.close());
  await new Promise<void>((resolve) => server.listen({ host, port: 0, reusePort, ipv6Only: host.includes(':') }, resolve));
  return { server, port: (server.address() as { port: number }).port };
}

// Connects COUNT times in a row and prints how many were answered "ok" and how many were not
// (reset, refused, closed without a byte).
const CLIENT = `
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok = bad = 0
print("go", flush=True)
for _ in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        got = s.recv(2)
        ok, bad = (ok + 1, bad) if got == b"ok" else (ok, bad + 1)
    except OSError:
        bad += 1
    s.close()
print(ok, bad, flush=True)
`;

describe('reusePortBindable', () => {
  it('says yes beside an SO_REUSEPORT holder of this user, and no beside any other', async () => {
    for (const host of ['127.0.0.1', '::1']) {
      const joinable = await holder(host, true);
      expect(reusePortBindable(host, joinable.port), host).toBe(true);
      const plain = await holder(host, false);
      expect(reusePortBindable(host, plain.port), host).toBe(false);
    }
  });

  it("never takes one of the holder's connections, however often it is asked", async () => {
    const { port } = await holder('127.0.0.1', true);
    const client = spawn('python3', ['-c', CLIENT, '127.0.0.1', String(port), '3000'], { stdio: ['ignore', 'pipe', 'pipe'] });
    onTestFinished(() => void client.kill('SIGKILL'));
    let out = '';
    client.stdout.on('data', (b: Buffer) => (out += b.toString()));
    while (!out.includes('go')) await new Promise((r) => setTimeout(r, 10));
    // Asked throughout the client's run, yielding between asks so that the holder accepts.
    let asked = 0;
    while (client.exitCode === null && asked < 100_000) {
      expect(reusePortBindable('127.0.0.1', port)).toBe(true);
      asked++;
      if (asked % 20 === 0) await new Promise((r) => setImmediate(r));
    }
    if (client.exitCode === null) await once(client, 'exit');
    const [ok, bad] = out.trim().split('\n').at(-1)!.split(' ').map(Number);
    expect({ ok, bad, askedSome: asked > 100 }).toEqual({ ok: 3000, bad: 0, askedSome: true });
  }, 60_000);
});
