// Proves the netns rig itself, without egressd in the path: routing between the namespaces over
// IPv4 and IPv6, the upstream servers and their event log, the test CA, dnsmasq, the REDIRECT
// rules installed by `egressd iptables`, and a teardown that leaves nothing behind.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanLeftovers, createRig, type Rig, rigUnavailableReason } from '../helpers/netns-rig.ts';
import { curlIn, type CurlOptions } from '../helpers/curl.ts';
import { CA, NODE } from '../helpers/e2e-daemon.ts';

const S4 = '198.18.1.2';
const S6 = '2001:db8:0:2::2';
const OTHER4 = '198.18.1.3';

// Connects, optionally sends argv[3], prints everything received until the peer closes or the
// text argv[4] has arrived (5 s cap).
const TCP_CLIENT = `
const net = require('node:net');
const [host, port, send, until] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port) });
let got = '';
s.setTimeout(5000, () => { process.stdout.write(got); process.stderr.write('timeout'); process.exit(3); });
s.on('connect', () => { if (send) s.write(send); });
s.on('data', (d) => { got += d; if (until && got.includes(until)) s.end(); });
s.on('close', () => { process.stdout.write(got); process.exit(0); });
s.on('error', (e) => { process.stderr.write(e.code || e.message); process.exit(2); });
`;

// Listens on every port given, dual-stack; answers each connection with "caught PORT" and closes.
const CATCHER = `
const net = require('node:net');
const ports = process.argv.slice(1).map(Number);
let ready = 0;
for (const port of ports) {
  net.createServer((s) => {
    console.log(JSON.stringify({ port, local: s.localAddress, remote: s.remoteAddress }));
    s.end('caught ' + port + '\\n');
  }).listen({ host: '::', port }, () => { if (++ready === ports.length) console.log(JSON.stringify({ ready: true })); });
}
`;

const haveDig = spawnSync('dig', ['-v'], { stdio: 'ignore', env: { ...process.env, PATH: `${process.env['PATH']}:/usr/bin:/usr/sbin` } }).status === 0;
const skip = rigUnavailableReason() ?? (haveDig ? null : 'dig is missing (bash scripts/ensure-test-tools.sh installs bind9-dnsutils)');
if (skip) console.warn(`e2e rig tests skipped: ${skip}`);

