// A source that belongs to no sandbox is counted by the network block holding it: an IPv6 host
// chooses any address of its /64, so counted per exact address it could rotate through them and
// get a fresh allowance from each (match/tenant-key.ts). On the real path: `egressd iptables
// --apply` redirects the sandbox namespace's connections and port 53 to an egressd in the router
// namespace; a client there sends from several addresses of the sandbox link's /64
// (2001:db8:0:1::/64) and of a second /64 routed over the same link (2001:db8:0:3::/64), none of
// them a sandbox's source. Real sockets (python3), each bound to its source address.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DaemonProcess } from '../helpers/daemon-process.ts';
import { E2E_PORTS, serveIn, writeConfig } from '../helpers/e2e-daemon.ts';
import { createRig, rigUnavailableReason, type Rig } from '../helpers/netns-rig.ts';

const PORTS = { ...E2E_PORTS, dns: 15053 };
const ORIGIN6 = '2001:db8:0:2::2';
/** Four addresses of the sandbox link's /64, none of them registered. */
const ROTATED = ['2001:db8:0:1::a1', '2001:db8:0:1::a2', '2001:db8:0:1:ffff::a3', '2001:db8:0:1:8000::a4'];
/** Another /64 (of the same /48), routed over the sandbox link. */
const OTHER_PREFIX = '2001:db8:0:3::';
const OTHER = [`${OTHER_PREFIX}2`, `${OTHER_PREFIX}3`];
/**
 * Four link-local addresses (fe80::/64, RFC 4291 §2.5.6) on the sandbox link: a host picks any
 * of them as freely as of its global /64. egressd sees each with its interface (`fe80::b1%ifname`,
 * Node's remoteAddress and rinfo.address name the scope of a link-local address).
 */
const LINK_LOCAL = ['fe80::b1', 'fe80::b2', 'fe80::ffff:b3', 'fe80::8000:0:0:b4'];
/** Each key's allowance: a burst of 3, refilled at 1 a second (the least the schema allows). */
const BURST = 3;

