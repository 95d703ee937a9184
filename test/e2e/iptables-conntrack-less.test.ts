// TCP that conntrack does not track as a connection (an INVALID segment, or one a raw-table
// NOTRACK exempts) never reaches the NAT tables, so egressd's redirect cannot catch it, and a
// match on the connection's direction or state (the tcp chain's entry) does not match it either.
// A sandbox with CAP_NET_RAW (container runtimes' default) can send such segments, data and all,
// to any address: they must not leave, in either mode, with either backend, over IPv4 or IPv6.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAIN, NODE } from '../helpers/e2e-daemon.ts';
import { createRig, type Rig, rigUnavailableReason } from '../helpers/netns-rig.ts';

const SENDER = join(import.meta.dirname, '../helpers/raw-tcp-segment.py');
const S4 = '198.18.1.2';
const S6 = '2001:db8:0:2::2';
const PORT = 7777;
/** SYN|FIN: never valid (nf_conntrack_proto_tcp's tcp_valid_flags), so always INVALID. */
const SYN_FIN = '0x03';

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e iptables conntrack-less tests skipped: ${skip}`);

describe.skipIf(skip !== null)('TCP segments conntrack does not track', () => {
  let rig: Rig;
  beforeAll(async () => {
    rig = await createRig();
    await rig.servers([S4, S6]);
    // Counts every segment to PORT as it enters the internet namespace, before conntrack.
    const r = await rig.execIn('internet', 'nft', ['-f', '-'], {
      input: `table inet probe {\n\tcounter seen {}\n\tchain pre {\n\t\ttype filter hook prerouting priority -300; policy accept;\n\t\ttcp dport ${PORT} counter name seen\n\t}\n}\n`,
    });
    expect(r.code, r.stderr).toBe(0);
  });
  afterAll(async () => {
    await rig?.teardown();
  });

  const arrived = async (): Promise<number> => {
    const r = await rig.execIn('internet', 'nft', ['list', 'counter', 'inet', 'probe', 'seen']);
    expect(r.code, r.stderr).toBe(0);
    return Number(/packets (\d+)/.exec(r.stdout)![1]);
  };
  /**
   * Sends one SYN|FIN segment with data from the sandbox namespace, as root. `mayBeRefused`: a
   * drop in the sender's own OUTPUT (sidecar mode) fails the send with EPERM, which is fine.
   */
  const send = async (host: string, mayBeRefused = false): Promise<void> => {
    const r = await rig.execIn('sandbox', 'python3', [SENDER, host, String(PORT), SYN_FIN]);
    if (mayBeRefused && r.code !== 0) expect(r.stderr).toContain('Operation not permitted');
    else expect(r.code, r.stderr).toBe(0);
  };
  const egressdIn = (ns: 'router' | 'sandbox', args: string[]) => rig.execIn(ns, NODE, [MAIN, 'iptables', ...args], { timeoutMs: 30_000 });

  describe.each([
    ['host', 'router', (r: Rig) => ['--mode', 'host', '--interface', r.sandboxIf]],
    // root sends the segments here, so egressd's uid must be another one.
    ['sidecar', 'sandbox', () => ['--mode', 'sidecar', '--uid', '1000']],
  ] as const)('in %s mode', (mode, ns, selectors) => {
    it.each(['iptables', 'nft'])('with the %s backend, none leaves, over IPv4 and IPv6', async (backend) => {
      // The probe itself works: without egressd's rules both segments arrive.
      const start = await arrived();
      await send(S4);
      await send(S6);
      await expect.poll(arrived, { timeout: 5000 }).toBe(start + 2);
      const applied = await egressdIn(ns, ['--apply', '--backend', backend, ...selectors(rig)]);
      expect(applied.code, applied.stderr).toBe(0);
      try {
        const before = await arrived();
        await send(S4, true);
        await send(S6, true);
        // A forwarded segment crosses two veths within microseconds; this is ample, not a race.
        await new Promise((r) => setTimeout(r, 200));
        expect(await arrived(), `${mode} ${backend}`).toBe(before);
      } finally {
        const removed = await egressdIn(ns, ['--remove', '--backend', backend]);
        expect(removed.code, removed.stderr).toBe(0);
      }
    });
  });
});
