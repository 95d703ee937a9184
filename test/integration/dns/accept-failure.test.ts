// One tenant holding DNS-over-TCP connections while egressd is at its descriptor limit must not
// take DNS from the others: the accepts that fail (EMFILE) are those connections' loss alone.
// libuv answers EMFILE itself (it closes a reserve descriptor, accepts and closes what waits, and
// tells Node nothing), so the listener's state is untouched; egressd's DNS TCP listener treats any
// 'error' its server emits as the listener's end (answers stop for UDP too), which this test
// guards against for the one accept failure a sandbox can cause. The real process: its soft
// descriptor limit lowered from outside (prlimit) while TCP clients hold connections, then raised.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loopbackDocument } from '../../helpers/config-file.ts';
import { watchDaemon, type DaemonProcess } from '../../helpers/daemon-process.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { action } from '../../helpers/log-line.ts';
import { askOverTcp } from '../../helpers/tcp-dns.ts';

const ROOT = resolve(import.meta.dirname, '../..', '..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const A = '127.0.0.81';
const havePrlimit = spawnSync('prlimit', ['--version'], { stdio: 'ignore' }).status === 0;
const skip = !haveDig ? 'dig is not installed' : !havePrlimit ? 'prlimit is not installed' : null;
if (skip !== null) console.warn(`dns accept-failure: skipped (${skip})`);

describe.skipIf(skip !== null)('a DNS-over-TCP accept that fails for want of descriptors', () => {
  let upstream: DnsTestServer;
  let d: DaemonProcess;
  let dir: string;
  let port: number;
  let admin: string;
  const held: Socket[] = [];

  beforeAll(async () => {
    upstream = await DnsTestServer.start();
    upstream.set('fast.test', { kind: 'answer', a: ['198.18.2.1'], ttl: 0 });
    dir = mkdtempSync(join(tmpdir(), 'egressd-dns-emfile-'));
    const config = join(dir, 'egressd.json');
    writeFileSync(
      config,
      JSON.stringify(
        loopbackDocument({
          listen: { http: '127.0.0.1:0', tls: '127.0.0.1:0', tcp: '127.0.0.1:0', dns: '127.0.0.1:0' },
          dns: { servers: [upstream.server] },
          sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['fast.test'] } } }],
        }),
      ),
    );
    d = await watchDaemon(spawn(NODE, [join(ROOT, 'src/main.ts'), 'serve', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] }));
    const started = d.lines.find((l) => action(l) === 'started')!;
    port = (started['dnsListeners'] as { port: number }[])[0]!.port;
    admin = `http://127.0.0.1:${started['adminPort'] as number}`;
  });
  afterAll(async () => {
    for (const s of held) s.destroy();
    await d?.stop('SIGKILL');
    await upstream?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const nofile = (soft: number): void => {
    // The soft limit alone: egressd raised it to the hard one at start, which stays.
    const r = spawnSync('prlimit', ['--pid', String(d.child.pid), `--nofile=${soft}:`], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
  };

  it('loses that connection only: UDP is answered again, /readyz stays ready, and TCP is accepted once descriptors are free', async () => {
    expect(await digFrom(port, A, 'fast.test', 'A')).toContain('198.18.2.1');
    // Room for a few more descriptors, then more connections than that: accepts fail with EMFILE.
    const hard = Number(/Max open files\s+(\d+)/.exec(readFileSync(`/proc/${d.child.pid}/limits`, 'utf8'))![1]);
    const open = readdirSync(`/proc/${d.child.pid}/fd`).length;
    nofile(open + 4);
    for (let i = 0; i < 12; i++) {
      const s = connect({ host: '127.0.0.1', port });
      s.on('error', () => {});
      held.push(s);
    }
    await new Promise((r) => setTimeout(r, 500));
    // Descriptors free again: the held connections go, the limit is raised back.
    for (const s of held.splice(0)) s.destroy();
    nofile(hard);
    await new Promise((r) => setTimeout(r, 200));
    expect((await fetch(`${admin}/readyz`)).status).toBe(200);
    expect(await digFrom(port, A, 'fast.test', 'A')).toContain('198.18.2.1');
    const s = connect({ host: '127.0.0.1', port, localAddress: A });
    s.on('error', () => {});
    held.push(s);
    expect((await askOverTcp(s, 'fast.test')).rcode).toBe('NOERROR');
  }, 30_000);
});
