// `dns.zones` through the whole daemon on loopback, asked by dig: a name in an operator's zone
// is forwarded for a sandbox whose policy does not name it, yet grants no connection — neither
// by that name (HTTP Host) nor by the name remembered for its address; a name outside the zones
// and the policy is answered NXDOMAIN here and never reaches the upstream.

import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { action, field } from '../../helpers/log-line.ts';

const Z = '127.0.0.41';
const D = '127.0.0.42';

describe.skipIf(!haveDig)('dns.zones', () => {
  let backend: Server;
  let backendPort: number;

  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start();
      upstream.set('svc.corp.test', { kind: 'answer', a: ['127.0.0.1'], ttl: 60 });
      upstream.set('denied.corp.test', { kind: 'answer', a: ['127.0.0.1'], ttl: 60 });
      upstream.set('allowed.test', { kind: 'answer', a: ['127.0.0.1'], ttl: 60 });
      upstream.set('outside.test', { kind: 'answer', a: ['127.0.0.1'], ttl: 60 });
      return upstream;
    },
    (upstream) => ({
      upstream: { dial: 'original' },
      dns: { servers: [upstream.server], timeoutMs: 1000, zones: ['*.corp.test'] },
      sandboxes: [
        { id: 'sb-z', sources: [Z], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } } },
        { id: 'sb-d', sources: [D], network: { mode: 'allow-all', egress: { denied_domains: ['denied.corp.test'] } } },
      ],
    }),
  );
  beforeAll(async () => {
    backend = createServer((s) => {
      s.on('error', () => {});
      s.end('HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello');
    });
    await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
    backendPort = (backend.address() as AddressInfo).port;
  });
  afterAll(async () => {
    backend?.close();
  });

  const dig = (from: string, ...args: string[]): Promise<string> => digFrom(dns.port, from, ...args);

  /** What comes back to an HTTP request from `source` with this Host, routed to the backend. */
  const get = (source: string, host: string | null): Promise<string> =>
    new Promise((resolve) => {
      dns.egressd.route(source, '127.0.0.1', backendPort);
      const s = connect({ host: '127.0.0.1', port: dns.egressd.port(host === null ? 'tcp' : 'http'), localAddress: source });
      let got = '';
      s.on('data', (b) => (got += b.toString()));
      s.on('error', () => {});
      s.on('close', () => resolve(got));
      if (host !== null) s.write(`GET / HTTP/1.1\r\nHost: ${host}\r\nconnection: close\r\n\r\n`);
    });

  it('forwards a zone name the policy does not name, and grants no connection by it', async () => {
    expect(await dig(Z, 'svc.corp.test', 'A', '+short')).toBe('127.0.0.1\n');
    expect(dns.upstream.count('svc.corp.test', 'A')).toBe(1);

    // By its name: the policy does not allow it, so the connection is refused.
    expect(await get(Z, 'svc.corp.test')).not.toMatch(/hello/);
    expect(
      await dns.egressd.waitForLog(
        (l) => action(l) === 'connection' && field(l, 'egressd.sandbox') === 'sb-z' && field(l, 'destination.domain') === 'svc.corp.test',
      ),
    ).toMatchObject({
      egressd: { verdict: 'refuse' },
    });
    // Without a name: the name the sandbox resolved to the address does not allow it either.
    expect(await get(Z, null)).toBe('');
    expect(
      await dns.egressd.waitForLog((l) => action(l) === 'connection' && field(l, 'egressd.sandbox') === 'sb-z' && field(l, 'destination.domain') === undefined),
    ).toMatchObject({
      egressd: { verdict: 'refuse' },
    });
    // The same path does let a name the policy allows through: the refusals above are the policy's.
    expect(await get(Z, 'allowed.test')).toMatch(/hello/);
  });

  it('answers NXDOMAIN for a name outside the zones and the policy, without asking the upstream', async () => {
    expect(await dig(Z, 'outside.test', 'A')).toMatch(/status: NXDOMAIN/);
    expect(await dig(Z, 'corp.test', 'A')).toMatch(/status: NXDOMAIN/);
    expect(dns.upstream.count('outside.test', 'A')).toBe(0);
    expect(dns.upstream.queries.some((q) => q.name === 'corp.test')).toBe(false);
  });

  it('does not forward a zone name the policy denies', async () => {
    expect(await dig(D, 'denied.corp.test', 'A')).toMatch(/status: NXDOMAIN/);
    expect(dns.upstream.count('denied.corp.test', 'A')).toBe(0);
    expect(await dig(D, 'svc.corp.test', 'A', '+short')).toBe('127.0.0.1\n');
  });
});
