// Which 400 a refused body gets (docs/api.md "Errors"): `invalid_policy` only for the policy's own
// fields, so a platform can hand that answer to whoever wrote the policy; `invalid_request` for
// the request around it; the body's transport (`invalid_json`, 413, 415) keeps its own codes.

import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall, bearer } from '../helpers/admin-api.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';

describe('the code of a refused body', () => {
  let d: LoopbackDaemon;
  beforeAll(async () => {
    d = await startLoopbackDaemon(loopbackConfig({ admin: { listen: '127.0.0.1:0', token: 'test-token', maxBodyBytes: 2048 } }));
    expect((await adminCall(d.adminUrl, 'PUT', '/api/v1/sandboxes/sb-there', { sources: ['127.0.0.41'] })).status).toBe(201);
  });
  afterAll(async () => {
    await d.stop();
  });

  /** The raw text as the body, so what is not JSON reaches the server as sent. */
  const raw = async (method: string, path: string, body: string, headers: Record<string, string> = bearer()) => {
    const res = await request(`${d.adminUrl}${path}`, { method: method as 'PUT', headers, body });
    return { status: res.statusCode, error: ((await res.body.json()) as { error: { code: string; field: string | null } }).error };
  };
  const put = (path: string, body: unknown) => raw('PUT', path, JSON.stringify(body));

  it.each([
    ['a sandbox body that is not an object', '/api/v1/sandboxes/sb-1', [], null],
    ['a sandbox body without sources', '/api/v1/sandboxes/sb-1', { network: { networkBlockAll: true } }, 'sources'],
    ['a sandbox body with an unknown top-level field', '/api/v1/sandboxes/sb-1', { sources: ['127.0.0.42'], color: 'red' }, 'color'],
    ['a source that is not an address', '/api/v1/sandboxes/sb-1', { sources: ['not-an-address'] }, 'sources[0]'],
    [
      'a bad source beside a bad policy: the request is named first',
      '/api/v1/sandboxes/sb-1',
      { sources: ['nope'], network: { mode: 'sometimes' } },
      'sources[0]',
    ],
    ['an organization body that is not an object', '/api/v1/orgs/o-1', 'tier 3', null],
    ['an organization body with an unknown field', '/api/v1/orgs/o-1', { tier: 3, owner: 'x' }, 'owner'],
  ])('%s is invalid_request', async (_what, path, body, field) => {
    const r = await put(path, body);
    expect(r).toEqual({ status: 400, error: expect.objectContaining({ code: 'invalid_request', field }) });
  });

  it.each([
    ['a sandbox policy that breaks its dialect', '/api/v1/sandboxes/sb-1', { sources: ['127.0.0.43'], network: { mode: 'sometimes' } }, 'network.mode'],
    ['a policy through PUT .../network that is not an object', '/api/v1/sandboxes/sb-there/network', [], 'network'],
    ['an organization with a tier outside 1-4', '/api/v1/orgs/o-1', { tier: 9 }, 'tier'],
    ['an organization with neither tier nor network', '/api/v1/orgs/o-1', { reportOnly: true }, 'tier'],
    ['a reportOnly that is not a boolean', '/api/v1/sandboxes/sb-1', { sources: ['127.0.0.44'], reportOnly: 'yes' }, 'reportOnly'],
  ])('%s stays invalid_policy', async (_what, path, body, field) => {
    const r = await put(path, body);
    expect(r).toEqual({ status: 400, error: expect.objectContaining({ code: 'invalid_policy', field }) });
  });

  it('the body itself keeps its transport codes: invalid_json, 413 body_too_large, 415 unsupported_media_type', async () => {
    expect((await raw('PUT', '/api/v1/sandboxes/sb-1', '{"sources": [')).error.code).toBe('invalid_json');
    expect(await raw('PUT', '/api/v1/sandboxes/sb-1', JSON.stringify({ sources: ['127.0.0.45'], pad: 'x'.repeat(4096) }))).toMatchObject({
      status: 413,
      error: { code: 'body_too_large' },
    });
    expect(await raw('PUT', '/api/v1/sandboxes/sb-1', '{}', { ...bearer(), 'content-type': 'text/plain' })).toMatchObject({
      status: 415,
      error: { code: 'unsupported_media_type' },
    });
  });

  // A body is JSON (RFC 8259), no YAML leniency; where it breaks is said as an editor counts, for
  // every error (V8 gives an offset for some only, and quotes the text around the others).
  it.each([
    ['a value left out', '{"sources": ["127.0.0.46"],\n "network": }', 2, 13],
    ['a trailing comma', '{"sources": ["127.0.0.46"],\n}', 2, 1],
    ['an unquoted key', '{\n  sources: ["127.0.0.46"]}', 2, 3],
    ['single quotes', "{'sources': ['127.0.0.46']}", 1, 2],
    ['a comment', '{"sources": ["127.0.0.46"]} // mine', 1, 29],
  ])('%s is invalid_json, at its line and column', async (_what, body, line, column) => {
    const r = await raw('PUT', '/api/v1/sandboxes/sb-json', body);
    expect(r.status).toBe(400);
    expect(r.error.code).toBe('invalid_json');
    expect((r.error as unknown as { message: string }).message).toMatch(new RegExp(`^The body is not valid JSON at line ${line}, column ${column}: \\S`));
  });

  // Decoded leniently, a byte that is not UTF-8 became U+FFFD, and the body another text.
  it('a body that is not UTF-8 is invalid_json, at its line and column', async () => {
    const body = Buffer.concat([Buffer.from('{"sources": ["127.0.0.47"],\n "network": {"networkAllowList": "'), Buffer.from([0xff]), Buffer.from('"}}')]);
    const res = await request(`${d.adminUrl}/api/v1/sandboxes/sb-utf8`, { method: 'PUT', headers: bearer(), body });
    const error = ((await res.body.json()) as { error: { code: string; message: string } }).error;
    expect({ status: res.statusCode, code: error.code }).toEqual({ status: 400, code: 'invalid_json' });
    expect(error.message).toBe('The body is not UTF-8 at line 2, column 35: byte 0xFF (offset 62) starts no UTF-8 character there');
  });
});
