// A nameless connection to a link-local destination a name gave: the original destination
// carries the zone of the link it came in on (fe80::1%eth1, SO_ORIGINAL_DST's scope), the name's
// AAAA record none, and the DNS memory must still lend the name. Through the whole daemon on
// loopback, with dig as the sandbox's resolver and the original destination routed by the rig.

import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { action, field } from '../../helpers/log-line.ts';

const A = '127.0.0.2';

describe.skipIf(!haveDig)('a remembered name that gave a link-local address', () => {
  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start();
      upstream.set('ll.allowed.test', { kind: 'answer', aaaa: ['fe80::1'], ttl: 60 });
      return upstream;
    },
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000 },
      sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } }],
    }),
  );

  it('lends the name to a connection whose original destination carries its zone', async () => {
    expect(await digFrom(dns.port, A, 'll.allowed.test', 'AAAA', '+short')).toBe('fe80::1\n');
    dns.egressd.route(A, 'fe80::1%eth1', 22);
    await new Promise<void>((resolve) => {
      const s = connect({ host: '127.0.0.1', port: dns.egressd.port('tcp'), localAddress: A });
      s.on('error', () => {});
      s.on('close', () => resolve());
    });
    const line = await dns.egressd.waitForLog((l) => action(l) === 'connection' && field(l, 'destination.ip') === 'fe80::1');
    // Judged with the name (link-local addresses are protected unless excepted: refused so, not
    // as a nameless connection of a block-all sandbox).
    expect(line).toMatchObject({ egressd: { sandbox: 'sb-a', dns_names: ['ll.allowed.test'] }, event: { reason: 'protected-address' } });
  });
});
