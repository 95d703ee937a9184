// Limits through a real daemon on loopback: the `limits` object on sandboxes and organizations
// (API, config file, state), admission at accept (a reset, never a queue), and the counts the
// API and metrics show. The flood itself is test/e2e/limits.test.ts.

import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { adminCall } from '../helpers/admin-api.ts';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { validateConfig } from '../../src/config/schema.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { echoBack, trackedServer, type TrackedServer } from '../helpers/listen.ts';
import { action, field } from '../helpers/log-line.ts';

/** What /readyz adds for this host's own settings (tcp_migrate_req 0: `warnings`), whatever the test is about. */
function hostWarnings(d: LoopbackDaemon): { warnings?: string[] } {
  const warnings = d.daemon.limits.hostWarnings;
  return warnings.length > 0 ? { warnings } : {};
}

const ALLOW_LOOPBACK = { mode: 'block-all', egress: { allowed_cidrs: ['127.0.0.1/32'] } };

describe('limits on loopback', () => {
  let dir: string;
  let d: LoopbackDaemon | undefined;
  let upstream: TrackedServer;
  let upstreamPort: number;
  /** The tests' own client sockets, destroyed after each. */
  const sockets = new Set<Socket>();

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'egressd-limits-'));
    upstream = await trackedServer(echoBack);
    upstreamPort = upstream.port;
  });
  afterEach(async () => {
    for (const s of sockets) s.destroy();
    await d?.stop();
    d = undefined;
    upstream.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const api = (method: string, path: string, body?: unknown) => adminCall(d!.adminUrl, method, path, body);

  /** Connects from `source` and reports whether the connection was spliced (echoes) or reset. */
  const attempt = (source: string): Promise<{ spliced: boolean; socket: Socket }> =>
    new Promise((resolve) => {
      const s = connect({ host: '127.0.0.1', port: d!.port('tcp'), localAddress: source });
      sockets.add(s);
      const done = (spliced: boolean): void => resolve({ spliced, socket: s });
      s.on('error', () => done(false));
      s.on('close', () => done(false));
      s.on('connect', () => s.write('ping'));
      s.once('data', () => done(true));
    });

  it('takes limits on a sandbox and its organization through the API, resolves them key by key, and keeps them across a restart', async () => {
    const config = loopbackConfig({ state: { path: join(dir, 'state.db') } });
    d = await startLoopbackDaemon(config);
    expect((await api('PUT', '/api/v1/orgs/acme', { tier: 3, limits: { connections: 7, perSecond: 9 } })).status).toBe(201);
    const put = await api('PUT', '/api/v1/sandboxes/sb-l', {
      sources: ['127.0.0.21'],
      org: 'acme',
      network: ALLOW_LOOPBACK,
      limits: { connections: 3, undecided: 2 },
    });
    expect(put.status).toBe(201);
    expect(put.body.limits).toEqual({ connections: 3, undecided: 2 });
    const got = await api('GET', '/api/v1/sandboxes/sb-l');
    expect(got.body.connections).toEqual({ open: 0, undecided: 0, limits: { connections: 3, undecided: 2, perSecond: 9, burst: 400 } });
    await d.stop();
    d = await startLoopbackDaemon(config);
    expect((await api('GET', '/api/v1/sandboxes/sb-l')).body.connections.limits).toEqual({ connections: 3, undecided: 2, perSecond: 9, burst: 400 });
    expect((await api('GET', '/api/v1/orgs/acme')).body.limits).toEqual({ connections: 7, perSecond: 9 });
  });

  it('refuses bad limits with 400 naming the field, and changes nothing', async () => {
    d = await startLoopbackDaemon(loopbackConfig({}));
    const bad = await api('PUT', '/api/v1/sandboxes/sb-b', { sources: ['127.0.0.22'], network: ALLOW_LOOPBACK, limits: { perSecond: 0 } });
    expect(bad.status).toBe(400);
    expect(bad.body.error.field).toBe('limits.perSecond');
    const unknown = await api('PUT', '/api/v1/orgs/o', { tier: 3, limits: { rate: 5 } });
    expect(unknown.status).toBe(400);
    expect(unknown.body.error.field).toBe('limits.rate');
    expect((await api('GET', '/api/v1/sandboxes/sb-b')).status).toBe(404);
    expect((await api('GET', '/api/v1/orgs/o')).status).toBe(404);
  });

  it('resets the connection past a sandbox limit at once, serves another sandbox meanwhile, and admits again once one closes', async () => {
    d = await startLoopbackDaemon(
      loopbackConfig({
        sandboxes: [
          { id: 'small', sources: ['127.0.0.31'], network: ALLOW_LOOPBACK, limits: { connections: 2 } },
          { id: 'other', sources: ['127.0.0.32'], network: ALLOW_LOOPBACK },
        ],
      }),
    );
    d.route('127.0.0.31', '127.0.0.1', upstreamPort);
    d.route('127.0.0.32', '127.0.0.1', upstreamPort);
    const a = await attempt('127.0.0.31');
    const b = await attempt('127.0.0.31');
    expect([a.spliced, b.spliced]).toEqual([true, true]);
    expect((await attempt('127.0.0.31')).spliced).toBe(false);
    expect((await attempt('127.0.0.32')).spliced).toBe(true);
    const view = await api('GET', '/api/v1/sandboxes/small');
    expect(view.body.connections).toMatchObject({ open: 2, undecided: 0, limits: { connections: 2 } });
    const limits = await api('GET', '/api/v1/limits');
    expect(limits.body.top[0]).toMatchObject({ key: 'small', open: 2 });
    expect(limits.body.open).toBe(3);
    a.socket.destroy();
    await d.waitForLog((l) => action(l) === 'connection' && field(l, 'egressd.sandbox') === 'small' && field(l, 'egressd.verdict') === 'allow');
    expect((await attempt('127.0.0.31')).spliced).toBe(true);
    await d.waitForLog((l) => action(l) === 'connections-shed' && l['sandbox'] === 'small' && l['reason'] === 'sandbox-limit' && l['count'] === 1, 3000);
    const metrics = await (await request(`${d.adminUrl}/metrics`)).body.text();
    expect(metrics).toMatch(/^egressd_connections_total\{listener="tcp",verdict="refuse",reason="sandbox-limit",ended_by="egressd"\} 1$/m);
    expect(metrics).toMatch(/^egressd_limit_connections\{scope="global"\} \d+$/m);
    const ready = await request(`${d.adminUrl}/readyz`);
    expect(ready.statusCode).toBe(200);
    expect(await ready.body.json()).toEqual({ status: 'ready', ...hostWarnings(d) });
  });

  // Admission keeps each sandbox's effective limits while its record, its organization and the
  // config are unchanged: a change through the API reaches the very next connection.
  it('applies changed limits of a sandbox and of its organization to the next connection', async () => {
    d = await startLoopbackDaemon(loopbackConfig({}));
    expect((await api('PUT', '/api/v1/orgs/acme', { tier: 3, limits: { connections: 1 } })).status).toBe(201);
    expect((await api('PUT', '/api/v1/sandboxes/sb-c', { sources: ['127.0.0.33'], org: 'acme', network: ALLOW_LOOPBACK })).status).toBe(201);
    d.route('127.0.0.33', '127.0.0.1', upstreamPort);
    expect((await attempt('127.0.0.33')).spliced).toBe(true);
    expect((await attempt('127.0.0.33')).spliced).toBe(false);
    expect((await api('PUT', '/api/v1/orgs/acme', { tier: 3, limits: { connections: 2 } })).status).toBe(200);
    expect((await attempt('127.0.0.33')).spliced).toBe(true);
    expect((await attempt('127.0.0.33')).spliced).toBe(false);
    const put = await api('PUT', '/api/v1/sandboxes/sb-c', { sources: ['127.0.0.33'], org: 'acme', network: ALLOW_LOOPBACK, limits: { connections: 3 } });
    expect(put.status).toBe(200);
    expect((await attempt('127.0.0.33')).spliced).toBe(true);
    expect((await attempt('127.0.0.33')).spliced).toBe(false);
  });

  it('stays ready while the connection budget is full, saying so in /readyz and egressd_overloaded, and refuses past it with global-limit', async () => {
    d = await startLoopbackDaemon(
      loopbackConfig({
        limits: { global: { connections: 1, sandboxShare: 1 } },
        sandboxes: [
          { id: 'one', sources: ['127.0.0.51'], network: ALLOW_LOOPBACK },
          { id: 'two', sources: ['127.0.0.52'], network: ALLOW_LOOPBACK },
        ],
      }),
    );
    d.route('127.0.0.51', '127.0.0.1', upstreamPort);
    d.route('127.0.0.52', '127.0.0.1', upstreamPort);
    const first = await attempt('127.0.0.51');
    expect(first.spliced).toBe(true);
    expect((await attempt('127.0.0.52')).spliced).toBe(false);
    const ready = await request(`${d.adminUrl}/readyz`);
    expect(ready.statusCode).toBe(200);
    expect(await ready.body.json()).toMatchObject({ status: 'ready', overloaded: true, reason: expect.stringContaining('connection budget full (1 of 1)') });
    const metrics = await (await request(`${d.adminUrl}/metrics`)).body.text();
    expect(metrics).toMatch(/^egressd_overloaded\{resource="descriptors"\} 1$/m);
    expect(metrics).toMatch(/^egressd_connections_total\{listener="tcp",verdict="refuse",reason="global-limit",ended_by="egressd"\} 1$/m);
    first.socket.destroy();
    await d.waitForLog((l) => action(l) === 'connection' && field(l, 'egressd.sandbox') === 'one');
    expect(await (await request(`${d.adminUrl}/readyz`)).body.json()).toEqual({ status: 'ready', ...hostWarnings(d) });
    expect((await attempt('127.0.0.52')).spliced).toBe(true);
  });

  // Lines are gathered per sandbox and reason, and a source of no sandbox is a key of its own: a
  // client that opens each connection from a new address (an IPv6 prefix) made one line per
  // connection, the flood of lines the gathering is there to prevent.
  it('logs sources of no sandbox shed in one second on lines of their own up to 16, the rest on one line per reason', async () => {
    d = await startLoopbackDaemon(
      loopbackConfig({ limits: { global: { connections: 1, sandboxShare: 1 } }, sandboxes: [{ id: 'one', sources: ['127.0.0.51'], network: ALLOW_LOOPBACK }] }),
    );
    d.route('127.0.0.51', '127.0.0.1', upstreamPort);
    expect((await attempt('127.0.0.51')).spliced).toBe(true);
    const SOURCES = 100;
    const attempts = await Promise.all(Array.from({ length: SOURCES }, (_, i) => attempt(`127.0.1.${i + 1}`)));
    expect(attempts.every((a) => !a.spliced)).toBe(true);
    const shed = (): Record<string, unknown>[] => d!.logs.filter((l) => action(l) === 'connections-shed');
    const counted = (): number => shed().reduce((n, l) => n + (l['count'] as number), 0);
    await d.waitForLog(() => counted() === SOURCES, 5000);
    const own = shed().filter((l) => field(l, 'source.ip') !== undefined);
    const others = shed().filter((l) => l['other_sources'] === true);
    // The attempts may straddle two one-second windows: 16 lines of their own in each at most.
    expect(own.length).toBeLessThanOrEqual(32);
    expect(own.length + others.length).toBe(shed().length);
    expect(others.every((l) => l['reason'] === 'global-limit' && l['sandbox'] === null && field(l, 'source.ip') === undefined)).toBe(true);
  });

  // The lines gather a source of no sandbox under the block its limits count: a client rotating
  // through the addresses of its block (an IPv6 /64; here a /24 on loopback) filled the 16 lines
  // of their own with one address each and hid every other source under other_sources.
  it('logs the sources of no sandbox of one block on one line, naming the block, and leaves the others lines of their own', async () => {
    d = await startLoopbackDaemon(
      loopbackConfig({
        limits: { global: { connections: 1, sandboxShare: 1 }, unknownSourcePrefix: { ipv4: 24, ipv6: 64 } },
        sandboxes: [{ id: 'one', sources: ['127.0.0.51'], network: ALLOW_LOOPBACK }],
      }),
    );
    d.route('127.0.0.51', '127.0.0.1', upstreamPort);
    expect((await attempt('127.0.0.51')).spliced).toBe(true);
    const ROTATING = 60;
    const attempts = await Promise.all([
      ...Array.from({ length: ROTATING }, (_, i) => attempt(`127.0.1.${i + 1}`)),
      attempt('127.0.3.7'),
      attempt('127.0.4.9'),
    ]);
    expect(attempts.every((a) => !a.spliced)).toBe(true);
    const shed = (): Record<string, unknown>[] => d!.logs.filter((l) => action(l) === 'connections-shed');
    const counted = (): number => shed().reduce((n, l) => n + (l['count'] as number), 0);
    await d.waitForLog(() => counted() === ROTATING + 2, 5000);
    expect(shed().filter((l) => l['other_sources'] === true)).toEqual([]);
    const byBlock = (block: string): Record<string, unknown>[] => shed().filter((l) => l['source_block'] === block);
    // The attempts may straddle two one-second windows: a line per block in each at most.
    expect(byBlock('127.0.1.0/24').length).toBeLessThanOrEqual(2);
    expect(byBlock('127.0.1.0/24').reduce((n, l) => n + (l['count'] as number), 0)).toBe(ROTATING);
    expect(byBlock('127.0.1.0/24').every((l) => String(field(l, 'source.ip')).startsWith('127.0.1.'))).toBe(true);
    expect(byBlock('127.0.3.0/24').map((l) => [field(l, 'source.ip'), l['count']])).toEqual([['127.0.3.7', 1]]);
    expect(byBlock('127.0.4.0/24').map((l) => [field(l, 'source.ip'), l['count']])).toEqual([['127.0.4.9', 1]]);
  });

  it('logs sources of no sandbox refused a DNS TCP connection alike: 16 on lines of their own, the rest together', async () => {
    d = await startLoopbackDaemon(loopbackConfig({ dns: { limits: { tcpPerSandbox: 1, tcpTotal: 1 } } }));
    const port = d.daemon.dnsListeners[0]!.port!;
    const open = (source: string): Promise<Socket> =>
      new Promise((resolve) => {
        const s = connect({ host: '127.0.0.1', port, localAddress: source });
        sockets.add(s);
        s.on('error', () => {});
        s.on('connect', () => resolve(s));
        s.on('close', () => resolve(s));
      });
    // Held, never idle for the second that would let it be closed to make room: the rest are refused.
    await open('127.0.0.71');
    const SOURCES = 100;
    await Promise.all(Array.from({ length: SOURCES }, (_, i) => open(`127.0.2.${i + 1}`)));
    const refused = (): Record<string, unknown>[] => d!.logs.filter((l) => action(l) === 'dns-tcp-refused');
    await d.waitForLog(() => refused().reduce((n, l) => n + (l['count'] as number), 0) === SOURCES, 5000);
    const own = refused().filter((l) => field(l, 'source.ip') !== undefined);
    expect(own.length).toBeLessThanOrEqual(32);
    // Each names the block its limits count: the address itself at the default IPv4 prefix, /32.
    expect(own.every((l) => l['source_block'] === `${String(field(l, 'source.ip'))}/32`)).toBe(true);
    expect(refused().filter((l) => l['other_sources'] === true).length).toBe(refused().length - own.length);
  });

  it('holds a sandbox to its rate: the burst at once, then refused until the bucket refills', async () => {
    d = await startLoopbackDaemon(
      loopbackConfig({ sandboxes: [{ id: 'rate', sources: ['127.0.0.41'], network: ALLOW_LOOPBACK, limits: { perSecond: 1, burst: 3 } }] }),
    );
    d.route('127.0.0.41', '127.0.0.1', upstreamPort);
    const results: boolean[] = [];
    for (let i = 0; i < 5; i++) results.push((await attempt('127.0.0.41')).spliced);
    expect(results).toEqual([true, true, true, false, false]);
  });
});

