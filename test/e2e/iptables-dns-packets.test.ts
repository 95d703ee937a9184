// `egressd iptables --dns-packets-per-source` against a real kernel, in the rig's namespaces: one
// sandbox floods the DNS listener from a single socket (one flow, which --new-dns-flows-per-source
// never meets), bounded in count and time, while another sandbox on the same interface asks 200
// queries one after another. Without a per-source packet limit the flood fills the listener's
// socket and the kernel drops the other sandbox's queries behind it; with it, the flood's excess
// is dropped in filter INPUT and the other sandbox is answered in full. The listener forwards the
// other sandbox's name to the rig's dnsmasq.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DaemonProcess } from '../helpers/daemon-process.ts';
import { MAIN, NODE, serveIn, writeConfig } from '../helpers/e2e-daemon.ts';
import { createRig, type Rig, rigUnavailableReason } from '../helpers/netns-rig.ts';

const PORTS = { http: 29180, tls: 29543, tcp: 29101, dns: 29153 };
const TARGET = '198.18.1.2';
/** The flood's bounds: whichever comes first. */
const FLOOD_MAX = 300_000;
const FLOOD_MS = 4_000;
const ASKED = 200;

// From argv[1], one socket sends queries for denied names to argv[2]:53 as fast as it can, until
// argv[3] are sent or argv[4] ms have passed; prints how many it sent and in how long.
const FLOOD = `
const dgram = require('node:dgram');
const [from, server, maxText, msText] = process.argv.slice(1);
const max = Number(maxText), ms = Number(msText);
const s = dgram.createSocket('udp4');
const q = (id) => {
  const labels = ['f' + (id % 1000), 'denied', 'test'].flatMap((l) => [Buffer.from([l.length]), Buffer.from(l)]);
  return Buffer.concat([Buffer.from([(id >> 8) & 255, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]), ...labels, Buffer.from([0, 0, 1, 0, 1])]);
};
s.on('message', () => {});
s.bind(0, from, () => {
  const started = Date.now();
  let sent = 0;
  const burst = () => {
    if (sent >= max || Date.now() - started >= ms) {
      console.log(JSON.stringify({ sent, ms: Date.now() - started }));
      return s.close();
    }
    let inFlight = 0;
    for (let i = 0; i < 256 && sent < max; i++, sent++) { inFlight++; s.send(q(sent), 53, server, () => { if (--inFlight === 0) setImmediate(burst); }); }
  };
  burst();
});
`;

