// TCP urgent data through the real path (iptables REDIRECT, egressd in the router namespace, a
// Python client in the sandbox, the rig's echo server): a byte sent with MSG_OOB in the middle of
// a large transfer (telnet's and FTP's Synch, RFC 854, RFC 959 §4.1.3, send it so) must not end
// the transfer. Once the FIN is in, splice(2) answers 0 at the urgent mark with bytes still
// queued behind it (tcp_splice_read in Linux's net/ipv4/tcp.c, whose own loop at URG data was
// CVE-2017-6214), and the native data plane took that 0 for the client's FIN: the upstream got
// the bytes before the mark, then a FIN, and the client a reset. Without the FIN in, splice
// answers EAGAIN there instead, and a read stops short at the mark: the native loop took the
// socket for empty, and the bytes behind the mark waited for an edge that never came (pinned in
// native/test/splice_loop_test.c, where the loop can be held until they are all queued). Every data
// path now carries all the bytes, leaving out the urgent byte itself, as a reader without
// SO_OOBINLINE (Node's included) does.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRig, rigUnavailableReason, type Rig } from '../helpers/netns-rig.ts';
import { connectionFields } from '../helpers/log-line.ts';
import { DATA_PATHS, E2E_PORTS, servedPerBlock, writeConfig } from '../helpers/e2e-daemon.ts';

const ECHO = '198.18.1.5'; // allowed by CIDR; the rig's echo service answers on port 7000
const MIB = 1 << 20;

const skip = rigUnavailableReason();
if (skip) console.warn(`e2e urgent data skipped: ${skip}`);

// argv: address, port, bytes before and after the urgent byte. Prints the bytes echoed back and
// how the stream ended ("EOF" or the exception's name).
const PY_URGENT_MID_TRANSFER = `
import socket, sys, threading
ip, port, before, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection((ip, port), timeout=10)
got = [0, "timeout"]
def read():
    try:
        while True:
            c = s.recv(65536)
            if not c:
                got[1] = "EOF"
                return
            got[0] += len(c)
    except Exception as e:
        got[1] = type(e).__name__
t = threading.Thread(target=read)
t.start()
try:
    s.sendall(b"u" * before)
    s.send(b"!", socket.MSG_OOB)
    s.sendall(b"v" * after)
    s.shutdown(socket.SHUT_WR)
except Exception as e:
    print("send", type(e).__name__)
t.join(10)
print(got[0], got[1])
`;

describe.skipIf(skip !== null)('a byte of TCP urgent data in the middle of a transfer', () => {
  let rig: Rig;
  let dir: string;
  let config: string;

  beforeAll(async () => {
    rig = await createRig();
    dir = mkdtempSync(join(tmpdir(), 'egressd-e2e-urgent-'));
    await rig.servers([ECHO]);
    config = writeConfig(dir, {
      listen: { http: ['0.0.0.0:15080'], tls: ['0.0.0.0:15443'], tcp: ['0.0.0.0:15001'] },
      admin: { listen: '127.0.0.1:9901', token: 'e2e-urgent-token' },
      dns: { servers: [rig.dnsServer], sandboxServers: [rig.dnsServer] },
      protected: { except: ['198.18.0.0/15', '2001:db8::/32'] },
      sandboxes: [{ id: 'sb-1', sources: [rig.sandboxV4, rig.sandboxV6], network: { mode: 'block-all', egress: { allowed_cidrs: [`${ECHO}/32`] } } }],
    });
    await rig.redirect(E2E_PORTS);
  });

  afterAll(async () => {
    await rig?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  describe.each(DATA_PATHS)('on $name', ({ env, plane }) => {
    const daemon = servedPerBlock(
      () => rig,
      () => config,
      env,
      plane,
    );

    it('carries every byte after it, and the connection ends with the FIN the client sent', async () => {
      // 2 MiB before it: the native loop splices by then (past SL_COPY_LIMIT).
      const r = await rig.execIn('sandbox', 'python3', ['-c', PY_URGENT_MID_TRANSFER, ECHO, '7000', String(2 * MIB), String(2 * MIB)], {
        timeoutMs: 30_000,
      });
      // Before the fix, on the native loop: at most the 2 MiB before the mark, then ConnectionResetError.
      expect(r.stdout.trim(), r.stderr).toBe(`${4 * MIB} EOF`);
      const o = await daemon().outcomeAt(`${ECHO}:7000`);
      expect(connectionFields(o)).toMatchObject({
        'egressd.verdict': 'allow',
        'event.reason': 'allow-rule',
        'source.bytes': 4 * MIB,
        'destination.bytes': 4 * MIB,
      });
    });
  });
});