describe.skipIf(skip !== null)('the netns rig', () => {
  let rig: Rig;

  beforeAll(async () => {
    rig = await createRig();
    await rig.servers([S4, S6, OTHER4]);
    await rig.dns({
      'allowed.test': [S4, S6],
      '*.allowed.test': [OTHER4],
      'metadata.test': ['169.254.169.254'],
    });
  });
  afterAll(async () => {
    await rig?.teardown();
  });

  const at = (local: string) => rig.events().filter((e) => e.local === local);
  const curl = (url: string, opts?: CurlOptions) => curlIn(rig, 'sandbox', url, opts);
  const dig = (ns: 'sandbox' | 'router', args: string[]) => rig.execIn(ns, 'dig', ['+short', '+time=2', '+tries=2', ...args], { timeoutMs: 15_000 });

  it('lets the sandbox reach an internet server over HTTP, and the server logs the connection and the Host', async () => {
    const r = await curl('http://allowed.test/path', { resolve: S4 });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ server: S4, service: 'http', host: 'allowed.test', path: '/path' });
    const seen = at(`${S4}:80`);
    expect(seen.map((e) => e.event)).toEqual(expect.arrayContaining(['accept', 'data']));
    expect(seen[0]!.remote).toMatch(/^198\.18\.0\.2:\d+$/);
  });

  it('serves TLS that verifies against the test CA for a name in the certificate, and records the SNI', async () => {
    const r = await curl('https://www.allowed.test/', { resolve: S4, cacert: CA });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ server: S4, service: 'tls', host: 'www.allowed.test', sni: 'www.allowed.test' });
    await expect.poll(() => at(`${S4}:443`).find((e) => e.event === 'close')?.sni).toBe('www.allowed.test');
  });

  it('fails verification for a name the certificate does not carry, so the CA check is real', async () => {
    const r = await curl('https://nothere.test/', { resolve: S4, cacert: CA });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/certificate|SSL/i);
  });

  it('carries IPv6 from the sandbox to an internet server, over HTTP and TLS', async () => {
    const http = await curl(`http://[${S6}]/`, { extra: ['-g'] });
    expect(http.code, http.stderr).toBe(0);
    expect(JSON.parse(http.stdout)).toMatchObject({ server: S6, host: `[${S6}]` });
    const tls = await curl('https://v6.test/', { resolve: S6, cacert: CA });
    expect(tls.code, tls.stderr).toBe(0);
    expect(JSON.parse(tls.stdout)).toMatchObject({ server: S6, sni: 'v6.test' });
    expect(at(`[${S6}]:443`)[0]!.remote).toMatch(/^\[2001:db8:0:1::2\]:\d+$/);
  });

  it('speaks first on the banner port and echoes on the echo port', async () => {
    const banner = await rig.execIn('sandbox', NODE, ['-e', TCP_CLIENT, S4, '2525', 'HELO x\r\n', '250 ok\r\n'], { timeoutMs: 15_000 });
    expect(banner.stdout, banner.stderr).toBe('220 hello\r\n250 ok\r\n');
    const echo = await rig.execIn('sandbox', NODE, ['-e', TCP_CLIENT, S6, '7000', 'ping-7000', 'ping-7000'], { timeoutMs: 15_000 });
    expect(echo.stdout).toBe('ping-7000');
    await expect.poll(() => at(`[${S6}]:7000`).find((e) => e.event === 'close')?.bytes).toBe('ping-7000'.length);
  });

  it('answers .test names from dnsmasq to the sandbox and the router, over IPv4 and IPv6', async () => {
    expect((await dig('sandbox', [`@${rig.dnsServer}`, 'allowed.test', 'A'])).stdout.trim()).toBe(S4);
    expect((await dig('sandbox', [`@${rig.dnsServerV6}`, 'allowed.test', 'AAAA'])).stdout.trim()).toBe(S6);
    expect((await dig('router', [`@${rig.dnsServer}`, 'a.b.allowed.test', 'A'])).stdout.trim()).toBe(OTHER4);
    expect((await dig('router', [`@${rig.dnsServer}`, '+tcp', 'metadata.test', 'A'])).stdout.trim()).toBe('169.254.169.254');
  });

  it('answers NXDOMAIN for unknown .test names and refuses every other name', async () => {
    const unknown = await rig.execIn('sandbox', 'dig', ['+time=2', '+tries=1', `@${rig.dnsServer}`, 'nothere.test'], { timeoutMs: 15_000 });
    expect(unknown.stdout).toContain('status: NXDOMAIN');
    const outside = await rig.execIn('sandbox', 'dig', ['+time=2', '+tries=1', `@${rig.dnsServer}`, 'example.com'], { timeoutMs: 15_000 });
    expect(outside.stdout).toContain('status: REFUSED');
  });

  it('replaces the records when dns() is called again', async () => {
    await rig.dns({ 'allowed.test': [OTHER4], 'fixture.test': [S6] });
    try {
      expect((await dig('sandbox', [`@${rig.dnsServer}`, 'allowed.test', 'A'])).stdout.trim()).toBe(OTHER4);
      expect((await dig('sandbox', [`@${rig.dnsServer}`, 'fixture.test', 'AAAA'])).stdout.trim()).toBe(S6);
      expect((await dig('sandbox', [`@${rig.dnsServer}`, 'x.allowed.test', 'A'])).stdout.trim()).toBe('');
    } finally {
      await rig.dns({ 'allowed.test': [S4, S6], '*.allowed.test': [OTHER4], 'metadata.test': ['169.254.169.254'] });
    }
  });

  it('keeps serving an address given to servers() again, and starts only the new ones', async () => {
    await rig.servers([S4, '198.18.1.4']);
    const r = await curl('http://198.18.1.4/');
    expect(JSON.parse(r.stdout)).toMatchObject({ server: '198.18.1.4' });
    expect(JSON.parse((await curl(`http://${S4}/`)).stdout)).toMatchObject({ server: S4 });
  });

  it('refuses server addresses outside the internet subnets', async () => {
    await expect(rig.servers(['10.0.0.1'])).rejects.toThrow(/not a server address/);
    await expect(rig.servers([rig.dnsServer])).rejects.toThrow(/not a server address/);
  });

  describe('after egressd iptables --apply', () => {
    let catcher: ChildProcess;
    const caught: Array<{ port: number; remote: string }> = [];
    const PORTS = { http: 25080, tls: 25443, tcp: 25001 };

    beforeAll(async () => {
      catcher = rig.spawnIn('router', NODE, ['-e', CATCHER, String(PORTS.http), String(PORTS.tls), String(PORTS.tcp)]);
      const lines = createInterface({ input: catcher.stdout! });
      const ready = new Promise<void>((ok) =>
        lines.on('line', (l) => {
          const m = JSON.parse(l) as { ready?: boolean; port: number; remote: string };
          if (m.ready) ok();
          else caught.push(m);
        }),
      );
      await ready;
      await rig.redirect(PORTS);
    });

    const probe = (host: string, port: number) => rig.execIn('sandbox', NODE, ['-e', TCP_CLIENT, host, String(port)], { timeoutMs: 15_000 });

    it("sends the sandbox's port 80 to the http port, 443 to the tls port and any other port to the tcp port, and upstream sees nothing", async () => {
      const before = rig.events().length;
      expect((await probe(S4, 80)).stdout).toBe(`caught ${PORTS.http}\n`);
      expect((await probe(S4, 443)).stdout).toBe(`caught ${PORTS.tls}\n`);
      expect((await probe(S4, 7000)).stdout).toBe(`caught ${PORTS.tcp}\n`);
      expect((await probe(S6, 2525)).stdout).toBe(`caught ${PORTS.tcp}\n`);
      expect((await probe('169.254.169.254', 80)).stdout).toBe(`caught ${PORTS.http}\n`);
      expect(rig.events().length).toBe(before);
      expect(caught.map((c) => c.remote)).toEqual(expect.arrayContaining(['::ffff:198.18.0.2', '2001:db8:0:1::2']));
    });

    it('keeps the DNS server reachable directly over UDP and TCP', async () => {
      expect((await dig('sandbox', [`@${rig.dnsServer}`, 'allowed.test', 'A'])).stdout.trim()).toBe(S4);
      expect((await dig('sandbox', [`@${rig.dnsServerV6}`, '+tcp', 'allowed.test', 'AAAA'])).stdout.trim()).toBe(S6);
    });
  });
});

