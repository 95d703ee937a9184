// Path MTU discovery through egressd with --other-protocols drop, on a live kernel, with both
// backends, over IPv4 and IPv6. A hop beyond an end of the rig (`rig.beyond`) forwards as the
// entry of a tunnel does: every link is 1500 octets, so each endpoint announces the MSS of a 1500
// link, and only the ICMP fragmentation needed (RFC 1191) or packet too big (RFC 8201) that the
// hop sends lets a full-sized segment through it. What is checked:
//   - a sandbox behind a 1280 hop: 1 MiB down and up through egressd (REDIRECTed, spliced), the
//     hop's ICMP about egressd's segments reaching egressd through EGRESSD-OTHER (RELATED);
//   - the reverse, a hop of 1400 (IPv4) or 1280 (IPv6, its minimum) between egressd and the
//     origin, the sandbox's own path 1500;
//   - a DNS answer of 1400 octets over UDP (EDNS(0)) from a server the rules pass, crossing the
//     1280 hop: the hop's ICMP goes to the server through EGRESSD-OTHER in FORWARD;
//   - still dropped: an ICMP error a sandbox forges that quotes no flow, and ICMP echo.
// Every check starts with empty neighbour caches (IPv6 neighbour discovery must pass) and no
// path MTU learned anywhere.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DaemonProcess } from '../helpers/daemon-process.ts';
import { MAIN, NODE, serveIn, writeConfig } from '../helpers/e2e-daemon.ts';
import { createRig, type Rig, type RigNamespace, rigUnavailableReason } from '../helpers/netns-rig.ts';
import { startReady } from '../helpers/ready-process.ts';

