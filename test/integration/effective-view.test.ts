// The effective view (GET /api/v1/sandboxes/{id}/effective) tells what POST /api/v1/check, and so
// the data path, decides: its lists of DNS servers and essential services are what the chain of
// layers allows (organization AND sandbox, overlays, protected addresses), not what the sandbox's
// own policy asks for. A Daytona tier 1 or 2 organization (block-all with the essential services)
// refuses its Novita sandbox's DNS servers, and grants the catalog to no sandbox that refuses it.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../helpers/admin-api.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';

const DNS_SERVERS = ['198.18.1.53', '2001:db8::53'];
const CATALOG = ['registry.test', '*.cdn.test'];
// An address no protected range holds here (protected.except), so a name alone decides.
const PUBLIC = '198.18.1.2';

const NOVITA_DOMAIN = { network: { allowOut: ['pkgs.test'], denyOut: ['0.0.0.0/0'] } };

// The organization, then the sandbox's network body; what each layer says of the DNS servers and
// the catalog is in the name.
const CASES = [
  { name: 'no organization; Novita with a domain (its DNS servers allowed)', org: null, network: NOVITA_DOMAIN },
  { name: 'tier 1; Novita with a domain', org: { tier: 1 }, network: NOVITA_DOMAIN },
  { name: 'tier 2; Novita with a domain', org: { tier: 2 }, network: NOVITA_DOMAIN },
  { name: 'tier 3; Novita with a domain', org: { tier: 3 }, network: NOVITA_DOMAIN },
  { name: 'tier 1; Daytona block-all (no essential services of its own)', org: { tier: 1 }, network: { networkBlockAll: true } },
  { name: 'tier 1; Daytona allow-all', org: { tier: 1 }, network: {} },
  { name: 'no organization; Daytona block-all', org: null, network: { networkBlockAll: true } },
  { name: 'block-all organization without the catalog; Daytona allow-all', org: { network: { networkBlockAll: true } }, network: {} },
  // The organization allows a catalog name on 443 only, the sandbox port 22 only: no port passes both.
  {
    name: 'organization allowing registry.test on 443; sandbox0 allowing port 22 only',
    org: { network: { mode: 'block-all', egress: { allowed_domains: ['registry.test'], allowed_ports: [443] } } },
    network: { mode: 'block-all', egress: { allowed_ports: [22] } },
  },
  { name: 'tier 1; sandbox0 allow-all denying every port', org: { tier: 1 }, network: { mode: 'allow-all', egress: { denied_ports: ['1-65535'] } } },
  // A name below the wildcard denied leaves the others: the pattern is still reached.
  {
    name: 'tier 1; sandbox0 allow-all denying one name below a wildcard',
    org: { tier: 1 },
    network: { mode: 'allow-all', egress: { denied_domains: ['x.cdn.test'] } },
  },
] as const;
// The ports the cases' rules name, and one they do not: a name reaches on some port iff on one of these.
const PORTS = [22, 443, 9999];

describe('the effective view tells what check and the data path decide', () => {
  let d: LoopbackDaemon;
  beforeAll(async () => {
    d = await startLoopbackDaemon(
      loopbackConfig({
        // No DNS listener: the sandboxes' own servers are then reachable where a policy allows them.
        listen: { http: '127.0.0.1:0', tls: '127.0.0.1:0', tcp: '127.0.0.1:0', dns: [] },
        dns: { sandboxServers: DNS_SERVERS },
        catalog: { categories: [], extra: CATALOG },
        protected: { except: ['127.0.0.0/8', '198.18.0.0/15', '2001:db8::/32'], reachableHostAddresses: ['127.0.0.0/8', '::1'] },
      }),
    );
  });
  afterAll(async () => {
    await d?.stop();
  });
  const call = (method: string, path: string, body?: unknown) => adminCall(d.adminUrl, method, path, body);
  const check = async (sandbox: string, ip: string, port: number, host?: string): Promise<string> => {
    const r = await call('POST', '/api/v1/check', { sandbox, ip, port, ...(host !== undefined ? { host } : {}) });
    expect(r.status).toBe(200);
    return String(r.body!['verdict']);
  };

  it.each(CASES.map((c, i) => ({ ...c, i })))('$name', async ({ org, network, i }) => {
    const sandbox = `sb-${i}`;
    let orgId: string | null = null;
    if (org !== null) {
      orgId = `org-${i}`;
      expect((await call('PUT', `/api/v1/orgs/${orgId}`, org)).status).toBe(201);
    }
    const put = await call('PUT', `/api/v1/sandboxes/${sandbox}`, { sources: [`127.0.1.${i + 1}`], ...(orgId ? { org: orgId } : {}), network });
    expect(put.status, JSON.stringify(put.body)).toBe(201);

    const view = await call('GET', `/api/v1/sandboxes/${sandbox}/effective`);
    expect(view.status).toBe(200);
    const allowedServers: string[] = [];
    for (const ip of DNS_SERVERS) if ((await check(sandbox, ip, 53)) === 'allow') allowedServers.push(ip);
    expect(view.body!['dns_servers_allowed']).toEqual(allowedServers);
    // A wildcard pattern stands for any name below it: asked as one such name.
    const reached: string[] = [];
    for (const pattern of CATALOG) {
      for (const port of PORTS) {
        if ((await check(sandbox, PUBLIC, port, pattern.replace('*', 'any'))) !== 'allow') continue;
        reached.push(pattern);
        break;
      }
    }
    expect(view.body!['essential_services']).toEqual(reached);
  });

  it('the cases above include each answer, so the comparison can tell', async () => {
    // No organization, Novita with a domain: the servers are allowed; tier 1: refused.
    expect((await call('GET', '/api/v1/sandboxes/sb-0/effective')).body!['dns_servers_allowed']).toEqual(DNS_SERVERS);
    expect((await call('GET', '/api/v1/sandboxes/sb-1/effective')).body!['dns_servers_allowed']).toEqual([]);
    // Tier 1 with an allow-all sandbox: the catalog; with a block-all sandbox: none of it.
    expect((await call('GET', '/api/v1/sandboxes/sb-5/effective')).body!['essential_services']).toEqual(CATALOG);
    expect((await call('GET', '/api/v1/sandboxes/sb-4/effective')).body!['essential_services']).toEqual([]);
    // Allowed by name on 443 and by port on 22, by different layers: reached on no port.
    expect((await call('GET', '/api/v1/sandboxes/sb-8/effective')).body!['essential_services']).toEqual([]);
    expect((await call('GET', '/api/v1/sandboxes/sb-9/effective')).body!['essential_services']).toEqual([]);
    expect((await call('GET', '/api/v1/sandboxes/sb-10/effective')).body!['essential_services']).toEqual(CATALOG);
  });
});
