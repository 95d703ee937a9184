// The OpenAPI document (docs/openapi.json) against what the server answers: every status a
// real egressd gives an operation, for the ways a client commonly gets a call wrong, is one
// the document declares for that operation, so a client generated from it has a branch for it.

import { readFileSync } from 'node:fs';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../helpers/admin-api.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';

type Operation = { responses: Record<string, unknown>; requestBody?: unknown };
const DOC = JSON.parse(readFileSync(new URL('../../docs/openapi.json', import.meta.url), 'utf8')) as {
  paths: Record<string, Record<string, Operation>>;
};
const OPERATIONS = Object.entries(DOC.paths).flatMap(([path, ops]) =>
  Object.entries(ops)
    .filter(([, op]) => typeof op === 'object' && op !== null && 'responses' in op)
    .map(([method, op]) => ({ method: method.toUpperCase(), path, op })),
);

/** What a client gets wrong, each a request for `path` with `{id}` filled in. */
const MISTAKES: { what: string; id: string; headers?: Record<string, string>; body?: string; token?: boolean; query?: string }[] = [
  { what: 'no token', id: 'sb-there', token: false },
  { what: 'an id no entry can have', id: 'Bad!' },
  { what: 'an id that does not exist', id: 'nothing-here' },
  { what: 'a body that is not an object', id: 'sb-there', body: '[]' },
  { what: 'a body that is not JSON', id: 'sb-there', body: '{' },
  { what: 'a body that is not application/json', id: 'sb-there', body: '{}', headers: { 'content-type': 'text/plain' } },
  { what: 'a malformed If-Match', id: 'sb-there', headers: { 'if-match': 'not-a-tag' } },
  { what: 'an If-Match that does not hold', id: 'sb-there', headers: { 'if-match': '"nope"' } },
  { what: 'an unknown query parameter', id: 'sb-there', query: '?frobnicate=1' },
];

describe('what the server answers is what docs/openapi.json declares', () => {
  let d: LoopbackDaemon;
  beforeAll(async () => {
    d = await startLoopbackDaemon(loopbackConfig({ admin: { listen: '127.0.0.1:0', token: 'test-token' } }));
    expect((await adminCall(d.adminUrl, 'PUT', '/api/v1/sandboxes/sb-there', { sources: ['127.0.0.61'] })).status).toBe(201);
  });
  afterAll(async () => {
    await d.stop();
  });

  it.each(OPERATIONS.map((o) => [`${o.method} ${o.path}`, o] as const))('%s', async (_name, { method, path, op }) => {
    const undeclared: string[] = [];
    for (const m of MISTAKES) {
      const url = `${d.adminUrl}${path.replace('{id}', encodeURIComponent(m.id))}${m.query ?? ''}`;
      const body = op.requestBody === undefined ? undefined : (m.body ?? '{}');
      const res = await request(url, {
        method: method as 'GET',
        headers: {
          ...(m.token === false ? {} : { authorization: 'Bearer test-token' }),
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
          ...m.headers,
        },
        ...(body !== undefined ? { body } : {}),
      });
      const text = await res.body.text();
      if (!(String(res.statusCode) in op.responses)) undeclared.push(`${m.what}: ${res.statusCode} ${text.slice(0, 120)}`);
    }
    expect(undeclared, `declared: ${Object.keys(op.responses).join(', ')}`).toEqual([]);
  });
});
