// A verdict that rested on a name egressd's DNS listener gave the sandbox (dns/memory.ts) holds
// only while that name is remembered: when the memory expires between the verdict and the
// upstream's answer, the connection is judged again before any byte goes upstream, on every data
// path. The JavaScript path judges at every dial; the native set-up splices by itself when the
// policy did not change, so the loop is told the verdict's deadline with the dial.
//
// The real path: the sandbox resolves a name through the REDIRECTed port 53 and at once connects,
// with no name on the wire (raw bytes on port 7000), to the address it was given. The upstream's
// namespace drops the first SYN to that address (iptables' statistic match), so the dial connects
// on the SYN's retransmission, a second later (RFC 6298's initial RTO) — after the name, given with
// TTL 0 and a 300 ms grace, has expired.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRig, rigUnavailableReason, type Rig } from '../helpers/netns-rig.ts';
import { connectionFields } from '../helpers/log-line.ts';
import { DATA_PATHS, E2E_PORTS, servedPerBlock, writeConfig } from '../helpers/e2e-daemon.ts';

const PORTS = { ...E2E_PORTS, dns: 15053 };
const SLOW = '198.18.1.9'; // slow.test: its first SYN is dropped
const FAST = '198.18.1.10'; // fast.test
const SB = '198.18.0.2';
const GRACE_MS = 300;
// Neither TLS nor the start of an HTTP request line ('@' is no token character), so it is judged
// at once, with no name, rather than after the stall wait.
const PAYLOAD = '@ping';

// Resolves a name with one A query to `server` port 53 (redirected to egressd), connects at once
// to the first address, sends the payload and prints what came back or how the connection ended.
const RESOLVE_AND_CONNECT = `
import json, socket, struct, sys, time
server, name, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
q = struct.pack(">HHHHHH", 0x2a2a, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\\0" + struct.pack(">HH", 1, 1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
u.sendto(q, (server, 53))
m = u.recv(4096)
def skip(i):
    while True:
        n = m[i]
        if n == 0: return i + 1
        if n & 0xC0 == 0xC0: return i + 2
        i += 1 + n
i = skip(12) + 4
addr, ttl = None, None
for _ in range(struct.unpack(">H", m[6:8])[0]):
    i = skip(i)
    t, c, ttl, ln = struct.unpack(">HHIH", m[i:i + 10])
    i += 10
    if t == 1:
        addr = socket.inet_ntoa(m[i:i + 4])
        break
    i += ln
start = time.monotonic()
s = socket.create_connection((addr, port), timeout=8, source_address=("${SB}", 0))
s.sendall(payload.encode())
try:
    d = s.recv(100)
    result = "got " + d.decode() if d else "eof"
except Exception as e:
    result = "error " + type(e).__name__
print(json.dumps({"address": addr, "ttl": ttl, "result": result, "ms": round((time.monotonic() - start) * 1000)}))
`;

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e dns-memory expiry skipped: ${skip}`);

describe.skipIf(skip !== null)('a verdict made on a remembered DNS name is judged again once the name expires', () => {
  let rig: Rig;
  let dir: string;
  let configFile: string;

  beforeAll(async () => {
    rig = await createRig();
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-dnsexp-'));
    await rig.servers([SLOW, FAST]);
    await rig.dns({ 'slow.test': [SLOW], 'fast.test': [FAST] });
    const drop = await rig.execIn('internet', 'iptables', [
      '-A',
      'INPUT',
      '-d',
      SLOW,
      '-p',
      'tcp',
      '--syn',
      '--dport',
      '7000',
      '-m',
      'statistic',
      '--mode',
      'nth',
      '--every',
      '2',
      '--packet',
      '0',
      '-j',
      'DROP',
    ]);
    expect(drop.code, drop.stderr).toBe(0);
    configFile = writeConfig(dir, {
      listen: { http: ['0.0.0.0:15080'], tls: ['0.0.0.0:15443'], tcp: ['0.0.0.0:15001'], dns: ['0.0.0.0:15053'] },
      admin: { listen: '127.0.0.1:9912', token: 'dnsexp-token' },
      dns: { servers: [rig.dnsServer], memory: { graceMs: GRACE_MS } },
      protected: { except: ['198.18.0.0/15', '2001:db8::/32'] },
      sandboxes: [{ id: 'sb', sources: [SB], network: { mode: 'block-all', egress: { allowed_domains: ['slow.test', 'fast.test'] } } }],
    });
    await rig.redirect(PORTS);
  });

  afterAll(async () => {
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  describe.each(DATA_PATHS)('on $name', ({ env, plane }) => {
    const daemon = servedPerBlock(
      () => rig,
      () => configFile,
      env,
      plane,
    );

    const connect = async (name: string): Promise<{ address: string; ttl: number; result: string; ms: number }> => {
      const r = await rig.execIn('sandbox', 'python3', ['-c', RESOLVE_AND_CONNECT, rig.dnsServer, name, '7000', PAYLOAD], { timeoutMs: 20_000 });
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as { address: string; ttl: number; result: string; ms: number };
    };

    it('splices a nameless connection allowed by a remembered name while the name holds', async () => {
      const r = await connect('fast.test');
      expect(r).toMatchObject({ address: FAST, ttl: 0, result: `got ${PAYLOAD}` });
      expect(connectionFields(await daemon().outcomeAt(`${FAST}:7000`))).toMatchObject({
        'egressd.verdict': 'allow',
        'egressd.dns_names': ['fast.test'],
        'egressd.upstream.ip': FAST,
      });
    });

    it('refuses it, with no byte upstream, when the name expired while the upstream was being dialed', async () => {
      const seen = rig.events().length;
      const r = await connect('slow.test');
      expect(r.address).toBe(SLOW);
      expect(r.result).toMatch(/^(eof|error \w+)$/);
      // The dial connected on the retransmitted SYN, well past the name's grace.
      expect(r.ms).toBeGreaterThan(GRACE_MS);
      const line = await daemon().outcomeAt(`${SLOW}:7000`);
      // Decided on the remembered name (so before it expired), refused when judged again.
      expect(connectionFields(line)).toMatchObject({
        'egressd.verdict': 'refuse',
        'event.reason': 'default-block',
        'egressd.dns_names': ['slow.test'],
        'egressd.upstream.ip': undefined,
      });
      const upstream = rig
        .events()
        .slice(seen)
        .filter((e) => e.local === `${SLOW}:7000`);
      // The upstream was connected (the SYN's retransmission got through), then closed without a byte.
      expect(upstream.filter((e) => e.event === 'data')).toEqual([]);
      for (
        let i = 0;
        i < 50 &&
        !rig
          .events()
          .slice(seen)
          .some((e) => e.local === `${SLOW}:7000` && e.event === 'close');
        i++
      ) {
        await new Promise((res) => setTimeout(res, 50));
      }
      expect(
        rig
          .events()
          .slice(seen)
          .filter((e) => e.local === `${SLOW}:7000` && e.event === 'close'),
      ).toMatchObject([{ bytes: 0 }]);
    });
  });
});
