// Rolling a policy out safely (issue 13 part 1) on the real path: a sandbox namespace
// REDIRECTed to an egressd process, real clients (curl, python3 sockets) and real servers in an
// "internet" namespace, dnsmasq as the resolver. Report-only at each of its three levels (the
// sandbox's and the organization's through the API, everyone's through the config and SIGHUP),
// the operator's always-allow and always-deny lists, the protected addresses report-only never
// opens, and the per-rule hit counts read back through the API.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRig, rigUnavailableReason, type Rig } from '../helpers/netns-rig.ts';
import { watchDaemon, type DaemonProcess, type LogLine } from '../helpers/daemon-process.ts';
import { adminIn, curlIn, type CurlOptions } from '../helpers/curl.ts';
import { action, connectionFields } from '../helpers/log-line.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const MAIN = join(ROOT, 'src/main.ts');
const CA = join(ROOT, 'certs/ca.pem');
const PORTS = { http: 15080, tls: 15443, tcp: 15001 };
const TOKEN = 'e2e-rollout-token';

const REAL = '198.18.1.2'; // other.test, api.allowed.test
const DENIED = '198.18.1.3'; // denied.test
const GUARDED = '198.18.1.200'; // in protected.extra and outside protected.except: nothing may reach it
const HOST = '198.18.0.1'; // the router, where egressd runs: the host itself

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e rollout skipped: ${skip}`);

const PY_BANNER = `
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=8)
s.settimeout(5)
try:
    print("got", repr(s.recv(100)))
except Exception as e:
    print("error", type(e).__name__)
