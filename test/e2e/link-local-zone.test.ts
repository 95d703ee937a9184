// A link-local address names a host on one link only (RFC 4007 §6): the same fe80::b1 on two
// links is two hosts, and egressd must keep them apart on every data path, as Node's sockets do by
// writing the zone (`fe80::b1%eth1`). The rig gets a second link between the sandbox and router
// namespaces; both links carry the same link-local addresses (the sandbox's fe80::b1, the
// router's fe80::1), and on the router an upstream server on each link's fe80::1 says which link
// it is. `egressd iptables --apply` redirects both links' TCP to egressd in the router namespace.
// Real sockets (python3), each bound to its address with its interface.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DaemonProcess } from '../helpers/daemon-process.ts';
import { DATA_PATHS, MAIN, NODE, serveIn, writeConfig } from '../helpers/e2e-daemon.ts';
import { action, field } from '../helpers/log-line.ts';
import { createRig, rigUnavailableReason, type Rig } from '../helpers/netns-rig.ts';

const SANDBOX_LL = 'fe80::b1';
const ROUTER_LL = 'fe80::1';
/** Not a port the rules pass through: it goes to egressd's tcp listener, which dials it. */
const UPSTREAM_PORT = 8080;
/** Each key's allowance: a burst of 3, refilled at 1 a second (the least the schema allows). */
const BURST = 3;

// Serves "link IFNAME\n" on [fe80::1%IFNAME]:PORT for each interface given; prints "ready".
const SERVER = `
import socket, sys, threading
port = int(sys.argv[1])
def serve(s, label):
    while True:
        c, _ = s.accept()
        try:
            c.sendall(label)
        finally:
            c.close()
for ifname in sys.argv[2:]:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("${ROUTER_LL}", port, 0, socket.if_nametoindex(ifname)))
    s.listen(64)
    threading.Thread(target=serve, args=(s, ("link " + ifname + "\\n").encode()), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
`;

// For each "SOURCE%IF" argument in turn, `count` connections from that address and interface to
// the router's fe80::1 on the same interface; prints per argument what each one got: the bytes
// that came back, "closed" (none), or "reset".
const ATTEMPTS = `
import json, socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
out = {}
for arg in sys.argv[3:]:
    addr, _, ifname = arg.partition("%")
    scope = socket.if_nametoindex(ifname)
    got = []
    for i in range(count):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind((addr, 0, 0, scope))
        s.settimeout(5)
        try:
            s.connect(("${ROUTER_LL}", port, 0, scope))
            s.sendall(b"hello\\n")
            data = s.recv(100)
            got.append(data.decode().strip() if data else "closed")
        except OSError:
            got.append("reset")
        s.close()
    out[arg] = got
print(json.dumps(out))
`;

