// A stop (SIGTERM's) that comes while egressd starts, on both set-up paths. The listeners are
// bound before the start has finished, and in a rollout the kernel shares new connections with the
// new process from its bind on (SO_REUSEPORT); a rollout aborted, or systemd stopping a slow
// start, then stopped it. The start went on regardless and served after the stop had closed
// everything, and what the listeners had accepted was reset unjudged. The start now gives up at
// its next step; a connection it accepted is judged and carried in the drain as one accepted
// just before a stop is, and what cannot be (DNS, whose listeners close at once) is counted in a
// log line.

import { execFileSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { connect, type Socket } from 'node:net';
import * as packet from 'dns-packet';
import { describe, expect, it, onTestFinished } from 'vitest';
import { holdSecondDnsListener, twoDnsListeners } from '../../helpers/dns-daemon.ts';
import { loopbackConfig, startLoopbackDaemon } from '../../helpers/loopback-daemon.ts';
import { action, field, isConnection } from '../../helpers/log-line.ts';

const SOURCE = '127.0.8.40';
/** How long the start is held once the early connection is made: time enough for its accept to reach the daemon. */
const HOLD_MS = 300;

/** The TCP ports this process listens on. */
function listening(): Set<string> {
  const out = execFileSync('ss', ['-Hltnp'], { encoding: 'utf8' });
  return new Set(
    out
      .split('\n')
      .filter((l) => l.includes(`pid=${process.pid},`))
      .map((l) => l.trim().split(/\s+/)[3]!),
  );
}

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('a stop while egressd starts, set up on $setup', ({ setup }) => {
  it('gives the start up, judges and logs what it accepted, and leaves nothing open', async () => {
    const before = listening();
    let early: Socket | undefined;
    let stopped: Promise<void> | undefined;
    const d = await startLoopbackDaemon(
      loopbackConfig({
        listen: twoDnsListeners('127.0.0.1', '127.0.0.2'),
        sandboxes: [{ id: 'sb', sources: [SOURCE], network: { mode: 'allow-all' } }],
      }),
      {
        setup,
        // The second DNS listener binds while the early connection and query come; the stop comes then.
        beforeStart: holdSecondDnsListener(async (firstPort, daemon) => {
          const tcp = daemon.listeners.find((l) => l.kind === 'tcp')!;
          for (let i = 0; i < 500 && tcp.port === null; i++) await new Promise((r) => setTimeout(r, 10));
          early = connect({ host: '127.0.0.1', port: tcp.port!, localAddress: SOURCE });
          early.on('error', () => {});
          early.write('ping');
          const q = createSocket('udp4');
          onTestFinished(() => void q.close());
          q.bind(0, SOURCE, () => q.send(packet.encode({ type: 'query', id: 9, questions: [{ type: 'A', name: 'early.test' }] }), firstPort, '127.0.0.1'));
          await new Promise((r) => setTimeout(r, HOLD_MS));
          stopped = daemon.stop(2000);
        }),
      },
    );
    onTestFinished(() => void early?.destroy());
    await stopped;
    expect(d.daemon.state).toBe('stopped');
    // Never served: no `started` line, and nothing it bound is left listening.
    expect(d.logs.filter((l) => action(l) === 'started')).toEqual([]);
    expect([...listening()].filter((p) => !before.has(p))).toEqual([]);
    // No route was given for SOURCE: judged, it is refused as not-redirected, with its line.
    const line = d.logs.find((l) => isConnection(l) && field(l, 'source.ip') === SOURCE);
    expect(line && field(line, 'event.reason')).toBe('not-redirected');
    // The query could not be answered (the DNS listeners close at once in a stop): counted, not silent.
    expect(d.logs.find((l) => action(l) === 'early-given-up')).toMatchObject({ connections: 0, dnsQueries: 1, dnsConnections: 0 });
  });
});
