// A sandbox's allowed private range under its organization, through a running daemon: Daytona
// "Network Limits (Firewall)" gives tiers 3 and 4 "full internet access ... with the ability to
// configure custom network settings" (its example list opens "192.168.1.0/24 (Private
// network)"), while tiers 1 and 2 "cannot be overridden at the sandbox level". The organization
// and the sandbox are PUT through the API; loopback (127.0.0.0/8, protected here: no
// `protected.except`) stands in for the private network, since an allowed connection is dialed.

import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { adminCall } from '../helpers/admin-api.ts';
import { echoBack, trackedServer, type TrackedServer } from '../helpers/listen.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { action, field } from '../helpers/log-line.ts';

/** Answers `ok` and closes: proof that the connection reached the upstream. */
async function okServer(): Promise<{ server: Server; port: number; sockets: Set<Socket> }> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    s.end('ok');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as { port: number }).port, sockets };
}

/** What the client read before the connection closed. */
function readFrom(source: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: source });
    let got = '';
    s.on('data', (b) => (got += b.toString()));
    s.on('error', () => {});
    s.on('close', () => resolve(got));
  });
}

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])(
  "a sandbox's allowed private range under its organization, set up on $setup",
  ({ setup }) => {
    let d: LoopbackDaemon | undefined;
    let upstream: Awaited<ReturnType<typeof okServer>>;
    const api = (method: string, path: string, body?: unknown) => adminCall(d!.adminUrl, method, path, body);

    beforeEach(async () => {
      upstream = await okServer();
      d = await startLoopbackDaemon(loopbackConfig({ protected: { except: [], reachableHostAddresses: ['127.0.0.0/8'] } }), { setup });
    });
    afterEach(async () => {
      await d?.stop();
      d = undefined;
      for (const s of upstream.sockets) s.destroy();
      upstream.server.close();
    });

    /** The connection line of the next connection from `source`, and what its client read. */
    async function connectAs(source: string): Promise<{ read: string; line: Record<string, unknown> }> {
      const before = d!.logs.length;
      d!.route(source, '127.0.0.1', upstream.port);
      const read = await readFrom(source, d!.port('tcp'));
      const line = await d!.waitForLog((l) => d!.logs.indexOf(l) >= before && action(l) === 'connection' && field(l, 'source.ip') === source);
      return { read, line };
    }

    it.each([3, 4])('tier %i: reaches what networkAllowList opens, and nothing else protected', async (tier) => {
      expect((await api('PUT', '/api/v1/orgs/open', { tier })).status).toBe(201);
      const sandbox = { org: 'open', network: { networkAllowList: '127.0.0.0/24, 192.168.1.0/24' } };
      expect((await api('PUT', '/api/v1/sandboxes/listed', { sources: ['127.0.0.61'], ...sandbox })).status).toBe(201);
      expect((await api('PUT', '/api/v1/sandboxes/full', { sources: ['127.0.0.62'], org: 'open', network: {} })).status).toBe(201);

      const listed = await connectAs('127.0.0.61');
      expect(listed.read).toBe('ok');
      expect({ verdict: field(listed.line, 'egressd.verdict'), rule: field(listed.line, 'rule.name') }).toEqual({
        verdict: 'allow',
        rule: 'allowed_cidrs "127.0.0.0/24"',
      });
      // The document's own example, asked of the daemon without dialing it.
      const check = await api('POST', '/api/v1/check', { sandbox: 'listed', ip: '192.168.1.5', port: 443 });
      expect(check.body).toMatchObject({ verdict: 'allow', rule: 'allowed_cidrs "192.168.1.0/24"' });
      const outside = await api('POST', '/api/v1/check', { sandbox: 'listed', ip: '192.168.2.5', port: 443 });
      expect(outside.body).toMatchObject({ verdict: 'refuse', reason: 'protected-address' });

      // Full access opens no protected range.
      const full = await connectAs('127.0.0.62');
      expect(full.read).toBe('');
      expect({ verdict: field(full.line, 'egressd.verdict'), reason: field(full.line, 'event.reason') }).toEqual({
        verdict: 'refuse',
        reason: 'protected-address',
      });
      expect(upstream.sockets.size).toBe(0);
    });

    it.each([1, 2])('tier %i: the organization still refuses what networkAllowList opens', async (tier) => {
      expect((await api('PUT', '/api/v1/orgs/small', { tier })).status).toBe(201);
      const sandbox = { sources: ['127.0.0.63'], org: 'small', network: { networkAllowList: '127.0.0.0/24, 192.168.1.0/24' } };
      expect((await api('PUT', '/api/v1/sandboxes/listed', sandbox)).status).toBe(201);
      const c = await connectAs('127.0.0.63');
      expect(c.read).toBe('');
      expect({ verdict: field(c.line, 'egressd.verdict'), rule: field(c.line, 'rule.name') }).toEqual({
        verdict: 'refuse',
        rule: 'org small: mode "block-all"',
      });
      // A catalog name does not open the address for the organization either.
      const byName = await api('POST', '/api/v1/check', { sandbox: 'listed', host: 'registry.npmjs.org', ip: '192.168.1.5', port: 443 });
      expect(byName.body).toMatchObject({ verdict: 'refuse', rule: 'org small: mode "block-all"' });
      expect(upstream.sockets.size).toBe(0);
    });

    it("does not lend an organization's own allowed range to a sandbox that does not open it", async () => {
      expect((await api('PUT', '/api/v1/orgs/lab', { network: { mode: 'block-all', egress: { allowed_cidrs: ['127.0.0.0/24'] } } })).status).toBe(201);
      expect((await api('PUT', '/api/v1/sandboxes/full', { sources: ['127.0.0.64'], org: 'lab', network: { mode: 'allow-all' } })).status).toBe(201);
      const c = await connectAs('127.0.0.64');
      expect(c.read).toBe('');
      expect({ verdict: field(c.line, 'egressd.verdict'), reason: field(c.line, 'event.reason') }).toEqual({ verdict: 'refuse', reason: 'protected-address' });
      expect(upstream.sockets.size).toBe(0);
    });

    // A connection the sandbox's grant opened is held to the policies as they change (the
    // re-judge after a PUT asks the same chain, lends included): kept while the organization
    // still leaves the address to the sandbox, closed once either side no longer allows it.
    describe('a spliced connection to what the sandbox opened, when a policy changes', () => {
      let echo: TrackedServer;
      beforeEach(async () => {
        echo = await trackedServer(echoBack, { allowHalfOpen: false });
      });
      afterEach(() => {
        echo.close();
      });

      /** A connection through the daemon to the echo server, and a round trip through it. */
      async function held(source: string): Promise<{ closed: Promise<void>; roundTrip: (text: string) => Promise<string> }> {
        d!.route(source, '127.0.0.1', echo.port);
        const socket = connect({ host: '127.0.0.1', port: d!.port('tcp'), localAddress: source });
        socket.on('error', () => {});
        const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
        await once(socket, 'connect');
        const roundTrip = (text: string): Promise<string> =>
          new Promise((resolve) => {
            let got = '';
            const onData = (b: Buffer): void => {
              got += b.toString();
              if (got.length < text.length) return;
              socket.off('data', onData);
              resolve(got);
            };
            socket.on('data', onData);
            socket.write(text);
          });
        return { closed, roundTrip };
      }

      it.each([
        ['the organization moves to tier 1', { path: '/api/v1/orgs/open', body: { tier: 1 } }],
        [
          'the organization denies the range',
          { path: '/api/v1/orgs/open', body: { network: { mode: 'allow-all', egress: { denied_cidrs: ['127.0.0.0/24'] } } } },
        ],
        [
          'the sandbox no longer lists it',
          { path: '/api/v1/sandboxes/listed', body: { sources: ['127.0.0.65'], org: 'open', network: { networkAllowList: '192.168.1.0/24' } } },
        ],
      ])('is closed when %s, kept while the organization moves between tiers 3 and 4', async (_label, change) => {
        expect((await api('PUT', '/api/v1/orgs/open', { tier: 3 })).status).toBe(201);
        expect(
          (await api('PUT', '/api/v1/sandboxes/listed', { sources: ['127.0.0.65'], org: 'open', network: { networkAllowList: '127.0.0.0/24' } })).status,
        ).toBe(201);
        const c = await held('127.0.0.65');
        expect(await c.roundTrip('one')).toBe('one');
        expect((await api('PUT', '/api/v1/orgs/open', { tier: 4 })).status).toBe(200);
        expect(await c.roundTrip('two')).toBe('two');
        expect((await api('PUT', change.path, change.body)).status).toBe(200);
        await c.closed;
        const line = await d!.waitForLog((l) => action(l) === 'connection' && field(l, 'source.ip') === '127.0.0.65');
        expect(field(line, 'event.reason')).toBe('policy-changed');
      });
    });
  },
);
