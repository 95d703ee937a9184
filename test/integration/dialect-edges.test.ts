// The platforms' policy bodies at their edges, through a real daemon's API: what is refused is
// refused whole, naming the field, and leaves the policy in force as it was.

import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall, bearer } from '../helpers/admin-api.ts';
import { API_TOKEN, startApiDaemon, type ApiDaemon } from '../helpers/api-daemon.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';

describe('a body that gives one key twice', () => {
  let a: ApiDaemon;
  const api = (method: string, path: string, body?: unknown) => adminCall(a.admin, method, path, body, bearer(API_TOKEN));
  /** `text` sent as it is: JSON.stringify cannot write a duplicate key. */
  const raw = async (method: string, path: string, text: string) => {
    const res = await request(`${a.admin}${path}`, { method: method as 'PUT', headers: bearer(API_TOKEN), body: text });
    return { status: res.statusCode, body: (await res.body.json()) as { error: { code: string; field: string | null; message: string } } };
  };
  const check = async (ip: string) => (await api('POST', '/api/v1/check', { sandbox: 'dup-1', ip, port: 443 })).body.verdict as string;

  beforeAll(async () => {
    a = await startApiDaemon();
    expect((await api('PUT', '/api/v1/sandboxes/dup-1', { sources: ['198.18.0.1'], network: { networkBlockAll: true } })).status).toBe(201);
  }, 60_000);
  afterAll(async () => {
    await a?.stop();
  });

  // JSON.parse keeps the last of two equal keys, another reader the first (RFC 8259 §4: "the
  // behavior of software that receives such an object is unpredictable"): a control plane that
  // checked `true` would have egressd enforce `false`. The config file refuses them too.
  it('is refused with the key path, and the policy in force stays as it was', async () => {
    const bodies: [string, string, string][] = [
      ['/api/v1/sandboxes/dup-1/network', '{"networkBlockAll":true,"networkBlockAll":false}', 'networkBlockAll'],
      [
        '/api/v1/sandboxes/dup-1',
        '{"sources":["198.18.0.1"],"network":{"network":{"denyOut":["0.0.0.0/0"],"allowOut":[],"denyOut":[]}}}',
        'network.network.denyOut',
      ],
      // The same key spelled with an escape is the same key.
      ['/api/v1/sandboxes/dup-1/network', '{"mode":"block-all","m\\u006fde":"allow-all"}', 'mode'],
      [
        '/api/v1/sandboxes/dup-1',
        '{"sources":["198.18.0.1"],"network":{"mode":"allow-all","egress":{"denied_cidrs":[],"denied_cidrs":["1.2.3.4"]}}}',
        'network.egress.denied_cidrs',
      ],
    ];
    for (const [path, text, field] of bodies) {
      const r = await raw('PUT', path, text);
      expect(r.status, text).toBe(400);
      expect(r.body.error, text).toMatchObject({ code: 'invalid_json', field });
      expect(r.body.error.message, text).toContain('more than once');
    }
    expect((await api('GET', '/api/v1/sandboxes/dup-1/network')).body).toMatchObject({ mode: 'block-all', essential_services: false });
    expect(await check('104.16.24.34')).toBe('refuse');
  });

  it('still accepts equal keys in different objects and equal strings as values', async () => {
    const text = '{"sources":["198.18.0.1"],"network":{"mode":"block-all","egress":{"allowed_domains":["mode","egress"],"allowed_cidrs":["104.16.24.34"]}}}';
    const r = await raw('PUT', '/api/v1/sandboxes/dup-1', text);
    expect(r.status).toBe(200);
    expect(await check('104.16.24.34')).toBe('allow');
  });
});