// For each interface given, one HTTP request by Node's http to the router's fe80::1 on that link,
// which writes the zone into the Host (`[fe80::1%IFNAME]:PORT`; Go's net/http, Python's
// http.client and curl leave it out); prints per interface what came back: the upstream's line (it
// answers "link IFNAME", not HTTP), the status of an HTTP answer (egressd's refusal), or "closed".
const HTTP_REQUESTS = `
const http = require('node:http');
const [port, ...ifnames] = process.argv.slice(1);
const one = (ifname) => new Promise((resolve) => {
  const req = http.get({ host: '${ROUTER_LL}%' + ifname, port: Number(port), path: '/', timeout: 5000 });
  req.on('response', (res) => { res.resume(); resolve(String(res.statusCode)); });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  // Not HTTP: the parser's error carries the bytes it could not read.
  req.on('error', (e) => resolve(e.rawPacket ? e.rawPacket.toString('latin1').split('\\n')[0].trim() : 'closed'));
});
(async () => {
  const out = {};
  for (const ifname of ifnames) out[ifname] = await one(ifname);
  console.log(JSON.stringify(out));
})();
`;

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e link-local-zone skipped: ${skip}`);

describe.skipIf(skip !== null)('link-local sources and destinations on two links', () => {
  let rig: Rig;
  let dir: string;
  /** The sandbox's and the router's ends of the two links. */
  let links: { sandbox: string; router: string }[];

  beforeAll(async () => {
    rig = await createRig();
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-zone-'));
    links = [
      { sandbox: `${rig.prefix}sb`, router: rig.sandboxIf },
      { sandbox: `${rig.prefix}s2`, router: `${rig.prefix}r2` },
    ];
    const must = async (ns: 'sandbox' | 'router', cmd: string, args: string[]): Promise<void> => {
      const r = await rig.execIn(ns, cmd, args);
      expect(r.code, `${cmd} ${args.join(' ')}: ${r.stderr}`).toBe(0);
    };
    // Made from inside the router namespace, so that no end ever appears in the root namespace;
    // both go with their namespaces at teardown.
    await must('router', 'ip', ['link', 'add', links[1]!.router, 'type', 'veth', 'peer', 'name', links[1]!.sandbox, 'netns', rig.ns.sandbox]);
    for (const l of links) {
      await must('sandbox', 'ip', ['addr', 'add', `${SANDBOX_LL}/64`, 'dev', l.sandbox, 'nodad']);
      await must('router', 'ip', ['addr', 'add', `${ROUTER_LL}/64`, 'dev', l.router, 'nodad']);
    }
    await must('sandbox', 'ip', ['link', 'set', links[1]!.sandbox, 'up']);
    await must('router', 'ip', ['link', 'set', links[1]!.router, 'up']);
    const apply = await rig.execIn(
      'router',
      NODE,
      [
        MAIN,
        'iptables',
        '--apply',
        '--mode',
        'host',
        ...links.flatMap((l) => ['--interface', l.router]),
        '--http-port',
        '15080',
        '--tls-port',
        '15443',
        '--tcp-port',
        '15001',
        '--dns-port',
        'off',
        '--dns-server',
        rig.dnsServer,
      ],
      { timeoutMs: 30_000 },
    );
    expect(apply.code, apply.stderr).toBe(0);
    const server = rig.spawnIn('router', 'python3', ['-c', SERVER, String(UPSTREAM_PORT), ...links.map((l) => l.router)]);
    await new Promise<void>((resolve, reject) => {
      const lines = createInterface({ input: server.stdout! });
      lines.on('line', (l) => {
        if (l === 'ready') resolve();
      });
      server.on('exit', (code) => reject(new Error(`the upstream server exited (${code})`)));
    });
  }, 60_000);

  afterAll(async () => {
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  const attempts = async (count: number, sources: readonly string[]): Promise<Record<string, string[]>> => {
    const r = await rig.execIn('sandbox', 'python3', ['-c', ATTEMPTS, String(UPSTREAM_PORT), String(count), ...sources], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as Record<string, string[]>;
  };

  describe.each(DATA_PATHS)('on $name', ({ env, plane }) => {
    /** egressd in the router namespace, link-local destinations unlocked, for `body`'s length. */
    const served = async <T>(extra: Record<string, unknown>, body: (daemon: DaemonProcess) => Promise<T>): Promise<T> => {
      const config = {
        listen: { http: ['[::]:15080'], tls: ['[::]:15443'], tcp: ['[::]:15001'] },
        admin: { listen: '127.0.0.1:9901', token: 'e2e-zone-token' },
        dns: { servers: [rig.dnsServer] },
        // fe80::1 is the router's own (egressd's host's): reachable as a service on the host's link-local address is.
        protected: { except: ['198.18.0.0/15', '2001:db8::/32', 'fe80::/10'], reachableHostAddresses: [ROUTER_LL] },
        defaultNetwork: { mode: 'allow-all' },
        limits: { sandbox: { connections: 100, undecided: 100, perSecond: 1, burst: BURST } },
        ...extra,
      };
      const daemon: DaemonProcess = await serveIn(rig, 'router', writeConfig(dir, config), { ...env });
      try {
        expect(await daemon.waitFor((l) => action(l) === 'data-plane', 5000)).toMatchObject(plane);
        return await body(daemon);
      } catch (e) {
        // What egressd made of each connection, for the failure's message.
        throw new Error(
          `${String(e)}\negressd's outcomes:\n${daemon
            .connections()
            .map((l) => JSON.stringify(l))
            .join('\n')}`,
          { cause: e },
        );
      } finally {
        await daemon.stop('SIGTERM');
      }
    };
    const on = (i: number): string => `${SANDBOX_LL}%${links[i]!.sandbox}`;

    it('dials a link-local original destination on the link the connection came in on', async () => {
      await served({}, async () => {
        const got = await attempts(1, [on(0), on(1)]);
        expect(got).toEqual({ [on(0)]: [`link ${links[0]!.router}`], [on(1)]: [`link ${links[1]!.router}`] });
      });
    }, 90_000);

    it('gives the same link-local address on another link an allowance of its own', async () => {
      await served({}, async (daemon) => {
        // One link's host spends its burst and more: some of its connections are reset at admission.
        const first = await attempts(BURST + 3, [on(0)]);
        expect(first[on(0)], JSON.stringify(first)).toContain('reset');
        // The same address on the other link is another host: its first burst is answered in full.
        const second = await attempts(BURST, [on(1)]);
        expect(second[on(1)], JSON.stringify(second)).toEqual(Array(BURST).fill(`link ${links[1]!.router}`));
        // The refusals are logged against the first link's block, named with its interface; the
        // address, an ECS ip field, without it (an index mapping it as an ip refuses a zone).
        const shed = await daemon.waitFor((l) => action(l) === 'connections-shed', 5000);
        expect(field(shed, 'source_block')).toBe(`fe80::/64%${links[0]!.router}`);
        expect(field(shed, 'source.ip')).toBe(SANDBOX_LL);
        // Each connection line the same way, with the interface apart.
        const line = await daemon.outcome((l) => field(l, 'observer.ingress.interface.name') === links[1]!.router, 5000);
        expect([field(line, 'source.ip'), field(line, 'destination.ip')]).toEqual([SANDBOX_LL, ROUTER_LL]);
      });
    }, 90_000);

    it('matches a sandbox whose source names a link-local address with its interface on that link only', async () => {
      const sandboxes = [{ id: 'on-link-0', sources: [`${SANDBOX_LL}%${links[0]!.router}`], network: { mode: 'block-all' } }];
      await served({ sandboxes }, async () => {
        const got = await attempts(1, [on(0), on(1)]);
        // Link 0's fe80::b1 is the sandbox, refused by its block-all; link 1's is no sandbox's.
        expect(got[on(0)], JSON.stringify(got)).not.toEqual([`link ${links[0]!.router}`]);
        expect(got[on(1)], JSON.stringify(got)).toEqual([`link ${links[1]!.router}`]);
      });
    }, 90_000);

    it('judges an HTTP request whose Host is the link-local destination with its zone by that destination, not as a bad name', async () => {
      // A domain deny rule makes the name matter, so the request head is read.
      const defaultNetwork = { mode: 'allow-all', egress: { denied_domains: ['denied.test'] } };
      await served({ defaultNetwork }, async (daemon) => {
        const r = await rig.execIn('sandbox', NODE, ['-e', HTTP_REQUESTS, String(UPSTREAM_PORT), ...links.map((l) => l.sandbox)], { timeoutMs: 60_000 });
        expect(r.code, r.stderr).toBe(0);
        expect(JSON.parse(r.stdout)).toEqual(Object.fromEntries(links.map((l) => [l.sandbox, `link ${l.router}`])));
        const line = await daemon.outcome((l) => field(l, 'observer.ingress.interface.name') === links[1]!.router, 5000);
        expect(field(line, 'egressd.raw_name')).toBe(`[${ROUTER_LL}%${links[1]!.sandbox}]`);
        expect(field(line, 'destination.domain')).toBeUndefined();
      });
    }, 90_000);
  });
});
