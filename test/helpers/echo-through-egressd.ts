// One connection carried by an in-process egressd to an echo server, for the tests of what a stop
// does to the connections egressd holds.

import { connect, type Socket } from 'node:net';
import { onTestFinished } from 'vitest';
import { echoServer } from './listen.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from './loopback-daemon.ts';

/**
 * Within a test: an echo server on 127.0.0.1 (listen.ts echoServer), egressd on loopback set up on
 * `setup` with one allow-all sandbox `sb` of `source` whose connections it carries to the echo
 * server, and a client connecting from `source` to egressd's tcp listener. Resolves before the
 * client's `connect` event, so the caller chooses its first bytes; `closed` settles when the
 * client's socket closes. When the test finishes, passed or not, the client is destroyed, egressd
 * stopped and the echo server closed, in that order.
 */
export async function echoThroughEgressd(source: string, setup: 'node' | 'native'): Promise<{ d: LoopbackDaemon; client: Socket; closed: Promise<void> }> {
  const echo = await echoServer('127.0.0.1');
  const d = await startLoopbackDaemon(loopbackConfig({ sandboxes: [{ id: 'sb', sources: [source], network: { mode: 'allow-all' } }] }), { setup });
  onTestFinished(() => d.stop());
  d.route(source, '127.0.0.1', echo.port);
  const client = connect({ host: '127.0.0.1', port: d.port('tcp'), localAddress: source });
  client.on('error', () => {});
  onTestFinished(() => void client.destroy());
  const closed = new Promise<void>((r) => client.once('close', () => r()));
  return { d, client, closed };
}
