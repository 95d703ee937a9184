// Verdicts that hold against the world (issue 10 parts 1, 3, 4, 7, 8), on the real path: a
// sandbox namespace REDIRECTed by `egressd iptables --apply` to an egressd process, real clients
// (curl, openssl, python3 sockets) and real servers in an "internet" namespace, dnsmasq as the
// resolver. The sandbox's policy is changed through the API between (and during) tests.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRig, rigUnavailableReason, type Rig } from '../helpers/netns-rig.ts';
import type { DaemonProcess, LogLine } from '../helpers/daemon-process.ts';
import { field, destinationOf, connectionFields } from '../helpers/log-line.ts';
import { adminIn, curlIn, statusIn, type CurlOptions } from '../helpers/curl.ts';
import { CA, E2E_PORTS, serveIn, writeConfig } from '../helpers/e2e-daemon.ts';
import { sendClientArgs, sendClientResult } from '../helpers/send-client.ts';
const TOKEN = 'e2e-verdicts-token';

// Addresses in the internet namespace (198.18.0.0/15 and 2001:db8::/32 only).
const REAL = '198.18.1.2'; // other.test, allowed.test
const DENIED = '198.18.1.3'; // blocked.test
const CIDR_OK = '198.18.1.5'; // allowed by CIDR
const ATTACKER = '198.18.1.9'; // attacker.test
const FLAKY = '198.18.1.30'; // multi.test's first address: resets every connection
const FLAKY6 = '2001:db8:0:2::30'; // multi.test's second address: answers
const HOLE = '198.18.1.31'; // slow.test's first address: drops every SYN
const HOLE_OK = '198.18.1.32'; // slow.test's second address
const GREETER = '198.18.1.40'; // a server-first service on 443 and 80 (python, not upstream-server)
const HANG = '198.18.1.41'; // drops every SYN: a dial that never completes

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e verdicts skipped: ${skip}`);

const PY_WAIT_THEN_TLS = `
import socket, ssl, sys, time
ip, name, wait, ca = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
s = socket.create_connection((ip, 443), timeout=10)
print("port", s.getsockname()[1], flush=True)
time.sleep(wait)
try:
    t = ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname=name)
    print("connected")
except ssl.SSLError as e:
    print("ssl-error", e.reason)
except Exception as e:
    print("error", type(e).__name__)
`;

const PY_GREETER = `
import socket, sys, threading
ip = sys.argv[1]
def serve(port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port)); srv.listen(16)
    while True:
        c, _ = srv.accept()
        try:
            c.sendall(b"220 greeter ready\\r\\n")
        except Exception:
            pass
        c.close()
for p in (80, 443):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
`;

const PY_WAIT_GREETING = `
import socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
t = time.monotonic()
s = socket.create_connection((ip, port), timeout=15)
print("port", s.getsockname()[1], flush=True)
try:
    d = s.recv(100)
    print("greeting", repr(d), round((time.monotonic() - t) * 1000))
except Exception as e:
    print("error", type(e).__name__, round((time.monotonic() - t) * 1000))