describe('a deny rule over a public suffix', () => {
  let a: ApiDaemon;
  const api = (method: string, path: string, body?: unknown) => adminCall(a.admin, method, path, body, bearer(API_TOKEN));
  const check = async (host: string) => (await api('POST', '/api/v1/check', { sandbox: 'ps-1', host, ip: '104.16.24.34', port: 443 })).body;

  beforeAll(async () => {
    a = await startApiDaemon();
  }, 60_000);
  afterAll(async () => {
    await a?.stop();
  });

  // The public-suffix refusal keeps an allow list from opening a whole registry; a deny list
  // over one (`*.ru`: "block this country's sites") only narrows, and is what it says.
  it('is taken, and refuses the names below it, never the other names', async () => {
    const put = await api('PUT', '/api/v1/sandboxes/ps-1', {
      sources: ['198.18.0.2'],
      network: { mode: 'allow-all', egress: { denied_domains: ['*.ru', '*.co.uk'] } },
    });
    expect(put.status, JSON.stringify(put.body)).toBe(201);
    expect(put.body.network.egress.denied_domains).toEqual(['*.ru', '*.co.uk']);
    expect(await check('mail.example.ru')).toMatchObject({ verdict: 'refuse', rule: 'denied_domains "*.ru"' });
    expect(await check('bbc.co.uk')).toMatchObject({ verdict: 'refuse', rule: 'denied_domains "*.co.uk"' });
    expect(await check('example.com')).toMatchObject({ verdict: 'allow' });
  });

  it('is still refused on the allow side, naming the field', async () => {
    const r = await api('PUT', '/api/v1/sandboxes/ps-1/network', { mode: 'block-all', egress: { allowed_domains: ['*.ru'] } });
    expect(r.status).toBe(400);
    expect(r.body.error).toMatchObject({ code: 'invalid_policy', field: 'network.egress.allowed_domains[0]' });
    expect((await api('GET', '/api/v1/sandboxes/ps-1/network')).body.egress.denied_domains).toEqual(['*.ru', '*.co.uk']);
  });
});

describe('an internationalized name, in a policy, a check and a connection', () => {
  let d: LoopbackDaemon;
  let upstream: Server;
  let upstreamPort = 0;
  const accepted: Socket[] = [];
  const api = (method: string, path: string, body?: unknown) => adminCall(d.adminUrl, method, path, body);

  beforeAll(async () => {
    upstream = createServer((s) => {
      accepted.push(s);
      s.on('error', () => {});
      s.once('data', () => s.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok'));
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    upstreamPort = (upstream.address() as { port: number }).port;
    d = await startLoopbackDaemon(loopbackConfig({ upstream: { dial: 'original' } }));
  });
  afterAll(async () => {
    await d?.stop();
    for (const s of accepted) s.destroy();
    upstream.close();
  });

  /** An HTTP request whose Host is `host` as UTF-8 bytes, from `source`, redirected to the upstream. */
  const get = (source: string, host: string): Promise<string> =>
    new Promise((resolve) => {
      d.route(source, '127.0.0.1', upstreamPort);
      const s = connect({ host: '127.0.0.1', port: d.port('http'), localAddress: source });
      let got = '';
      s.on('data', (b) => (got += b.toString()));
      s.on('error', () => {});
      s.on('close', () => resolve(got));
      s.write(`GET / HTTP/1.1\r\nHost: ${host}\r\nconnection: close\r\n\r\n`);
    });

  // A policy's U-label is stored as its A-label (punycode); a connection carries the A-label
  // (RFC 6066 §3, RFC 9110 §7.2), and one that sends raw non-ASCII bytes is refused as a
  // malformed name. A check, "normalized as a connection's would be" (docs/api.md), must not
  // answer allow for a name the connection itself is refused for.
  it('check answers as the connection: the A-label allowed, the raw U-label refused as a malformed name', async () => {
    const put = await api('PUT', '/api/v1/sandboxes/idn-1', {
      sources: ['127.0.0.41'],
      network: { mode: 'block-all', egress: { allowed_domains: ['bücher.test'] } },
    });
    expect(put.status).toBe(201);
    expect(put.body.network.egress.allowed_domains).toEqual(['xn--bcher-kva.test']);

    expect(await get('127.0.0.41', 'xn--bcher-kva.test')).toMatch(/^HTTP\/1\.1 200 /);
    const ok = await api('POST', '/api/v1/check', { sandbox: 'idn-1', host: 'xn--bcher-kva.test', ip: '104.16.24.34', port: 80 });
    expect(ok.body).toMatchObject({ verdict: 'allow', host: 'xn--bcher-kva.test' });

    expect(await get('127.0.0.41', 'bücher.test')).not.toMatch(/^HTTP\/1\.1 200 /);
    const raw = await api('POST', '/api/v1/check', { sandbox: 'idn-1', host: 'bücher.test', ip: '104.16.24.34', port: 80 });
    expect(raw.status).toBe(400);
    expect(raw.body.error).toMatchObject({ code: 'invalid_request', field: 'host' });
    expect(raw.body.error.message).toContain('non-ASCII');
  });
});
