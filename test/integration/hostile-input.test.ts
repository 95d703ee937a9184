// Inputs a careless operator or a hostile API client sends, against a real egressd process over
// loopback HTTP: each is refused with the field and the reason, and nothing changes. Also the
// compiled daemon (dist/, what `npm start` and bin/egressd run after `npm ci`) with a state file,
// which the suites that run src/ never exercise.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall, bearer } from '../helpers/admin-api.ts';
import { ajv } from '../helpers/ajv.ts';
import { API_TOKEN, startApiDaemon, type ApiDaemon } from '../helpers/api-daemon.ts';
import { loopbackDocument, writeConfig } from '../helpers/config-file.ts';
import { runProcess } from '../helpers/run-process.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const EGRESSD = join(ROOT, 'src/main.ts');

describe('the compiled daemon (dist/) with a state file', () => {
  let a: ApiDaemon | undefined;
  afterAll(async () => {
    await a?.stop();
  });

  it('starts its state writer thread and keeps API writes, and serves the OpenAPI document', async () => {
    // dist/ is current: test/global-setup.ts rebuilt it if src/ changed since npm ci.
    a = await startApiDaemon({}, { state: true, main: join(ROOT, 'dist/main.js') });
    const put = await adminCall(a.admin, 'PUT', '/api/v1/sandboxes/sbx-1', { sources: ['198.18.0.1'] }, bearer(API_TOKEN));
    expect(put.status, JSON.stringify(put.body)).toBe(201);
    expect(put.headers['etag']).toMatch(/^"\d+-[0-9a-f]+"$/);
    const doc = await adminCall(a.admin, 'GET', '/api/v1/openapi.json', undefined, bearer(API_TOKEN));
    expect(doc.status).toBe(200);
    expect(doc.body.openapi).toMatch(/^3\.1/);
  }, 240_000);
});

describe('list query parameters given twice', () => {
  let a: ApiDaemon;
  beforeAll(async () => {
    a = await startApiDaemon();
    for (const i of [1, 2, 3]) {
      const r = await adminCall(a.admin, 'PUT', `/api/v1/sandboxes/sbx-${i}`, { sources: [`198.18.0.${i}`] }, bearer(API_TOKEN));
      expect(r.status).toBe(201);
    }
  }, 60_000);
  afterAll(async () => {
    await a?.stop();
  });

  it.each([
    ['limit=1&limit=1000', 'limit'],
    ['limit=2&limit=2', 'limit'],
    ['cursor=a&cursor=b', 'cursor'],
  ])('?%s is a 400 naming %s, not one of the two silently', async (query, field) => {
    for (const list of ['sandboxes', 'orgs']) {
      const r = await adminCall(a.admin, 'GET', `/api/v1/${list}?${query}`, undefined, bearer(API_TOKEN));
      expect(r.status).toBe(400);
      expect(r.body.error).toMatchObject({ code: 'invalid_request', field });
      expect(r.body.error.message).toContain('more than once');
    }
  });

  it('still pages with each parameter once', async () => {
    const r = await adminCall(a.admin, 'GET', '/api/v1/sandboxes?limit=2', undefined, bearer(API_TOKEN));
    expect(r.status).toBe(200);
    expect(r.body.sandboxes).toHaveLength(2);
    const next = await adminCall(a.admin, 'GET', `/api/v1/sandboxes?limit=2&cursor=${r.body.next_cursor}`, undefined, bearer(API_TOKEN));
    expect(next.body.sandboxes.map((s: { id: string }) => s.id)).toEqual(['sbx-3']);
  });
});