describe.skipIf(skip !== null)('rig teardown', () => {
  const netnsList = () => spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
  const links = () => spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).stdout;
  const alive = (pid: number): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };

  it('leaves no namespace, link, rule or process behind, and can be called twice', async () => {
    const rig = await createRig();
    const pids: number[] = [];
    try {
      await rig.servers([S4]);
      await rig.redirect({ http: 15080, tls: 15443, tcp: 15001 });
      const sleeper = rig.spawnIn('sandbox', 'sleep', ['600']);
      expect(sleeper.pid).toBeGreaterThan(0);
      for (const ns of Object.values(rig.ns)) {
        pids.push(...spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout.split(/\s+/).filter(Boolean).map(Number));
      }
      // dnsmasq, the upstream server and the sleeper
      expect(pids.length).toBeGreaterThanOrEqual(3);
    } finally {
      await rig.teardown();
    }
    await rig.teardown();
    for (const ns of Object.values(rig.ns)) expect(netnsList()).not.toContain(ns);
    expect(links()).not.toContain(rig.prefix);
    expect(pids.filter(alive)).toEqual([]);
    expect(existsSync(`/run/egressd-rig/${rig.prefix}.json`)).toBe(false);
  });

  it('removes the namespaces and processes of a crashed run but never those of a live one', async () => {
    const dead = spawnSync(NODE, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    const deadPid = Number(dead.stdout);
    const crashed = `eg${deadPid.toString(36).padStart(5, '0')}zz`;
    const live = `eg${process.pid.toString(36).padStart(5, '0')}zy`;
    const start = readFileSync('/proc/self/stat', 'utf8');
    const myStart = start.slice(start.lastIndexOf(')') + 2).split(' ')[19];
    mkdirSync('/run/egressd-rig', { recursive: true });
    let leftover: ChildProcess | undefined;
    try {
      writeFileSync(`/run/egressd-rig/${crashed}.json`, JSON.stringify({ pid: deadPid, start: '1' }));
      writeFileSync(`/run/egressd-rig/${live}.json`, JSON.stringify({ pid: process.pid, start: myStart }));
      expect(spawnSync('ip', ['netns', 'add', `${crashed}-sbx`]).status).toBe(0);
      expect(spawnSync('ip', ['netns', 'add', `${live}-sbx`]).status).toBe(0);
      leftover = spawn('ip', ['netns', 'exec', `${crashed}-sbx`, 'sleep', '600'], { stdio: 'ignore', detached: true });
      await once(leftover, 'spawn');

      const removed = await cleanLeftovers();

      expect(removed).toContain(`${crashed}-sbx`);
      expect(removed).not.toContain(`${live}-sbx`);
      expect(netnsList()).not.toContain(`${crashed}-sbx`);
      expect(netnsList()).toContain(`${live}-sbx`);
      if (leftover.exitCode === null && leftover.signalCode === null) await once(leftover, 'exit');
      expect(leftover.signalCode).toBe('SIGKILL');
      expect(existsSync(`/run/egressd-rig/${crashed}.json`)).toBe(false);
    } finally {
      if (leftover?.pid !== undefined && leftover.exitCode === null && leftover.signalCode === null) process.kill(leftover.pid, 'SIGKILL');
      spawnSync('ip', ['netns', 'del', `${crashed}-sbx`]);
      spawnSync('ip', ['netns', 'del', `${live}-sbx`]);
      rmSync(`/run/egressd-rig/${crashed}.json`, { force: true });
      rmSync(`/run/egressd-rig/${live}.json`, { force: true });
    }
  });
});
