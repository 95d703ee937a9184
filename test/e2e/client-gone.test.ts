// A sandbox that connects to an address whose SYNs are dropped and resets at once, again and
// again, through the real REDIRECT on every data path: each reset ends its connection at once,
// and egressd is left dialing nothing (no socket in SYN_SENT in its namespace), where before it
// held each dial for upstream.connectTimeoutMs (here a minute). So does a TLS client that gives
// up and closes (curl --max-time: its FIN after its ClientHello, with nothing back): it can never
// finish its handshake, so its FIN ends its connection as a reset does (`client-fin`).
// test/integration/net/client-gone.test.ts and tls-fin-gone.test.ts have the cases one by one (a
// reset during the lookup, an HTTP client's FIN that is not going away).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRig, rigUnavailableReason, type Rig } from '../helpers/netns-rig.ts';
import { field, type LogLine } from '../helpers/log-line.ts';
import { DATA_PATHS, E2E_PORTS, servedPerBlock, writeConfig } from '../helpers/e2e-daemon.ts';

/** Its SYNs are dropped: a dial to it never ends by itself before the connect timeout. */
const DARK = '198.18.1.12';
const SB = '198.18.0.2';
/**
 * The second sandbox's source: its policy has a name rule, so every connection's first flight is
 * read before the verdict (a TLS client's FIN ends it only once its ClientHello was read).
 */
const SB_TLS = '198.18.0.3';
const CONNECTIONS = 20;
/** curl runs, each giving up after a second: bounded in count and time. */
const GIVE_UPS = 4;
const CONNECT_TIMEOUT_MS = 60_000;

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e client-gone skipped: ${skip}`);

// Each connection: accepted by egressd (REDIRECT), a byte sent, then an abortive close (SO_LINGER
// 0: a reset) a moment later, while egressd dials the dark address.
const RESETS = `
import json, socket, struct, sys, time
n = int(sys.argv[1])
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(('${SB}', 0))
    s.settimeout(5)
    s.connect(('${DARK}', 7000))
    s.sendall(b'x')
    time.sleep(0.05)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    s.close()
print(json.dumps({'reset': n}))
`;

describe.skipIf(skip !== null)('a sandbox that resets while egressd dials an address that never answers', () => {
  let rig: Rig;
  let dir: string;
  let configFile: string;

  beforeAll(async () => {
    rig = await createRig();
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-client-gone-'));
    await rig.servers([DARK]);
    const drop = await rig.execIn('internet', 'iptables', ['-A', 'INPUT', '-d', DARK, '-p', 'tcp', '--syn', '-j', 'DROP']);
    expect(drop.code, drop.stderr).toBe(0);
    configFile = writeConfig(dir, {
      listen: { http: ['0.0.0.0:15080'], tls: ['0.0.0.0:15443'], tcp: ['0.0.0.0:15001'], dns: [] },
      admin: { listen: '127.0.0.1:9912', token: 'gone-token' },
      dns: { servers: [rig.dnsServer], sandboxServers: [rig.dnsServer] },
      protected: { except: ['198.18.0.0/15', '2001:db8::/32'] },
      upstream: { connectTimeoutMs: CONNECT_TIMEOUT_MS },
      sandboxes: [
        { id: 'sb-gone', sources: [SB], network: { mode: 'allow-all' } },
        { id: 'sb-gone-tls', sources: [SB_TLS], network: { mode: 'allow-all', egress: { denied_domains: ['denied.test'] } } },
      ],
    });
    await rig.redirect(E2E_PORTS);
  }, 60_000);

  afterAll(async () => {
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  describe.each(DATA_PATHS)('on $name', ({ env, plane }) => {
    const daemon = servedPerBlock(
      () => rig,
      () => configFile,
      env,
      plane,
    );

    /** egressd's sockets in SYN_SENT toward the dark address (it runs in the router namespace). */
    const dialing = async (): Promise<number> => {
      const r = await rig.execIn('router', 'ss', ['-Htn', 'state', 'syn-sent', 'dst', DARK]);
      expect(r.code, r.stderr).toBe(0);
      return r.stdout.split('\n').filter((l) => l.trim() !== '').length;
    };

    it(`ends each of ${CONNECTIONS} connections at its reset, leaving no dial behind`, async () => {
      const before = daemon().connections().length;
      const started = Date.now();
      const r = await rig.execIn('sandbox', 'python3', ['-c', RESETS, String(CONNECTIONS)], { timeoutMs: 30_000 });
      expect(r.code, r.stderr).toBe(0);
      // Every connection's line, well before a single dial could have timed out.
      const mine = (): LogLine[] =>
        daemon()
          .connections()
          .slice(before)
          .filter((l) => field(l, 'destination.ip') === DARK);
      for (let i = 0; i < 200 && mine().length < CONNECTIONS; i++) await new Promise((res) => setTimeout(res, 50));
      const lines = mine();
      expect(lines.length, `lines after ${Date.now() - started} ms`).toBe(CONNECTIONS);
      expect(Date.now() - started).toBeLessThan(CONNECT_TIMEOUT_MS / 2);
      // Each the client's reset; `aborted` when its dial had begun (a reset that came with the
      // flight ends it before any attempt: nothing to name).
      const text = (v: unknown): string => (typeof v === 'string' ? v : JSON.stringify(v));
      const failure = (l: LogLine): string => (field(l, 'egressd.upstream.failure') === undefined ? 'not dialed' : text(field(l, 'egressd.upstream.failure')));
      const ends = lines.map((l) => `${text(field(l, 'egressd.ended_by'))} ${text(field(l, 'egressd.end'))} ${failure(l)}`);
      expect(ends.filter((e) => e !== 'client client-reset aborted' && e !== 'client client-reset not dialed')).toEqual([]);
      expect(await dialing(), 'dial attempts still in SYN_SENT').toBe(0);
    }, 60_000);

    it(`ends each of ${GIVE_UPS} TLS connections whose client gave up (curl --max-time: a FIN after its ClientHello) at once, leaving no dial behind`, async () => {
      const before = daemon().connections().length;
      const started = Date.now();
      for (let i = 0; i < GIVE_UPS; i++) {
        // Exit 28: the time ran out with nothing back, and curl closed its socket (a FIN).
        const r = await rig.execIn('sandbox', 'curl', ['-sk', '--max-time', '1', '--interface', SB_TLS, `https://${DARK}/`], { timeoutMs: 15_000 });
        expect(r.code, r.stderr).toBe(28);
      }
      const mine = (): LogLine[] =>
        daemon()
          .connections()
          .slice(before)
          .filter((l) => field(l, 'destination.ip') === DARK);
      for (let i = 0; i < 200 && mine().length < GIVE_UPS; i++) await new Promise((res) => setTimeout(res, 50));
      const lines = mine();
      expect(lines.length, `lines after ${Date.now() - started} ms`).toBe(GIVE_UPS);
      expect(Date.now() - started).toBeLessThan(CONNECT_TIMEOUT_MS / 2);
      const text = (v: unknown): string => (typeof v === 'string' ? v : JSON.stringify(v));
      const ends = lines.map(
        (l) =>
          `${text(field(l, 'network.protocol'))} ${text(field(l, 'egressd.ended_by'))} ${text(field(l, 'egressd.end'))} ${text(field(l, 'egressd.upstream.failure'))}`,
      );
      expect(ends).toEqual(Array.from({ length: GIVE_UPS }, () => 'tls client client-fin aborted'));
      expect(await dialing(), 'dial attempts still in SYN_SENT').toBe(0);
    }, 60_000);
  });
});