// For each source address in turn, `count` attempts one after another, each on a new socket
// bound to that address; prints per source what each attempt got.
//   dns: the rcode of an A query for x.test over UDP (3 NXDOMAIN: answered by the default
//        policy; 5 REFUSED: rate-limited), or "silence".
//   tcp: "answered" when the connection carried bytes back (the default policy's 403),
//        "reset" when admission reset it at accept.
const ATTEMPTS = `
import json, socket, struct, sys
mode, server, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
out = {}
for src in sys.argv[5:]:
    got = []
    # A link-local source is given with its interface (fe80::a1%eth0): bound with its scope.
    addr, _, ifname = src.partition("%")
    bind = (addr, 0, 0, socket.if_nametoindex(ifname)) if ifname else (addr, 0)
    for i in range(count):
        if mode == "dns":
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.bind(bind)
            s.settimeout(2)
            s.sendto(struct.pack(">HHHHHH", i + 1, 0x0100, 1, 0, 0, 0) + b"\\x01x\\x04test\\x00\\x00\\x01\\x00\\x01", (server, port))
            try:
                got.append(s.recv(4096)[3] & 15)
            except socket.timeout:
                got.append("silence")
        else:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.bind(bind)
            s.settimeout(5)
            try:
                s.connect((server, port))
                s.sendall(b"GET / HTTP/1.1\\r\\nHost: x.test\\r\\nConnection: close\\r\\n\\r\\n")
                got.append("answered" if s.recv(100) else "reset")
            except OSError:
                got.append("reset")
        s.close()
    out[src] = got
print(json.dumps(out))
`;

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e unknown-source-prefix skipped: ${skip}`);

describe.skipIf(skip !== null)('sources of no sandbox, counted by their IPv6 prefix', () => {
  let rig: Rig;
  let dir: string;

  beforeAll(async () => {
    rig = await createRig();
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-prefix-'));
    const sandboxIf = `${rig.prefix}sb`;
    // Deprecated (preferred_lft 0), as the rig's second sandbox address: used only when bound.
    for (const a of [...ROTATED, ...OTHER, ...LINK_LOCAL]) {
      const r = await rig.execIn('sandbox', 'ip', ['addr', 'add', `${a}/64`, 'dev', sandboxIf, 'nodad', 'preferred_lft', '0']);
      expect(r.code, r.stderr).toBe(0);
    }
    const route = await rig.execIn('router', 'ip', ['-6', 'route', 'add', `${OTHER_PREFIX}/64`, 'dev', rig.sandboxIf]);
    expect(route.code, route.stderr).toBe(0);
    await rig.servers([ORIGIN6]);
    await rig.redirect(PORTS);
  }, 60_000);

  afterAll(async () => {
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  /** egressd in the router namespace with `limits` (and `dns.limits`) set as given, for `body`'s length. */
  const served = async <T>(extra: Record<string, unknown>, body: () => Promise<T>): Promise<T> => {
    const config = {
      listen: {
        http: ['[::]:15080'],
        tls: ['[::]:15443'],
        tcp: ['[::]:15001'],
        dns: ['[::]:15053'],
      },
      admin: { listen: '127.0.0.1:9901', token: 'e2e-prefix-token' },
      dns: { servers: [rig.dnsServer], limits: { perSecond: 1, burst: BURST } },
      protected: { except: ['198.18.0.0/15', '2001:db8::/32'] },
      ...extra,
      limits: { sandbox: { connections: 100, undecided: 100, perSecond: 1, burst: BURST }, ...(extra['limits'] as object) },
    };
    const daemon: DaemonProcess = await serveIn(rig, 'router', writeConfig(dir, config));
    try {
      return await body();
    } finally {
      await daemon.stop('SIGTERM');
    }
  };

  const attempts = async (mode: 'dns' | 'tcp', count: number, sources: readonly string[]): Promise<Record<string, (number | string)[]>> => {
    const [server, port] = mode === 'dns' ? [rig.dnsServerV6, '53'] : [ORIGIN6, '80'];
    const r = await rig.execIn('sandbox', 'python3', ['-c', ATTEMPTS, mode, server, port, String(count), ...sources], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as Record<string, (number | string)[]>;
  };
  const count = (got: Record<string, (number | string)[]>, sources: readonly string[], what: number | string): number =>
    sources.reduce((n, s) => n + got[s]!.filter((g) => g === what).length, 0);

  it('gives the addresses of one /64 one DNS allowance, and another /64 its own', async () => {
    await served({}, async () => {
      const got = await attempts('dns', BURST, [...ROTATED, ...OTHER]);
      // 12 queries from one /64 against a burst of 3: the rest REFUSED, whatever address asked
      // (a token or two may have flowed in while they were sent). Counted per address, every
      // one of them would have been answered.
      expect(count(got, ROTATED, 5), JSON.stringify(got)).toBeGreaterThanOrEqual(ROTATED.length * BURST - BURST - 2);
      expect(got[ROTATED[ROTATED.length - 1]!], JSON.stringify(got)).toContain(5);
      // The other /64 had asked nothing: its first burst is answered in full.
      expect(got[OTHER[0]!], JSON.stringify(got)).toEqual(Array(BURST).fill(3));
    });
  }, 90_000);

  it('gives the addresses of one /64 one connection allowance at admission, and another /64 its own', async () => {
    await served({}, async () => {
      const got = await attempts('tcp', BURST, [...ROTATED, ...OTHER]);
      expect(count(got, ROTATED, 'reset'), JSON.stringify(got)).toBeGreaterThanOrEqual(ROTATED.length * BURST - BURST - 2);
      expect(got[OTHER[0]!], JSON.stringify(got)).toEqual(Array(BURST).fill('answered'));
    });
  }, 90_000);

  it('counts by the prefix configured: at /48, both /64s share one allowance', async () => {
    await served({ limits: { unknownSourcePrefix: { ipv6: 48 } } }, async () => {
      const got = await attempts('dns', BURST, [...ROTATED.slice(0, 2), ...OTHER]);
      expect(count(got, OTHER, 5), JSON.stringify(got)).toBeGreaterThanOrEqual(OTHER.length * BURST - 2);
    });
  }, 90_000);

  it('gives the link-local addresses of one link one allowance, as a /64, whatever scope egressd sees them with', async () => {
    const sources = LINK_LOCAL.map((a) => `${a}%${rig.prefix}sb`);
    await served({}, async () => {
      const dns = await attempts('dns', BURST, sources);
      expect(count(dns, sources, 5), JSON.stringify(dns)).toBeGreaterThanOrEqual(sources.length * BURST - BURST - 2);
      const tcp = await attempts('tcp', BURST, sources);
      expect(count(tcp, sources, 'reset'), JSON.stringify(tcp)).toBeGreaterThanOrEqual(sources.length * BURST - BURST - 2);
    });
  }, 90_000);
});
