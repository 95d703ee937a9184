// Sidecar mode's DNS redirect on the real path: egressd runs inside the sandbox namespace as
// root, `egressd iptables --mode sidecar --uid 0` redirects every other user's port 53 (UDP and
// TCP, any server, IPv4 and IPv6) to its DNS listener, and a sandbox process (nobody) running
// dig gets egressd's answers whatever server it addresses; egressd forwards only allowed names
// to the rig's dnsmasq (its query log shows what arrived).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRig, rigUnavailableReason, type Rig } from '../helpers/netns-rig.ts';
import type { DaemonProcess } from '../helpers/daemon-process.ts';
import { action, field } from '../helpers/log-line.ts';
import { MAIN, NODE, serveIn, writeConfig } from '../helpers/e2e-daemon.ts';

const PORTS = { http: 16080, tls: 16443, tcp: 16001, dns: 16053 };
const ALLOWED = '198.18.1.2';
const ALLOWED6 = '2001:db8:0:2::2';
const NOWHERE = '198.18.1.98'; // nothing listens there: only egressd can answer

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e dns sidecar skipped: ${skip}`);

describe.skipIf(skip !== null)('sidecar mode: DNS from the sandbox process is answered by egressd', () => {
  let rig: Rig;
  let daemon: DaemonProcess;
  let dir: string;
  let applied = false;

  beforeAll(async () => {
    rig = await createRig();
    await rig.dns({ 'allowed.test': [ALLOWED, ALLOWED6], 'other.test': ['198.18.1.3'] });
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-dns-sidecar-'));
    const config = {
      listen: {
        http: ['0.0.0.0:16080', '[::]:16080'],
        tls: ['0.0.0.0:16443', '[::]:16443'],
        tcp: ['0.0.0.0:16001', '[::]:16001'],
        dns: ['0.0.0.0:16053', '[::]:16053'],
      },
      admin: { listen: '127.0.0.1:9902', token: 'e2e-sidecar-token' },
      dns: { servers: [rig.dnsServer] },
      protected: { except: ['198.18.0.0/15', '2001:db8::/32'] },
      log: { level: 'debug' },
      sandboxes: [{ id: 'sb-s', sources: [rig.sandboxV4, rig.sandboxV6], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } } }],
    };
    daemon = await serveIn(rig, 'sandbox', writeConfig(dir, config));
    const portArgs = ['--http-port', String(PORTS.http), '--tls-port', String(PORTS.tls), '--tcp-port', String(PORTS.tcp), '--dns-port', String(PORTS.dns)];
    const r = await rig.execIn('sandbox', NODE, [MAIN, 'iptables', '--apply', '--mode', 'sidecar', '--uid', '0', ...portArgs], { timeoutMs: 30_000 });
    expect(r.code, r.stderr).toBe(0);
    applied = true;
  });

  afterAll(async () => {
    if (applied) await rig.execIn('sandbox', NODE, [MAIN, 'iptables', '--remove'], { timeoutMs: 30_000 });
    await daemon?.stop('SIGTERM');
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** dig as nobody (65534): the sandbox's process, which the sidecar rules redirect. */
  const digAsSandbox = async (...args: string[]): Promise<string> =>
    (
      await rig.execIn('sandbox', 'setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', 'dig', '+time=3', '+tries=1', ...args], {
        timeoutMs: 20_000,
      })
    ).stdout;

  it('answers an allowed name whichever server is asked, over UDP and TCP, IPv4 and IPv6', async () => {
    expect(await digAsSandbox(`@${rig.dnsServer}`, '+short', 'allowed.test', 'A')).toBe(`${ALLOWED}\n`);
    expect(await digAsSandbox(`@${NOWHERE}`, '+short', 'allowed.test', 'A')).toBe(`${ALLOWED}\n`);
    expect(await digAsSandbox(`@${NOWHERE}`, '+short', '+tcp', 'allowed.test', 'AAAA')).toBe(`${ALLOWED6}\n`);
    expect(await digAsSandbox(`@${rig.dnsServerV6}`, '+short', 'allowed.test', 'AAAA')).toBe(`${ALLOWED6}\n`);
    expect(await digAsSandbox(`@${rig.dnsServerV6}`, '+short', '+tcp', 'allowed.test', 'A')).toBe(`${ALLOWED}\n`);
    const line = await daemon.waitFor(
      (l) => action(l) === 'dns-query' && field(l, 'dns.question.name') === 'allowed.test' && field(l, 'egressd.verdict') === 'allow',
    );
    expect(line).toMatchObject({ egressd: { sandbox: 'sb-s' }, dns: { response_code: 'NOERROR' } });
  });

  it('answers NXDOMAIN for a name the policy does not allow, and the resolver never sees it', async () => {
    expect(await digAsSandbox(`@${rig.dnsServer}`, 'other.test', 'A')).toMatch(/status: NXDOMAIN/);
    expect(await digAsSandbox(`@${NOWHERE}`, '+tcp', 'c2VjcmV0.other.test', 'TXT')).toMatch(/status: NXDOMAIN/);
    expect(rig.dnsLog()).not.toContain('other.test');
    const line = await daemon.waitFor((l) => action(l) === 'dns-query' && field(l, 'dns.question.name') === 'other.test');
    expect(line).toMatchObject({ event: { reason: 'not-allowed' }, egressd: { sandbox: 'sb-s', verdict: 'refuse' } });
  });
});
