// The control plane end to end: policies in each platform's dialect set through the API (by the
// `egressd sandbox|org|check` CLI), enforced on real connections from the sandbox namespace,
// changed live, and kept across SIGTERM and kill -9 restarts.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRig, rigUnavailableReason, type Rig } from '../helpers/netns-rig.ts';
import type { DaemonProcess, LogLine } from '../helpers/daemon-process.ts';
import { field, destinationOf } from '../helpers/log-line.ts';
import { curlIn, statusIn } from '../helpers/curl.ts';
import { CA, E2E_PORTS, MAIN, NODE, SANDBOX_CLIENT, serveIn } from '../helpers/e2e-daemon.ts';

const REAL = '198.18.1.2'; // allowed.test
const OTHER = '198.18.1.3'; // denied.test
const ESSENTIAL = '198.18.1.4'; // essential.test, the catalog of this suite
const ECHO_KEEP = '198.18.1.6';
const ECHO_CUT = '198.18.1.7';
const SB_A = '198.18.0.2';
const SB_B = '198.18.0.3';

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e control plane skipped: ${skip}`);

describe.skipIf(skip !== null)('the control plane through the API, on real connections', () => {
  let rig: Rig;
  let daemon: DaemonProcess;
  let dir: string;
  let configFile: string;
  let tokenFile: string;

  const start = async (): Promise<void> => {
    daemon = await serveIn(rig, 'router', configFile);
  };

  beforeAll(async () => {
    rig = await createRig();
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-cp-'));
    await rig.servers([REAL, OTHER, ESSENTIAL, ECHO_KEEP, ECHO_CUT]);
    await rig.dns({ 'allowed.test': [REAL], 'denied.test': [OTHER], 'essential.test': [ESSENTIAL] });
    // The rig gives the sandbox namespace a second source address: a second sandbox.
    expect(rig.sandbox2V4).toBe(SB_B);
    tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, 'cp-e2e-token\n');
    configFile = join(dir, 'egressd.json');
    writeFileSync(
      configFile,
      JSON.stringify({
        // The rig leaves dnsmasq reachable on 53 (no --dns-port): the DNS listener is off, so a
        // Novita policy's DNS server is allowed on port 53 as the dialect says.
        listen: { http: ['0.0.0.0:15080'], tls: ['0.0.0.0:15443'], tcp: ['0.0.0.0:15001'], dns: [] },
        admin: { listen: '127.0.0.1:9901', token: 'cp-e2e-token' },
        dns: { servers: [rig.dnsServer], sandboxServers: [rig.dnsServer] },
        peek: { timeoutMs: 3000, firstByteTimeoutMs: 500 },
        protected: { except: ['198.18.0.0/15', '2001:db8::/32'] },
        catalog: { categories: [], extra: ['essential.test'] },
        state: { path: join(dir, 'state.json') },
        shutdown: { drainMs: 4000 },
      }),
    );
    await start();
    await rig.redirect(E2E_PORTS);
  });

  afterAll(async () => {
    await daemon?.stop('SIGTERM');
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const cli = (...args: string[]) => rig.execIn('router', NODE, [MAIN, ...args, '--token-file', tokenFile], { timeoutMs: 20_000 });
  const put = async (id: string, source: string, network: unknown, org?: string): Promise<void> => {
    const r = await cli('sandbox', 'put', id, '--sources', source, '--network', JSON.stringify(network), ...(org ? ['--org', org] : []));
    expect(r.code, `${r.stdout}${r.stderr}`).toBe(0);
  };
  /** The HTTP status a request from `from` to name (at address) gets; 0 when the connection failed. */
  const httpFrom = (from: string, name: string, address: string): Promise<number> =>
    statusIn(rig, 'sandbox', `http://${name}/`, { source: from, resolve: address });
  const tlsFrom = async (from: string, name: string, address: string): Promise<string> => {
    const r = await curlIn(rig, 'sandbox', `https://${name}/`, { source: from, resolve: address, cacert: CA });
    if (r.code === 0) return 'ok';
    return /access denied/i.test(r.stderr) ? 'denied' : r.stderr;
  };

  it('isolates two sandboxes with two dialects: sandbox0 by name, Daytona by CIDR plus the essential services', async () => {
    await put('sb-a', SB_A, { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } });
    await put('sb-b', SB_B, { networkAllowList: `${OTHER}/32` });
    expect(await tlsFrom(SB_A, 'allowed.test', REAL)).toBe('ok');
    expect(await httpFrom(SB_A, 'denied.test', OTHER)).toBe(403);
    expect(await httpFrom(SB_A, 'essential.test', ESSENTIAL)).toBe(403);
    expect(await tlsFrom(SB_B, 'allowed.test', REAL)).toBe('denied');
    expect(await httpFrom(SB_B, 'denied.test', OTHER)).toBe(200);
    expect(await httpFrom(SB_B, 'essential.test', ESSENTIAL)).toBe(200);
  });

  it('enforces a Novita policy: allowOut names beside a denyOut of everything, and its DNS server on 53', async () => {
    const r = await cli(
      'sandbox',
      'network',
      'sb-a',
      '--network',
      JSON.stringify({ allowInternetAccess: true, network: { allowOut: ['allowed.test', `${ESSENTIAL}/32`], denyOut: ['0.0.0.0/0'] } }),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ mode: 'block-all' });
    expect(await httpFrom(SB_A, 'allowed.test', REAL)).toBe(200);
    expect(await httpFrom(SB_A, 'denied.test', OTHER)).toBe(403);
    expect(await httpFrom(SB_A, 'whatever.test', ESSENTIAL)).toBe(200);
    const dns = await cli('check', '--sandbox', 'sb-a', '--ip', rig.dnsServer, '--port', '53');
    expect(dns.code, dns.stdout).toBe(0);
    expect(JSON.parse(dns.stdout)).toMatchObject({ verdict: 'allow' });
    const notDns = await cli('check', '--sandbox', 'sb-a', '--ip', rig.dnsServer, '--port', '54');
    expect(notDns.code).toBe(1);
  });

  it('refuses an invalid policy whole, with the field and the reason, and changes nothing', async () => {
    const r = await cli('sandbox', 'network', 'sb-b', '--network', JSON.stringify({ networkAllowList: '198.18.1.3/33' }), '--json');
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stderr).error).toMatchObject({ code: 'invalid_policy' });
    expect(JSON.parse(r.stderr).error.field).toContain('networkAllowList');
    expect(await httpFrom(SB_B, 'denied.test', OTHER)).toBe(200);
  });

  it('lets a tier-1 organization override a sandbox allow list, keeps essential services, and applies a tier change live', async () => {
    const org = await cli('org', 'put', 'acme', '--tier', '1');
    expect(org.code, org.stderr).toBe(0);
    await put('sb-b', SB_B, { networkAllowList: `${OTHER}/32` }, 'acme');
    expect(await httpFrom(SB_B, 'denied.test', OTHER)).toBe(403);
    expect(await httpFrom(SB_B, 'essential.test', ESSENTIAL)).toBe(200);
    expect((await cli('org', 'put', 'acme', '--tier', '3')).code).toBe(0);
    expect(await httpFrom(SB_B, 'denied.test', OTHER)).toBe(200);
    const eff = await cli('sandbox', 'effective', 'sb-b');
    expect(JSON.parse(eff.stdout)).toMatchObject({ sandbox: 'sb-b', organization: { id: 'acme', tier: 3 } });
  });

  it('closes an open connection a live change refuses within a second, and spares one it still allows', async () => {
    await put('sb-a', SB_A, { mode: 'allow-all' });
    const hold = (address: string) =>
      rig.execIn('sandbox', NODE, [SANDBOX_CLIENT, 'hold', '--host', address, '--port', '7000', '--bind', SB_A, '--interval', '50', '--duration', '10000'], {
        timeoutMs: 30_000,
      });
    const seen = rig.events().length;
    const keep = hold(ECHO_KEEP);
    const cut = hold(ECHO_CUT);
    // The change comes once both connections carry bytes through egressd, however slowly the
    // clients start on a loaded machine; they hold for 10 s, far longer than the change takes.
    const flowing = (a: string): boolean =>
      rig
        .events()
        .slice(seen)
        .some((e) => e.event === 'data' && e.local === `${a}:7000`);
    for (let i = 0; i < 300 && !(flowing(ECHO_KEEP) && flowing(ECHO_CUT)); i++) await new Promise((r) => setTimeout(r, 50));
    const r = await cli('sandbox', 'network', 'sb-a', '--network', JSON.stringify({ mode: 'allow-all', egress: { denied_cidrs: [`${ECHO_CUT}/32`] } }));
    expect(r.code, r.stderr).toBe(0);
    // The daemon closes what the change refuses before it acknowledges the change.
    const cutLine: LogLine = await daemon.outcome((l) => field(l, 'event.reason') === 'policy-changed', 1000);
    const [k, c] = await Promise.all([keep, cut]);
    const kept = JSON.parse(k.stdout);
    const closed = JSON.parse(c.stdout);
    expect(kept).toMatchObject({ outcome: 'held' });
    expect(kept.echoed).toBe(kept.sent);
    expect(closed.outcome).toBe('cut');
    expect(destinationOf(cutLine)).toBe(`${ECHO_CUT}:7000`);
  });

  it('keeps every acknowledged change across SIGTERM and kill -9', async () => {
    await put('sb-a', SB_A, { mode: 'block-all', egress: { allowed_domains: ['allowed.test'], allowed_ports: [80] } });
    expect(await daemon.stop('SIGTERM')).toBe(0);
    await start();
    expect(await httpFrom(SB_A, 'allowed.test', REAL)).toBe(200);
    expect(await tlsFrom(SB_A, 'allowed.test', REAL)).toBe('denied');
    // An acknowledged change, then kill -9 at once: the answer came only after the state was durable.
    await put('sb-a', SB_A, { mode: 'block-all', egress: { allowed_domains: ['allowed.test'], allowed_ports: [443] } });
    expect(await daemon.stop('SIGKILL')).toBe(null);
    await start();
    expect(await tlsFrom(SB_A, 'allowed.test', REAL)).toBe('ok');
    expect(await httpFrom(SB_A, 'allowed.test', REAL)).toBe(403);
    const list = await cli('sandbox', 'ls');
    expect(
      JSON.parse(list.stdout)
        .sandboxes.map((s: { id: string }) => s.id)
        .sort(),
    ).toEqual(['sb-a', 'sb-b']);
    expect((await cli('org', 'get', 'acme')).code).toBe(0);
  });

  it('drains on SIGTERM: readiness turns 503 first, a large transfer finishes, and the exit code is 0', async () => {
    await put('sb-a', SB_A, { mode: 'allow-all' });
    expect(await statusIn(rig, 'router', 'http://127.0.0.1:9901/readyz')).toBe(200);
    const hold = rig.execIn(
      'sandbox',
      NODE,
      [SANDBOX_CLIENT, 'hold', '--host', ECHO_KEEP, '--port', '7000', '--bind', SB_A, '--interval', '20', '--duration', '2500', '--chunk', '262144'],
      { timeoutMs: 20_000 },
    );
    // SIGTERM only once the transfer is flowing through egressd (the upstream has seen bytes): a
    // client slow to start on a loaded machine would otherwise meet a daemon with nothing to drain.
    const seen = rig.events().length;
    for (
      let i = 0;
      i < 200 &&
      !rig
        .events()
        .slice(seen)
        .some((e) => e.event === 'data' && e.local === `${ECHO_KEEP}:7000`);
      i++
    ) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const exit = daemon.stop('SIGTERM', 20_000);
    await new Promise((r) => setTimeout(r, 300));
    expect(await statusIn(rig, 'router', 'http://127.0.0.1:9901/readyz')).toBe(503);
    const held = JSON.parse((await hold).stdout);
    expect(held).toMatchObject({ outcome: 'held' });
    // Tens of MiB each way, carried whole through the drain.
    expect(held.sent).toBeGreaterThan(8 * 1024 * 1024);
    expect(held.echoed).toBe(held.sent);
    expect(await exit).toBe(0);
    await start();
  });
});
