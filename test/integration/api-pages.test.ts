// The API for a fleet, with thousands of sandboxes through a real egressd process over loopback
// HTTP (issue 13 part 5): every list is paged by an opaque cursor that returns each entry once,
// even while entries are added and removed between pages; a bad limit or cursor is a 400 naming
// it; `egressd sandbox ls` follows the cursors; of two writers holding one ETag exactly one
// wins and the other gets 412 with the current tag, nothing changed.

import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall, bearer, type AdminReply } from '../helpers/admin-api.ts';
import { API_TOKEN, startApiDaemon, type ApiDaemon } from '../helpers/api-daemon.ts';
import { runProcess } from '../helpers/run-process.ts';

const N = 3000;
const ROOT = resolve(import.meta.dirname, '../..');
const id = (i: number): string => `sbx-${String(i).padStart(5, '0')}`;
/** 198.18.0.0/15, one address per sandbox. */
const source = (i: number): string => `198.18.${Math.floor(i / 250)}.${(i % 250) + 1}`;
const body = (i: number, domain = 'pypi.org') => ({ sources: [source(i)], network: { mode: 'block-all', egress: { allowed_domains: [domain] } } });

let a: ApiDaemon;
const call = (method: string, path: string, b?: unknown, headers: Record<string, string> = {}): Promise<AdminReply> =>
  adminCall(a.admin, method, path, b, { ...bearer(API_TOKEN), ...headers });

/** Runs `fn` over 0..n-1, `width` at a time. */
async function inParallel(n: number, width: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < n) await fn(next++);
    }),
  );
}

/** Walks a list to its end; `between` runs after each page. Returns every id seen, in order. */
async function walk(list: 'sandboxes' | 'orgs', limit: number, between: (page: number) => Promise<void> = async () => {}): Promise<string[]> {
  const seen: string[] = [];
  let cursor: string | null = null;
  for (let page = 0; page < 10_000; page++) {
    const r = await call('GET', `/api/v1/${list}?limit=${limit}${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`);
    expect(r.status).toBe(200);
    const items = r.body[list] as { id: string }[];
    expect(items.length).toBeLessThanOrEqual(limit);
    seen.push(...items.map((x) => x.id));
    cursor = r.body.next_cursor;
    if (cursor === null) return seen;
    await between(page);
  }
  throw new Error('the walk did not end');
}

beforeAll(async () => {
  a = await startApiDaemon({}, { state: true });
  await inParallel(N, 8, async (i) => {
    const r = await call('PUT', `/api/v1/sandboxes/${id(i)}`, body(i));
    if (r.status !== 201) throw new Error(`PUT ${id(i)}: ${r.status} ${JSON.stringify(r.body)}`);
  });
}, 180_000);
afterAll(async () => {
  await a?.stop();
});

