// Rolling a policy out safely (issue 13 part 1) through the admin API of an in-process daemon:
// report-only at each level as the API and the config set it, what `check` and the effective
// view say about it, and bodies that carry a wrong value refused with the field. The real path
// with real clients is test/e2e/rollout.test.ts.

import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { echoBack, trackedServer, type TrackedServer } from '../helpers/listen.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { action, field } from '../helpers/log-line.ts';

const auth = { authorization: 'Bearer test-token', 'content-type': 'application/json' };
const DENIES = { mode: 'allow-all', egress: { denied_domains: ['blocked.test'] } };
// 198.18.0.0/15 is a protected (benchmarking) range: opened here as the e2e tests open it.
const PROTECTED = { protected: { except: ['127.0.0.0/8', '198.18.0.0/15'], reachableHostAddresses: ['127.0.0.0/8', '::1'] } };

describe('report-only through the API', () => {
  let d: LoopbackDaemon;
  beforeAll(async () => {
    d = await startLoopbackDaemon(loopbackConfig(PROTECTED));
  });
  afterAll(async () => {
    await d.stop();
  });
  const call = async (method: string, path: string, body?: unknown) => {
    const res = await request(`${d.adminUrl}${path}`, {
      method: method as 'GET',
      headers: auth,
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.body.text();
    return { status: res.statusCode, body: text ? (JSON.parse(text) as Record<string, any>) : null };
  };
  const check = async (sandbox: string, host: string) => (await call('POST', '/api/v1/check', { sandbox, host, ip: '198.18.1.3', port: 443 })).body!;

  it('a sandbox in report-only: check says would-refuse with the rule, the effective view says report-only', async () => {
    expect((await call('PUT', '/api/v1/sandboxes/ro-sb', { sources: ['10.9.0.1'], network: DENIES, reportOnly: true })).status).toBe(201);
    const got = await call('GET', '/api/v1/sandboxes/ro-sb');
    expect(got.body).toMatchObject({ id: 'ro-sb', reportOnly: true });
    expect(await check('ro-sb', 'blocked.test')).toMatchObject({
      verdict: 'would-refuse',
      reason: 'deny-rule',
      rule: 'denied_domains "blocked.test"',
      layer: 'sandbox',
      report_only: { enabled: true, levels: ['sandbox'] },
    });
    expect(await check('ro-sb', 'fine.test')).toMatchObject({ verdict: 'allow' });
    expect((await call('GET', '/api/v1/sandboxes/ro-sb/effective')).body).toMatchObject({ report_only: { enabled: true, levels: ['sandbox'] } });
    // Replacing the network alone keeps the sandbox's mode.
    expect((await call('PUT', '/api/v1/sandboxes/ro-sb/network', DENIES)).status).toBe(200);
    expect((await call('GET', '/api/v1/sandboxes/ro-sb')).body).toMatchObject({ reportOnly: true });
  });

  it('an organization in report-only covers its sandboxes; turning it off enforces again', async () => {
    expect((await call('PUT', '/api/v1/orgs/ro-org', { network: DENIES, reportOnly: true })).status).toBe(201);
    expect((await call('GET', '/api/v1/orgs/ro-org')).body).toMatchObject({ reportOnly: true });
    expect((await call('PUT', '/api/v1/sandboxes/org-sb', { sources: ['10.9.0.2'], org: 'ro-org', network: { mode: 'allow-all' } })).status).toBe(201);
    expect(await check('org-sb', 'blocked.test')).toMatchObject({
      verdict: 'would-refuse',
      rule: 'org ro-org: denied_domains "blocked.test"',
      layer: 'org',
      report_only: { enabled: true, levels: ['org'] },
    });
    expect((await call('GET', '/api/v1/sandboxes/org-sb')).body).toMatchObject({ reportOnly: false });
    expect((await call('PUT', '/api/v1/orgs/ro-org', { network: DENIES })).status).toBe(200);
    expect(await check('org-sb', 'blocked.test')).toMatchObject({ verdict: 'refuse', report_only: { enabled: false, levels: [] } });
  });

  it('an enforced sandbox says so', async () => {
    expect((await call('PUT', '/api/v1/sandboxes/enf-sb', { sources: ['10.9.0.3'], network: DENIES })).status).toBe(201);
    expect(await check('enf-sb', 'blocked.test')).toMatchObject({ verdict: 'refuse', report_only: { enabled: false } });
    expect((await call('GET', '/api/v1/sandboxes/enf-sb/effective')).body).toMatchObject({ report_only: { enabled: false, levels: [] } });
  });

  it.each([
    ['sandbox', '/api/v1/sandboxes/bad-sb', { sources: ['10.9.0.4'], network: DENIES, reportOnly: 'yes' }],
    ['organization', '/api/v1/orgs/bad-org', { tier: 3, reportOnly: 1 }],
  ])('a %s body with a reportOnly that is not a boolean is refused with the field, and nothing is created', async (_k, path, body) => {
    const r = await call('PUT', path, body);
    expect(r.status).toBe(400);
    expect(r.body!['error']).toMatchObject({ code: 'invalid_policy', field: 'reportOnly' });
    expect((await call('GET', path)).status).toBe(404);
  });
});

describe('report-only for everyone (the config), reloaded', () => {
  let d: LoopbackDaemon;
  beforeAll(async () => {
    d = await startLoopbackDaemon(
      loopbackConfig({ ...PROTECTED, reportOnly: true, sandboxes: [{ id: 'cfg-sb', sources: ['10.9.1.1'], network: DENIES, reportOnly: true }] }),
    );
  });
  afterAll(async () => {
    await d.stop();
  });
  const check = async (host: string) => {
    const res = await request(`${d.adminUrl}/api/v1/check`, {
      method: 'POST',
      headers: auth,
      body: JSON.stringify({ sandbox: 'cfg-sb', host, ip: '198.18.1.3', port: 443 }),
    });
    return (await res.body.json()) as Record<string, unknown>;
  };

  it('names every level that turned it on, and a reload that turns it off enforces', async () => {
    expect(await check('blocked.test')).toMatchObject({ verdict: 'would-refuse', report_only: { enabled: true, levels: ['global', 'sandbox'] } });
    const next = loopbackConfig({ ...PROTECTED, sandboxes: [{ id: 'cfg-sb', sources: ['10.9.1.1'], network: DENIES }] });
    expect(await d.daemon.reload(next)).toMatchObject({ ok: true });
    expect(await check('blocked.test')).toMatchObject({ verdict: 'refuse', report_only: { enabled: false, levels: [] } });
  });
});

describe('operator overlays (the config), in check and the effective view, reloaded', () => {
  let d: LoopbackDaemon;
  const OVERLAYS = {
    alwaysAllow: [{ name: 'platform-api', domains: ['api.platform.test'], ports: [443] }],
    alwaysDeny: [{ name: 'smtp', ports: [25] }],
  };
  beforeAll(async () => {
    d = await startLoopbackDaemon(
      loopbackConfig({ ...PROTECTED, overlays: OVERLAYS, sandboxes: [{ id: 'ov-sb', sources: ['10.9.2.1'], network: { networkBlockAll: true } }] }),
    );
  });
  afterAll(async () => {
    await d.stop();
  });
  const post = async (path: string, body: unknown) => {
    const res = await request(`${d.adminUrl}${path}`, { method: 'POST', headers: auth, body: JSON.stringify(body) });
    return (await res.body.json()) as Record<string, unknown>;
  };
  const get = async (path: string) => {
    const res = await request(`${d.adminUrl}${path}`, { headers: auth });
    return (await res.body.json()) as Record<string, any>;
  };

  it('always-allow opens the platform API to a block-all sandbox; always-deny refuses port 25 to everyone', async () => {
    expect(await post('/api/v1/check', { sandbox: 'ov-sb', host: 'api.platform.test', ip: '198.18.1.2', port: 443 })).toMatchObject({
      verdict: 'allow',
      layer: 'always-allow',
      rule: 'always-allow "platform-api": allowed_domains "api.platform.test" + allowed_ports "443"',
    });
    expect(await post('/api/v1/check', { sandbox: 'ov-sb', host: 'api.platform.test', ip: '198.18.1.2', port: 80 })).toMatchObject({
      verdict: 'refuse',
      layer: 'sandbox',
    });
    expect(await post('/api/v1/check', { sandbox: 'ov-sb', ip: '198.18.1.2', port: 25 })).toMatchObject({
      verdict: 'refuse',
      layer: 'always-deny',
      rule: 'always-deny "smtp": denied_ports "25"',
    });
    const eff = await get('/api/v1/sandboxes/ov-sb/effective');
    expect(eff['overlays']).toEqual({
      always_deny: [{ name: 'smtp', domains: [], cidrs: [], ports: [25], hits: 0 }],
      always_allow: [{ name: 'platform-api', domains: ['api.platform.test'], cidrs: [], ports: [443], hits: 0 }],
    });
    expect(eff['order']).toMatch(/always-deny.*always-allow.*organization AND the sandbox/);
  });

  it('a reload replaces the overlays, and report-only never lets an always-deny entry through', async () => {
    const next = loopbackConfig({
      ...PROTECTED,
      reportOnly: true,
      overlays: { alwaysDeny: [{ name: 'smtp', ports: [25] }] },
      sandboxes: [{ id: 'ov-sb', sources: ['10.9.2.1'], network: { networkBlockAll: true } }],
    });
    expect(await d.daemon.reload(next)).toMatchObject({ ok: true });
    expect(await post('/api/v1/check', { sandbox: 'ov-sb', host: 'api.platform.test', ip: '198.18.1.2', port: 443 })).toMatchObject({
      verdict: 'would-refuse',
      layer: 'sandbox',
    });
    expect(await post('/api/v1/check', { sandbox: 'ov-sb', ip: '198.18.1.2', port: 25 })).toMatchObject({ verdict: 'refuse', layer: 'always-deny' });
    // A protected address (the metadata service) is named `protected`, as the log line's rule.ruleset names it, and stays
    // refused under report-only.
    expect(await post('/api/v1/check', { sandbox: 'ov-sb', ip: '169.254.169.254', port: 80 })).toMatchObject({
      verdict: 'refuse',
      reason: 'protected-address',
      layer: 'protected',
    });
    expect((await get('/api/v1/sandboxes/ov-sb/effective'))['overlays']).toMatchObject({ always_allow: [] });
  });
});

describe('per-rule hit counts, from real connections, read back through the API and /metrics', () => {
  let d: LoopbackDaemon;
  let upstream: TrackedServer;
  let upstreamPort: number;
  beforeAll(async () => {
    upstream = await trackedServer(echoBack, { allowHalfOpen: false });
    upstreamPort = upstream.port;
    d = await startLoopbackDaemon(
      loopbackConfig({
        ...PROTECTED,
        overlays: { alwaysDeny: [{ name: 'no-telnet', ports: [23] }] },
        sandboxes: [
          {
            id: 'hits-sb',
            sources: ['127.0.0.21', '127.0.0.22'],
            network: { mode: 'block-all', egress: { allowed_cidrs: ['127.0.0.1/32', '198.18.9.0/24'], allowed_ports: [upstreamPort, 8443] } },
          },
        ],
      }),
    );
  });
  afterAll(async () => {
    await d.stop();
    upstream.close();
  });
  /** One connection from `source`, "going to" address:port; resolves with its log line. */
  const connectFrom = async (source: string, address: string, port: number, send = true): Promise<Record<string, unknown>> => {
    d.route(source, address, port);
    const before = d.logs.length;
    const s = connect({ host: '127.0.0.1', port: d.port('tcp'), localAddress: source });
    s.on('error', () => {});
    // A client that sends nothing is judged by address and port after the first-byte wait.
    s.on('connect', () => (send ? s.end('ping') : undefined));
    s.resume();
    await new Promise((r) => s.once('close', r));
    return d.waitForLog((l) => d.logs.indexOf(l) >= before && action(l) === 'connection');
  };

  it('counts each connection once, for the rules that decided it, and the overlay entry by name', async () => {
    expect(await connectFrom('127.0.0.21', '127.0.0.1', upstreamPort)).toMatchObject({ egressd: { verdict: 'allow' } });
    expect(await connectFrom('127.0.0.22', '127.0.0.1', upstreamPort)).toMatchObject({ egressd: { verdict: 'allow' } });
    expect(await connectFrom('127.0.0.21', '127.0.0.1', 9, false)).toMatchObject({ egressd: { verdict: 'refuse' }, rule: { name: 'mode "block-all"' } });
    expect(await connectFrom('127.0.0.21', '127.0.0.1', 23, false)).toMatchObject({
      egressd: { verdict: 'refuse' },
      rule: { name: 'always-deny "no-telnet": denied_ports "23"' },
    });
    const res = await request(`${d.adminUrl}/api/v1/sandboxes/hits-sb/effective`, { headers: auth });
    const eff = (await res.body.json()) as Record<string, any>;
    expect(eff['rule_hits']).toEqual({
      sandbox: [
        { id: 'allowed_cidrs[0]', rule: 'allowed_cidrs "127.0.0.1/32"', hits: 2 },
        { id: 'allowed_cidrs[1]', rule: 'allowed_cidrs "198.18.9.0/24"', hits: 0 },
        { id: 'allowed_ports[0]', rule: `allowed_ports "${upstreamPort}"`, hits: 2 },
        { id: 'allowed_ports[1]', rule: 'allowed_ports "8443"', hits: 0 },
        { id: 'mode', rule: 'mode "block-all"', hits: 1 },
      ],
      organization: null,
    });
    expect(eff['overlays']['always_deny']).toEqual([{ name: 'no-telnet', domains: [], cidrs: [], ports: [23], hits: 1 }]);
    // A check decides nothing: the counts do not move.
    await request(`${d.adminUrl}/api/v1/check`, { method: 'POST', headers: auth, body: JSON.stringify({ sandbox: 'hits-sb', ip: '127.0.0.1', port: 9 }) }).then(
      (r) => r.body.dump(),
    );
    const again = (await (await request(`${d.adminUrl}/api/v1/sandboxes/hits-sb/effective`, { headers: auth })).body.json()) as Record<string, any>;
    expect(again['rule_hits']['sandbox'].at(-1)).toEqual({ id: 'mode', rule: 'mode "block-all"', hits: 1 });
    const metrics = await (await request(`${d.adminUrl}/metrics`)).body.text();
    expect(metrics).toMatch(/^egressd_rule_hits_total\{layer="sandbox",verdict="allow",rule=""\} 2$/m);
    expect(metrics).toMatch(/^egressd_rule_hits_total\{layer="sandbox",verdict="refuse",rule=""\} 1$/m);
    expect(metrics).toMatch(/^egressd_rule_hits_total\{layer="always-deny",verdict="refuse",rule="no-telnet"\} 1$/m);
  });
});

describe('report-only kept across a restart, and turning it off closes what it let through', () => {
  let dir: string;
  let upstream: TrackedServer;
  let upstreamPort: number;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'egressd-it-rollout-'));
    upstream = await trackedServer(echoBack, { allowHalfOpen: false });
    upstreamPort = upstream.port;
  });
  afterAll(() => {
    upstream.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a sandbox and an organization in report-only are restored as such from the state', async () => {
    const config = loopbackConfig({ ...PROTECTED, state: { path: join(dir, 'state.db') } });
    let d = await startLoopbackDaemon(config);
    try {
      const call = (method: string, path: string, body?: unknown) =>
        request(`${d.adminUrl}${path}`, { method: method as 'PUT', headers: auth, ...(body ? { body: JSON.stringify(body) } : {}) }).then(async (r) => ({
          status: r.statusCode,
          body: (await r.body.json()) as Record<string, any>,
        }));
      expect((await call('PUT', '/api/v1/orgs/keep-org', { tier: 4, reportOnly: true })).status).toBe(201);
      expect((await call('PUT', '/api/v1/sandboxes/keep-sb', { sources: ['10.9.3.1'], org: 'keep-org', network: DENIES, reportOnly: true })).status).toBe(201);
      await d.stop();
      d = await startLoopbackDaemon(config);
      expect((await call('GET', '/api/v1/sandboxes/keep-sb')).body).toMatchObject({ reportOnly: true });
      expect((await call('GET', '/api/v1/orgs/keep-org')).body).toMatchObject({ reportOnly: true });
      expect((await call('POST', '/api/v1/check', { sandbox: 'keep-sb', host: 'blocked.test', ip: '198.18.1.3', port: 443 })).body).toMatchObject({
        verdict: 'would-refuse',
        report_only: { levels: ['org', 'sandbox'] },
      });
    } finally {
      await d.stop();
    }
  });

  it('an open would-refuse connection is closed when report-only is turned off (onPolicyChange: close)', async () => {
    const d = await startLoopbackDaemon(loopbackConfig(PROTECTED));
    try {
      const put = (body: unknown) =>
        request(`${d.adminUrl}/api/v1/sandboxes/open-sb`, { method: 'PUT', headers: auth, body: JSON.stringify(body) }).then((r) => r.body.dump());
      // Block-all with no rule: the echo upstream is refused, and report-only lets it through.
      await put({ sources: ['127.0.0.31'], network: { mode: 'block-all' }, reportOnly: true });
      d.route('127.0.0.31', '127.0.0.1', upstreamPort);
      const s = connect({ host: '127.0.0.1', port: d.port('tcp'), localAddress: '127.0.0.31' });
      s.on('error', () => {});
      await once(s, 'connect');
      s.write('hello');
      const [echo] = (await once(s, 'data')) as [Buffer];
      expect(echo.toString()).toBe('hello');
      const closed = new Promise((r) => s.once('close', r));
      await put({ sources: ['127.0.0.31'], network: { mode: 'block-all' } });
      await closed;
      expect(await d.waitForLog((l) => action(l) === 'connection' && field(l, 'event.reason') === 'policy-changed')).toMatchObject({
        egressd: { verdict: 'refuse' },
        event: { reason: 'policy-changed' },
      });
    } finally {
      await d.stop();
    }
  });
});
