// The OpenAPI 3.1 description (issue 13 part 5): generated from the one schema, valid by a real
// OpenAPI 3.1 validator, served by the daemon exactly as committed in docs/openapi.json, and
// true of the daemon: real answers of a running egressd over HTTP match its response schemas.

import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Validator } from '@seriousme/openapi-schema-validator';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall, bearer, type AdminReply } from '../helpers/admin-api.ts';
import { ajv } from '../helpers/ajv.ts';
import { API_TOKEN, startApiDaemon, type ApiDaemon } from '../helpers/api-daemon.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const committed = JSON.parse(readFileSync(join(ROOT, 'docs/openapi.json'), 'utf8')) as {
  paths: Record<string, Record<string, { responses: Record<string, { content?: { 'application/json': { schema: unknown } } }> }>>;
  components: { schemas: Record<string, unknown> };
};

describe('the OpenAPI description', () => {
  it('is a valid OpenAPI 3.1 document', async () => {
    const v = new Validator();
    const r = await v.validate(structuredClone(committed) as Spec);
    expect(r.errors ?? [], JSON.stringify(r.errors)).toEqual([]);
    expect(r.valid).toBe(true);
    expect(v.version).toBe('3.1');
  });

  it('the validator and the schemas can say no: a broken copy is refused, and so is an answer missing a field', async () => {
    const broken = structuredClone(committed) as Spec & { paths: Record<string, Record<string, unknown>> };
    broken.paths['/api/v1/sandboxes']!['get'] = { responses: { '200': { content: {} } } };
    expect((await new Validator().validate(broken)).valid).toBe(false);
    const sandbox = ajv().compile(schemaOf({ $ref: '#/components/schemas/Sandbox' }));
    const answer = {
      id: 'a',
      sources: [],
      org: null,
      origin: 'api',
      reportOnly: false,
      network: {
        mode: 'block-all',
        egress: { allowed_domains: [], denied_domains: [], allowed_cidrs: [], denied_cidrs: [], allowed_ports: [], denied_ports: [] },
        essential_services: false,
      },
    };
    expect(sandbox(answer)).toBe(true);
    expect(sandbox({ ...answer, origin: undefined })).toBe(false);
    expect(sandbox({ ...answer, surprise: 1 })).toBe(false);
  });

  it('every response schema compiles under JSON Schema 2020-12 (the dialect of OpenAPI 3.1)', () => {
    const a = ajv();
    for (const [path, ops] of Object.entries(committed.paths))
      for (const [method, op] of Object.entries(ops))
        for (const [status, resp] of Object.entries(op.responses ?? {}))
          if (resp.content) expect(() => a.compile(schemaOf(resp.content!['application/json'].schema)), `${method} ${path} ${status}`).not.toThrow();
  });
});

type Spec = Parameters<Validator['validate']>[0];

/** A response schema as a standalone 2020-12 schema: the components become $defs. */
function schemaOf(s: unknown): object {
  const text = JSON.stringify({ ...(s as object), $defs: committed.components.schemas }).replaceAll('#/components/schemas/', '#/$defs/');
  return JSON.parse(text) as object;
}