const HELPERS = join(resolve(import.meta.dirname, '..'), 'helpers');
const PATH_MTU = join(HELPERS, 'path-mtu.py');
const RAW_IP = join(HELPERS, 'raw-ip.py');
/** Served in the internet namespace, one router from egressd: the sandbox's origin for the hop on its own side. */
const FAR = { 4: '198.18.1.2', 6: '2001:db8:0:2::2' } as const;
/** The router's addresses facing the internet: where egressd's dials come from. */
const ROUTER_OUT = { 4: '198.18.1.1', 6: '2001:db8:0:2::1' } as const;
const BULK = 1_048_576;
const DNS_ANSWER = 1400;

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e path MTU tests skipped: ${skip}`);

describe.skipIf(skip !== null)('path MTU through egressd with --other-protocols drop', () => {
  let rig: Rig;
  let dir: string;
  let daemon: DaemonProcess | undefined;
  const client = (family: 4 | 6): string => (family === 4 ? rig.clientV4 : rig.clientV6);
  const origin = (family: 4 | 6): string => (family === 4 ? rig.originV4 : rig.originV6);

  const started = (ns: RigNamespace, cmd: string, args: string[]) => startReady(rig, ns, cmd, args);

  beforeAll(async () => {
    rig = await createRig();
    await rig.servers([FAR[4], FAR[6]]);
    await rig.beyond('client', { mtu: 1500 });
    await rig.beyond('origin', { mtu: 1500 });
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-mtu-'));
    const config = {
      listen: { http: ['0.0.0.0:15080', '[::]:15080'], tls: ['0.0.0.0:15443', '[::]:15443'], tcp: ['0.0.0.0:15001', '[::]:15001'] },
      admin: { listen: '127.0.0.1:9901', token: 'e2e-admin-token' },
      dns: { servers: [rig.dnsServer], sandboxServers: [rig.dnsServer] },
      protected: { except: ['198.18.0.0/15', '2001:db8::/32'] },
      state: { path: join(dir, 'state.json') },
      sandboxes: [
        {
          id: 'sb-mtu',
          sources: [rig.sandboxV4, rig.sandboxV6, rig.clientV4, rig.clientV6],
          network: { mode: 'block-all', egress: { allowed_cidrs: [`${FAR[4]}/32`, `${FAR[6]}/128`, `${rig.originV4}/32`, `${rig.originV6}/128`] } },
        },
      ],
    };
    daemon = await serveIn(rig, 'router', writeConfig(dir, config));
    await started('internet', 'python3', [PATH_MTU, 'serve', FAR[4], FAR[6]]);
    await started('origin', 'python3', [PATH_MTU, 'serve', rig.originV4, rig.originV6]);
  });
  afterAll(async () => {
    await daemon?.stop('SIGTERM');
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const must = async (ns: RigNamespace, cmd: string, args: string[], timeoutMs = 15_000): Promise<string> => {
    const r = await rig.execIn(ns, cmd, args, { timeoutMs });
    expect(r.code, `${cmd} ${args.join(' ')}\n${r.stderr}`).toBe(0);
    return r.stdout.trim();
  };
  /** Empty neighbour caches and no path MTU learned, in every namespace. */
  const forgetPaths = async (): Promise<void> => {
    for (const ns of ['client', 'sandbox', 'router', 'internet', 'origin'] as const) {
      await must(ns, 'ip', ['neigh', 'flush', 'all']);
      await must(ns, 'ip', ['-4', 'route', 'flush', 'cache']);
      await must(ns, 'ip', ['-6', 'route', 'flush', 'cache']);
    }
  };
  /** The path MTU namespace `ns` has learned for `to`, or null. */
  const learned = async (ns: RigNamespace, to: string): Promise<number | null> => {
    const m = /\bmtu (?:lock )?(\d+)/.exec(await must(ns, 'ip', ['route', 'get', to]));
    return m ? Number(m[1]) : null;
  };
  const bulk = (ns: RigNamespace, to: string, direction: 'up' | 'down'): Promise<string> =>
    must(ns, 'python3', [PATH_MTU, 'bulk', to, direction, String(BULK)], 45_000);

  describe.each(['iptables', 'nft'] as const)('host mode, with the %s backend', (backend) => {
    const iptables = (args: string[]) => must('router', NODE, [MAIN, 'iptables', ...args], 30_000);
    beforeAll(async () => {
      // The rules pass DNS to the far hosts (--dns-server), and to nothing else.
      const rules = ['--backend', backend, '--mode', 'host', '--interface', rig.sandboxIf, '--dns-port', 'off', '--other-protocols', 'drop'];
      await iptables(['--apply', ...rules, '--dns-server', FAR[4], '--dns-server', FAR[6]]);
    });
    afterAll(async () => {
      await iptables(['--remove']);
    });

    it.each([4, 6] as const)('a sandbox behind a hop of 1280: 1 MiB down and up through egressd, IPv%i', async (family) => {
      await rig.beyond('client', { mtu: 1280 });
      await rig.beyond('origin', { mtu: 1500 });
      await forgetPaths();
      expect(await bulk('client', FAR[family], 'down')).toBe('ok');
      // egressd's side learned it from the hop's ICMP, which came in from the sandbox's interface.
      expect(await learned('router', client(family))).toBe(1280);
      // Forgotten again: an end that knows the path MTU announces a smaller MSS, and no segment
      // would be too big for the hop.
      await forgetPaths();
      expect(await bulk('client', FAR[family], 'up')).toBe('ok');
      expect(await learned('client', FAR[family])).toBe(1280);
    });

    it.each([
      [4, 1400],
      [6, 1280],
    ] as const)('IPv%i: a hop of %i between egressd and the origin: 1 MiB down and up through egressd', async (family, mtu) => {
      await rig.beyond('client', { mtu: 1500 });
      await rig.beyond('origin', { mtu });
      await forgetPaths();
      expect(await bulk('sandbox', origin(family), 'up')).toBe('ok');
      expect(await learned('router', origin(family))).toBe(mtu);
      await forgetPaths();
      expect(await bulk('sandbox', origin(family), 'down')).toBe('ok');
      expect(await learned('origin', ROUTER_OUT[family])).toBe(mtu);
    });

    it.each([4, 6] as const)('a DNS answer of 1400 octets reaches a sandbox behind a hop of 1280, IPv%i', async (family) => {
      await rig.beyond('client', { mtu: 1280 });
      await rig.beyond('origin', { mtu: 1500 });
      await forgetPaths();
      const server = await started('internet', 'python3', [PATH_MTU, 'dns-serve', FAR[family], String(DNS_ANSWER)]);
      try {
        // The first answer is dropped at the hop; the server learns 1280 from its ICMP and
        // fragments the next one.
        expect(await must('client', 'python3', [PATH_MTU, 'dns-ask', FAR[family], '5'])).toBe(`answer ${DNS_ANSWER}`);
        expect(await learned('internet', client(family))).toBe(1280);
      } finally {
        if (server.child.pid !== undefined) process.kill(server.child.pid, 'SIGTERM');
        await server.output;
      }
    });

    it.each([4, 6] as const)('still drops a forged IPv%i ICMP error that quotes no flow, and ICMP echo', async (family) => {
      await rig.beyond('client', { mtu: 1280 });
      const seen: Record<string, string> = {};
      for (const from of ['client', 'sandbox'] as const) {
        await forgetPaths();
        const heard = await started('internet', 'python3', [RAW_IP, 'listen', family === 4 ? '1' : '58', String(family)]);
        seen[`${from} forged`] = await must(from, 'python3', [RAW_IP, 'forge-error', FAR[family]]);
        // The router's own packets pass every rule: the listener stops at this one.
        await must('router', 'python3', [RAW_IP, 'send', family === 4 ? '1' : '58', FAR[family], 'sentinel']);
        seen[`${from} heard`] = await heard.output;
        seen[`${from} ping`] = await must(from, 'python3', [RAW_IP, 'ping', FAR[family]]);
      }
      expect(seen).toEqual({
        'client forged': 'sent',
        'client heard': 'nothing',
        'client ping': 'timeout',
        'sandbox forged': 'sent',
        'sandbox heard': 'nothing',
        'sandbox ping': 'timeout',
      });
    });
  });
});