describe('an always-allow entry that names no host', () => {
  const dir = mkdtempSync(join(tmpdir(), 'egressd-hostile-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it.each([[[443]], [['1-65535']]])(
    'ports %j alone are refused by validate and at start, with the entry named',
    async (ports) => {
      const file = writeConfig(
        dir,
        loopbackDocument({
          overlays: {
            alwaysAllow: [
              { name: 'platform-api', domains: ['api.platform.test'], ports: [443] },
              { name: 'web', ports },
            ],
          },
        }),
      );
      const v = await runProcess(NODE, [EGRESSD, 'validate', file]);
      expect(v.code).toBe(1);
      expect(v.stdout + v.stderr).toContain('overlays.alwaysAllow[1]: An always-allow entry must name its hosts');
      const s = await runProcess(NODE, [EGRESSD, 'serve', '--config', file]);
      expect(s.code).not.toBe(0);
      expect(s.stdout + s.stderr).toContain('overlays.alwaysAllow[1]');
    },
    60_000,
  );
});

it('an always-allow entry whose CIDRs together cover every address is refused by validate, naming its cidrs', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'egressd-hostile-'));
  try {
    const file = writeConfig(dir, { overlays: { alwaysAllow: [{ name: 'halves', cidrs: ['0.0.0.0/1', '128.0.0.0/1'], ports: [443] }] } });
    const v = await runProcess(NODE, [EGRESSD, 'validate', file]);
    expect(v.code).toBe(1);
    expect(v.stdout + v.stderr).toContain('overlays.alwaysAllow[0].cidrs: An always-allow entry may not allow every address');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

describe('an OTLP endpoint the exporter would refuse at start, or one with credentials', () => {
  const dir = mkdtempSync(join(tmpdir(), 'egressd-hostile-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it.each([
    ['http://[zz]:4318/v1/metrics', 'Not a URL'],
    ['http://collector:secret@127.0.0.1:4318/v1/metrics', 'Must not carry credentials'],
    ['ftp://127.0.0.1/v1/metrics', 'Expected an http:// or https:// URL'],
  ])(
    '%s is refused by validate and at start, naming metrics.otlp.endpoint',
    async (endpoint, reason) => {
      const file = writeConfig(dir, loopbackDocument({ metrics: { otlp: { endpoint } } }));
      const v = await runProcess(NODE, [EGRESSD, 'validate', file]);
      expect(v.code).toBe(1);
      expect(v.stdout + v.stderr).toContain(`metrics.otlp.endpoint: ${reason}`);
      const s = await runProcess(NODE, [EGRESSD, 'serve', '--config', file]);
      expect(s.code).not.toBe(0);
      expect(s.stdout + s.stderr).toContain('metrics.otlp.endpoint');
      expect(s.stdout + s.stderr).not.toContain('secret');
    },
    60_000,
  );
});

describe('every route that reads a body, as its OpenAPI description says', () => {
  let a: ApiDaemon;
  beforeAll(async () => {
    a = await startApiDaemon({ admin: { listen: '127.0.0.1:0', token: API_TOKEN, maxBodyBytes: 1024 } });
    expect((await adminCall(a.admin, 'PUT', '/api/v1/sandboxes/b-1', { sources: ['198.18.0.1'] }, bearer(API_TOKEN))).status).toBe(201);
    expect((await adminCall(a.admin, 'PUT', '/api/v1/orgs/b-1', { tier: 2 }, bearer(API_TOKEN))).status).toBe(201);
  }, 60_000);
  afterAll(async () => {
    await a?.stop();
  });

  it('answers 415 to a body that is not JSON and 413 to one over admin.maxBodyBytes, and lists both', async () => {
    const doc = (await adminCall(a.admin, 'GET', '/api/v1/openapi.json', undefined, bearer(API_TOKEN))).body;
    const withBody: [string, string][] = [];
    for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, { requestBody?: unknown; responses: Record<string, unknown> }>>)) {
      for (const [method, op] of Object.entries(ops)) {
        if (typeof op !== 'object' || op === null || !('requestBody' in op)) continue;
        withBody.push([method, path]);
        const url = path.replace('{id}', 'b-1');
        const form = await adminCall(a.admin, method.toUpperCase(), url, undefined, {
          ...bearer(API_TOKEN),
          'content-type': 'application/x-www-form-urlencoded',
        });
        expect(form.status, `${method} ${path}`).toBe(415);
        const big = await adminCall(a.admin, method.toUpperCase(), url, { pad: 'x'.repeat(2000) }, bearer(API_TOKEN));
        expect(big.status, `${method} ${path}`).toBe(413);
        expect(Object.keys(op.responses), `${method} ${path}`).toEqual(expect.arrayContaining(['413', '415']));
      }
    }
    expect(withBody.length).toBeGreaterThanOrEqual(4);
  });
});

describe('the config schema for editors and `egressd validate` agree where the schema can say it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'egressd-hostile-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const schema = ajv().compile(JSON.parse(readFileSync(join(ROOT, 'docs/schema/config.schema.json'), 'utf8')) as object);

  it.each([
    [{ listen: { http: [] } }, 'listen.http'],
    [{ listen: { tls: [] } }, 'listen.tls'],
    [{ listen: { tcp: [] } }, 'listen.tcp'],
  ])('%j is refused by both', async (doc, field) => {
    expect(schema(doc)).toBe(false);
    const file = writeConfig(dir, doc);
    const v = await runProcess(NODE, [EGRESSD, 'validate', file]);
    expect(v.code).toBe(1);
    expect(v.stdout + v.stderr).toContain(`${field}: Expected at least one "address:port"`);
  });

  it('an empty DNS listener list (DNS off) is accepted by both', async () => {
    const doc = { listen: { dns: [] } };
    expect(schema(doc)).toBe(true);
    const file = writeConfig(dir, doc);
    expect((await runProcess(NODE, [EGRESSD, 'validate', file])).code).toBe(0);
  });
});