describe(`paging through ${N} sandboxes`, () => {
  it('returns each sandbox exactly once, in id order, for page sizes 1,000, 250 and 7, and 100 by default', async () => {
    const all = Array.from({ length: N }, (_, i) => id(i));
    for (const limit of [1000, 250]) expect(await walk('sandboxes', limit)).toEqual(all);
    const first = await call('GET', '/api/v1/sandboxes');
    expect(first.body.sandboxes).toHaveLength(100);
    expect(first.body.sandboxes[0]).toMatchObject({ id: id(0), sources: [source(0)], origin: 'api' });
    // A small page size: many pages, the last one short.
    const small = await walk('sandboxes', 7);
    expect(small).toEqual(all);
  }, 120_000);

  it('returns every sandbox that existed throughout exactly once while others are added and removed between pages', async () => {
    // Between pages: remove two sandboxes ahead of the walk and one behind it, add two new ones
    // (ids that sort among those not yet seen, and among those already seen).
    const removed = new Set<string>();
    const added = new Set<string>();
    let n = N;
    const seen = await walk('sandboxes', 100, async (page) => {
      const ahead = [id(page * 100 + 150), id(page * 100 + 230)].filter((x) => x < id(N));
      const behind = page > 0 ? [id(page * 100 - 50)] : [];
      for (const x of [...ahead, ...behind]) {
        if (removed.has(x)) continue;
        const r = await call('DELETE', `/api/v1/sandboxes/${x}`);
        expect(r.status, x).toBe(204);
        removed.add(x);
      }
      for (const name of [`${id(page * 100 + 120)}-new`, `${id(Math.max(0, page * 100 - 20))}-new`]) {
        const r = await call('PUT', `/api/v1/sandboxes/${name}`, body(n++));
        expect(r.status, name).toBe(201);
        added.add(name);
      }
    });
    expect(new Set(seen).size).toBe(seen.length);
    const throughout = Array.from({ length: N }, (_, i) => id(i)).filter((x) => !removed.has(x));
    for (const x of throughout) expect(seen.includes(x), x).toBe(true);
    for (const x of seen) expect(throughout.includes(x) || added.has(x) || removed.has(x), x).toBe(true);
    expect([...seen].sort()).toEqual(seen);
    // Put the fleet back as it was for the tests that follow.
    for (const x of added) expect((await call('DELETE', `/api/v1/sandboxes/${x}`)).status).toBe(204);
    for (const x of removed) expect((await call('PUT', `/api/v1/sandboxes/${x}`, body(Number(x.slice(4))))).status).toBe(201);
  }, 180_000);

  it('pages the organizations the same way', async () => {
    await inParallel(120, 8, async (i) => {
      expect((await call('PUT', `/api/v1/orgs/org-${String(i).padStart(3, '0')}`, { tier: (i % 4) + 1 })).status).toBe(201);
    });
    const seen = await walk('orgs', 50);
    expect(seen).toEqual(Array.from({ length: 120 }, (_, i) => `org-${String(i).padStart(3, '0')}`));
  }, 60_000);

  it.each([
    ['limit=0', 'limit', /from 1 to 1000, got "0"/],
    ['limit=1001', 'limit', /from 1 to 1000, got "1001"/],
    ['limit=ten', 'limit', /got "ten"/],
    ['cursor=!!', 'cursor', /not a cursor this list gave out/],
    ['cursor=eyJsIjoib3JncyIsImEiOiJvcmctMDAxIn0', 'cursor', /not a cursor this list gave out/], // an orgs cursor
    ['cursor=bm90IGpzb24', 'cursor', /not a cursor this list gave out/], // base64url of "not json"
    // Each was read as a cursor of sb-001 or sb-002: only what the list gives out is one.
    ['cursor=eyJsIjoic2FuZGJveGVzIiwiYSI6InNiLTAwMSIsImEiOiJzYi0wMDIifQ', 'cursor', /not a cursor this list gave out/], // "a" given twice
    ['cursor=eyJhIjoic2ItMDAxIiwibCI6InNhbmRib3hlcyJ9', 'cursor', /not a cursor this list gave out/], // another key order
    ['cursor=eyAibCI6InNhbmRib3hlcyIsImEiOiJzYi0wMDEifQ', 'cursor', /not a cursor this list gave out/], // a blank
    ['offset=10', 'offset', /Unknown query parameter "offset"/],
  ])('GET /api/v1/sandboxes?%s is 400 naming %s', async (query, field, message) => {
    const r = await call('GET', `/api/v1/sandboxes?${query}`);
    expect(r.status).toBe(400);
    expect(r.body.error).toMatchObject({ code: 'invalid_request', field, message: expect.stringMatching(message) });
  });

  it('`egressd sandbox ls` follows the cursors and prints every sandbox once', async () => {
    const r = await runProcess(join(ROOT, 'bin/egressd'), ['sandbox', 'ls', '--admin', a.admin], {
      env: { PATH: process.env['PATH'] ?? '', EGRESSD_ADMIN_TOKEN: API_TOKEN },
      timeoutMs: 60_000,
    });
    expect(r.code, r.stderr).toBe(0);
    const ids = (JSON.parse(r.stdout) as { sandboxes: { id: string }[] }).sandboxes.map((s) => s.id);
    expect(ids).toEqual(Array.from({ length: N }, (_, i) => id(i)));
  }, 60_000);
});

