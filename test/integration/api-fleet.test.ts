// The API for a fleet (issue 13 part 5, the parts built so far): a list of organizations, and
// every 405 naming the methods the resource supports in Allow (RFC 9110 §15.5.6).

import { request } from 'undici';
import { adminCall } from '../helpers/admin-api.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';

describe('the admin API for a fleet', () => {
  let d: LoopbackDaemon;
  beforeAll(async () => {
    d = await startLoopbackDaemon(loopbackConfig({}));
  });
  afterAll(async () => {
    await d.stop();
  });
  const call = (method: string, path: string, body?: unknown) => adminCall(d.adminUrl, method, path, body);

  it.each([
    ['PATCH', '/api/v1/sandboxes/sb-1', 'DELETE, GET, HEAD, PUT'],
    ['POST', '/api/v1/sandboxes', 'GET, HEAD'],
    ['GET', '/api/v1/check', 'POST'],
    ['DELETE', '/api/v1/orgs', 'GET, HEAD'],
    ['POST', '/api/v1/sandboxes/sb-1/effective', 'GET, HEAD'],
  ])('%s %s is 405 with Allow: %s', async (method, path, allow) => {
    const r = await call(method, path);
    expect(r.status).toBe(405);
    expect(r.headers['allow']).toBe(allow);
    expect(r.body?.['error']).toMatchObject({ code: 'method_not_allowed' });
  });

  it('lists the organizations, by id', async () => {
    expect((await call('GET', '/api/v1/orgs')).body).toEqual({ orgs: [], next_cursor: null });
    expect((await call('PUT', '/api/v1/orgs/zeta', { tier: 1 })).status).toBe(201);
    expect((await call('PUT', '/api/v1/orgs/acme', { network: { mode: 'allow-all' } })).status).toBe(201);
    const r = await call('GET', '/api/v1/orgs');
    expect(r.status).toBe(200);
    expect(r.body!['orgs'].map((o: { id: string }) => o.id)).toEqual(['acme', 'zeta']);
    expect(r.body!['orgs'][1]).toMatchObject({ id: 'zeta', tier: 1 });
    const noToken = await request(`${d.adminUrl}/api/v1/orgs`);
    expect(noToken.statusCode).toBe(401);
    await noToken.body.dump();
  });

  it('POST /api/v1/check: a malformed body is one 400 listing every problem, from the one schema', async () => {
    const r = await call('POST', '/api/v1/check', { sandbox: 'bad id', ip: 7, port: 70000, colour: 'red' });
    expect(r.status).toBe(400);
    expect(r.body!['error']).toEqual({
      code: 'invalid_request',
      field: 'colour',
      message:
        'colour: Unknown field "colour"; known fields are sandbox, host, ip, port, via; ' +
        'sandbox: Expected letters, digits, ".", "_" or "-", starting with a letter or digit (at most 128), got "bad id"; ' +
        'ip: Expected an IP address, got number "7"; port: Expected a port from 1 to 65535, got number "70000"',
    });
    const notIp = await call('PUT', '/api/v1/sandboxes/chk', { sources: ['198.18.0.77'] });
    expect(notIp.status).toBe(201);
    expect((await call('POST', '/api/v1/check', { sandbox: 'chk', ip: 'example.test', port: 443 })).body!['error']).toMatchObject({ field: 'ip' });
    expect((await call('POST', '/api/v1/check', { sandbox: 'absent', ip: '198.18.0.1', port: 443 })).status).toBe(404);
  });
});
