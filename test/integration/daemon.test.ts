// The whole daemon in-process on loopback: listeners, pipeline, control-plane API, live policy
// changes, persistence across a restart, and the metrics that count it all.

import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { adminCall } from '../helpers/admin-api.ts';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { buildHello } from '../helpers/hello-builder.ts';
import { echoBack, trackedServer, type TrackedServer } from '../helpers/listen.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { action, field } from '../helpers/log-line.ts';

const TOKEN = 'test-token';

function dialFrom(source: string, port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: source });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Connects and waits for the daemon to end the connection (a refusal can come before 'connect'). */
function refusedFrom(source: string, port: number): Promise<{ received: number; error: string | null }> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: source });
    let received = 0;
    let error: string | null = null;
    s.on('data', (b) => (received += b.length));
    s.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
    s.on('close', () => resolve({ received, error }));
  });
}

async function echoes(s: Socket, text: string): Promise<string> {
  s.write(text);
  const [chunk] = (await once(s, 'data')) as [Buffer];
  return chunk.toString();
}

// Every case on both set-up paths: Node's sockets, and the native loops (native-setup.ts).
describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('the daemon on loopback, set up on $setup', ({ setup }) => {
  const start = async (config: Parameters<typeof startLoopbackDaemon>[0]): Promise<LoopbackDaemon> => {
    const daemon = await startLoopbackDaemon(config, { setup });
    // The native path is really taken where it can run.
    if (process.platform === 'linux') expect(daemon.daemon.nativeSetup !== null).toBe(setup === 'native');
    return daemon;
  };
  let dir: string;
  let d: LoopbackDaemon | undefined;
  let upstream: TrackedServer;
  const clients: Socket[] = [];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'egressd-it-'));
    upstream = await trackedServer(echoBack);
  });
  afterEach(async () => {
    for (const c of clients) c.destroy();
    await d?.stop();
    d = undefined;
    upstream.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const api = (method: string, path: string, body?: unknown, headers?: Record<string, string>) => adminCall(d!.adminUrl, method, path, body, headers);

  it('carries an address-allowed connection both ways and logs one outcome line for it', async () => {
    d = await start(
      loopbackConfig({ sandboxes: [{ id: 'sb-a', sources: ['127.0.0.2'], network: { mode: 'block-all', egress: { allowed_cidrs: ['127.0.0.1/32'] } } }] }),
    );
    d.route('127.0.0.2', '127.0.0.1', upstream.port);
    const c = await dialFrom('127.0.0.2', d.port('tcp'));
    clients.push(c);
    expect(await echoes(c, 'ping')).toBe('ping');
    c.end();
    const line = await d.waitForLog((l) => action(l) === 'connection');
    expect(line).toMatchObject({
      egressd: { sandbox: 'sb-a', verdict: 'allow', upstream: { ip: '127.0.0.1' } },
      event: { reason: 'allow-rule' },
      source: { bytes: 4 },
      destination: { bytes: 4 },
    });
  });

  it('refuses a source that belongs to no sandbox with the default policy', async () => {
    d = await start(loopbackConfig({}));
    d.route('127.0.0.3', '127.0.0.1', upstream.port);
    expect(await refusedFrom('127.0.0.3', d.port('tcp'))).toEqual({ received: 0, error: 'ECONNRESET' });
    const refused = await d.waitForLog((l) => action(l) === 'connection');
    expect(refused).toMatchObject({ egressd: { verdict: 'refuse' }, event: { reason: 'default-block' } });
    expect([field(refused, 'egressd.sandbox'), field(refused, 'egressd.upstream.ip')]).toEqual([undefined, undefined]);
    expect(upstream.sockets.size).toBe(0);
  });

  it('refuses a connection that was not redirected (a loop or a probe)', async () => {
    d = await start(loopbackConfig({}));
    expect((await refusedFrom('127.0.0.4', d.port('tls'))).received).toBe(0);
    expect(await d.waitForLog((l) => action(l) === 'connection')).toMatchObject({ egressd: { verdict: 'refuse' }, event: { reason: 'not-redirected' } });
  });

  it('closes open connections a live change refuses, spares those it still allows, and counts them', async () => {
    const other = await trackedServer(echoBack);
    try {
      d = await start(loopbackConfig({ state: { path: join(dir, 'state.json') } }));
      const put = await api('PUT', '/api/v1/sandboxes/sb-live', { sources: ['127.0.0.5', '127.0.0.6'], network: { mode: 'allow-all' } });
      expect(put.status).toBe(201);
      d.route('127.0.0.5', '127.0.0.1', upstream.port);
      d.route('127.0.0.6', '127.0.0.1', other.port);
      const keep = await dialFrom('127.0.0.5', d.port('tcp'));
      const doomed = await dialFrom('127.0.0.6', d.port('tcp'));
      clients.push(keep, doomed);
      doomed.on('error', () => {});
      expect(await echoes(keep, 'a')).toBe('a');
      expect(await echoes(doomed, 'b')).toBe('b');
      const change = await api('PUT', '/api/v1/sandboxes/sb-live/network', { mode: 'allow-all', egress: { denied_ports: [other.port] } });
      expect(change.status).toBe(200);
      await once(doomed, 'close');
      expect(await echoes(keep, 'still here')).toBe('still here');
      const closed = await d.waitForLog((l) => action(l) === 'connection' && field(l, 'event.reason') === 'policy-changed');
      expect(closed).toMatchObject({ egressd: { verdict: 'refuse', sandbox: 'sb-live' } });
      const metrics = await (await request(`${d.adminUrl}/metrics`)).body.text();
      expect(metrics).toMatch(/^egressd_connections_closed_by_policy_change_total 1$/m);
      expect(metrics).toMatch(/^egressd_policy_changes_total\{source="api"\} 2$/m);
    } finally {
      other.close();
    }
  });

  it('answers API errors in one shape: 401, 400 with the field, 404, 409 and 413, and a refused change changes nothing', async () => {
    d = await start(loopbackConfig({ admin: { listen: '127.0.0.1:0', token: TOKEN, maxBodyBytes: 2048 } }));
    expect((await api('GET', '/api/v1/sandboxes', undefined, {})).status).toBe(401);
    expect((await api('GET', '/api/v1/sandboxes', undefined, { authorization: 'Bearer wrong' })).status).toBe(401);
    const bad = await api('PUT', '/api/v1/sandboxes/sb-1', { sources: ['127.0.0.7'], network: { mode: 'block-all', egress: { allowed_ports: [70000] } } });
    expect(bad.status).toBe(400);
    expect(bad.body.error).toMatchObject({ code: 'invalid_policy' });
    expect(bad.body.error.field).toContain('allowed_ports');
    expect((await api('GET', '/api/v1/sandboxes/sb-1')).status).toBe(404);
    expect((await api('PUT', '/api/v1/sandboxes/sb-1', { sources: ['127.0.0.7'], network: { mode: 'allow-all' } })).status).toBe(201);
    const clash = await api('PUT', '/api/v1/sandboxes/sb-2', { sources: ['127.0.0.7'], network: { mode: 'allow-all' } });
    expect(clash.status).toBe(409);
    expect(clash.body.error.code).toBe('conflict');
    const big = await api('PUT', '/api/v1/sandboxes/sb-3', {
      sources: ['127.0.0.8'],
      network: { mode: 'block-all', egress: { allowed_domains: Array.from({ length: 200 }, (_, i) => `n${i}.example.test`) } },
    });
    expect(big.status).toBe(413);
    const list = await api('GET', '/api/v1/sandboxes');
    expect(list.body.sandboxes.map((s: { id: string }) => s.id)).toEqual(['sb-1']);
    const metrics = await (await request(`${d.adminUrl}/metrics`)).body.text();
    expect(metrics).toMatch(/^egressd_policy_changes_refused_total\{source="api"\} 2$/m);
  });

  it('keeps every acknowledged change across a restart (state file)', async () => {
    const config = loopbackConfig({ state: { path: join(dir, 'state.json') } });
    d = await start(config);
    expect((await api('PUT', '/api/v1/orgs/acme', { tier: 3 })).status).toBe(201);
    expect(
      (
        await api('PUT', '/api/v1/sandboxes/sb-p', {
          sources: ['127.0.0.9'],
          org: 'acme',
          network: { mode: 'block-all', egress: { allowed_cidrs: ['127.0.0.1/32'] } },
        })
      ).status,
    ).toBe(201);
    await d.stop();
    d = await start(config);
    const got = await api('GET', '/api/v1/sandboxes/sb-p');
    expect(got.status).toBe(200);
    expect(got.body).toMatchObject({ id: 'sb-p', org: 'acme', sources: ['127.0.0.9'] });
    d.route('127.0.0.9', '127.0.0.1', upstream.port);
    const c = await dialFrom('127.0.0.9', d.port('tcp'));
    clients.push(c);
    expect(await echoes(c, 'back')).toBe('back');
    const check = await api('POST', '/api/v1/check', { sandbox: 'sb-p', ip: '127.0.0.10', port: 22 });
    expect(check.body).toMatchObject({ verdict: 'refuse' });
  });

  it('lets a tier-1 organization override a sandbox that allows everything, keeping essential services', async () => {
    d = await start(loopbackConfig({}));
    expect((await api('PUT', '/api/v1/orgs/small', { tier: 1 })).status).toBe(201);
    expect((await api('PUT', '/api/v1/sandboxes/sb-t', { sources: ['127.0.0.11'], org: 'small', network: { networkBlockAll: false } })).status).toBe(201);
    const npm = await api('POST', '/api/v1/check', { sandbox: 'sb-t', host: 'registry.npmjs.org', ip: '104.16.0.1', port: 443 });
    expect(npm.body.verdict).toBe('allow');
    const other = await api('POST', '/api/v1/check', { sandbox: 'sb-t', host: 'example.org', ip: '93.184.215.14', port: 443 });
    expect(other.body.verdict).toBe('refuse');
    expect((await api('PUT', '/api/v1/orgs/small', { tier: 3 })).status).toBe(200);
    const after = await api('POST', '/api/v1/check', { sandbox: 'sb-t', host: 'example.org', ip: '93.184.215.14', port: 443 });
    expect(after.body.verdict).toBe('allow');
  });

  it('closes a refused connection without a byte when block is drop, where explain would answer a 403', async () => {
    const send = async (source: string): Promise<string> =>
      new Promise((resolve) => {
        const s = connect({ host: '127.0.0.1', port: d!.port('http'), localAddress: source });
        let got = '';
        s.on('data', (b) => (got += b.toString()));
        s.on('error', () => {});
        s.on('close', () => resolve(got));
        s.write('GET / HTTP/1.1\r\nHost: refused.test\r\n\r\n');
      });
    d = await start(loopbackConfig({ block: 'drop' }));
    d.route('127.0.0.12', '127.0.0.1', upstream.port);
    expect(await send('127.0.0.12')).toBe('');
    await d.stop();
    d = await start(loopbackConfig({}));
    d.route('127.0.0.12', '127.0.0.1', upstream.port);
    const answer = await send('127.0.0.12');
    expect(answer).toMatch(/^HTTP\/1\.1 403 /);
    expect(answer).toContain('refused.test');
    expect(upstream.sockets.size).toBe(0);
  });

  it('refuses an SNI with a non-ASCII byte as an invalid name, with an access_denied alert, quoting it in the log', async () => {
    // A deny list makes the name matter, so the hello is read (under plain allow-all no name
    // can change the verdict and the connection is spliced at accept, issue 10 §4).
    d = await start(
      loopbackConfig({ sandboxes: [{ id: 'sb-n', sources: ['127.0.0.13'], network: { mode: 'allow-all', egress: { denied_domains: ['denied.test'] } } }] }),
    );
    d.route('127.0.0.13', '127.0.0.1', upstream.port);
    const sni = Buffer.concat([Buffer.from('b'), Buffer.from([0xfc]), Buffer.from('cher.test')]);
    const answer = await new Promise<Buffer>((resolve) => {
      const s = connect({ host: '127.0.0.1', port: d!.port('tls'), localAddress: '127.0.0.13' });
      const got: Buffer[] = [];
      s.on('data', (b: Buffer) => got.push(b));
      s.on('error', () => {});
      s.on('close', () => resolve(Buffer.concat(got)));
      s.write(buildHello({ sni: [new Uint8Array(sni)] }));
    });
    // RFC 8446 §6: a fatal (2) access_denied (49) alert.
    expect([...answer]).toEqual([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31]);
    const invalid = await d.waitForLog((l) => action(l) === 'connection');
    expect(invalid).toMatchObject({ egressd: { verdict: 'refuse', raw_name: 'b\u00fccher.test' }, event: { reason: 'invalid-name' } });
    expect(field(invalid, 'egressd.upstream.ip')).toBeUndefined();
    expect(upstream.sockets.size).toBe(0);
  });

  it('deletes an organization only once no sandbox names it', async () => {
    d = await start(loopbackConfig({}));
    expect((await api('PUT', '/api/v1/orgs/o1', { network: { mode: 'block-all', egress: { allowed_ports: [443] } } })).status).toBe(201);
    expect((await api('GET', '/api/v1/orgs/o1')).body).toMatchObject({ id: 'o1', tier: null });
    expect((await api('PUT', '/api/v1/sandboxes/sb-o', { sources: ['127.0.0.14'], org: 'o1', network: { mode: 'allow-all' } })).status).toBe(201);
    const check = await api('POST', '/api/v1/check', { sandbox: 'sb-o', ip: '127.0.0.1', port: 22 });
    expect(check.body).toMatchObject({ verdict: 'refuse' });
    expect((await api('DELETE', '/api/v1/orgs/o1')).status).toBe(409);
    expect((await api('DELETE', '/api/v1/sandboxes/sb-o')).status).toBe(204);
    expect((await api('DELETE', '/api/v1/orgs/o1')).status).toBe(204);
    expect((await api('GET', '/api/v1/orgs/o1')).status).toBe(404);
    expect((await api('PUT', '/api/v1/sandboxes/sb-o', { sources: ['127.0.0.14'], org: 'o1' })).status).toBe(404);
  });

  it('waits only the first-byte wait for a silent client when a name could matter, then decides by address (server-first)', async () => {
    const banner = createServer((s) => {
      s.on('error', () => {});
      s.end('220 banner\r\n');
    });
    banner.listen(0, '127.0.0.1');
    await once(banner, 'listening');
    try {
      d = await start(
        loopbackConfig({ sandboxes: [{ id: 'sb-s', sources: ['127.0.0.15'], network: { mode: 'allow-all', egress: { denied_domains: ['denied.test'] } } }] }),
      );
      d.route('127.0.0.15', '127.0.0.1', (banner.address() as { port: number }).port);
      const c = await dialFrom('127.0.0.15', d.port('tcp'));
      clients.push(c);
      const [line] = (await once(c, 'data')) as [Buffer];
      expect(line.toString()).toBe('220 banner\r\n');
      const o = await d.waitForLog((l) => action(l) === 'connection');
      expect(o).toMatchObject({ egressd: { verdict: 'allow' }, event: { reason: 'default-allow' }, network: { protocol: 'none' } });
      expect(field(o, 'destination.domain')).toBeUndefined();
      expect(field(o, 'egressd.peek_duration')).toBeGreaterThan(0);
    } finally {
      banner.close();
    }
  });

  it('leaves open connections alone on a policy change when onPolicyChange is keep', async () => {
    d = await start(loopbackConfig({ onPolicyChange: 'keep' }));
    expect((await api('PUT', '/api/v1/sandboxes/sb-k', { sources: ['127.0.0.16'], network: { mode: 'allow-all' } })).status).toBe(201);
    d.route('127.0.0.16', '127.0.0.1', upstream.port);
    const c = await dialFrom('127.0.0.16', d.port('tcp'));
    clients.push(c);
    expect(await echoes(c, 'one')).toBe('one');
    expect((await api('PUT', '/api/v1/sandboxes/sb-k/network', { mode: 'block-all' })).status).toBe(200);
    expect(await echoes(c, 'two')).toBe('two');
    expect((await refusedFrom('127.0.0.16', d.port('tcp'))).received).toBe(0);
  });

  it('closes the open connections of the config sandboxes a reload removes, when the default policy refuses them, and logs each removal', async () => {
    d = await start(loopbackConfig({ sandboxes: [{ id: 'cfg-gone', sources: ['127.0.0.18'], network: { mode: 'allow-all' } }] }));
    d.route('127.0.0.18', '127.0.0.1', upstream.port);
    const c = await dialFrom('127.0.0.18', d.port('tcp'));
    clients.push(c);
    c.on('error', () => {});
    expect(await echoes(c, 'before')).toBe('before');
    // The default policy (block-all) now judges 127.0.0.18: the reload returns only once the
    // connection it refuses is closed, as an API DELETE is answered.
    const closed = once(c, 'close').then(() => 'closed');
    expect(await d.daemon.reload(loopbackConfig({ sandboxes: [] }))).toMatchObject({ ok: true });
    expect(await Promise.race([closed, new Promise((r) => setTimeout(() => r('still open'), 3000))])).toBe('closed');
    expect(await d.waitForLog((l) => action(l) === 'connection' && field(l, 'event.reason') === 'policy-changed')).toMatchObject({
      egressd: { verdict: 'refuse' },
    });
    expect(d.logs.find((l) => action(l) === 'policy-change' && l['id'] === 'cfg-gone')).toMatchObject({ action: 'delete', actor: 'config', after: null });
  });

  it('applies a reloaded defaultNetwork to the next connection and names the keys that need a restart', async () => {
    d = await start(loopbackConfig({}));
    d.route('127.0.0.17', '127.0.0.1', upstream.port);
    expect((await refusedFrom('127.0.0.17', d.port('tcp'))).received).toBe(0);
    const r = await d.daemon.reload(loopbackConfig({ defaultNetwork: { mode: 'allow-all' }, protected: { except: ['127.0.0.0/8', '10.0.0.0/8'] } }));
    expect(r).toMatchObject({ ok: true, needsRestart: ['protected'] });
    const c = await dialFrom('127.0.0.17', d.port('tcp'));
    clients.push(c);
    expect(await echoes(c, 'open now')).toBe('open now');
  });

  it('keeps every key a reload names as needing a restart as it started, and applies the rest', async () => {
    d = await start(loopbackConfig({}));
    const before = d.daemon.config;
    const next = loopbackConfig({
      defaultNetwork: { mode: 'allow-all' },
      protected: { except: ['127.0.0.0/8', '10.0.0.0/8'] },
      limits: { memory: { shedAt: 0.5 }, global: { sandboxShare: 0.25 }, sandbox: { connections: 7 }, unknownSourcePrefix: { ipv6: 56 } },
      metrics: { sandboxLabel: true },
    });
    const r = await d.daemon.reload(next);
    expect(r).toMatchObject({ ok: true, needsRestart: ['protected', 'metrics', 'limits.global', 'limits.memory', 'limits.unknownSourcePrefix'] });
    const now = d.daemon.config;
    // Before, the reloaded values stood in the running config while what was built from them at
    // start (the memory guard, the budget, the metrics) kept the old: /readyz named a shedAt the
    // guard did not use.
    expect({
      protected: now.protected,
      metrics: now.metrics,
      global: now.limits.global,
      memory: now.limits.memory,
      unknownSourcePrefix: now.limits.unknownSourcePrefix,
    }).toEqual({
      protected: before.protected,
      metrics: before.metrics,
      global: before.limits.global,
      memory: before.limits.memory,
      unknownSourcePrefix: before.limits.unknownSourcePrefix,
    });
    expect(now.limits.sandbox.connections).toBe(7);
    expect(now.defaultNetwork).toEqual(next.defaultNetwork);
  });
});