describe('what the API reads of a request (header fields, the path), given twice or in a near spelling', () => {
  let a: ApiDaemon;
  beforeAll(async () => {
    a = await startApiDaemon();
  }, 60_000);
  afterAll(async () => {
    await a?.stop();
  });

  /** One request written as raw bytes (undici and node:http would fold or refuse a repeated field): the status line's code. */
  function rawStatus(head: string, body = ''): Promise<number> {
    const { port } = new URL(a.admin);
    return new Promise((resolve, reject) => {
      const s = connect(Number(port), '127.0.0.1', () => s.write(`${head}Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`));
      let out = '';
      s.setEncoding('latin1');
      s.on('data', (d: string) => (out += d));
      s.on('error', reject);
      s.on('close', () => resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(out)?.[1] ?? 0)));
    });
  }
  // Each id its own source, so that a PUT wrongly let through cannot make the next one a 409.
  const sourceOf = new Map<string, string>();
  const put = (id: string, fields: string): Promise<number> => {
    const source = sourceOf.get(id) ?? `198.18.1.${sourceOf.size + 1}`;
    sourceOf.set(id, source);
    return rawStatus(
      `PUT /api/v1/sandboxes/${id} HTTP/1.1\r\nHost: egressd.test\r\n${fields}`,
      JSON.stringify({ sources: [source], network: { mode: 'allow-all' } }),
    );
  };
  const exists = async (id: string): Promise<boolean> =>
    (await adminCall(a.admin, 'GET', `/api/v1/sandboxes/${id}`, undefined, bearer(API_TOKEN))).status === 200;
  const TOKEN = `Authorization: Bearer ${API_TOKEN}\r\n`;
  const JSON_TYPE = 'Content-Type: application/json\r\n';

  it('a second Authorization field is 401 whichever comes first: Authorization is a singleton field (RFC 9110 §5.3, §11.6.2)', async () => {
    expect(await put('twice-1', `${TOKEN}Authorization: Bearer someone-else\r\n${JSON_TYPE}`)).toBe(401);
    expect(await put('twice-2', `Authorization: Bearer someone-else\r\n${TOKEN}${JSON_TYPE}`)).toBe(401);
    expect(await exists('twice-1')).toBe(false);
    expect(await exists('twice-2')).toBe(false);
  });

  it('a media type that only starts like application/json, or two Content-Type fields, is 415', async () => {
    for (const type of ['application/json-seq', 'application/jsonpath', 'application/json+x']) {
      expect(await put('typed', `${TOKEN}Content-Type: ${type}\r\n`), type).toBe(415);
    }
    expect(await put('typed', `${TOKEN}Content-Type: text/plain\r\n${JSON_TYPE}`)).toBe(415);
    expect(await put('typed', `${TOKEN}${JSON_TYPE}Content-Type: text/plain\r\n`)).toBe(415);
    expect(await exists('typed')).toBe(false);
    // RFC 9110 §8.3.1: the type is case-insensitive and takes parameters, with or without spaces.
    expect(await put('typed', `${TOKEN}Content-Type: Application/JSON;charset=utf-8\r\n`)).toBe(201);
    expect(await put('typed', `${TOKEN}Content-Type: application/json ; charset=UTF-8\r\n`)).toBe(200);
  });

  it('an entity tag with a comma inside its quotes is one tag (RFC 9110 §8.8.3 etagc): 412 when it does not match, not 400', async () => {
    expect(await put('tagged', `${TOKEN}${JSON_TYPE}`)).toBe(201);
    const tag = (await adminCall(a.admin, 'GET', '/api/v1/sandboxes/tagged', undefined, bearer(API_TOKEN))).headers['etag'] as string;
    expect(await put('tagged', `${TOKEN}${JSON_TYPE}If-Match: "a,b"\r\n`)).toBe(412);
    expect(await put('tagged', `${TOKEN}${JSON_TYPE}If-Match: "x,y", ${tag}\r\n`)).toBe(200);
    expect(await put('tagged', `${TOKEN}${JSON_TYPE}If-None-Match: W/"a,b" , "c"\r\n`)).toBe(200);
    expect(await put('tagged', `${TOKEN}${JSON_TYPE}If-Match: "a,b\r\n`)).toBe(400);
  });

  it('a path that percent-encodes an unreserved character names the same sandbox (RFC 3986 §6.2.2.2)', async () => {
    expect(await put('enc.1', `${TOKEN}${JSON_TYPE}`)).toBe(201);
    const get = (path: string) => adminCall(a.admin, 'GET', path, undefined, bearer(API_TOKEN));
    expect((await get('/api/v1/sandboxes/%65nc%2E1')).body).toMatchObject({ id: 'enc.1' });
    expect((await get('/api/v1/sandboxes/%65nc%2e1/network')).status).toBe(200);
    // A reserved or other character stays encoded, and stays outside the id pattern.
    const slash = await get('/api/v1/sandboxes/enc%2F1');
    expect(slash.status).toBe(404);
    expect(slash.body.error.message).toContain('is not a valid id');
  });
});
