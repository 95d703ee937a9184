// An IPv6 destination that carries an IPv4 address for a translator or a tunnel to connect to
// (NAT64, 6to4, Teredo, SIIT, IPv4-compatible), through a running daemon on both set-up paths:
// lifting or unlocking the IPv6 range must not open the metadata service, loopback or a private
// network behind the gateway, nor an IPv4 address a deny rule names. The original destination comes from the loopback rig's table; a
// refused connection is never dialed, so no translator is needed to tell the two apart.

import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { action, field } from '../helpers/log-line.ts';

function closedFrom(source: string, port: number): Promise<void> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: source });
    s.on('error', () => {});
    s.on('close', () => resolve());
  });
}

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('an IPv4 address inside an IPv6 destination, set up on $setup', ({ setup }) => {
  let d: LoopbackDaemon | undefined;
  afterEach(async () => {
    await d?.stop();
    d = undefined;
  });

  it.each([
    // A DNS64/NAT64 host must lift the NAT64 prefix (protected.except) for its sandboxes to reach
    // anything over IPv6; the metadata service behind the gateway stays refused.
    ['allow-all, NAT64 prefix lifted', { mode: 'allow-all' }, '64:ff9b::a9fe:a9fe', '169.254.0.0/16'],
    ['allow-all, NAT64 prefix lifted', { mode: 'allow-all' }, '64:ff9b::a00:5', '10.0.0.0/8'],
    // A tenant's allowed CIDR that lies wholly inside a protected transition range unlocks it as an
    // IPv6 range, not the protected IPv4 addresses it tunnels to.
    ['sandbox0 allowed_cidrs 2002::/16', { mode: 'block-all', egress: { allowed_cidrs: ['2002::/16'] } }, '2002:a9fe:a9fe::1', '169.254.0.0/16'],
    ['Novita allowOut 64:ff9b::/96', { network: { denyOut: ['0.0.0.0/0'], allowOut: ['64:ff9b::/96'] } }, '64:ff9b::c0a8:101', '192.168.0.0/16'],
  ])('%s: refuses %s (%s), never dialed', async (_label, network, ip, range) => {
    d = await startLoopbackDaemon(
      loopbackConfig({
        protected: { except: ['127.0.0.0/8', '64:ff9b::/96'], reachableHostAddresses: ['127.0.0.0/8', '::1'] },
        sandboxes: [{ id: 'sb-embedded', sources: ['127.0.0.43'], network }],
      }),
      { setup },
    );
    d.route('127.0.0.43', ip, 80);
    await closedFrom('127.0.0.43', d.port('tcp'));
    const line = await d.waitForLog((l) => action(l) === 'connection');
    expect({ verdict: field(line, 'egressd.verdict'), reason: field(line, 'event.reason') }).toEqual({ verdict: 'refuse', reason: 'protected-address' });
    expect(field(line, 'egressd.upstream.ip')).toBeUndefined();
    expect(String(field(line, 'rule.name'))).toContain(`protected "${range}"`);
  });

  it.each([
    ['sandbox0 denied_cidrs', { mode: 'allow-all', egress: { denied_cidrs: ['198.51.100.0/24', '1.2.3.0/24'] } }],
    ['Novita denyOut', { network: { denyOut: ['1.2.3.4'] } }],
  ])('%s: refuses the NAT64 form of a denied address on a DNS64 host, never dialed', async (_label, network) => {
    d = await startLoopbackDaemon(
      loopbackConfig({
        protected: { except: ['127.0.0.0/8', '64:ff9b::/96'], reachableHostAddresses: ['127.0.0.0/8', '::1'] },
        sandboxes: [{ id: 'sb-denied', sources: ['127.0.0.44'], network }],
      }),
      { setup },
    );
    d.route('127.0.0.44', '64:ff9b::102:304', 443);
    await closedFrom('127.0.0.44', d.port('tcp'));
    const line = await d.waitForLog((l) => action(l) === 'connection');
    expect({ verdict: field(line, 'egressd.verdict'), reason: field(line, 'event.reason') }).toEqual({ verdict: 'refuse', reason: 'deny-rule' });
    expect(field(line, 'egressd.upstream.ip')).toBeUndefined();
    expect(String(field(line, 'rule.name'))).toContain('(1.2.3.4, inside 64:ff9b::102:304)');
  });

  // A DNS64 host whose translator uses the local-use prefix 64:ff9b:1::/48 (RFC 8215) declares
  // it with its length (protected.nat64Prefixes), so a policy may allow the prefix: the form of
  // the metadata service behind the translator stays refused, the form of a public address is
  // allowed.
  describe('a declared NAT64 prefix a policy allows', () => {
    const config = () =>
      loopbackConfig({
        protected: { except: ['127.0.0.0/8'], reachableHostAddresses: ['127.0.0.0/8', '::1'], nat64Prefixes: ['64:ff9b:1::/48'] },
        upstream: { connectTimeoutMs: 200 },
        sandboxes: [{ id: 'sb-nsp', sources: ['127.0.0.46'], network: { mode: 'block-all', egress: { allowed_cidrs: ['64:ff9b:1::/48'] } } }],
      });

    it('refuses the form of 169.254.169.254 inside it, naming the IPv4 address, never dialed', async () => {
      d = await startLoopbackDaemon(config(), { setup });
      d.route('127.0.0.46', '64:ff9b:1:a9fe:a9:fe00::', 80);
      await closedFrom('127.0.0.46', d.port('tcp'));
      const line = await d.waitForLog((l) => action(l) === 'connection');
      expect({ verdict: field(line, 'egressd.verdict'), reason: field(line, 'event.reason'), rule: field(line, 'rule.name') }).toEqual({
        verdict: 'refuse',
        reason: 'protected-address',
        rule: 'protected "169.254.0.0/16" (169.254.169.254, inside 64:ff9b:1:a9fe:a9:fe00::)',
      });
      expect(field(line, 'egressd.upstream.tried')).toBeUndefined();
    });

    // Judged, not dialed: no translator is here, and a test sends nothing past the machine (the
    // form of a public address would leave by the default route where there is one).
    it('allows the form of 93.184.216.34 inside it, judged by its rule', async () => {
      d = await startLoopbackDaemon(config(), { setup });
      const res = await fetch(`${d.adminUrl}/api/v1/check`, {
        method: 'POST',
        headers: { authorization: 'Bearer test-token', 'content-type': 'application/json' },
        body: JSON.stringify({ sandbox: 'sb-nsp', ip: '64:ff9b:1:5db8:d8:2200::', port: 80 }),
      });
      expect(await res.json()).toMatchObject({ verdict: 'allow', rule: 'allowed_cidrs "64:ff9b:1::/48"' });
    });
  });

  // :: and ::1 lie in ::/96 but are no IPv4-compatible addresses (RFC 4291 §2.5.5.1; Linux delivers
  // them locally): a policy that allows ::1, on a host whose operator opened it, reaches it.
  it('reaches ::1 where the operator opened it and the policy allows ::1/128, not judged as 0.0.0.1', async () => {
    const server = createServer((s) => {
      s.on('error', () => {});
      s.end('ok');
    });
    server.listen(0, '::1');
    await once(server, 'listening');
    try {
      d = await startLoopbackDaemon(
        loopbackConfig({
          protected: { except: ['127.0.0.0/8'], reachableHostAddresses: ['127.0.0.0/8', '::1'] },
          sandboxes: [{ id: 'sb-loopback6', sources: ['127.0.0.45'], network: { mode: 'block-all', egress: { allowed_cidrs: ['::1/128'] } } }],
        }),
        { setup },
      );
      d.route('127.0.0.45', '::1', (server.address() as { port: number }).port);
      const read = await new Promise<string>((resolve) => {
        const s = connect({ host: '127.0.0.1', port: d!.port('tcp'), localAddress: '127.0.0.45' });
        let got = '';
        s.on('data', (b) => (got += b.toString()));
        s.on('error', () => {});
        s.on('close', () => resolve(got));
      });
      const line = await d.waitForLog((l) => action(l) === 'connection');
      expect({ verdict: field(line, 'egressd.verdict'), rule: field(line, 'rule.name') }).toEqual({ verdict: 'allow', rule: 'allowed_cidrs "::1/128"' });
      expect(read).toBe('ok');
    } finally {
      server.close();
    }
  });
});
