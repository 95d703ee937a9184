// The host's own addresses are refused whatever the policy (decide step 1a, net/host-addresses.ts),
// and the set is re-read while egressd runs. An address the host gains changes the verdict on a
// connection already spliced to it, as a policy change would: the connection is closed with
// `event.reason: host-address-changed`, on every data path, and a connection elsewhere is untouched.
//
// The real path: the sandbox connects through the REDIRECT to an echo server in the internet
// namespace, gets its first ping back, and goes idle; the test then adds that server's address to
// the router namespace's loopback, where egressd runs (its next re-read of getifaddrs(3) finds it).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRig, rigUnavailableReason, type Rig } from '../helpers/netns-rig.ts';
import { action, connectionFields } from '../helpers/log-line.ts';
import { DATA_PATHS, E2E_PORTS, servedPerBlock, writeConfig } from '../helpers/e2e-daemon.ts';

const GAINED = '198.18.1.77'; // becomes an address of egressd's host during the test
const OTHER = '198.18.1.78'; // stays a remote address
// An address of the host on an interface that is up without carrier (a veth whose peer is down):
// Linux delivers to it locally, though os.networkInterfaces() leaves the interface out.
const NO_CARRIER = '198.18.1.79';
const SB = '198.18.0.2';
// Neither TLS nor an HTTP request line: judged at once, with no name, and spliced.
const PAYLOAD = '@ping';
// Long enough for the address to be added and read again (every 2 s) before the second ping.
const IDLE_S = 5;

// Connects, pings once, stays idle for `wait` seconds, pings again; prints each result.
const PING_IDLE_PING = `
import socket, sys, time
ip, port, wait, payload = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].encode()
s = socket.create_connection((ip, port), timeout=10, source_address=("${SB}", 0))
print("port", s.getsockname()[1], flush=True)
def ping():
    try:
        s.sendall(payload)
        d = s.recv(100)
        return "got " + d.decode() if d else "eof"
    except Exception as e:
        return "error " + type(e).__name__
print("first", ping(), flush=True)
time.sleep(wait)
print("second", ping(), flush=True)
`;

// Connects, sends the payload, prints what came back or how it failed.
const PING_ONCE = `
import socket, sys
ip, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
try:
    s = socket.create_connection((ip, port), timeout=5, source_address=("${SB}", 0))
    s.sendall(payload)
    print("got", s.recv(100))
except Exception as e:
    print("error", type(e).__name__)
`;

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e host-address change skipped: ${skip}`);

describe.skipIf(skip !== null)('a connection spliced to an address the host then gains is closed', () => {
  let rig: Rig;
  let dir: string;
  let configFile: string;

  beforeAll(async () => {
    rig = await createRig();
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-hostaddr-'));
    await rig.servers([GAINED, OTHER]);
    configFile = writeConfig(dir, {
      listen: { http: ['0.0.0.0:15080'], tls: ['0.0.0.0:15443'], tcp: ['0.0.0.0:15001'] },
      admin: { listen: '127.0.0.1:9913', token: 'hostaddr-token' },
      dns: { servers: [rig.dnsServer] },
      // Lifts the built-in ranges only: the host's own addresses stay refused (step 1a).
      protected: { except: ['198.18.0.0/15', '2001:db8::/32'] },
      sandboxes: [{ id: 'sb', sources: [SB], network: { mode: 'allow-all' } }],
    });
    await rig.redirect(E2E_PORTS);
  });

  afterAll(async () => {
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  describe.each(DATA_PATHS)('on $name', ({ name, env, plane }) => {
    const daemon = servedPerBlock(
      () => rig,
      () => configFile,
      env,
      plane,
    );

    const start = (ip: string) => {
      const child = rig.spawnIn('sandbox', 'python3', ['-c', PING_IDLE_PING, ip, '7000', String(IDLE_S), PAYLOAD]);
      let out = '';
      child.stdout!.setEncoding('utf8');
      const first = new Promise<string>((resolve) => {
        child.stdout!.on('data', (d: string) => {
          out += d;
          if (/^first .*\n/m.test(out)) resolve(out);
        });
      });
      const done = new Promise<string>((resolve) => child.once('exit', () => resolve(out)));
      return { first, done };
    };

    it('closes it with reason host-address-changed, and leaves a connection elsewhere open', async () => {
      const gained = start(GAINED);
      const other = start(OTHER);
      expect(await gained.first).toMatch(`first got ${PAYLOAD}`);
      expect(await other.first).toMatch(`first got ${PAYLOAD}`);
      const add = await rig.execIn('router', 'ip', ['addr', 'add', `${GAINED}/32`, 'dev', 'lo']);
      expect(add.code, add.stderr).toBe(0);
      try {
        const line = await daemon().outcomeAt(`${GAINED}:7000`, undefined, 8000);
        expect(connectionFields(line)).toMatchObject({
          'egressd.verdict': 'refuse',
          'event.reason': 'host-address-changed',
          'egressd.ended_by': 'policy',
          'egressd.end': 'aborted',
          'egressd.upstream.ip': GAINED,
        });
        expect(await daemon().waitFor((l) => action(l) === 'closed-by-host-address-change', 2000)).toMatchObject({ count: 1 });
        expect(await gained.done).toMatch(/^second (eof|error \w+)$/m);
        // The address that stayed remote: the same verdict as before, and carried on.
        expect(await other.done).toMatch(`second got ${PAYLOAD}`);
        expect(connectionFields(await daemon().outcomeAt(`${OTHER}:7000`))).toMatchObject({ 'egressd.verdict': 'allow', 'event.reason': 'default-allow' });
      } finally {
        await rig.execIn('router', 'ip', ['addr', 'del', `${GAINED}/32`, 'dev', 'lo']);
      }
    });

    it('refuses an address of the host on an interface without carrier', async () => {
      const link = `nc${DATA_PATHS.findIndex((p) => p.name === name)}`;
      const steps = [
        ['link', 'add', link, 'type', 'veth', 'peer', 'name', `${link}p`],
        ['addr', 'add', `${NO_CARRIER}/32`, 'dev', link],
        ['link', 'set', link, 'up'],
      ];
      try {
        for (const args of steps) {
          const r = await rig.execIn('router', 'ip', args);
          expect(r.code, r.stderr).toBe(0);
        }
        expect((await rig.execIn('router', 'ip', ['-br', 'link', 'show', link])).stdout).toMatch(/LOWERLAYERDOWN|NO-CARRIER/);
        // The next re-read of the host's addresses (every 2 s).
        await new Promise((r) => setTimeout(r, 2500));
        const probe = await rig.execIn('sandbox', 'python3', ['-c', PING_ONCE, NO_CARRIER, '7001', PAYLOAD], { timeoutMs: 15_000 });
        expect(probe.code, probe.stderr).toBe(0);
        expect(connectionFields(await daemon().outcomeAt(`${NO_CARRIER}:7001`))).toMatchObject({
          'egressd.verdict': 'refuse',
          'event.reason': 'protected-address',
          'rule.name': `host address "${NO_CARRIER}"`,
        });
      } finally {
        await rig.execIn('router', 'ip', ['link', 'del', link]);
      }
    });
  });
});
