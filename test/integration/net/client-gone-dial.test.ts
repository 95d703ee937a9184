// The client's reset while its upstream is dialed, through the whole daemon on both set-up paths,
// past client-gone.test.ts's single IPv4 address: a dial with attempts of both families in flight
// at once (RFC 8305 §5), an IPv6 address alone, and a sandbox in report-only mode (a would-refuse
// verdict is dialed anyway). Each reset ends the connection at once: every attempt closed (none
// left in SYN_SENT), its place in the limits and its attempts' descriptors given back, the line
// the client's reset with its verdict.

import { connect } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { blackholePort, synSent, within } from '../../helpers/listen.ts';
import { field, type LogLine } from '../../helpers/log-line.ts';

/** Far beyond every wait here: a line that comes at all came from the reset. */
const CONNECT_TIMEOUT_MS = 60_000;
/** How long a line may take after the reset on a loaded machine (still far below the timeout). */
const PROMPTLY_MS = 10_000;

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])(
  'a client that resets while its upstream is dialed, set up on $setup',
  ({ setup }) => {
    const sources = Array.from({ length: 10 }, (_, i) => `127.0.3.${10 + i}`);
    const reportOnly = Array.from({ length: 10 }, (_, i) => `127.0.4.${10 + i}`);
    let next = 0;

    const served = dnsDaemonPerBlock(
      () => DnsTestServer.start(),
      (dns) => ({
        dns: { servers: [dns.server], timeoutMs: 60_000 },
        upstream: { dial: 'resolved', connectTimeoutMs: CONNECT_TIMEOUT_MS },
        // ::1 is the IPv6 attempts' (loopback is protected unless unlocked).
        protected: { except: ['127.0.0.0/8', '::1/128'], reachableHostAddresses: ['127.0.0.0/8', '::1'] },
        sandboxes: [
          { id: 'sb', sources, network: { mode: 'block-all', egress: { allowed_domains: ['*.gone.test'] } } },
          { id: 'sb-report-only', sources: reportOnly, reportOnly: true, network: { mode: 'block-all', egress: { allowed_domains: ['other.test'] } } },
        ],
      }),
      { setup },
    );

    /** A request for `name` from one of `from`, reset once `attempts` attempts are in SYN_SENT toward `port`; its line. */
    const resetWhileDialed = async (from: readonly string[], name: string, port: number, attempts: number): Promise<LogLine> => {
      const source = from[next++ % from.length]!;
      served.egressd.route(source, '127.0.0.1', port);
      const socket = connect({ host: '127.0.0.1', port: served.egressd.port('http'), localAddress: source });
      socket.on('error', () => {});
      onTestFinished(() => void socket.destroy());
      const line = served.egressd.nextConnectionLine(source, PROMPTLY_MS + 5_000);
      socket.write(`GET / HTTP/1.0\r\nHost: ${name}\r\n\r\n`);
      expect(await within(PROMPTLY_MS, () => synSent(port) >= attempts), `${attempts} attempts never in flight at once`).toBe(true);
      const resetAt = Date.now();
      socket.resetAndDestroy();
      const l = await line;
      expect(Date.now() - resetAt, 'the line came only when the dial timed out').toBeLessThan(PROMPTLY_MS);
      expect(synSent(port), 'attempts left in SYN_SENT after the line').toBe(0);
      const s = served.egressd.daemon.limits.snapshot();
      expect({ open: s.open, dialAttempts: s.dialAttempts }).toEqual({ open: 0, dialAttempts: 0 });
      return l;
    };

    const ending = (l: LogLine): Record<string, unknown> => ({
      verdict: field(l, 'egressd.verdict'),
      end: field(l, 'egressd.end'),
      endedBy: field(l, 'egressd.ended_by'),
      failure: field(l, 'egressd.upstream.failure'),
    });

    it('with an IPv4 and an IPv6 attempt in flight at once, ends both', async () => {
      const port = await blackholePort({ dualStack: true });
      served.upstream.set('both.gone.test', { kind: 'answer', a: ['127.0.0.1'], aaaa: ['::1'], ttl: 60 });
      const l = await resetWhileDialed(sources, 'both.gone.test', port, 2);
      expect(ending(l)).toEqual({ verdict: 'allow', end: 'client-reset', endedBy: 'client', failure: 'aborted' });
      // Both attempts named, each cancelled by the reset.
      expect(field(l, 'egressd.upstream.tried')).toEqual(expect.arrayContaining([expect.stringMatching(/cancelled$/)]));
    });

    it('dialing an IPv6 address alone', async () => {
      const port = await blackholePort({ dualStack: true });
      served.upstream.set('six.gone.test', { kind: 'answer', aaaa: ['::1'], ttl: 60 });
      expect(ending(await resetWhileDialed(sources, 'six.gone.test', port, 1))).toEqual({
        verdict: 'allow',
        end: 'client-reset',
        endedBy: 'client',
        failure: 'aborted',
      });
    });

    it('in report-only mode: the would-refuse verdict stands, ended by the client', async () => {
      const port = await blackholePort();
      served.upstream.set('watched.gone.test', { kind: 'answer', a: ['127.0.0.1'], ttl: 60 });
      expect(ending(await resetWhileDialed(reportOnly, 'watched.gone.test', port, 1))).toEqual({
        verdict: 'would-refuse',
        end: 'client-reset',
        endedBy: 'client',
        failure: 'aborted',
      });
    });
  },
);