`;

describe.skipIf(skip !== null)('rolling a policy out: report-only, overlays, rule hits (issue 13 part 1)', () => {
  let rig: Rig;
  let daemon: DaemonProcess;
  let dir: string;
  let file: string;

  const config = (over: Record<string, unknown>) => ({
    listen: { http: ['0.0.0.0:15080', '[::]:15080'], tls: ['0.0.0.0:15443', '[::]:15443'], tcp: ['0.0.0.0:15001', '[::]:15001'], dns: [] },
    admin: { listen: '127.0.0.1:9901', token: TOKEN },
    dns: { servers: [rig.dnsServer], sandboxServers: [rig.dnsServer] },
    peek: { timeoutMs: 5000, firstByteTimeoutMs: 500 },
    upstream: { connectTimeoutMs: 4000 },
    // protected.except lifts protected.extra too, so it leaves GUARDED out.
    protected: { except: ['198.18.0.0/24', '198.18.1.0/25', '2001:db8::/32'], extra: [`${GUARDED}/32`] },
    state: { path: join(dir, 'state.db') },
    overlays: {
      alwaysAllow: [{ name: 'platform-api', domains: ['api.allowed.test'], ports: [443] }],
      alwaysDeny: [{ name: 'no-smtp', ports: [2525] }],
    },
    ...over,
  });

  beforeAll(async () => {
    rig = await createRig();
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-rollout-'));
    await rig.servers([REAL, DENIED, GUARDED]);
    await rig.dns({ 'other.test': [REAL], 'api.allowed.test': [REAL], 'denied.test': [DENIED] });
    file = join(dir, 'egressd.json');
    writeFileSync(file, JSON.stringify(config({})));
    daemon = await watchDaemon(rig.spawnIn('router', NODE, [MAIN, 'serve', '--config', file]));
    await rig.redirect(PORTS);
  }, 120_000);

  afterAll(async () => {
    await daemon?.stop('SIGTERM');
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const api = async (method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> => {
    const r = await adminIn(rig, TOKEN, method, path, body, { writeOut: '\n%{http_code}' });
    const cut = r.stdout.lastIndexOf('\n');
    const text = r.stdout.slice(0, cut);
    return { status: Number(r.stdout.slice(cut + 1)), body: text ? JSON.parse(text) : null };
  };
  const put = async (path: string, body: unknown): Promise<void> => expect([200, 201]).toContain((await api('PUT', path, body)).status);
  const sandbox = (body: Record<string, unknown>) => put('/api/v1/sandboxes/sb', { sources: [rig.sandboxV4, rig.sandboxV6], ...body });
  const DENIES = { mode: 'allow-all', egress: { denied_domains: ['denied.test'] } };

  /** curl from the sandbox; returns the body and the outcome line of this very connection. */
  const fetchIn = async (url: string, address: string, opts: CurlOptions = {}): Promise<{ body: string; line: LogLine }> => {
    const before = daemon.connections().length;
    const r = await curlIn(rig, 'sandbox', url, { resolve: address, cacert: CA, maxTimeS: 8, ...opts });
    const line = await daemon.waitFor((l) => action(l) === 'connection' && daemon.connections().indexOf(l) >= before, 15_000);
    return { body: r.stdout, line };
  };
  /** A raw TCP client (python3) that reads what the server says first. */
  const banner = async (ip: string, port: number): Promise<{ said: string; line: LogLine }> => {
    const before = daemon.connections().length;
    const r = await rig.execIn('sandbox', 'python3', ['-c', PY_BANNER, ip, String(port)], { timeoutMs: 20_000 });
    const line = await daemon.waitFor((l) => action(l) === 'connection' && daemon.connections().indexOf(l) >= before, 15_000);
    return { said: r.stdout.trim(), line };
  };
  const bytesAt = (address: string, port?: number): number =>
    rig.events().filter((e) => e.event === 'data' && e.local.startsWith(port === undefined ? `${address}:` : `${address}:${port}`)).length;
  const reload = async (over: Record<string, unknown>): Promise<LogLine> => {
    const before = daemon.lines.length;
    writeFileSync(file, JSON.stringify(config(over)));
    daemon.child.kill('SIGHUP');
    return daemon.waitFor((l) => (action(l) === 'reload' || action(l) === 'reload-refused') && daemon.lines.indexOf(l) >= before, 15_000);
  };

  it('always-allow: a block-all sandbox reaches the platform API by name on 443, and nothing else (curl, TLS)', async () => {
    await sandbox({ network: { networkBlockAll: true } });
    const ok = await fetchIn('https://api.allowed.test/', REAL);
    expect(ok.body).toContain('"host":"api.allowed.test"');
    expect(connectionFields(ok.line)).toMatchObject({
      'egressd.verdict': 'allow',
      'rule.name': 'always-allow "platform-api": allowed_domains "api.allowed.test" + allowed_ports "443"',
    });
    const other = await fetchIn('https://other.test/', REAL);
    expect(other.body).toBe('');
    expect(connectionFields(other.line)).toMatchObject({ 'egressd.verdict': 'refuse', 'event.reason': 'default-block', 'rule.name': 'mode "block-all"' });
  });

  it('always-deny: port 2525 is refused to an allow-all sandbox, before the server says a word (python)', async () => {
    await sandbox({ network: { mode: 'allow-all' } });
    const before = rig.events().filter((e) => e.local === `${REAL}:2525`).length;
    const r = await banner(REAL, 2525);
    expect(r.said).not.toContain('220');
    expect(connectionFields(r.line)).toMatchObject({
      'egressd.verdict': 'refuse',
      'event.reason': 'deny-rule',
      'rule.name': 'always-deny "no-smtp": denied_ports "2525"',
      'rule.ruleset': 'always-deny',
    });
    expect(rig.events().filter((e) => e.local === `${REAL}:2525`).length).toBe(before);
  });

  it('report-only on the sandbox: a denied name is fetched and logged would-refuse; enforcing it again refuses', async () => {
    await sandbox({ network: DENIES, reportOnly: true });
    const seen = bytesAt(DENIED, 443);
    const r = await fetchIn('https://denied.test/', DENIED);
    expect(r.body).toContain('"host":"denied.test"');
    expect(connectionFields(r.line)).toMatchObject({
      'egressd.verdict': 'would-refuse',
      'event.reason': 'deny-rule',
      'rule.name': 'denied_domains "denied.test"',
    });
    expect(bytesAt(DENIED, 443)).toBeGreaterThan(seen);
    // The always-deny list holds in report-only mode too.
    expect(connectionFields((await banner(REAL, 2525)).line)).toMatchObject({
      'egressd.verdict': 'refuse',
      'rule.name': 'always-deny "no-smtp": denied_ports "2525"',
    });
    await sandbox({ network: DENIES });
    const enforced = await fetchIn('https://denied.test/', DENIED);
    expect(enforced.body).toBe('');
    expect(connectionFields(enforced.line)).toMatchObject({ 'egressd.verdict': 'refuse', 'event.reason': 'deny-rule' });
  });

  it('report-only on the organization: its refusal is let through for its sandboxes, with its rule', async () => {
    await put('/api/v1/orgs/acme', { network: DENIES, reportOnly: true });
    await sandbox({ org: 'acme', network: { mode: 'allow-all' } });
    const r = await fetchIn('http://denied.test/', DENIED);
    expect(r.body).toContain('"host":"denied.test"');
    expect(connectionFields(r.line)).toMatchObject({
      'egressd.verdict': 'would-refuse',
      'event.outcome': 'success',
      'rule.name': 'org acme: denied_domains "denied.test"',
      'rule.ruleset': 'org',
    });
    const eff = await api('GET', '/api/v1/sandboxes/sb/effective');
    expect(eff.body['report_only']).toEqual({ enabled: true, levels: ['org'] });
    // `egressd check` says would-refuse with exit code 4.
    const tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, TOKEN);
    const check = await rig.execIn(
      'router',
      NODE,
      [MAIN, 'check', '--token-file', tokenFile, '--sandbox', 'sb', '--host', 'denied.test', '--ip', DENIED, '--port', '80'],
      { timeoutMs: 20_000 },
    );
    expect(check.code, check.stderr).toBe(4);
    expect(JSON.parse(check.stdout)).toMatchObject({ verdict: 'would-refuse', report_only: { enabled: true, levels: ['org'] } });
    await put('/api/v1/orgs/acme', { network: DENIES });
    await sandbox({ network: DENIES });
  });

  it('report-only for everyone (config + SIGHUP): lets the policy refusal through, never the host, its listeners or protected.extra', async () => {
    expect(await reload({ reportOnly: true })).toMatchObject({ event: { action: 'reload' } });
    const r = await fetchIn('https://denied.test/', DENIED);
    expect(r.body).toContain('"host":"denied.test"');
    expect(connectionFields(r.line)).toMatchObject({ 'egressd.verdict': 'would-refuse', 'rule.name': 'denied_domains "denied.test"' });
    expect((await api('GET', '/api/v1/sandboxes/sb/effective')).body['report_only']).toEqual({ enabled: true, levels: ['global'] });

    // protected.extra: a real server there, and not a byte reaches it.
    const guarded = await fetchIn(`http://${GUARDED}/`, GUARDED);
    expect(guarded.body).not.toContain('"host"');
    expect(connectionFields(guarded.line)).toMatchObject({
      'egressd.verdict': 'refuse',
      'event.reason': 'protected-address',
      'rule.name': `protected.extra "${GUARDED}/32"`,
      'rule.ruleset': 'protected',
    });
    expect(bytesAt(GUARDED)).toBe(0);
    // The host itself, and egressd's own listener on it.
    for (const port of [80, PORTS.http]) {
      const host = await fetchIn(`http://${HOST}:${port}/`, HOST);
      expect(connectionFields(host.line), `host port ${port}`).toMatchObject({ 'egressd.verdict': 'refuse', 'event.reason': 'protected-address' });
    }
    // The always-deny list still holds.
    expect(connectionFields((await banner(REAL, 2525)).line)).toMatchObject({
      'egressd.verdict': 'refuse',
      'rule.name': 'always-deny "no-smtp": denied_ports "2525"',
    });
  });

  it('a reload with an invalid overlay is refused whole, naming the field, and changes nothing', async () => {
    const refused = await reload({ reportOnly: false, overlays: { alwaysAllow: [{ name: 'bad', cidrs: ['0.0.0.0/0'] }] } });
    expect(refused).toMatchObject({ event: { action: 'reload-refused' } });
    expect(String(refused['reason'])).toContain('overlays.alwaysAllow[0].cidrs[0]');
    // Still report-only, still the old overlays.
    expect(connectionFields((await fetchIn('https://denied.test/', DENIED)).line)).toMatchObject({ 'egressd.verdict': 'would-refuse' });
    await sandbox({ network: { networkBlockAll: true } });
    expect(connectionFields((await fetchIn('https://api.allowed.test/', REAL)).line)).toMatchObject({
      'egressd.verdict': 'allow',
      'rule.name': expect.stringContaining('always-allow "platform-api"'),
    });
    // A valid reload drops always-allow and report-only: the same request is refused now.
    expect(await reload({ reportOnly: false, overlays: { alwaysDeny: [{ name: 'no-smtp', ports: [2525] }] } })).toMatchObject({ event: { action: 'reload' } });
    expect(connectionFields((await fetchIn('https://api.allowed.test/', REAL)).line)).toMatchObject({
      'egressd.verdict': 'refuse',
      'rule.name': 'mode "block-all"',
    });
  });

  it('per-rule hit counts: the effective view counts what real connections were decided by', async () => {
    await sandbox({ network: { mode: 'block-all', egress: { allowed_domains: ['other.test', 'never.test'], allowed_ports: [80, 443] } } });
    for (let i = 0; i < 3; i++) expect(connectionFields((await fetchIn('http://other.test/', REAL)).line)).toMatchObject({ 'egressd.verdict': 'allow' });
    expect(connectionFields((await fetchIn('https://other.test/', REAL)).line)).toMatchObject({ 'egressd.verdict': 'allow' });
    expect(connectionFields((await fetchIn('http://denied.test/', DENIED)).line)).toMatchObject({
      'egressd.verdict': 'refuse',
      'rule.name': 'mode "block-all"',
    });
    expect(connectionFields((await banner(REAL, 2525)).line)).toMatchObject({ 'egressd.verdict': 'refuse' });
    const eff = (await api('GET', '/api/v1/sandboxes/sb/effective')).body;
    expect(eff['rule_hits']['sandbox']).toEqual([
      { id: 'allowed_domains[0]', rule: 'allowed_domains "other.test"', hits: 4 },
      { id: 'allowed_domains[1]', rule: 'allowed_domains "never.test"', hits: 0 },
      { id: 'allowed_ports[0]', rule: 'allowed_ports "80"', hits: 3 },
      { id: 'allowed_ports[1]', rule: 'allowed_ports "443"', hits: 1 },
      { id: 'mode', rule: 'mode "block-all"', hits: 1 },
    ]);
    expect(eff['overlays']['always_deny']).toEqual([{ name: 'no-smtp', domains: [], cidrs: [], ports: [2525], hits: 1 }]);
    const metrics = await curlIn(rig, 'router', 'http://127.0.0.1:9901/metrics');
    expect(metrics.stdout).toMatch(/^egressd_rule_hits_total\{layer="always-deny",verdict="refuse",rule="no-smtp"\} \d+$/m);
    expect(metrics.stdout).toMatch(/^egressd_rule_hits_total\{layer="sandbox",verdict="would-refuse",rule=""\} \d+$/m);
    expect(metrics.stdout).toMatch(/^egressd_rule_hits_total\{layer="protected",verdict="refuse",rule=""\} \d+$/m);
  });
});
