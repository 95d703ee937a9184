// Hostile spellings of a name and of a destination, on the real path: a sandbox namespace
// REDIRECTed by `egressd iptables --apply` to an egressd process, python3 sockets and openssl
// s_client writing the exact bytes, real servers in an "internet" namespace. The parsers and the
// matcher have unit tests for each spelling; these pin that the daemon, through iptables and its
// data plane, gives the verdict the unit tests give and dials only what that verdict names:
//
// - a name in upper case with one trailing dot is the name (RFC 4343 §3: DNS names compare without
//   case; RFC 1034 §3.1: the trailing dot is the root, so `a.test.` is `a.test`), under an allow
//   list and a deny list alike (smokescreen CVE-2022-24825 was this bypass);
// - an absolute-form target is the name the server obeys (RFC 9112 §3.2.2), so one that names
//   another host than Host, or carries userinfo, is refused rather than judged by Host;
// - an IPv4-mapped destination (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2) from an IPv6 socket is the
//   IPv4 address on the wire, and is judged and dialed as that address.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRig, rigUnavailableReason, type Rig } from '../helpers/netns-rig.ts';
import type { DaemonProcess, LogLine } from '../helpers/daemon-process.ts';
import { field, connectionFields } from '../helpers/log-line.ts';
import { CA, E2E_PORTS, serveIn, writeConfig } from '../helpers/e2e-daemon.ts';
import { buildHello, ext, serverNameExtension } from '../helpers/hello-builder.ts';
import { sendClientArgs, sendClientResult } from '../helpers/send-client.ts';

const TOKEN = 'e2e-name-spellings-token';

