// Issue 10 part 2 through a running daemon (loopback, original destination by table): the
// operator's protected.extra ranges are never unlocked by a policy, in any dialect.

import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { action, field } from '../helpers/log-line.ts';

function refusedFrom(source: string, port: number): Promise<void> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: source });
    s.on('error', () => {});
    s.on('close', () => resolve());
  });
}

describe('protected.extra through the daemon', () => {
  let d: LoopbackDaemon | undefined;
  afterEach(async () => {
    await d?.stop();
    d = undefined;
  });

  it.each([
    // The example: Daytona networkAllowList naming the /24 around the protected host.
    ['daytona', { networkAllowList: '192.168.1.0/24' }, '192.168.1.100', 9901],
    // sandbox0 allowed_cidrs naming the protected address itself.
    ['sandbox0', { mode: 'block-all', egress: { allowed_cidrs: ['192.168.1.100/32'] } }, '192.168.1.100', 22],
    // Novita allowOut over IPv6, the AWS metadata address an operator listed in extra.
    ['novita', { network: { denyOut: ['0.0.0.0/0'], allowOut: ['fd00::/8'] } }, 'fd00:ec2::254', 80],
  ])('refuses %s policy allowing a range holding an extra address (%s)', async (_dialect, network, ip, port) => {
    d = await startLoopbackDaemon(
      loopbackConfig({
        protected: { extra: ['192.168.1.100/32', 'fd00:ec2::254/128'], except: ['127.0.0.0/8'], reachableHostAddresses: ['127.0.0.0/8'] },
        sandboxes: [{ id: 'sb', sources: ['127.0.0.9'], network }],
      }),
    );
    d.route('127.0.0.9', ip, port);
    await refusedFrom('127.0.0.9', d.port('tcp'));
    const line = await d.waitForLog((l) => action(l) === 'connection');
    expect(line).toMatchObject({ egressd: { sandbox: 'sb', verdict: 'refuse' }, event: { reason: 'protected-address' } });
    expect(field(line, 'egressd.upstream.ip')).toBeUndefined();
    expect(String(field(line, 'rule.name'))).toMatch(/^protected\.extra "/);
  });
});
