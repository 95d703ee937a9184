// Host mode on a live kernel: a sandbox's TCP that a DNAT ahead of egressd's redirect sends to
// the host itself (a service whose endpoint is on the host's network, as the API server's is on
// a control-plane node) reaches filter INPUT, never FORWARD, and must not get through either.

import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAIN, NODE } from '../helpers/e2e-daemon.ts';
import { startCatcher, stopCatcher } from '../helpers/port-catcher.ts';
import { createRig, type Rig, rigUnavailableReason } from '../helpers/netns-rig.ts';

const PORTS = { http: 29080, tls: 29443, tcp: 29001 };
/** A host service egressd does not front, on every address of the router. */
const HOST_PORT = 29500;
/** Service addresses no host has: the first is excluded, the second is not. */
const EXCLUDED = '198.18.1.81';
const SERVICE = '198.18.1.82';
/** The router's address on the sandbox side, where the DNATs send both. */
const ROUTER = '198.18.0.1';

const TCP_CLIENT = `
const [host, port] = process.argv.slice(1);
const s = require('node:net').connect({ host, port: Number(port) });
let got = '';
s.setTimeout(5000, () => { process.stderr.write('timeout'); process.exit(3); });
s.on('data', (d) => { got += d; });
s.on('close', () => { process.stdout.write(got); process.exit(0); });
s.on('error', (e) => { process.stderr.write(e.code || e.message); process.exit(2); });
`;

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e iptables local tests skipped: ${skip}`);

describe.skipIf(skip !== null)('a DNAT to the host itself ahead of egressd', () => {
  let rig: Rig;
  let catcher: ChildProcess;
  beforeAll(async () => {
    rig = await createRig();
    catcher = await startCatcher(rig, 'router', [PORTS.http, PORTS.tls, PORTS.tcp, HOST_PORT]);
  });
  afterAll(async () => {
    await stopCatcher(catcher);
    await rig?.teardown();
  });
  const tcp = (host: string, port: number) => rig.execIn('sandbox', NODE, ['-e', TCP_CLIENT, host, String(port)], { timeoutMs: 15_000 });

  describe.each(['iptables', 'nft'] as const)('with the %s backend', (backend) => {
    const dnat = (to: string) => ['-d', `${to}/32`, '-p', 'tcp', '--dport', '80', '-j', 'DNAT', '--to-destination', `${ROUTER}:${HOST_PORT}`];
    afterAll(async () => {
      if (backend === 'nft') await rig.execIn('router', 'nft', ['delete', 'table', 'ip', 'foreign']);
      else for (const to of [EXCLUDED, SERVICE]) await rig.execIn('router', 'iptables', ['-t', 'nat', '-D', 'PREROUTING', ...dnat(to)]);
      await rig.execIn('router', NODE, [MAIN, 'iptables', '--remove', '--backend', backend], { timeoutMs: 30_000 });
    });

    it('resets the connection unless its original destination is excluded', async () => {
      const portArgs = ['--http-port', String(PORTS.http), '--tls-port', String(PORTS.tls), '--tcp-port', String(PORTS.tcp)];
      const args = ['--apply', '--backend', backend, '--mode', 'host', '--interface', rig.sandboxIf, '--exclude-cidr', `${EXCLUDED}/32`, ...portArgs];
      const applied = await rig.execIn('router', NODE, [MAIN, 'iptables', ...args], { timeoutMs: 30_000 });
      expect(applied.code, applied.stderr).toBe(0);
      // In front of egressd's NAT: inserted after the apply (iptables), or at an earlier priority (nft).
      if (backend === 'nft') {
        const r = await rig.execIn('router', 'nft', ['-f', '-'], {
          input: `table ip foreign {\n\tchain pre {\n\t\ttype nat hook prerouting priority -120; policy accept;\n\t\tip daddr { ${EXCLUDED}, ${SERVICE} } tcp dport 80 dnat to ${ROUTER}:${HOST_PORT}\n\t}\n}\n`,
        });
        expect(r.code, r.stderr).toBe(0);
      } else {
        for (const to of [EXCLUDED, SERVICE]) {
          const r = await rig.execIn('router', 'iptables', ['-t', 'nat', '-I', 'PREROUTING', '1', ...dnat(to)]);
          expect(r.code, r.stderr).toBe(0);
        }
      }
      // Still redirected where egressd's NAT comes first; the excluded one passes, as it would without egressd.
      expect((await tcp('198.18.1.2', 80)).stdout).toBe(`caught ${PORTS.http}\n`);
      expect((await tcp(EXCLUDED, 80)).stdout).toBe(`caught ${HOST_PORT}\n`);
      const c = await tcp(SERVICE, 80);
      expect(c.stdout).toBe('');
      expect(c.stderr).toMatch(/ECONNREFUSED|ECONNRESET/);
    });
  });
});
