// A connection closed by egressd while its name is looked up on the wire — a live policy change
// that now refuses it (onPolicyChange: close), or shutdown — ends when it is closed, through the
// whole daemon on both set-up paths, as a dial under way does (the native loop's abort, the JS
// dial's signal). Before, it was held until the lookup ended (up to dns.timeoutMs): its client
// kept a connection already refused, and a stop waited for it. The lookup, which no other
// connection waits on, is cancelled then too (its socket closed), so its place in the limits is
// given back at once (it was held until the lookup settled, while the socket stayed open).

import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { adminCall } from '../../helpers/admin-api.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../../helpers/loopback-daemon.ts';
import { field, isConnection, type LogLine } from '../../helpers/log-line.ts';

/** Far beyond every wait here: a connection that ends at all within the test ended when it was closed. */
const DNS_TIMEOUT_MS = 60_000;
/** How long the DNS server takes to answer: the lookup is still on the wire when the connection ends. */
const LOOKUP_MS = 6_000;
/** How long the end may take after the close on a loaded machine (still far below the lookup's bound). */
const PROMPTLY_MS = 10_000;
const SOURCE = '127.0.6.10';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('a connection closed while its name is looked up, set up on $setup', ({ setup }) => {
  let dns: DnsTestServer | undefined;
  let d: LoopbackDaemon | undefined;
  afterEach(async () => {
    await d?.stop();
    await dns?.close();
    d = dns = undefined;
  });

  /** A daemon whose sandbox may reach *.gone.test, and a connection from it waiting for a name the server answers only after LOOKUP_MS; the client's close and its line. */
  const waitingForItsName = async (): Promise<{ daemon: LoopbackDaemon; socket: Socket; closed: Promise<void>; line: Promise<LogLine> }> => {
    const server = (dns = await DnsTestServer.start());
    const daemon = (d = await startLoopbackDaemon(
      loopbackConfig({ dns: { servers: [server.server], timeoutMs: DNS_TIMEOUT_MS }, upstream: { dial: 'resolved', connectTimeoutMs: DNS_TIMEOUT_MS } }),
      { setup },
    ));
    // Through the API: a live change of this sandbox's policy is what closes the connection.
    const put = await adminCall(daemon.adminUrl, 'PUT', '/api/v1/sandboxes/sb-look', {
      sources: [SOURCE],
      network: { mode: 'block-all', egress: { allowed_domains: ['*.gone.test'] } },
    });
    expect(put.status).toBe(201);
    // Answered late: the lookup is still on the wire when the connection ends.
    server.set('unanswered.gone.test', { kind: 'nxdomain', delayMs: LOOKUP_MS });
    daemon.route(SOURCE, '127.0.0.1', 9);
    const socket = connect({ host: '127.0.0.1', port: daemon.port('http'), localAddress: SOURCE });
    socket.on('error', () => {});
    onTestFinished(() => void socket.destroy());
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    const line = daemon.waitForLog((l) => isConnection(l) && field(l, 'source.ip') === SOURCE, PROMPTLY_MS + 5_000);
    socket.write('GET / HTTP/1.0\r\nHost: unanswered.gone.test\r\n\r\n');
    for (let i = 0; i < 500 && !server.queries.some((q) => q.name === 'unanswered.gone.test'); i++) await sleep(20);
    expect(
      server.queries.some((q) => q.name === 'unanswered.gone.test'),
      'the name was never asked',
    ).toBe(true);
    expect(daemon.daemon.limits.snapshot().open).toBe(1);
    return { daemon, socket, closed, line };
  };

  it('a policy change that now refuses it ends it at once, its lookup cancelled and its place given back', async () => {
    const c = await waitingForItsName();
    const changedAt = Date.now();
    const change = await adminCall(c.daemon.adminUrl, 'PUT', '/api/v1/sandboxes/sb-look/network', {
      mode: 'block-all',
      egress: { allowed_domains: ['other.test'] },
    });
    expect(change.status).toBe(200);
    const l = await c.line;
    await c.closed;
    expect(Date.now() - changedAt, 'ended only when the lookup did').toBeLessThan(LOOKUP_MS);
    expect({ verdict: field(l, 'egressd.verdict'), reason: field(l, 'event.reason'), endedBy: field(l, 'egressd.ended_by') }).toEqual({
      verdict: 'refuse',
      reason: 'policy-changed',
      endedBy: 'policy',
    });
    // No one waits on the lookup any more: cancelled, so nothing is left for the place to count.
    expect(c.daemon.daemon.limits.snapshot().open).toBe(0);
  });

  it('a stop ends it at once, not when the lookup ends', async () => {
    const c = await waitingForItsName();
    const stoppedAt = Date.now();
    await c.daemon.stop();
    const l = await c.line;
    await c.closed;
    expect(Date.now() - stoppedAt, 'the stop waited for the lookup').toBeLessThan(PROMPTLY_MS);
    expect({ reason: field(l, 'event.reason'), endedBy: field(l, 'egressd.ended_by') }).toEqual({ reason: 'shutdown', endedBy: 'egressd' });
    d = undefined;
  });
});