describe('limits in the config file', () => {
  it('names each bad key under limits and sandboxes[].limits, all at once', () => {
    const r = validateConfig({
      limits: { sandbox: { connections: -1, flood: 1 }, global: { sandboxShare: 2 }, memory: { shedAt: 'high' } },
      sandboxes: [{ id: 'a', sources: ['10.0.0.1'], network: { mode: 'allow-all' }, limits: { burst: 0 } }],
    });
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.issues.map((i) => i.field).sort((x, y) => x.localeCompare(y))).toEqual([
        'limits.global.sandboxShare',
        'limits.memory.shedAt',
        'limits.sandbox.connections',
        'limits.sandbox.flood',
        'sandboxes[0].limits.burst',
      ]);
    }
  });

  it('fills every limit it is not given from the documented defaults', () => {
    const r = validateConfig({ limits: { sandbox: { connections: 10 } } });
    expect(r.ok && r.config.limits).toEqual({
      sandbox: { connections: 10, undecided: 256, perSecond: 200, burst: 400 },
      global: { connections: null, reserveDescriptors: 64, sandboxShare: 0.5 },
      memory: { maxBytes: null, shedAt: 0.8, intervalMs: 250 },
      unknownSourcePrefix: { ipv4: 32, ipv6: 64 },
    });
  });
});
