// A stop with connections still held, through the whole daemon on both set-up paths (and the
// js-path stage, where the JavaScript path carries the bytes): Daemon.stop(drainMs) lets them
// finish for drainMs, then closes them (`shutdown`), and returns. Before, on the JavaScript path,
// closing the listeners waited for every connection they had accepted to end (net.Server.close's
// callback), so the drain bound and the close never came while a client held its connection:
// SIGTERM waited up to the connection's idle timeout (an hour by default).

import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { echoThroughEgressd } from '../../helpers/echo-through-egressd.ts';
import type { LoopbackDaemon } from '../../helpers/loopback-daemon.ts';
import { field, isConnection } from '../../helpers/log-line.ts';

const SOURCE = '127.0.8.10';
/** Far below the idle timeout (an hour); what a loaded machine may take beyond the drain. */
const PROMPTLY_MS = 10_000;

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('a stop while a connection is held, set up on $setup', ({ setup }) => {
  /** A daemon carrying one connection from SOURCE to an echo server; the client, once an echo came back. */
  const held = async (): Promise<{ d: LoopbackDaemon; client: Socket; closed: Promise<void> }> => {
    const { d, client, closed } = await echoThroughEgressd(SOURCE, setup);
    client.write('held');
    await new Promise<void>((r) => client.once('data', () => r()));
    return { d, client, closed };
  };

  it.each([0, 1000])('with drainMs %i closes it once the drain is over, and returns', async (drainMs) => {
    const { d, closed } = await held();
    const at = Date.now();
    const stopped = await Promise.race([
      d.daemon.stop(drainMs).then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), drainMs + PROMPTLY_MS)),
    ]);
    expect(stopped, 'the stop waited for the held connection').toBe(true);
    // Timers never fire early: the drain was given its time.
    expect(Date.now() - at).toBeGreaterThanOrEqual(drainMs - 5);
    await closed;
    const line = d.logs.find((l) => isConnection(l) && field(l, 'source.ip') === SOURCE);
    expect(line && { reason: field(line, 'event.reason'), endedBy: field(line, 'egressd.ended_by') }).toEqual({ reason: 'shutdown', endedBy: 'egressd' });
  });
});
