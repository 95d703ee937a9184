// The udp chain against a live kernel: what it must let pass. UDP that another tool's DNAT
// (kube-proxy's service addresses) sent from an excluded destination elsewhere, and the answers
// of a UDP service in a sandbox that a platform queries: neither is the sandbox's own traffic to
// an address egressd filters.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAIN, NODE } from '../helpers/e2e-daemon.ts';
import { createRig, type Rig, rigUnavailableReason } from '../helpers/netns-rig.ts';
import { spawnSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { ChildProcess } from 'node:child_process';

/** A "service address" no host has; a DNAT of another tool sends its port 53 to the rig's DNS server. */
const SERVICE = '198.18.1.80';
const ECHO_PORT = 5300;

// Echoes every datagram on ECHO_PORT, dual-stack.
const UDP_ECHO = `
const s = require('node:dgram').createSocket({ type: 'udp6', ipv6Only: false });
s.on('message', (m, r) => s.send(m, r.port, r.address));
s.bind(${ECHO_PORT}, '::', () => console.log('ready'));
`;
// Sends one datagram to argv[1]:ECHO_PORT and prints the answer, or "timeout"/the error code.
const UDP_CLIENT = `
const host = process.argv[1];
const s = require('node:dgram').createSocket(host.includes(':') ? 'udp6' : 'udp4');
s.on('message', (m) => { process.stdout.write(String(m)); process.exit(0); });
s.on('error', (e) => { process.stdout.write(e.code || e.message); process.exit(0); });
s.send('hello', ${ECHO_PORT}, host);
setTimeout(() => { process.stdout.write('timeout'); process.exit(0); }, 3000);
`;

const haveDig = spawnSync('dig', ['-v'], { stdio: 'ignore' }).status === 0;
const skip = rigUnavailableReason() ?? (haveDig ? null : 'dig is missing (bash scripts/ensure-test-tools.sh installs bind9-dnsutils)');
if (skip) console.warn(`e2e iptables udp tests skipped: ${skip}`);

describe.skipIf(skip !== null)('the udp chain on a live kernel', () => {
  let rig: Rig;
  beforeAll(async () => {
    rig = await createRig();
    await rig.servers(['198.18.1.2', '2001:db8:0:2::2']);
  });
  afterAll(async () => {
    await rig?.teardown();
  });
  const egressdIn = (ns: 'router' | 'sandbox', args: string[]) => rig.execIn(ns, NODE, [MAIN, 'iptables', ...args], { timeoutMs: 30_000 });
  const ok = async (ns: 'router' | 'sandbox', args: string[]): Promise<void> => {
    const r = await egressdIn(ns, args);
    expect(r.code, `egressd iptables ${args.join(' ')}\n${r.stderr}`).toBe(0);
  };

  // kube-proxy DNATs a service address in nat PREROUTING; with the service range excluded,
  // egressd's redirect lets the query through to that DNAT, and FORWARD then sees the
  // endpoint's address, which no exclusion names.
  describe.each(['iptables', 'nft'] as const)('host mode, with the %s backend', (backend) => {
    afterAll(async () => {
      if (backend === 'nft') await rig.execIn('router', 'nft', ['delete', 'table', 'ip', 'foreign']);
      else
        await rig.execIn('router', 'iptables', [
          '-t',
          'nat',
          '-D',
          'PREROUTING',
          '-d',
          `${SERVICE}/32`,
          '-p',
          'udp',
          '--dport',
          '53',
          '-j',
          'DNAT',
          '--to-destination',
          rig.dnsServer,
        ]);
      await ok('router', ['--remove', '--backend', backend]);
    });

    it.each([
      ['--exclude-cidr', ['--dns-port', '25053', '--exclude-cidr', `${SERVICE}/32`]],
      ['--dns-server', ['--dns-port', 'off', '--dns-server', SERVICE]],
    ])('lets a sandbox query a DNS service address it may reach (%s) that a DNAT of another tool sends to an endpoint', async (_, args) => {
      await ok('router', ['--apply', '--backend', backend, '--mode', 'host', '--interface', rig.sandboxIf, ...args]);
      const r =
        backend === 'nft'
          ? await rig.execIn('router', 'nft', ['-f', '-'], {
              input: `table ip foreign\ndelete table ip foreign\ntable ip foreign {\n\tchain pre {\n\t\ttype nat hook prerouting priority -100; policy accept;\n\t\tip daddr ${SERVICE} udp dport 53 dnat to ${rig.dnsServer}\n\t}\n}\n`,
            })
          : await rig.execIn('router', 'sh', [
              '-c',
              `iptables -t nat -C PREROUTING -d ${SERVICE}/32 -p udp --dport 53 -j DNAT --to-destination ${rig.dnsServer} 2>/dev/null || iptables -t nat -A PREROUTING -d ${SERVICE}/32 -p udp --dport 53 -j DNAT --to-destination ${rig.dnsServer}`,
            ]);
      expect(r.code, r.stderr).toBe(0);
      const q = await rig.execIn('sandbox', 'dig', ['+time=3', '+tries=1', `@${SERVICE}`, 'nothere.test'], { timeoutMs: 15_000 });
      expect(`${q.stdout}${q.stderr}`).toContain('status: NXDOMAIN');
    });
  });

  // A platform reaching a UDP service in the sandbox: the answers travel in the reply direction.
  describe.each(['iptables', 'nft'] as const)('with the %s backend, the answers of a UDP service in a sandbox pass', (backend) => {
    let echo: ChildProcess;
    beforeAll(async () => {
      echo = rig.spawnIn('sandbox', NODE, ['-e', UDP_ECHO]);
      await new Promise<void>((ready) => createInterface({ input: echo.stdout! }).on('line', (l) => l === 'ready' && ready()));
    });
    afterAll(async () => {
      if (echo.pid !== undefined && echo.exitCode === null) {
        process.kill(echo.pid, 'SIGTERM');
      }
    });
    const ask = async (from: 'router' | 'internet', host: string): Promise<string> =>
      (await rig.execIn(from, NODE, ['-e', UDP_CLIENT, host], { timeoutMs: 10_000 })).stdout;

    it('in host mode, to the host itself and through it, over IPv4 and IPv6', async () => {
      await ok('router', ['--apply', '--backend', backend, '--mode', 'host', '--interface', rig.sandboxIf]);
      try {
        expect(await ask('router', rig.sandboxV4)).toBe('hello');
        expect(await ask('internet', rig.sandboxV4)).toBe('hello');
        expect(await ask('internet', rig.sandboxV6)).toBe('hello');
      } finally {
        await ok('router', ['--remove', '--backend', backend]);
      }
    });

    it('in sidecar mode, over IPv4 and IPv6', async () => {
      // The echo server runs as root, so egressd's uid is another one.
      await ok('sandbox', ['--apply', '--backend', backend, '--mode', 'sidecar', '--uid', '1000']);
      try {
        expect(await ask('internet', rig.sandboxV4)).toBe('hello');
        expect(await ask('internet', rig.sandboxV6)).toBe('hello');
      } finally {
        await ok('sandbox', ['--remove', '--backend', backend]);
      }
    });
  });
});
