// A change of the host's own addresses judges the open connections again (daemon.ts #rejudge,
// reason host-address-changed), but it can change only decide step 1 (protected addresses):
// it closes a connection to an address the host now holds and nothing else. A connection that a
// policy refuses but that is still open (kept by onPolicyChange: keep, then reloaded to close)
// is no business of the host's addresses: closing it then would name a cause that is not one.
// The host's interface table is the test's (DaemonOptions.hostInterfaces), so the host gains an
// address without the machine's changing; the end-to-end case of a connection to the gained
// address is test/e2e/host-address-change.test.ts. And every re-judge counts (and waits for) only
// what it closed itself: a connection an earlier change closed stays listed until it has ended.

import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { networkInterfaces, type NetworkInterfaceInfo } from 'node:os';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { adminCall } from '../helpers/admin-api.ts';
import { echoBack, trackedServer, type TrackedServer } from '../helpers/listen.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { action } from '../helpers/log-line.ts';

const SOURCE = '127.0.0.41';
const GAINED = '198.18.9.9';

function gained(address: string): NetworkInterfaceInfo {
  return { address, netmask: '255.255.255.255', family: 'IPv4', mac: '00:00:00:00:00:00', internal: false, cidr: `${address}/32` };
}

/** Writes `text` and answers what comes back: the echo, or how the connection ended instead. */
function echo(s: Socket, text: string): Promise<string> {
  return new Promise((resolve) => {
    const done = (r: string): void => {
      s.off('data', onData);
      s.off('close', onClose);
      s.off('error', onError);
      resolve(r);
    };
    const onData = (b: Buffer): void => done(b.toString());
    const onClose = (): void => done('closed');
    const onError = (e: NodeJS.ErrnoException): void => done(`error ${e.code ?? e.message}`);
    s.on('data', onData);
    s.on('close', onClose);
    s.on('error', onError);
    s.write(text);
  });
}

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('a host-address change, set up on $setup', ({ setup }) => {
  let upstream: TrackedServer;
  let d: LoopbackDaemon | undefined;
  let client: Socket | undefined;

  beforeEach(async () => {
    upstream = await trackedServer(echoBack, { allowHalfOpen: false });
  });
  afterEach(async () => {
    client?.destroy();
    await d?.stop();
    d = undefined;
    upstream.close();
  });

  it('leaves open a connection a policy refuses, kept before onPolicyChange was reloaded to close', async () => {
    const table: NodeJS.Dict<NetworkInterfaceInfo[]> = { ...networkInterfaces() };
    const config = (onPolicyChange: 'keep' | 'close') => loopbackConfig({ onPolicyChange });
    d = await startLoopbackDaemon(config('keep'), { setup, hostInterfaces: () => table });
    expect((await adminCall(d.adminUrl, 'PUT', '/api/v1/sandboxes/sb-h', { sources: [SOURCE], network: { mode: 'allow-all' } })).status).toBe(201);
    d.route(SOURCE, '127.0.0.1', upstream.port);
    client = connect({ host: '127.0.0.1', port: d.port('tcp'), localAddress: SOURCE });
    await once(client, 'connect');
    expect(await echo(client, 'one')).toBe('one');

    // Refused by its policy now, and kept (onPolicyChange: keep); then close becomes the rule.
    const r = await adminCall(d.adminUrl, 'PUT', '/api/v1/sandboxes/sb-h/network', { mode: 'block-all' });
    expect(r.status).toBe(200);
    expect(await echo(client, 'two')).toBe('two');
    expect(await d.daemon.reload(config('close'))).toMatchObject({ ok: true, needsRestart: [] });
    expect(await echo(client, 'three')).toBe('three');

    // The host gains an address this connection does not go to: its verdict did not change.
    table['test0'] = [gained(GAINED)];
    d.daemon.host.refresh();
    expect(d.daemon.host.addresses).toContain(GAINED);
    expect(await echo(client, 'four')).toBe('four');
    expect(d.logs.filter((l) => action(l) === 'closed-by-host-address-change')).toEqual([]);
  });
});

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('re-judges in a row, set up on $setup', ({ setup }) => {
  let upstream: TrackedServer;
  let d: LoopbackDaemon | undefined;
  let client: Socket | undefined;

  beforeEach(async () => {
    upstream = await trackedServer(echoBack, { allowHalfOpen: false });
  });
  afterEach(async () => {
    client?.destroy();
    await d?.stop();
    d = undefined;
    upstream.close();
  });

  it('count a connection once: the one that closed it, not a later one while it is still ending', async () => {
    const open = loopbackConfig({ defaultNetwork: { mode: 'allow-all' } });
    d = await startLoopbackDaemon(open, { setup });
    d.route(SOURCE, '127.0.0.1', upstream.port);
    client = connect({ host: '127.0.0.1', port: d.port('tcp'), localAddress: SOURCE });
    await once(client, 'connect');
    expect(await echo(client, 'one')).toBe('one');
    // Two changes in one turn: the connection the first closed has not ended yet at the second.
    expect(await d.daemon.reload(loopbackConfig({ defaultNetwork: { mode: 'block-all' } }))).toMatchObject({ ok: true });
    expect(
      await d.daemon.reload(loopbackConfig({ defaultNetwork: { mode: 'block-all' }, overlays: { alwaysDeny: [{ name: 'x', domains: ['x.test'] }] } })),
    ).toMatchObject({ ok: true });
    expect(await echo(client, 'two')).not.toBe('two');
    const closes = d.logs.filter((l) => action(l) === 'closed-by-policy-change').map((l) => l['count']);
    expect(closes).toEqual([1]);
  });
});