describe('a running egressd answers as its OpenAPI description says', () => {
  let a: ApiDaemon;
  const validators = new Map<string, (v: unknown) => boolean>();
  const av = ajv();
  beforeAll(async () => {
    a = await startApiDaemon({}, { state: true });
  }, 60_000);
  afterAll(async () => {
    await a?.stop();
  });

  /** Calls the API and checks the answer against the document's schema for that path, method and status. */
  async function conforms(method: string, template: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<AdminReply> {
    const r = await adminCall(a.admin, method, path, body, { ...bearer(API_TOKEN), ...headers });
    const op = committed.paths[template]?.[method.toLowerCase()];
    expect(op, `${method} ${template} is in the document`).toBeDefined();
    const resp = op!.responses[String(r.status)];
    expect(resp, `${method} ${path} answered ${r.status}, which the document does not list`).toBeDefined();
    if (resp!.content) {
      const key = `${method} ${template} ${r.status}`;
      let check = validators.get(key);
      if (!check) {
        const fn = av.compile(schemaOf(resp!.content['application/json'].schema));
        check = (v) => fn(v) || (expect.fail(`${key}: ${JSON.stringify(fn.errors)} in ${JSON.stringify(v)}`), false);
        validators.set(key, check);
      }
      expect(check(r.body)).toBe(true);
    } else expect(r.body).toBeNull();
    return r;
  }

  it('serves the committed document at GET /api/v1/openapi.json', async () => {
    const r = await conforms('GET', '/api/v1/openapi.json', '/api/v1/openapi.json');
    expect(r.status).toBe(200);
    expect(r.body).toEqual(committed);
  });

  it('sandboxes, organizations, lists, policies, checks and errors', async () => {
    const S = '/api/v1/sandboxes/{id}';
    const O = '/api/v1/orgs/{id}';
    expect((await conforms('PUT', O, '/api/v1/orgs/acme', { tier: 2, limits: { connections: 50 } })).status).toBe(201);
    expect((await conforms('PUT', O, '/api/v1/orgs/beta', { network: { mode: 'allow-all' }, reportOnly: true })).status).toBe(201);
    expect((await conforms('GET', O, '/api/v1/orgs/acme')).status).toBe(200);
    expect((await conforms('GET', '/api/v1/orgs', '/api/v1/orgs?limit=1')).body.next_cursor).not.toBeNull();
    const bodies: [string, unknown][] = [
      [
        's0',
        { sources: ['198.18.0.1'], org: 'acme', network: { mode: 'block-all', egress: { allowed_domains: ['pypi.org'], allowed_ports: [443, '8000-8999'] } } },
      ],
      [
        'd1',
        { sources: ['198.18.0.2', '2001:db8::2'], network: { domainAllowList: 'github.com,*.githubusercontent.com', networkAllowList: '198.51.100.0/24' } },
      ],
      [
        'n2',
        {
          sources: ['198.18.0.3'],
          network: { network: { denyOut: ['0.0.0.0/0'], allowOut: ['1.1.1.1'], maskRequestHost: 'localhost:${PORT}', allowPublicTraffic: false } },
        },
      ],
      ['r3', { sources: ['198.18.0.4'], reportOnly: true, limits: { burst: 10 } }],
    ];
    for (const [id, b] of bodies) expect((await conforms('PUT', S, `/api/v1/sandboxes/${id}`, b)).status).toBe(201);
    expect((await conforms('PUT', S, '/api/v1/sandboxes/s0', bodies[0]![1])).status).toBe(200);
    for (const [id] of bodies) {
      expect((await conforms('GET', S, `/api/v1/sandboxes/${id}`)).status).toBe(200);
      expect((await conforms('GET', `${S}/network`, `/api/v1/sandboxes/${id}/network`)).status).toBe(200);
      expect((await conforms('GET', `${S}/effective`, `/api/v1/sandboxes/${id}/effective`)).status).toBe(200);
    }
    expect((await conforms('PUT', `${S}/network`, '/api/v1/sandboxes/s0/network', { networkBlockAll: true })).status).toBe(200);
    const list = await conforms('GET', '/api/v1/sandboxes', '/api/v1/sandboxes?limit=3');
    expect(list.body.sandboxes).toHaveLength(3);
    expect((await conforms('GET', '/api/v1/sandboxes', `/api/v1/sandboxes?cursor=${list.body.next_cursor}`)).body.next_cursor).toBeNull();
    const check = await conforms('POST', '/api/v1/check', '/api/v1/check', { sandbox: 's0', host: 'pypi.org', ip: '151.101.0.223', port: 443 });
    expect(check.body).toMatchObject({ sandbox: 's0', verdict: expect.any(String) });
    expect((await conforms('GET', '/api/v1/limits', '/api/v1/limits')).status).toBe(200);
    expect((await conforms('GET', '/api/v1/dns/remembered', '/api/v1/dns/remembered?top=5')).status).toBe(200);

    // Errors, each in the one error shape the document gives.
    expect((await conforms('PUT', S, '/api/v1/sandboxes/bad', { sources: ['nope'], colour: 1 })).status).toBe(400);
    expect((await conforms('PUT', S, '/api/v1/sandboxes/bad', { sources: ['198.18.0.9'], org: 'nobody' })).status).toBe(404);
    expect((await conforms('PUT', S, '/api/v1/sandboxes/clash', { sources: ['198.18.0.1'] })).status).toBe(409);
    expect((await conforms('PUT', S, '/api/v1/sandboxes/s0', bodies[0]![1], { 'if-match': '"1-0000000000000000"' })).status).toBe(412);
    expect((await conforms('GET', S, '/api/v1/sandboxes/absent')).status).toBe(404);
    expect((await conforms('GET', '/api/v1/sandboxes', '/api/v1/sandboxes?limit=0')).status).toBe(400);
    expect((await conforms('DELETE', O, '/api/v1/orgs/acme')).status).toBe(409);
    expect((await conforms('DELETE', S, '/api/v1/sandboxes/s0')).status).toBe(204);
    expect((await conforms('DELETE', O, '/api/v1/orgs/acme')).status).toBe(204);
    const noToken = await adminCall(a.admin, 'GET', '/api/v1/sandboxes', undefined, {});
    expect(noToken.status).toBe(401);
  }, 60_000);
});
