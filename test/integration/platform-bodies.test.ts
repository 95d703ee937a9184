// Issue 13 part 2: the platforms' complete request bodies, passed through the API verbatim, and
// the verdicts they give real connections on loopback.

import { once } from 'node:events';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { adminCall } from '../helpers/admin-api.ts';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { action } from '../helpers/log-line.ts';

/** A complete Daytona create-sandbox network section: both lists, as Daytona's API takes them. */
const DAYTONA = { networkBlockAll: false, networkAllowList: '127.0.0.1/32', domainAllowList: 'pypi.test, *.github.test' };
/** A complete Novita/E2B `Sandbox.create` network section (Novita "Internet access" plus E2B's allowPublicTraffic). */
const NOVITA = {
  allowInternetAccess: true,
  network: { allowOut: ['api.example.test'], denyOut: ['0.0.0.0/0'], maskRequestHost: 'localhost:${PORT}', allowPublicTraffic: false },
};

/** A loopback address of this file's own for an upstream on port 80 (names match there under Novita). */
const WEB_ADDRESS = '127.0.0.223';

describe("the platforms' complete bodies through the API", () => {
  let d: LoopbackDaemon | undefined;
  let upstream: Server;
  let upstreamPort = 0;
  const accepted: Socket[] = [];

  beforeEach(async () => {
    // An upstream that answers any HTTP request with 200, so a spliced request shows as such.
    upstream = createServer((s) => {
      accepted.push(s);
      s.on('error', () => {});
      s.once('data', () => s.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok'));
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    upstreamPort = (upstream.address() as { port: number }).port;
  });
  afterEach(async () => {
    await d?.stop();
    d = undefined;
    for (const s of accepted) s.destroy();
    upstream.close();
  });

  const api = (method: string, path: string, body?: unknown) => adminCall(d!.adminUrl, method, path, body);

  /** An HTTP request for `host` from `source`, redirected (as iptables would) to the upstream (or to `to`). */
  const get = (source: string, host: string, to: { address: string; port: number } = { address: '127.0.0.1', port: upstreamPort }): Promise<string> =>
    new Promise((resolve) => {
      d!.route(source, to.address, to.port);
      const s = connect({ host: '127.0.0.1', port: d!.port('http'), localAddress: source });
      let got = '';
      s.on('data', (b) => (got += b.toString()));
      s.on('error', () => {});
      s.on('close', () => resolve(got));
      s.write(`GET / HTTP/1.1\r\nHost: ${host}\r\nconnection: close\r\n\r\n`);
    });

  it('Daytona: domainAllowList beside networkAllowList allows those names and addresses, refuses the rest', async () => {
    d = await startLoopbackDaemon(loopbackConfig({ upstream: { dial: 'original' } }));
    const put = await api('PUT', '/api/v1/sandboxes/sb-day', { sources: ['127.0.0.21'], network: DAYTONA });
    expect(put.status).toBe(201);
    expect(put.body.network).toMatchObject({
      mode: 'block-all',
      essential_services: true,
      egress: { allowed_domains: ['pypi.test', '*.github.test'], allowed_cidrs: ['127.0.0.1/32'] },
    });
    expect(put.body.warnings).toBeUndefined();
    // Allowed by the address list, whatever the name.
    expect(await get('127.0.0.21', 'anything.test')).toMatch(/^HTTP\/1\.1 200 /);
    await api('PUT', '/api/v1/sandboxes/sb-day/network', { domainAllowList: 'pypi.test, *.github.test' });
    expect(await get('127.0.0.21', 'raw.github.test')).toMatch(/^HTTP\/1\.1 200 /);
    expect(await get('127.0.0.21', 'pypi.test')).toMatch(/^HTTP\/1\.1 200 /);
    expect(await get('127.0.0.21', 'evil.test')).toMatch(/^HTTP\/1\.1 403 /);
    const refused = await d.waitForLog((l) => action(l) === 'connection' && JSON.stringify(l).includes('evil.test'));
    expect(JSON.stringify(refused)).toContain('refuse');
    // Daytona's own limits, refused whole with the field.
    const eleven = Array.from({ length: 11 }, (_, i) => `h${i}.test`).join(',');
    const bad = await api('PUT', '/api/v1/sandboxes/sb-day/network', { domainAllowList: eleven });
    expect(bad.status).toBe(400);
    expect(bad.body.error).toMatchObject({ code: 'invalid_policy', field: 'network.domainAllowList' });
    expect((await api('GET', '/api/v1/sandboxes/sb-day/network')).body.egress.allowed_domains).toEqual(['pypi.test', '*.github.test']);
  });

  it('Novita/E2B: maskRequestHost and allowPublicTraffic are kept, returned on GET and warned about; the egress part acts', async () => {
    d = await startLoopbackDaemon(loopbackConfig({ upstream: { dial: 'original' } }));
    const put = await api('PUT', '/api/v1/sandboxes/sb-nov', { sources: ['127.0.0.22'], network: NOVITA });
    expect(put.status).toBe(201);
    expect(put.body.network.ingress).toEqual({ maskRequestHost: 'localhost:${PORT}', allowPublicTraffic: false });
    expect(put.body.warnings).toEqual([
      { field: 'network.network.maskRequestHost', message: expect.stringMatching(/^Kept but not enforced/) },
      { field: 'network.network.allowPublicTraffic', message: expect.stringMatching(/^Kept but not enforced/) },
    ]);
    const got = await api('GET', '/api/v1/sandboxes/sb-nov');
    expect(got.body.network.ingress).toEqual({ maskRequestHost: 'localhost:${PORT}', allowPublicTraffic: false });
    expect(got.body.warnings).toHaveLength(2);
    const net = await api('GET', '/api/v1/sandboxes/sb-nov/network');
    expect(net.body.ingress).toEqual({ maskRequestHost: 'localhost:${PORT}', allowPublicTraffic: false });
    expect(net.body.warnings.map((w: { field: string }) => w.field)).toEqual(['network.network.maskRequestHost', 'network.network.allowPublicTraffic']);
    // Novita matches names on HTTP port 80 and TLS port 443 only ("Any other port falls back to
    // CIDR-based matching"): the same name to the upstream's own port is refused.
    const web = createServer((c) => {
      accepted.push(c);
      c.on('error', () => {});
      c.once('data', () => c.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok'));
    });
    expect(await get('127.0.0.22', 'api.example.test')).toMatch(/^HTTP\/1\.1 403 /);
    // Port 80 is privileged: the allow on it is checked as root only, saying so otherwise.
    if (process.getuid?.() === 0) {
      web.listen(80, WEB_ADDRESS);
      await once(web, 'listening');
      try {
        expect(await get('127.0.0.22', 'api.example.test', { address: WEB_ADDRESS, port: 80 })).toMatch(/^HTTP\/1\.1 200 /);
        expect(await get('127.0.0.22', 'other.example.test', { address: WEB_ADDRESS, port: 80 })).toMatch(/^HTTP\/1\.1 403 /);
      } finally {
        web.close();
      }
    } else console.warn('platform-bodies: the Novita name on port 80 is not checked: binding port 80 needs root');
    // An unknown field is still an error, and changes nothing.
    const bad = await api('PUT', '/api/v1/sandboxes/sb-nov/network', { network: { ...NOVITA.network, maskRequestHosts: 'x' } });
    expect(bad.status).toBe(400);
    expect(bad.body.error.field).toBe('network.network.maskRequestHosts');
    expect((await api('GET', '/api/v1/sandboxes/sb-nov')).body.network.ingress.maskRequestHost).toBe('localhost:${PORT}');
  });
});
