// --other-protocols against a live kernel: a sandbox's ICMP echo and raw IP protocols (GRE, an
// experimental number) refused in host and sidecar mode, with both backends, over IPv4 and IPv6;
// what must still pass: an ICMP error about a flow the sandbox opened (RELATED), neighbour
// discovery (every check starts from empty neighbour caches), redirected TCP; and with `pass`,
// everything as before.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join, resolve } from 'node:path';
import { MAIN, NODE } from '../helpers/e2e-daemon.ts';
import { createRig, type Rig, type RigNamespace, rigUnavailableReason } from '../helpers/netns-rig.ts';
import { startReady } from '../helpers/ready-process.ts';

const RAW_IP = join(resolve(import.meta.dirname, '..'), 'helpers/raw-ip.py');
/** Served by the rig in the internet namespace: the hosts the sandbox has no policy for. */
const FAR = { 4: '198.18.1.2', 6: '2001:db8:0:2::2' } as const;
/** The router's addresses facing the sandbox: host-bound traffic (filter INPUT in host mode). */
const ROUTER = { 4: '198.18.0.1', 6: '2001:db8:0:1::1' } as const;
const PROTOCOLS = [47, 253] as const;
const TCP_PORT = 15001;
// Answers every connection with "hi", dual-stack: where the redirect sends the sandbox's TCP.
const TCP_HI = `require('node:net').createServer((c) => c.end('hi')).listen(${TCP_PORT}, '::', () => console.log('ready'));`;
// Connects to argv[1] port 5000 and prints what it reads, or the error's code.
const TCP_CLIENT = `
const c = require('node:net').connect({ host: process.argv[1], port: 5000, timeout: 3000 });
let got = '';
c.on('data', (d) => (got += d)).on('end', () => { process.stdout.write(got); process.exit(0); });
c.on('timeout', () => { process.stdout.write('timeout'); process.exit(0); });
c.on('error', (e) => { process.stdout.write(e.code); process.exit(0); });
`;
// Sends one query to argv[1] port 53, reads one answer and closes: the server's next answer
// finds no socket and the sandbox's kernel answers it with an ICMP port unreachable.
const UDP_QUERY = `
import socket, sys
h = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ':' in h else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3); s.connect((h, 53)); s.send(b'query'); print(s.recv(64).decode()); s.close()
`;

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e iptables other-protocols tests skipped: ${skip}`);

describe.skipIf(skip !== null)('other IP protocols on a live kernel', () => {
  let rig: Rig;
  beforeAll(async () => {
    rig = await createRig();
    await rig.servers([FAR[4], FAR[6]]);
  });
  afterAll(async () => {
    await rig?.teardown();
  });

  const ok = async (ns: RigNamespace, args: string[]): Promise<void> => {
    const r = await rig.execIn(ns, NODE, [MAIN, 'iptables', ...args], { timeoutMs: 30_000 });
    expect(r.code, `egressd iptables ${args.join(' ')}\n${r.stderr}`).toBe(0);
  };
  const py = async (ns: RigNamespace, args: string[]): Promise<string> => {
    const r = await rig.execIn(ns, 'python3', args, { timeoutMs: 15_000 });
    expect(r.code, r.stderr).toBe(0);
    return r.stdout.trim();
  };
  /** Empty neighbour caches, so that what follows needs neighbour discovery (IPv6) and ARP anew. */
  const forgetNeighbours = async (): Promise<void> => {
    for (const ns of ['sandbox', 'router'] as const) {
      const r = await rig.execIn(ns, 'ip', ['neigh', 'flush', 'all']);
      expect(r.code, r.stderr).toBe(0);
    }
  };
  const started = (ns: RigNamespace, cmd: string, args: string[]) => startReady(rig, ns, cmd, args);
  /** What the sandbox's ping, and datagrams of each raw protocol, got: to the far hosts and (host mode) the router. */
  const probe = async (family: 4 | 6, toRouter: boolean): Promise<Record<string, string>> => {
    await forgetNeighbours();
    const seen: Record<string, string> = { [`ping ${FAR[family]}`]: await py('sandbox', [RAW_IP, 'ping', FAR[family]]) };
    if (toRouter) seen[`ping ${ROUTER[family]}`] = await py('sandbox', [RAW_IP, 'ping', ROUTER[family]]);
    for (const proto of PROTOCOLS) {
      const heard = await started('internet', 'python3', [RAW_IP, 'listen', String(proto), String(family)]);
      await py('sandbox', [RAW_IP, 'send', String(proto), FAR[family]]);
      // The router's own packets pass every rule: the listener stops at this one.
      await py('router', [RAW_IP, 'send', String(proto), FAR[family], 'sentinel']);
      seen[`protocol ${proto}`] = await heard.output;
    }
    return seen;
  };
  // Dropped on the way out of the pod, a send fails with EPERM at once; dropped by a router, it times out.
  const refused = (family: 4 | 6, toRouter: boolean) => ({
    [`ping ${FAR[family]}`]: toRouter ? 'timeout' : 'refused',
    ...(toRouter ? { [`ping ${ROUTER[family]}`]: 'timeout' } : {}),
    'protocol 47': 'nothing',
    'protocol 253': 'nothing',
  });
  const passed = (family: 4 | 6, toRouter: boolean) => ({
    [`ping ${FAR[family]}`]: 'reply',
    ...(toRouter ? { [`ping ${ROUTER[family]}`]: 'reply' } : {}),
    'protocol 47': 'got',
    'protocol 253': 'got',
  });
  /** The server's second answer to a sandbox's query draws the sandbox's port unreachable: "refused" when it arrived. */
  const lateAnswer = async (family: 4 | 6): Promise<string> => {
    await forgetNeighbours();
    const server = await started('internet', 'python3', [RAW_IP, 'late-answer', FAR[family]]);
    const asked = await rig.execIn('sandbox', 'python3', ['-c', UDP_QUERY, FAR[family]], { timeoutMs: 15_000 });
    const said = await server.output;
    expect(`${asked.stdout}${asked.stderr}`.trim(), `the server said: ${said}`).toBe('answer');
    return said;
  };

  describe.each(['iptables', 'nft'] as const)('host mode, with the %s backend', (backend) => {
    const apply = (extra: string[] = []) =>
      ok('router', ['--apply', '--backend', backend, '--mode', 'host', '--interface', rig.sandboxIf, '--dns-port', 'off', ...extra]);
    afterAll(async () => {
      await ok('router', ['--remove']);
    });

    it.each([4, 6] as const)('drops IPv%i ping and other protocols from a sandbox, forwarded and to the host itself', async (family) => {
      await apply();
      expect(await probe(family, true)).toEqual(refused(family, true));
    });

    it.each([4, 6] as const)('lets an IPv%i ICMP error about a flow the sandbox opened reach its peer', async (family) => {
      await apply(['--dns-server', FAR[4], '--dns-server', FAR[6]]);
      expect(await lateAnswer(family)).toBe('refused');
    });

    it('keeps redirected TCP and IPv6 neighbour discovery working', async () => {
      await apply();
      const hi = await started('router', NODE, ['-e', TCP_HI]);
      try {
        for (const family of [4, 6] as const) {
          await forgetNeighbours();
          expect((await rig.execIn('sandbox', NODE, ['-e', TCP_CLIENT, FAR[family]], { timeoutMs: 10_000 })).stdout, `IPv${family}`).toBe('hi');
        }
      } finally {
        if (hi.child.pid !== undefined) process.kill(hi.child.pid, 'SIGTERM');
        await hi.output;
      }
    });

    it.each([4, 6] as const)('with --other-protocols pass, leaves IPv%i ping and other protocols alone', async (family) => {
      await apply(['--other-protocols', 'pass']);
      expect(await probe(family, true)).toEqual(passed(family, true));
    });
  });

  describe.each(['iptables', 'nft'] as const)('sidecar mode, with the %s backend', (backend) => {
    // The probes run as root, so egressd's uid is another one.
    const apply = (extra: string[] = []) =>
      ok('sandbox', ['--apply', '--backend', backend, '--mode', 'sidecar', '--uid', '1000', '--dns-port', 'off', ...extra]);
    afterAll(async () => {
      await ok('sandbox', ['--remove']);
    });

    it.each([4, 6] as const)('drops the pod’s own IPv%i ping and other protocols', async (family) => {
      await apply();
      expect(await probe(family, false)).toEqual(refused(family, false));
    });

    it.each([4, 6] as const)('lets an IPv%i ICMP error about a flow the pod opened reach its peer', async (family) => {
      await apply(['--dns-server', FAR[4], '--dns-server', FAR[6]]);
      expect(await lateAnswer(family)).toBe('refused');
    });

    it.each([4, 6] as const)('with --other-protocols pass, leaves IPv%i ping and other protocols alone', async (family) => {
      await apply(['--other-protocols', 'pass']);
      expect(await probe(family, false)).toEqual(passed(family, false));
    });
  });
});
