// An allowed name whose answer carries a protected address (cloud metadata, a private range):
// the DNS memory lends the name to a nameless connection, but the address is judged first
// (policy/decide.ts step 1), so the connection is refused as `protected-address` and no name
// opens it. Through the whole daemon on loopback, with dig as the sandbox's resolver.

import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { action, field } from '../../helpers/log-line.ts';

const A = '127.0.0.2';

describe.skipIf(!haveDig)('a remembered name that gave a protected address', () => {
  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start();
      upstream.set('meta.allowed.test', { kind: 'answer', a: ['169.254.169.254', '10.0.0.5'], ttl: 60 });
      return upstream;
    },
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000 },
      sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } }],
    }),
  );

  it.each(['169.254.169.254', '10.0.0.5'])('refuses a nameless connection to %s as protected, the name remembered', async (address) => {
    expect(await digFrom(dns.port, A, 'meta.allowed.test', 'A', '+short')).toBe('169.254.169.254\n10.0.0.5\n');
    dns.egressd.route(A, address, 22);
    await new Promise<void>((resolve) => {
      const s = connect({ host: '127.0.0.1', port: dns.egressd.port('tcp'), localAddress: A });
      s.on('error', () => {});
      s.on('close', () => resolve());
    });
    const line = await dns.egressd.waitForLog((l) => action(l) === 'connection' && field(l, 'destination.ip') === address);
    expect(line).toMatchObject({ egressd: { verdict: 'refuse', sandbox: 'sb-a', dns_names: ['meta.allowed.test'] }, event: { reason: 'protected-address' } });
  });
});
