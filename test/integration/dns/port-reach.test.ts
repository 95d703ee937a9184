// The DNS listener forwards a name only when one port passes every layer of the sandbox's chain,
// as POST /api/v1/check decides: an organization that allows a name on 443 over a sandbox that
// allows port 22 only reaches the name on no port, so its query is answered here and never
// reaches the upstream; the same organization over a sandbox allowing 443 gets the answer.

import { beforeAll, describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { adminCall } from '../../helpers/admin-api.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';

const SSH = '127.0.0.61';
const TLS = '127.0.0.62';
const PUBLIC = '198.18.1.2';

describe.skipIf(!haveDig)('the DNS listener: a name reaches only on a port every layer allows', () => {
  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start();
      upstream.set('registry.test', { kind: 'answer', a: ['198.18.1.2'], ttl: 60 });
      return upstream;
    },
    (upstream) => ({
      upstream: { dial: 'original' },
      dns: { servers: [upstream.server], timeoutMs: 1000 },
      // An address no protected range holds, so the name and the port alone decide.
      protected: { except: ['198.18.0.0/15'] },
    }),
  );

  beforeAll(async () => {
    const call = (method: string, path: string, body?: unknown) => adminCall(dns.egressd.adminUrl, method, path, body);
    const org = { network: { mode: 'block-all', egress: { allowed_domains: ['registry.test'], allowed_ports: [443] } } };
    expect((await call('PUT', '/api/v1/orgs/acme', org)).status).toBe(201);
    for (const [id, source, p] of [
      ['sb-ssh', SSH, 22],
      ['sb-tls', TLS, 443],
    ] as const) {
      const put = await call('PUT', `/api/v1/sandboxes/${id}`, {
        sources: [source],
        org: 'acme',
        network: { mode: 'block-all', egress: { allowed_ports: [p] } },
      });
      expect(put.status, JSON.stringify(put.body)).toBe(201);
    }
  });

  const verdictOf = async (sandbox: string, p: number): Promise<unknown> =>
    (await adminCall(dns.egressd.adminUrl, 'POST', '/api/v1/check', { sandbox, ip: PUBLIC, port: p, host: 'registry.test' })).body!['verdict'];

  it('answers a name no port of the chain lets through here, without asking the upstream', async () => {
    // The verdict: refused on the organization's port and on the sandbox's.
    expect(await verdictOf('sb-ssh', 443)).toBe('refuse');
    expect(await verdictOf('sb-ssh', 22)).toBe('refuse');
    expect(await digFrom(dns.port, SSH, 'registry.test', 'A')).toMatch(/status: NXDOMAIN/);
    expect(dns.upstream.count('registry.test', 'A')).toBe(0);
  });

  it('forwards it for a sandbox that shares a port with its organization', async () => {
    expect(await verdictOf('sb-tls', 443)).toBe('allow');
    expect(await digFrom(dns.port, TLS, 'registry.test', 'A', '+short')).toBe('198.18.1.2\n');
    expect(dns.upstream.count('registry.test', 'A')).toBe(1);
  });
});
