// Run as a process of its own (data-plane-env.test.ts), with EGRESSD_DATA_PLANE in its
// environment: starts an in-process loopback daemon the way the integration suites do, carries
// one address-allowed connection through it to an echo server, and prints which data path
// carried it, as JSON: { setup: "native" | "node", plane: nativeSpliceStatus(), handoffs, echoed,
// idleMs }: idleMs is the idle time performance.eventLoopUtilization() saw over 200 ms of sleep
// afterwards (about 200 with libuv's idle-time metrics on, 0 with them off).

import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { nativeHandoffs, nativeSpliceStatus } from '../../src/net/native-splice.ts';
import { loopbackConfig, startLoopbackDaemon } from './loopback-daemon.ts';

const upstream = createServer((s) => s.pipe(s));
upstream.listen(0, '127.0.0.1');
await once(upstream, 'listening');
const port = (upstream.address() as { port: number }).port;

const d = await startLoopbackDaemon(
  loopbackConfig({ sandboxes: [{ id: 'sb-a', sources: ['127.0.0.2'], network: { mode: 'block-all', egress: { allowed_cidrs: ['127.0.0.1/32'] } } }] }),
);
d.route('127.0.0.2', '127.0.0.1', port);
const c: Socket = connect({ host: '127.0.0.1', port: d.port('tcp'), localAddress: '127.0.0.2' });
await once(c, 'connect');
c.end('ping');
let echoed = '';
c.setEncoding('utf8').on('data', (t: string) => (echoed += t));
await once(c, 'close');
await d.waitForLog((l) => (l['event'] as { action?: string } | undefined)?.action === 'connection');
const before = performance.eventLoopUtilization();
await sleep(200);
const idleMs = Math.round(performance.eventLoopUtilization(before).idle);
process.stdout.write(
  `${JSON.stringify({ setup: d.daemon.nativeSetup !== null ? 'native' : 'node', plane: nativeSpliceStatus(), handoffs: nativeHandoffs(), echoed, idleMs })}\n`,
);
await d.stop();
upstream.close();
process.exit(0);
