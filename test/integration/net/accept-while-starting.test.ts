// A connection the kernel hands to egressd's listeners before egressd serves, on both set-up
// paths. The listeners are bound before the start has finished (the DNS listeners' binds, the
// OTLP exporter's import, and the host's listener ports are awaited after them), and in a
// rollout the kernel shares new connections with the new process from its bind on
// (SO_REUSEPORT): such a connection was reset unjudged, with no log line and no count, where the
// draining process beside it would have served it. It now waits for the start, then is judged
// as any other.

import { connect, type Socket } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { loopbackConfig, startLoopbackDaemon } from '../../helpers/loopback-daemon.ts';
import { field, isConnection } from '../../helpers/log-line.ts';

const SOURCE = '127.0.8.20';
/** How long the start is held once the early connection is made: time enough for its accept to reach the daemon. */
const HOLD_MS = 300;

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('a connection accepted while egressd starts, set up on $setup', ({ setup }) => {
  it('is judged once egressd serves, logged and counted, not reset unseen', async () => {
    let early: Socket | undefined;
    let resetWhileStarting = false;
    const d = await startLoopbackDaemon(
      loopbackConfig({
        listen: { http: '127.0.0.1:0', tls: '127.0.0.1:0', tcp: '127.0.0.1:0', dns: '127.0.0.1:0' },
        sandboxes: [{ id: 'sb', sources: [SOURCE], network: { mode: 'allow-all' } }],
      }),
      {
        setup,
        // The DNS listener binds after the proxy listeners: the early client connects in between.
        beforeStart: (daemon) => {
          const dns = daemon.dnsListeners[0]!;
          const listen = dns.listen.bind(dns);
          dns.listen = async () => {
            const tcp = daemon.listeners.find((l) => l.kind === 'tcp')!;
            for (let i = 0; i < 500 && tcp.port === null; i++) await new Promise((r) => setTimeout(r, 10));
            early = connect({ host: '127.0.0.1', port: tcp.port!, localAddress: SOURCE });
            early.on('error', () => {});
            early.once('close', () => (resetWhileStarting = true));
            early.write('ping');
            await new Promise((r) => setTimeout(r, HOLD_MS));
            return listen();
          };
        },
      },
    );
    onTestFinished(() => d.stop());
    onTestFinished(() => void early?.destroy());
    expect(resetWhileStarting).toBe(false);
    // No route was given for SOURCE: judged, it is refused as not-redirected, with its line.
    const line = await d.waitForLog((l) => isConnection(l) && field(l, 'source.ip') === SOURCE);
    expect(field(line, 'event.reason')).toBe('not-redirected');
    // Reset as not-redirected: once() would take its 'error' for a failure.
    if (!early!.closed) await new Promise((r) => early!.once('close', r));
    const metrics = await (await fetch(`${d.adminUrl}/metrics`)).text();
    expect(metrics).toMatch(/^egressd_connections_total\{listener="tcp",verdict="refuse",reason="not-redirected",ended_by="[a-z]+"\} 1$/m);
  });
});