// Addresses in the internet namespace (198.18.0.0/15 only).
const REAL = '198.18.1.2'; // allowed.test
const DENIED = '198.18.1.3'; // denied.test
const ATTACKER = '198.18.1.9'; // where spoofing code points its connection

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e name spellings skipped: ${skip}`);

describe.skipIf(skip !== null)('hostile spellings of a name and a destination, through iptables REDIRECT', () => {
  let rig: Rig;
  let daemon: DaemonProcess;
  let dir: string;

  beforeAll(async () => {
    rig = await createRig();
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-spellings-'));
    await rig.servers([REAL, DENIED, ATTACKER]);
    await rig.dns({ 'allowed.test': [REAL], 'denied.test': [DENIED], 'x.denied.test': [DENIED] });
    const config = {
      listen: { http: ['0.0.0.0:15080', '[::]:15080'], tls: ['0.0.0.0:15443', '[::]:15443'], tcp: ['0.0.0.0:15001', '[::]:15001'] },
      admin: { listen: '127.0.0.1:9901', token: TOKEN },
      dns: { servers: [rig.dnsServer], sandboxServers: [rig.dnsServer] },
      peek: { timeoutMs: 3000, firstByteTimeoutMs: 500 },
      protected: { except: ['198.18.0.0/15', '2001:db8::/32'] },
      sandboxes: [
        // An allow list: only allowed.test, by name.
        { id: 'allow-list', sources: [rig.sandboxV4, rig.sandboxV6], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } } },
        // A deny list: everything but denied.test and the names below it.
        {
          id: 'deny-list',
          sources: [rig.sandbox2V4, rig.sandbox2V6],
          network: { mode: 'allow-all', egress: { denied_domains: ['denied.test', '*.denied.test'] } },
        },
      ],
    };
    daemon = await serveIn(rig, 'router', writeConfig(dir, config));
    await rig.redirect(E2E_PORTS);
  }, 120_000);

  afterAll(async () => {
    await daemon?.stop('SIGTERM');
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const bytesAt = (address: string): number => rig.events().filter((e) => e.event === 'data' && e.local.startsWith(`${address}:`)).length;
  /** Sends `payload` (Python escapes) to ip:port from the sandbox (`bind`: a source address), and the line egressd logged for it. */
  const send = async (ip: string, port: number, payload: string, bind = ''): Promise<{ reply: string; line: LogLine }> => {
    const r = await rig.execIn('sandbox', 'python3', sendClientArgs(ip, port, payload, { bind }), { timeoutMs: 20_000 });
    const { port: sourcePort, reply } = sendClientResult(r.stdout, r.stderr);
    expect(sourcePort, `${r.stdout}${r.stderr}`).toBeDefined();
    const line = await daemon.outcome((l) => String(field(l, 'source.port')) === sourcePort);
    return { reply, line };
  };
  const GET = (host: string, target = '/') => `GET ${target} HTTP/1.1\\r\\nHost: ${host}\\r\\nConnection: close\\r\\n\\r\\n`;
  /** openssl s_client from the sandbox with the SNI as given; its output. */
  const sClient = async (ip: string, sni: string, bind?: string): Promise<string> => {
    const args = ['s_client', '-connect', `${ip}:443`, '-servername', sni, '-CAfile', CA];
    if (bind !== undefined) args.push('-bind', `${bind}:0`);
    const r = await rig.execIn('sandbox', 'openssl', args, { timeoutMs: 20_000, input: '' });
    return `${r.stdout}${r.stderr}`;
  };

  describe('a name in upper case with a trailing dot is the name', () => {
    it("an allow list lets `Host: ALLOWED.TEST.` through, to allowed.test's own address even when sent to another", async () => {
      const before = bytesAt(ATTACKER);
      const { reply, line } = await send(ATTACKER, 80, GET('ALLOWED.TEST.'));
      expect(reply).toContain('200 OK');
      expect(reply).toContain(REAL);
      expect(connectionFields(line)).toMatchObject({
        'destination.domain': 'allowed.test',
        'egressd.verdict': 'allow',
        'rule.name': 'allowed_domains "allowed.test"',
        'egressd.upstream.ip': REAL,
      });
      expect(bytesAt(ATTACKER)).toBe(before);
    });

    it('a deny list refuses `Host: DENIED.TEST.` and `Host: X.Denied.Test.`, and denied.test never sees a byte', async () => {
      const before = bytesAt(DENIED);
      for (const host of ['DENIED.TEST.', 'X.Denied.Test.']) {
        const { reply, line } = await send(DENIED, 80, GET(host), rig.sandbox2V4);
        expect(reply).toContain('403 Forbidden');
        expect(connectionFields(line)).toMatchObject({
          'destination.domain': host.toLowerCase().slice(0, -1),
          'egressd.verdict': 'refuse',
          'event.reason': 'deny-rule',
          'egressd.upstream.ip': undefined,
        });
      }
      expect(bytesAt(DENIED)).toBe(before);
    });

    it('a deny list refuses the SNI `DENIED.TEST.` with the access_denied alert', async () => {
      const before = bytesAt(DENIED);
      expect(await sClient(DENIED, 'DENIED.TEST.', rig.sandbox2V4)).toMatch(/access denied/i);
      const o = await daemon.outcomeAt(`${DENIED}:443`, (l) => field(l, 'source.ip') === rig.sandbox2V4);
      expect(connectionFields(o)).toMatchObject({
        'destination.domain': 'denied.test',
        'egressd.verdict': 'refuse',
        'event.reason': 'deny-rule',
        'egressd.upstream.ip': undefined,
      });
      expect(bytesAt(DENIED)).toBe(before);
    });
  });

  describe('an absolute-form target is the name the server obeys', () => {
    it('one naming another host than Host is refused, whichever of the two is allowed', async () => {
      const before = bytesAt(DENIED) + bytesAt(REAL);
      for (const [target, host] of [
        ['http://denied.test/', 'allowed.test'],
        ['http://allowed.test/', 'denied.test'],
      ] as const) {
        const { reply, line } = await send(REAL, 80, GET(host, target));
        expect(reply).toContain('403 Forbidden');
        expect(connectionFields(line)).toMatchObject({ 'egressd.verdict': 'refuse', 'event.reason': 'malformed-http', 'egressd.upstream.ip': undefined });
      }
      expect(bytesAt(DENIED) + bytesAt(REAL)).toBe(before);
    });

    it('a Host whose port is no number is refused, though nginx serves the host and ignores what follows the colon', async () => {
      const before = bytesAt(REAL);
      const { reply, line } = await send(REAL, 80, GET('allowed.test:http'));
      expect(reply).toContain('403 Forbidden');
      expect(connectionFields(line)).toMatchObject({ 'egressd.verdict': 'refuse', 'event.reason': 'malformed-http', 'egressd.upstream.ip': undefined });
      expect(bytesAt(REAL)).toBe(before);
    });

    it('one with userinfo is refused, wherever `@` would put the host', async () => {
      const { reply, line } = await send(REAL, 80, GET('allowed.test', 'http://allowed.test@denied.test/'));
      expect(reply).toContain('403 Forbidden');
      expect(connectionFields(line)).toMatchObject({ 'egressd.verdict': 'refuse', 'event.reason': 'malformed-http' });
    });

    it("one alone, without Host, is judged by its host and dialed at that host's own address", async () => {
      const before = bytesAt(ATTACKER);
      const { reply, line } = await send(ATTACKER, 80, 'GET http://allowed.test/ HTTP/1.1\\r\\nConnection: close\\r\\n\\r\\n');
      expect(reply).toContain('200 OK');
      expect(connectionFields(line)).toMatchObject({ 'destination.domain': 'allowed.test', 'egressd.verdict': 'allow', 'egressd.upstream.ip': REAL });
      expect(bytesAt(ATTACKER)).toBe(before);
      const denied = await send(REAL, 80, 'GET http://denied.test/ HTTP/1.1\\r\\nConnection: close\\r\\n\\r\\n');
      expect(denied.reply).toContain('403 Forbidden');
      expect(connectionFields(denied.line)).toMatchObject({
        'destination.domain': 'denied.test',
        'egressd.verdict': 'refuse',
        'event.reason': 'default-block',
      });
    });
  });

  describe('a ClientHello that names two hosts, or a name that is no host name', () => {
    /** A raw ClientHello, as hex for the send client (sendClientArgs). */
    const hello = (spec: Parameters<typeof buildHello>[0], records = 1): string => `hex:${Buffer.from(buildHello(spec, { records })).toString('hex')}`;
    /** RFC 8446 §6: a fatal access_denied alert record (net/refuse.ts ACCESS_DENIED_ALERT), as Python's repr writes it. */
    const ALERT = String.raw`\x15\x03\x03\x00\x02\x021`;

    it('two host_names in one server_name list, or two server_name extensions, are refused: a server reads one of them, egressd cannot say which (RFC 6066 §3, RFC 8446 §4.2)', async () => {
      const before = bytesAt(DENIED);
      for (const spec of [
        { sni: ['allowed.test', 'denied.test'] },
        { sni: ['allowed.test'], extra: [ext(0x0000, serverNameExtension({ sni: ['denied.test'] }))] },
      ]) {
        const { reply, line } = await send(DENIED, 443, hello(spec), rig.sandbox2V4);
        expect(reply).toContain(ALERT);
        expect(connectionFields(line)).toMatchObject({ 'egressd.verdict': 'refuse', 'event.reason': 'malformed-tls', 'egressd.upstream.ip': undefined });
      }
      expect(bytesAt(DENIED)).toBe(before);
    });

    it("a server_name entry of another type than host_name is refused, before or after the host_name, though Go's crypto/tls skips it and reads the host_name", async () => {
      const before = bytesAt(REAL);
      for (const serverNames of [
        [
          { type: 1, name: 'denied.test' },
          { type: 0, name: 'allowed.test' },
        ],
        [
          { type: 0, name: 'allowed.test' },
          { type: 1, name: 'denied.test' },
        ],
      ]) {
        const { reply, line } = await send(REAL, 443, hello({ serverNames }));
        expect(reply).toContain(ALERT);
        expect(connectionFields(line)).toMatchObject({ 'egressd.verdict': 'refuse', 'event.reason': 'malformed-tls', 'egressd.upstream.ip': undefined });
      }
      expect(bytesAt(REAL)).toBe(before);
    });

    it('an SNI with a NUL is refused, not cut at the NUL, whichever half is denied', async () => {
      const before = bytesAt(DENIED);
      for (const sni of ['allowed.test\0.denied.test', 'denied.test\0.allowed.test']) {
        const { reply, line } = await send(DENIED, 443, hello({ sni: [sni] }), rig.sandbox2V4);
        expect(reply).toContain(ALERT);
        expect(connectionFields(line)).toMatchObject({ 'egressd.verdict': 'refuse', 'event.reason': 'invalid-name', 'egressd.upstream.ip': undefined });
      }
      expect(bytesAt(DENIED)).toBe(before);
    });

    it('a denied SNI in upper case with a trailing dot, its hello cut across three records, is refused by the deny rule', async () => {
      const before = bytesAt(DENIED);
      const { reply, line } = await send(DENIED, 443, hello({ sni: ['X.DENIED.TEST.'] }, 3), rig.sandbox2V4);
      expect(reply).toContain(ALERT);
      expect(connectionFields(line)).toMatchObject({
        'destination.domain': 'x.denied.test',
        'egressd.verdict': 'refuse',
        'event.reason': 'deny-rule',
        'rule.name': 'denied_domains "*.denied.test"',
      });
      expect(bytesAt(DENIED)).toBe(before);
    });

    it("an SNI that spells an address is judged as no name: an allow list by name refuses it, even naming the allowed name's own address", async () => {
      const before = bytesAt(REAL);
      for (const sni of [REAL, '0xc6.18.1.2']) {
        const { reply, line } = await send(REAL, 443, hello({ sni: [sni] }));
        expect(reply).toContain(ALERT);
        expect(connectionFields(line)).toMatchObject({
          'destination.domain': undefined,
          'egressd.raw_name': sni,
          'egressd.verdict': 'refuse',
          'event.reason': 'default-block',
        });
      }
      expect(bytesAt(REAL)).toBe(before);
    });
  });

  describe('an IPv4-mapped destination is its IPv4 address', () => {
    it("from an IPv6 socket, a spoofed `::ffff:` destination goes to the name's own address, and a denied name is refused", async () => {
      const before = bytesAt(ATTACKER);
      const ok = await send(`::ffff:${ATTACKER}`, 80, GET('allowed.test'));
      expect(ok.reply).toContain('200 OK');
      expect(ok.reply).toContain(REAL);
      expect(connectionFields(ok.line)).toMatchObject({ 'destination.ip': ATTACKER, 'egressd.verdict': 'allow', 'egressd.upstream.ip': REAL });
      expect(bytesAt(ATTACKER)).toBe(before);
      const refused = await send(`::ffff:${DENIED}`, 80, GET('denied.test'));
      expect(refused.reply).toContain('403 Forbidden');
      expect(connectionFields(refused.line)).toMatchObject({ 'destination.ip': DENIED, 'egressd.verdict': 'refuse', 'event.reason': 'default-block' });
    });

    it('the metadata address in mapped form is a protected address, whatever name the request carries', async () => {
      const { reply, line } = await send('::ffff:169.254.169.254', 80, GET('allowed.test'), rig.sandbox2V4);
      expect(reply).toContain('403 Forbidden');
      expect(connectionFields(line)).toMatchObject({ 'destination.ip': '169.254.169.254', 'egressd.verdict': 'refuse', 'event.reason': 'protected-address' });
    });
  });
});