// From argv[1], asks argv[3] queries for argv[4] one after another (each its own id, 0.5 s to be
// answered), starting after argv[5] ms; prints how many were answered.
const ASKER = `
const dgram = require('node:dgram');
const [from, server, countText, name, delayText] = process.argv.slice(1);
const count = Number(countText);
const s = dgram.createSocket('udp4');
const labels = name.split('.').flatMap((l) => [Buffer.from([l.length]), Buffer.from(l)]);
let answered = 0, id = 0, timer = null, waiting = -1;
const next = () => {
  if (id >= count) { console.log(JSON.stringify({ answered, asked: count })); return s.close(); }
  waiting = ++id;
  s.send(Buffer.concat([Buffer.from([id >> 8, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]), ...labels, Buffer.from([0, 0, 1, 0, 1])]), 53, server);
  timer = setTimeout(next, 500);
};
s.on('message', (m) => { if (m.readUInt16BE(0) !== waiting) return; waiting = -1; answered++; clearTimeout(timer); setTimeout(next, 5); });
s.bind(0, from, () => setTimeout(next, Number(delayText)));
`;

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e iptables --dns-packets-per-source tests skipped: ${skip}`);

describe.skipIf(skip !== null)('egressd iptables --dns-packets-per-source on a live kernel', () => {
  let rig: Rig;
  let daemon: DaemonProcess;
  let dir: string;

  beforeAll(async () => {
    rig = await createRig();
    await rig.dns({ 'allowed.test': ['198.18.1.2'] });
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-dns-packets-'));
    const config = {
      listen: {
        http: [`0.0.0.0:${PORTS.http}`],
        tls: [`0.0.0.0:${PORTS.tls}`],
        tcp: [`0.0.0.0:${PORTS.tcp}`],
        dns: [`0.0.0.0:${PORTS.dns}`],
      },
      dns: { servers: [rig.dnsServer] },
      protected: { except: ['198.18.0.0/15', '2001:db8::/32'] },
      sandboxes: [
        { id: 'flooder', sources: [rig.sandboxV4], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } } },
        { id: 'other', sources: [rig.sandbox2V4], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } } },
      ],
    };
    daemon = await serveIn(rig, 'router', writeConfig(dir, config));
  });
  afterAll(async () => {
    await rig?.execIn('router', NODE, [MAIN, 'iptables', '--remove'], { timeoutMs: 30_000 });
    await daemon?.stop('SIGTERM');
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const apply = async (backend: string, extra: string[], dns = ['--dns-port', String(PORTS.dns)]): Promise<void> => {
    const args = ['--apply', '--backend', backend, '--mode', 'host', '--interface', rig.sandboxIf, '--family', '4', ...dns];
    const ports = ['--http-port', String(PORTS.http), '--tls-port', String(PORTS.tls), '--tcp-port', String(PORTS.tcp)];
    const r = await rig.execIn('router', NODE, [MAIN, 'iptables', ...args, ...ports, ...extra], { timeoutMs: 30_000 });
    expect(r.code, r.stderr).toBe(0);
  };

  /** The router's UDP RcvbufErrors (/proc/net/snmp): datagrams the kernel dropped at a full receive buffer. */
  const rcvbufErrors = async (): Promise<number> => {
    const r = await rig.execIn('router', 'cat', ['/proc/net/snmp']);
    const [head, values] = r.stdout.split('\n').filter((l) => l.startsWith('Udp:'));
    return Number(values!.split(/\s+/)[head!.split(/\s+/).indexOf('RcvbufErrors')]);
  };

  /** The flood and the other sandbox's queries at once; what each reported, and the datagrams dropped at a full socket. */
  const floodAndAsk = async (
    server: string = TARGET,
  ): Promise<{ flood: { sent: number; ms: number }; other: { answered: number; asked: number }; rcvbufErrors: number }> => {
    const before = await rcvbufErrors();
    const [flood, other] = await Promise.all([
      rig.execIn('sandbox', NODE, ['-e', FLOOD, rig.sandboxV4, server, String(FLOOD_MAX), String(FLOOD_MS)], { timeoutMs: FLOOD_MS + 20_000 }),
      // Starts once the flood has filled the socket, and asks while it lasts.
      rig.execIn('sandbox', NODE, ['-e', ASKER, rig.sandbox2V4, server, String(ASKED), 'allowed.test', '300'], { timeoutMs: 60_000 }),
    ]);
    expect(flood.code, flood.stderr).toBe(0);
    expect(other.code, other.stderr).toBe(0);
    return {
      flood: JSON.parse(flood.stdout) as { sent: number; ms: number },
      other: JSON.parse(other.stdout) as { answered: number; asked: number },
      rcvbufErrors: (await rcvbufErrors()) - before,
    };
  };

  it.each(['iptables', 'nft'] as const)(
    'with the %s backend: without the limit, a one-socket flood costs the other sandbox queries; with it, the other sandbox is answered in full',
    async (backend) => {
      await apply(backend, []);
      const without = await floodAndAsk();
      await apply(backend, ['--dns-packets-per-source', '1000', '--dns-packets-burst', '2000']);
      const limited = await floodAndAsk();
      const seen = JSON.stringify({ without, limited });
      console.log(`dns-packets (${backend}): ${seen}`);
      // The flood filled the listener's socket, and the other sandbox's queries were among those dropped.
      expect(without.rcvbufErrors, seen).toBeGreaterThan(0);
      expect(without.other.answered, seen).toBeLessThan(ASKED);
      // The excess never reached the socket.
      expect(limited.rcvbufErrors, seen).toBe(0);
      expect(limited.other.answered, seen).toBe(ASKED);
    },
  );

  // With the listener off, the queries go on to the DNS server left reachable (the rig's dnsmasq),
  // whose socket every sandbox shares as well: the flood's excess is dropped in the udp chain.
  it.each(['iptables', 'nft'] as const)('with the %s backend and --dns-port off, limits the datagrams to a --dns-server the same way', async (backend) => {
    await apply(backend, ['--dns-packets-per-source', '1000', '--dns-packets-burst', '2000'], ['--dns-port', 'off', '--dns-server', rig.dnsServer]);
    const before = (rig.dnsLog().match(/query\[A\] \S*denied\.test/g) ?? []).length;
    const limited = await floodAndAsk(rig.dnsServer);
    const reached = (rig.dnsLog().match(/query\[A\] \S*denied\.test/g) ?? []).length - before;
    const seen = JSON.stringify({ limited, reached });
    console.log(`dns-packets to a --dns-server (${backend}): ${seen}`);
    // The burst, and the rate over the flood's seconds, with room for a second's rounding.
    expect(reached, seen).toBeLessThanOrEqual(2000 + 1000 * Math.ceil(limited.flood.ms / 1000 + 1));
    expect(limited.flood.sent, seen).toBeGreaterThan(4 * reached);
    expect(limited.other.answered, seen).toBe(ASKED);
  });
});
