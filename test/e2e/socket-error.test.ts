// The JS path asks a socket Node does not watch whether it failed (src/net/original-dst.ts
// takeSocketError: a paused side, a client waiting for its dial), and ends the connection when it
// did. SO_ERROR alone answers that wrongly for a live connection: Linux keeps an ICMP error that
// reaches an established TCP connection as its soft error (tcp_v4_err, sk_err_soft) and leaves it
// open, and SO_ERROR hands that out too. So a healthy client sent one ICMP host-unreachable (a
// router's, a spoofed one) was cut as if it had reset. Here, in a network namespace of its own
// (unshare -n: gone with the process), a connection on loopback whose data segments draw ICMP
// host-unreachable (iptables REJECT) is asked: it has not failed. A reset socket is asked in the
// splice tests (test/integration/net/splice.test.ts, a side whose write half is ended).

import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { rigUnavailableReason } from '../helpers/netns-rig.ts';
import { NODE, ROOT } from '../helpers/e2e-daemon.ts';

const unavailable = rigUnavailableReason();
const ADDON = join(ROOT, 'native/build/original_dst.node');

// argv: the addon. Prints {"asked": socketError's answer for the live connection, "state": its TCP state}.
const CHILD = `
const net = require('node:net');
const { execFileSync } = require('node:child_process');
const addon = require(process.argv[1]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
(async () => {
  let peer;
  const server = net.createServer((s) => { peer = s; s.on('error', () => {}); });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  const c = net.connect({ host: '127.0.0.1', port });
  c.on('error', () => {});
  await new Promise((r) => c.once('connect', r));
  while (!peer) await sleep(5);
  c.pause();
  // Data segments (not the handshake's or pure ACKs, under 500 bytes) draw ICMP host unreachable.
  execFileSync('iptables', ['-I', 'OUTPUT', '-p', 'tcp', '--dport', String(port), '-m', 'length', '--length', '500:65535',
    '-j', 'REJECT', '--reject-with', 'icmp-host-unreachable']);
  c.write(Buffer.alloc(1000, 1));
  await sleep(300);
  const asked = addon.socketError(c._handle.fd);
  const state = execFileSync('ss', ['-Htn', 'state', 'established', '( dport = :' + port + ' )'], { encoding: 'utf8' }).trim() !== '' ? 'established' : 'other';
  console.log(JSON.stringify({ asked, state }));
  // The client's FIN waits behind its rejected bytes: nothing would close the server's side.
  process.exit(0);
})();
`;

describe.skipIf(unavailable !== null)('takeSocketError on a live connection with a soft error', () => {
  it('answers that it has not failed (0), and leaves the connection established', () => {
    const r = spawnSync('unshare', ['-n', 'sh', '-c', 'ip link set lo up && exec "$0" -e "$1" "$2"', NODE, CHILD, ADDON], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(r.status, r.stderr).toBe(0);
    // Before: {"asked":113} (EHOSTUNREACH), and the JS path destroyed the healthy client.
    expect(JSON.parse(r.stdout.trim())).toEqual({ asked: 0, state: 'established' });
  });
});

if (unavailable !== null) console.log(`skipped: ${unavailable}`);
