// Each DNS UDP socket asks for a 4 MiB receive buffer (src/dns/listener.ts), and the kernel caps
// the ask at net.core.rmem_max. A host whose rmem_max is lower must be told at start, once, with
// both figures (a warn line and a gauge). rmem_max is the host's (not per network namespace), so
// the test does not lower it: it makes the daemon ask for more than the host's current rmem_max,
// through the real sockets, which the kernel caps the same way.

import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../../helpers/loopback-daemon.ts';
import { DNS_UDP_RECEIVE_BUFFER } from '../../../src/dns/listener.ts';

const rmemMax = Number(readFileSync('/proc/sys/net/core/rmem_max', 'utf8').trim());

describe('a DNS UDP receive buffer the kernel grants less of than asked', () => {
  let d: LoopbackDaemon;
  const asked = rmemMax + 1_048_576;

  beforeAll(async () => {
    d = await startLoopbackDaemon(loopbackConfig({}), { dnsUdpReceiveBuffer: asked });
  });
  afterAll(async () => {
    await d?.stop();
  });

  it('is warned of once at start with what was asked and what the kernel granted, and shown in a gauge', async () => {
    const lines = d.logs.filter((l) => (l['event'] as { action?: string } | undefined)?.action === 'dns-receive-buffer-short');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ 'log.level': 'warn', askedBytes: asked, grantedBytes: rmemMax, rmemMax });
    const m = await (await fetch(`${d.adminUrl}/metrics`)).text();
    expect(Number(/egressd_dns_udp_receive_buffer_bytes\{figure="asked"\} (\d+)/.exec(m)?.[1])).toBe(asked);
    expect(Number(/egressd_dns_udp_receive_buffer_bytes\{figure="granted"\} (\d+)/.exec(m)?.[1])).toBe(rmemMax);
  });
});

describe.skipIf(rmemMax < DNS_UDP_RECEIVE_BUFFER)('a DNS UDP receive buffer granted whole', () => {
  let d: LoopbackDaemon;

  beforeAll(async () => {
    d = await startLoopbackDaemon(loopbackConfig({}));
  });
  afterAll(async () => {
    await d?.stop();
  });

  it('is not warned of, and the gauge shows it granted', async () => {
    expect(d.logs.filter((l) => (l['event'] as { action?: string } | undefined)?.action === 'dns-receive-buffer-short')).toHaveLength(0);
    const m = await (await fetch(`${d.adminUrl}/metrics`)).text();
    expect(Number(/egressd_dns_udp_receive_buffer_bytes\{figure="granted"\} (\d+)/.exec(m)?.[1])).toBe(DNS_UDP_RECEIVE_BUFFER);
  });
});
