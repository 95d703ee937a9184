// Loopback listeners for the socket tests: listen, learn the port, clean up when the test ends.

import { createServer, type Server, type Socket } from 'node:net';
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