describe('two writers, one ETag', () => {
  it('GET and PUT carry the ETag; a PUT with the current one succeeds and changes it', async () => {
    const g = await call('GET', `/api/v1/sandboxes/${id(1)}`);
    const tag = g.headers['etag'] as string;
    expect(tag).toMatch(/^"\d+-[0-9a-f]{16}"$/);
    const p = await call('PUT', `/api/v1/sandboxes/${id(1)}`, body(1, 'files.pythonhosted.org'), { 'if-match': tag });
    expect(p.status).toBe(200);
    expect(p.headers['etag']).not.toBe(tag);
    expect((await call('GET', `/api/v1/sandboxes/${id(1)}`)).headers['etag']).toBe(p.headers['etag']);
  });

  it("of 50 rounds of two concurrent PUTs with the same If-Match, exactly one wins each round; the other gets 412 with the winner's ETag, and its body was not applied", async () => {
    for (let round = 0; round < 50; round++) {
      const target = id(100 + round);
      const tag = (await call('GET', `/api/v1/sandboxes/${target}`)).headers['etag'] as string;
      const [x, y] = await Promise.all([
        call('PUT', `/api/v1/sandboxes/${target}`, body(100 + round, 'writer-a.test'), { 'if-match': tag }),
        call('PUT', `/api/v1/sandboxes/${target}`, body(100 + round, 'writer-b.test'), { 'if-match': tag }),
      ]);
      expect([x.status, y.status].sort((p, q) => p - q)).toEqual([200, 412]);
      const [won, lost] = x.status === 200 ? [x, y] : [y, x];
      expect(lost.body.error).toMatchObject({ code: 'precondition_failed', field: 'If-Match' });
      expect(lost.headers['etag']).toBe(won.headers['etag']);
      const now = await call('GET', `/api/v1/sandboxes/${target}/network`);
      expect(now.body.egress.allowed_domains).toEqual(won === x ? ['writer-a.test'] : ['writer-b.test']);
    }
  }, 60_000);

  it('a DELETE and a PUT with the same If-Match: exactly one happens', async () => {
    const target = id(200);
    const tag = (await call('GET', `/api/v1/sandboxes/${target}`)).headers['etag'] as string;
    const [del, put] = await Promise.all([
      call('DELETE', `/api/v1/sandboxes/${target}`, undefined, { ...bearer(API_TOKEN), 'if-match': tag }),
      call('PUT', `/api/v1/sandboxes/${target}`, body(200, 'late.test'), { 'if-match': tag }),
    ]);
    expect([del.status, put.status].filter((s) => s === 412)).toHaveLength(1);
    const after = await call('GET', `/api/v1/sandboxes/${target}`);
    expect(after.status).toBe(del.status === 204 ? 404 : 200);
    if (after.status === 404) expect((await call('PUT', `/api/v1/sandboxes/${target}`, body(200))).status).toBe(201);
  });

  it('If-None-Match: * creates only: of two concurrent creates one gets 201, the other 412', async () => {
    const [x, y] = await Promise.all([
      call('PUT', '/api/v1/sandboxes/fresh-1', body(N + 500, 'a.test'), { 'if-none-match': '*' }),
      call('PUT', '/api/v1/sandboxes/fresh-1', body(N + 500, 'b.test'), { 'if-none-match': '*' }),
    ]);
    expect([x.status, y.status].sort((p, q) => p - q)).toEqual([201, 412]);
    const lost = x.status === 412 ? x : y;
    expect(lost.body.error).toMatchObject({ code: 'precondition_failed', field: 'If-None-Match' });
    expect(lost.headers['etag']).toMatch(/^"\d+-[0-9a-f]{16}"$/);
  });

  it('a stale, weak, absent-entry or malformed If-Match changes nothing', async () => {
    const target = id(300);
    const before = await call('GET', `/api/v1/sandboxes/${target}`);
    const tag = before.headers['etag'] as string;
    for (const h of ['"0-0000000000000000"', `W/${tag}`]) {
      const r = await call('PUT', `/api/v1/sandboxes/${target}`, body(300, 'x.test'), { 'if-match': h });
      expect(r.status, h).toBe(412);
      expect(r.headers['etag']).toBe(tag);
      const d = await call('DELETE', `/api/v1/sandboxes/${target}`, undefined, { ...bearer(API_TOKEN), 'if-match': h });
      expect(d.status, h).toBe(412);
    }
    expect((await call('PUT', '/api/v1/sandboxes/never-made', body(N + 600), { 'if-match': '*' })).status).toBe(412);
    expect((await call('GET', '/api/v1/sandboxes/never-made')).status).toBe(404);
    const bad = await call('PUT', `/api/v1/sandboxes/${target}`, body(300), { 'if-match': 'no-quotes' });
    expect(bad.status).toBe(400);
    expect(bad.body.error).toMatchObject({ code: 'invalid_request', field: 'If-Match' });
    const after = await call('GET', `/api/v1/sandboxes/${target}`);
    expect(after.headers['etag']).toBe(tag);
    expect(after.body.network).toEqual(before.body.network);
  });

  it('organizations too: If-Match on PUT and DELETE', async () => {
    const tag = (await call('GET', '/api/v1/orgs/org-001')).headers['etag'] as string;
    const [x, y] = await Promise.all([
      call('PUT', '/api/v1/orgs/org-001', { tier: 3 }, { 'if-match': tag }),
      call('PUT', '/api/v1/orgs/org-001', { tier: 4 }, { 'if-match': tag }),
    ]);
    expect([x.status, y.status].sort((p, q) => p - q)).toEqual([200, 412]);
    expect((await call('DELETE', '/api/v1/orgs/org-001', undefined, { ...bearer(API_TOKEN), 'if-match': tag })).status).toBe(412);
    const now = (await call('GET', '/api/v1/orgs/org-001')).headers['etag'] as string;
    expect((await call('DELETE', '/api/v1/orgs/org-001', undefined, { ...bearer(API_TOKEN), 'if-match': now })).status).toBe(204);
  });
});