`;

describe.skipIf(skip !== null)('verdicts that hold against real clients (issue 10)', () => {
  let rig: Rig;
  let daemon: DaemonProcess;
  let dir: string;

  beforeAll(async () => {
    rig = await createRig();
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-verdicts-'));
    await rig.servers([REAL, DENIED, CIDR_OK, ATTACKER, FLAKY, FLAKY6, HOLE, HOLE_OK]);
    await rig.dns({
      'other.test': [REAL],
      'allowed.test': [REAL],
      'blocked.test': [DENIED],
      'attacker.test': [ATTACKER],
      'multi.test': [FLAKY, FLAKY6],
      'slow.test': [HOLE, HOLE_OK],
    });
    // The internet namespace resets FLAKY, and black-holes HOLE and HANG.
    const ifc = (await rig.execIn('internet', 'ip', ['-o', '-4', 'addr', 'show'])).stdout
      .split('\n')
      .find((l) => l.includes(`${REAL}/`))!
      .split(/\s+/)[1]!;
    for (const a of [GREETER, HANG]) expect((await rig.execIn('internet', 'ip', ['addr', 'add', `${a}/24`, 'dev', ifc])).code).toBe(0);
    for (const args of [
      ['-I', 'INPUT', '-d', FLAKY, '-p', 'tcp', '-j', 'REJECT', '--reject-with', 'tcp-reset'],
      ['-I', 'INPUT', '-d', HOLE, '-p', 'tcp', '--syn', '-j', 'DROP'],
      ['-I', 'INPUT', '-d', HANG, '-p', 'tcp', '--syn', '-j', 'DROP'],
    ]) {
      const r = await rig.execIn('internet', 'iptables', args);
      expect(r.code, r.stderr).toBe(0);
    }
    const greeter = rig.spawnIn('internet', 'python3', ['-c', PY_GREETER, GREETER]);
    await new Promise<void>((r) => greeter.stdout!.once('data', () => r()));

    const config = {
      listen: { http: ['0.0.0.0:15080', '[::]:15080'], tls: ['0.0.0.0:15443', '[::]:15443'], tcp: ['0.0.0.0:15001', '[::]:15001'] },
      admin: { listen: '127.0.0.1:9901', token: TOKEN },
      dns: { servers: [rig.dnsServer], sandboxServers: [rig.dnsServer] },
      // A first-byte wait long enough for a client to be told apart from one that waits for
      // the server; the peek deadline beyond it.
      peek: { timeoutMs: 6000, firstByteTimeoutMs: 2000 },
      upstream: { connectTimeoutMs: 4000 },
      protected: { except: ['198.18.0.0/15', '2001:db8::/32'] },
      state: { path: join(dir, 'state.db') },
    };
    daemon = await serveIn(rig, 'router', writeConfig(dir, config));
    await rig.redirect(E2E_PORTS);
    await putSandbox({ sources: [rig.sandboxV4, rig.sandboxV6], network: { mode: 'allow-all' } });
  }, 120_000);

  afterAll(async () => {
    await daemon?.stop('SIGTERM');
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const api = async (method: string, path: string, body: unknown): Promise<number> =>
    Number((await adminIn(rig, TOKEN, method, path, body, { output: '/dev/null', writeOut: '%{http_code}' })).stdout);
  const putSandbox = async (body: unknown): Promise<void> => {
    const code = await api('PUT', '/api/v1/sandboxes/sb', body);
    expect([200, 201]).toContain(code);
  };
  const setNetwork = async (network: unknown): Promise<void> => expect(await api('PUT', '/api/v1/sandboxes/sb/network', network)).toBe(200);
  const inSandbox = (cmd: string, args: string[], timeoutMs = 20_000) => rig.execIn('sandbox', cmd, args, { timeoutMs });
  const curl = (url: string, opts?: CurlOptions) => curlIn(rig, 'sandbox', url, opts);
  const fromPort = (port: string) => (l: LogLine) => String(field(l, 'source.port')) === port;
  const eventsAt = (address: string): number => rig.events().filter((e) => e.local.startsWith(`${address}:`) || e.local.startsWith(`[${address}]:`)).length;
  const bytesAt = (address: string): number =>
    rig.events().filter((e) => e.event === 'data' && (e.local.startsWith(`${address}:`) || e.local.startsWith(`[${address}]:`))).length;
  /** The send client's options here: a reply is whole after 3 s without a byte; its first 200 bytes are shown. */
  const clientOptions = (waitS: number) => ({ waitS, readTimeoutS: 3, show: 200 });
  /** python3 in the sandbox: connect, wait `waitS`, send `payload` (Python escapes), read the reply. */
  const waitThenSend = (ip: string, port: number, waitS: number, payload: string) => {
    const run = inSandbox('python3', sendClientArgs(ip, port, payload, clientOptions(waitS)));
    return run.then((r) => {
      const { port: port_, reply } = sendClientResult(r.stdout, r.stderr);
      return { port: port_ ?? '', reply };
    });
  };
  /**
   * The same client as a process of its own, so a test can act once it is connected (python's
   * start-up in the namespace takes a while): `connected` gives its port, `done` its reply.
   */
  const startClient = (ip: string, port: number, waitS: number, payload: string) => {
    const child = rig.spawnIn('sandbox', 'python3', sendClientArgs(ip, port, payload, clientOptions(waitS)));
    let out = '';
    child.stdout!.setEncoding('utf8');
    const connected = new Promise<string>((resolve) => {
      child.stdout!.on('data', (d: string) => {
        out += d;
        const m = /^port (\d+)$/m.exec(out);
        if (m) resolve(m[1]!);
      });
    });
    const done = new Promise<string>((resolve) => child.once('exit', () => resolve(out)));
    return { connected, done };
  };
  const GET = (host: string) => `GET / HTTP/1.1\\r\\nHost: ${host}\\r\\nConnection: close\\r\\n\\r\\n`;

  describe('part 1: a policy change reaches every connection that is not yet decided', () => {
    it("the issue's example: a change made while the client waits in the peek judges its request (403, no upstream connection)", async () => {
      // allow-all with a deny list: a name can matter, so the connection waits in the peek.
      await setNetwork({ mode: 'allow-all', egress: { denied_domains: ['attacker.test'] } });
      const before = eventsAt(REAL);
      const client = startClient(REAL, 80, 1.5, GET('other.test'));
      const port = await client.connected;
      await setNetwork({ mode: 'block-all' });
      expect(await client.done).toContain('403');
      expect(connectionFields(await daemon.outcome(fromPort(port)))).toMatchObject({
        'egressd.verdict': 'refuse',
        'event.reason': 'default-block',
        'egressd.ended_by': 'policy',
        'egressd.upstream.ip': undefined,
      });
      expect(eventsAt(REAL)).toBe(before);
    });

    it('the same on the tls listener with a real TLS client (Python ssl): the alert, not the upstream', async () => {
      await setNetwork({ mode: 'allow-all', egress: { denied_domains: ['attacker.test'] } });
      const before = eventsAt(REAL);
      const client = inSandbox('python3', ['-c', PY_WAIT_THEN_TLS, REAL, 'other.test', '1.2', CA]);
      await new Promise((r) => setTimeout(r, 300));
      await setNetwork({ mode: 'block-all' });
      const r = await client;
      expect(r.stdout).toMatch(/ssl-error .*ACCESS_DENIED/i);
      expect(connectionFields(await daemon.outcome(fromPort(/^port (\d+)$/m.exec(r.stdout)![1]!)))).toMatchObject({
        'network.protocol': 'tls',
        'destination.domain': 'other.test',
        'event.reason': 'default-block',
      });
      expect(eventsAt(REAL)).toBe(before);
    });

    it('an organization change reaches a connection waiting in the peek', async () => {
      expect([200, 201]).toContain(await api('PUT', '/api/v1/orgs/acme', { tier: 4 }));
      await putSandbox({ sources: [rig.sandboxV4, rig.sandboxV6], org: 'acme', network: { mode: 'allow-all', egress: { denied_domains: ['attacker.test'] } } });
      const client = startClient(REAL, 80, 1.5, GET('other.test'));
      const port = await client.connected;
      // Tier 1: the essential services only.
      expect(await api('PUT', '/api/v1/orgs/acme', { tier: 1 })).toBe(200);
      expect(await client.done).toContain('403');
      expect(connectionFields(await daemon.outcome(fromPort(port)))).toMatchObject({
        'egressd.verdict': 'refuse',
        'rule.name': 'org acme: mode "block-all"',
        'egressd.upstream.ip': undefined,
      });
      await putSandbox({ sources: [rig.sandboxV4, rig.sandboxV6], network: { mode: 'allow-all' } });
    });

    it('a change made while the upstream is being dialed closes it before any byte goes up', async () => {
      await setNetwork({ mode: 'allow-all' });
      // No name can matter: decided at accept, then dialing HANG, which never answers.
      const client = startClient(HANG, 7000, 0.2, 'hello\\r\\n');
      const port = await client.connected;
      await new Promise((r) => setTimeout(r, 500));
      await setNetwork({ mode: 'block-all' });
      await client.done;
      expect(connectionFields(await daemon.outcome(fromPort(port)))).toMatchObject({
        'egressd.verdict': 'refuse',
        'event.reason': 'policy-changed',
        'egressd.ended_by': 'policy',
        'egressd.upstream.ip': undefined,
      });
    });

    it('a connection that was spliced at once (no name could matter) is closed by the change, and no byte reaches the upstream', async () => {
      await setNetwork({ mode: 'allow-all' });
      const before = bytesAt(REAL);
      const client = startClient(REAL, 80, 1.5, GET('other.test'));
      const port = await client.connected;
      await new Promise((r) => setTimeout(r, 300));
      await setNetwork({ mode: 'block-all' });
      expect(await client.done).not.toContain('200 OK');
      expect(connectionFields(await daemon.outcome(fromPort(port)))).toMatchObject({
        'egressd.verdict': 'refuse',
        'event.reason': 'policy-changed',
        'egressd.ended_by': 'policy',
      });
      expect(bytesAt(REAL)).toBe(before);
    });
  });

  describe('part 3: every listener reads the name in either protocol', () => {
    it("the issue's example: plain HTTP with a denied Host on port 443 is refused as on port 80", async () => {
      await setNetwork({ mode: 'allow-all', egress: { denied_domains: ['blocked.test'] } });
      const before = eventsAt(DENIED);
      const { port, reply } = await waitThenSend(DENIED, 443, 0, GET('blocked.test'));
      expect(reply).toContain('403');
      expect(connectionFields(await daemon.outcome(fromPort(port)))).toMatchObject({
        'egressd.listener': 'tls',
        'network.protocol': 'http',
        'destination.domain': 'blocked.test',
        'event.reason': 'deny-rule',
      });
      expect(eventsAt(DENIED)).toBe(before);
    });

    it('a TLS ClientHello with a denied SNI on port 80 gets the alert', async () => {
      await setNetwork({ mode: 'allow-all', egress: { denied_domains: ['blocked.test'] } });
      const r = await inSandbox('openssl', ['s_client', '-connect', `${DENIED}:80`, '-servername', 'blocked.test', '-CAfile', CA], 20_000);
      expect(`${r.stdout}${r.stderr}`).toMatch(/access denied/i);
      expect(connectionFields(await daemon.outcome((l) => destinationOf(l) === `${DENIED}:80` && field(l, 'network.protocol') === 'tls'))).toMatchObject({
        'egressd.listener': 'http',
        'destination.domain': 'blocked.test',
        'event.reason': 'deny-rule',
      });
    });

    it('HTTP to an allowed name on port 443 and TLS on port 80 are allowed by their names', async () => {
      // The upstream speaks TLS on 443 and HTTP on 80, so the exchanges themselves fail there:
      // what is checked is egressd's verdict, by name, on the listener of the other protocol.
      await setNetwork({ mode: 'block-all', egress: { allowed_domains: ['other.test'] } });
      await curl('http://other.test:443/', { resolve: REAL, maxTimeS: 5 });
      expect(
        connectionFields(
          await daemon.outcome(
            (l) => field(l, 'egressd.listener') === 'tls' && field(l, 'network.protocol') === 'http' && field(l, 'destination.domain') === 'other.test',
          ),
        ),
      ).toMatchObject({
        'egressd.verdict': 'allow',
        'event.reason': 'allow-rule',
        'egressd.upstream.ip': REAL,
      });
      await curl('https://other.test:80/', { resolve: REAL, cacert: CA, maxTimeS: 5 });
      expect(
        connectionFields(
          await daemon.outcome(
            (l) => field(l, 'egressd.listener') === 'http' && field(l, 'network.protocol') === 'tls' && field(l, 'destination.domain') === 'other.test',
          ),
        ),
      ).toMatchObject({
        'egressd.verdict': 'allow',
        'event.reason': 'allow-rule',
        'egressd.upstream.ip': REAL,
      });
    });
  });

  describe('part 4: neither TLS nor HTTP is judged by address and port', () => {
    it("the issue's example (a): an SSH banner to port 80 of an address allowed by CIDR is relayed, decided at accept", async () => {
      await setNetwork({ mode: 'block-all', egress: { allowed_domains: ['other.test'], allowed_cidrs: [`${CIDR_OK}/32`] } });
      const before = bytesAt(CIDR_OK);
      const { port, reply } = await waitThenSend(CIDR_OK, 80, 0, 'SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6\\r\\n');
      expect(reply).not.toContain('403');
      const o = await daemon.outcome(fromPort(port));
      expect(connectionFields(o)).toMatchObject({ 'egressd.verdict': 'allow', 'event.reason': 'allow-rule', 'egressd.upstream.ip': CIDR_OK });
      expect(field(o, 'egressd.peek_duration')).toBeUndefined();
      expect(bytesAt(CIDR_OK)).toBeGreaterThan(before);
    });

    it('where the peek runs (a deny list), an SSH banner, a Redis command and an HTTP/0.9 line are read as not HTTP and relayed', async () => {
      await setNetwork({ mode: 'allow-all', egress: { denied_domains: ['blocked.test'] } });
      const ssh = await waitThenSend(CIDR_OK, 80, 0, 'SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6\\r\\n');
      expect(connectionFields(await daemon.outcome(fromPort(ssh.port)))).toMatchObject({
        'egressd.verdict': 'allow',
        'network.protocol': 'unknown',
        'egressd.upstream.ip': CIDR_OK,
      });
      const ping = await waitThenSend(CIDR_OK, 7000, 0, '*1\\r\\n$4\\r\\nPING\\r\\n');
      expect(ping.reply).toContain('PING');
      expect(connectionFields(await daemon.outcome(fromPort(ping.port)))).toMatchObject({ 'egressd.verdict': 'allow', 'network.protocol': 'unknown' });
      const old = await waitThenSend(CIDR_OK, 443, 0, 'GET /\\r\\n');
      expect(connectionFields(await daemon.outcome(fromPort(old.port)))).toMatchObject({
        'egressd.verdict': 'allow',
        'network.protocol': 'unknown',
        'egressd.listener': 'tls',
      });
    });

    it('not HTTP to an address the policy does not allow is refused by address', async () => {
      await setNetwork({ mode: 'block-all', egress: { allowed_domains: ['other.test'], allowed_cidrs: [`${CIDR_OK}/32`] } });
      const refused = await waitThenSend(DENIED, 7000, 0, '*1\\r\\n$4\\r\\nPING\\r\\n');
      expect(connectionFields(await daemon.outcome(fromPort(refused.port)))).toMatchObject({
        'egressd.verdict': 'refuse',
        'event.reason': 'default-block',
        'network.protocol': 'unknown',
        'egressd.ended_by': 'policy',
      });
    });

    it('bad HTTP stays refused where the peek runs: obs-fold, two Hosts, a bare LF', async () => {
      await setNetwork({ mode: 'allow-all', egress: { denied_domains: ['blocked.test'] } });
      const fold = await waitThenSend(CIDR_OK, 80, 0, 'GET / HTTP/1.1\\r\\nHost: other.test\\r\\n x\\r\\n\\r\\n');
      expect(fold.reply).toContain('403');
      expect(connectionFields(await daemon.outcome(fromPort(fold.port)))).toMatchObject({ 'event.reason': 'malformed-http', 'egressd.ended_by': 'client' });
      const two = await waitThenSend(CIDR_OK, 443, 0, 'GET / HTTP/1.1\\r\\nHost: other.test\\r\\nHost: x.test\\r\\n\\r\\n');
      expect(two.reply).toContain('403');
      const lf = await waitThenSend(CIDR_OK, 7000, 0, 'GET / HTTP/1.1\\nHost: blocked.test\\r\\n\\r\\n');
      expect(lf.reply).toContain('403');
    });

    it("the issue's example (b): a server-first service on 443 under full access greets at once", async () => {
      await setNetwork({ mode: 'allow-all' });
      for (const port of [443, 80]) {
        const r = await inSandbox('python3', ['-c', PY_WAIT_GREETING, GREETER, String(port)]);
        const m = /^greeting (.*) (\d+)$/m.exec(r.stdout);
        expect(m?.[1], r.stdout).toContain('220 greeter ready');
        // Decided at accept: no peek at all.
        const o = await daemon.outcome(fromPort(/^port (\d+)$/m.exec(r.stdout)![1]!));
        expect(connectionFields(o)).toMatchObject({ 'egressd.verdict': 'allow', 'network.protocol': 'none', 'egressd.upstream.ip': GREETER });
        expect(field(o, 'egressd.peek_duration')).toBeUndefined();
      }
    });

    it('where a name could matter, a server-first service is judged by address after the first-byte wait, not reset at the peek deadline', async () => {
      await setNetwork({ mode: 'allow-all', egress: { denied_domains: ['blocked.test'] } });
      const r = await inSandbox('python3', ['-c', PY_WAIT_GREETING, GREETER, '443']);
      const m = /^greeting (.*) (\d+)$/m.exec(r.stdout);
      expect(m?.[1], r.stdout).toContain('220 greeter ready');
      // Judged after peek.firstByteTimeoutMs (2 s here), never cut at the peek deadline; the wait
      // is whole, counted from the accept (times-from-accept.test.ts), within the log's whole ms.
      const o = await daemon.outcome(fromPort(/^port (\d+)$/m.exec(r.stdout)![1]!));
      expect(connectionFields(o)).toMatchObject({ 'egressd.verdict': 'allow', 'network.protocol': 'none', 'event.reason': 'default-allow' });
      expect(Number(field(o, 'egressd.peek_duration'))).toBeGreaterThanOrEqual(1999e6);
      // The same under an allowing CIDR beside an allow list.
      await setNetwork({ mode: 'block-all', egress: { allowed_domains: ['other.test'], allowed_cidrs: [`${GREETER}/32`] } });
      const c = await inSandbox('python3', ['-c', PY_WAIT_GREETING, GREETER, '80']);
      expect(c.stdout).toContain('220 greeter ready');
    });
  });

  describe('parts 5 and 6 through the real path: any token method, leading empty lines', () => {
    it("the issue's examples: MKACTIVITY to port 5432 and a leading CRLF on the tcp listener are judged by their Host", async () => {
      await setNetwork({ mode: 'allow-all', egress: { denied_domains: ['blocked.test', 'denied.test'] } });
      const mk = await waitThenSend(DENIED, 5432, 0, 'MKACTIVITY / HTTP/1.1\\r\\nHost: blocked.test\\r\\n\\r\\n');
      expect(mk.reply).toContain('403');
      expect(connectionFields(await daemon.outcome(fromPort(mk.port)))).toMatchObject({
        'egressd.listener': 'tcp',
        'network.protocol': 'http',
        'destination.domain': 'blocked.test',
        'event.reason': 'deny-rule',
      });
      const crlf = await waitThenSend(DENIED, 5432, 0, '\\r\\nGET / HTTP/1.1\\r\\nHost: denied.test\\r\\n\\r\\n');
      expect(crlf.reply).toContain('403');
      expect(connectionFields(await daemon.outcome(fromPort(crlf.port)))).toMatchObject({ 'destination.domain': 'denied.test', 'event.reason': 'deny-rule' });
    });

    it("under an allow list naming the Host, another token method and two leading empty lines pass to the name's address", async () => {
      await setNetwork({ mode: 'block-all', egress: { allowed_domains: ['other.test'] } });
      const brew = await waitThenSend(REAL, 80, 0, 'PROPFIND / HTTP/1.1\\r\\nHost: other.test\\r\\nConnection: close\\r\\n\\r\\n');
      expect(brew.reply).toContain(REAL);
      const two = await waitThenSend(ATTACKER, 80, 0, '\\r\\n\\r\\nGET / HTTP/1.1\\r\\nHost: other.test\\r\\nConnection: close\\r\\n\\r\\n');
      expect(two.reply).toContain(REAL);
    });
  });

  describe('part 7: a presented name is honoured under every mode', () => {
    it("the issue's example: an innocent SNI sent to a denied name's address reaches the innocent name's own address", async () => {
      await setNetwork({ mode: 'allow-all', egress: { denied_domains: ['attacker.test'] } });
      const before = eventsAt(ATTACKER);
      const r = await curl('https://other.test/', { resolve: ATTACKER, cacert: CA });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain(REAL);
      expect(
        connectionFields(await daemon.outcome((l) => destinationOf(l) === `${ATTACKER}:443` && field(l, 'destination.domain') === 'other.test')),
      ).toMatchObject({
        'egressd.verdict': 'allow',
        'egressd.upstream.ip': REAL,
      });
      expect(eventsAt(ATTACKER)).toBe(before);
    });

    it('the same with an HTTP Host, and a name that does not resolve is refused rather than dialed at the destination', async () => {
      await setNetwork({ mode: 'allow-all', egress: { denied_domains: ['attacker.test'] } });
      const before = eventsAt(ATTACKER);
      const h = await curl('http://other.test/', { resolve: ATTACKER });
      expect(h.stdout).toContain(REAL);
      expect(await statusIn(rig, 'sandbox', 'http://nowhere.test/', { resolve: ATTACKER })).toBe(403);
      expect(connectionFields(await daemon.outcome((l) => field(l, 'destination.domain') === 'nowhere.test'))).toMatchObject({
        'egressd.verdict': 'refuse',
        'event.reason': 'dns-failure',
        'egressd.ended_by': 'upstream',
      });
      expect(eventsAt(ATTACKER)).toBe(before);
    });

    it('a connection that carries no name is judged by address and port alone (docs/limits.md)', async () => {
      await setNetwork({ mode: 'allow-all', egress: { denied_domains: ['attacker.test'] } });
      const { port } = await waitThenSend(ATTACKER, 7000, 0, 'hi\\r\\n');
      expect(connectionFields(await daemon.outcome(fromPort(port)))).toMatchObject({
        'egressd.verdict': 'allow',
        'egressd.upstream.ip': ATTACKER,
        'destination.domain': undefined,
      });
    });
  });

  describe('part 8: the next address when one fails', () => {
    it("the issue's example: the first address resets, the next one (IPv6) answers, and the log lists both", async () => {
      await setNetwork({ mode: 'block-all', egress: { allowed_domains: ['multi.test'] } });
      const r = await curl('http://multi.test/', { resolve: FLAKY });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain(FLAKY6);
      const o = await daemon.outcome((l) => field(l, 'destination.domain') === 'multi.test' && destinationOf(l) === `${FLAKY}:80`);
      expect(connectionFields(o)).toMatchObject({
        'egressd.verdict': 'allow',
        'egressd.upstream.ip': FLAKY6,
        'egressd.upstream.tried': [`${FLAKY} refused`, `${FLAKY6} connected`],
      });
    });

    it("a spoofed destination goes to the name's addresses in turn; over TLS too", async () => {
      await setNetwork({ mode: 'block-all', egress: { allowed_domains: ['multi.test'] } });
      const r = await curl('https://multi.test/', { resolve: ATTACKER, cacert: CA, insecure: true });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain(FLAKY6);
    });

    it('a black-holed first address: the next attempt starts 250 ms later and answers within the connect budget', async () => {
      await setNetwork({ mode: 'block-all', egress: { allowed_domains: ['slow.test'] } });
      const r = await curl('http://slow.test/', { resolve: HOLE });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain(HOLE_OK);
      const o = await daemon.outcome((l) => field(l, 'destination.domain') === 'slow.test');
      expect(connectionFields(o)).toMatchObject({ 'egressd.upstream.ip': HOLE_OK, 'egressd.upstream.tried': [`${HOLE} cancelled`, `${HOLE_OK} connected`] });
      expect(Number(field(o, 'egressd.upstream.connect_duration'))).toBeGreaterThanOrEqual(240e6);
      expect(Number(field(o, 'egressd.upstream.connect_duration'))).toBeLessThan(4000e6);
    });
  });
});
