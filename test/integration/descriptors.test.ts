// Descriptor exhaustion (issue 11 part 2) in a real process started with a tiny RLIMIT_NOFILE
// (prlimit): when something outside the connection budget takes the last descriptors (here:
// idle connections to the admin listener, which admission does not gate), accept(2) fails
// with EMFILE. egressd must not crash or spin, and must accept again as soon as descriptors
// free up. (libuv answers EMFILE itself: it closes the waiting connections with a descriptor
// it keeps in reserve and tells Node nothing, so those are not counted one by one; an accept
// error Node does see is counted in egressd_accept_errors_total.) With the connections set up
// in the native loops (EGRESSD_DATA_PLANE=native-setup) the loop does the same with its own
// reserve descriptor and reports each refused connection: counted one by one as global-limit.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { watchDaemon, type DaemonProcess } from '../helpers/daemon-process.ts';
import { action, field } from '../helpers/log-line.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const hasPrlimit = process.platform === 'linux' && spawnSync('prlimit', ['--version']).status === 0;

/** CPU seconds (user + system) the process has used, from /proc/PID/stat. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

describe.skipIf(!hasPrlimit).each([
  { setup: 'node', env: { EGRESSD_DATA_PLANE: 'native' } },
  { setup: 'native', env: { EGRESSD_DATA_PLANE: 'native-setup' } },
])('descriptor exhaustion in a process with RLIMIT_NOFILE 64, set up on $setup', ({ setup, env }) => {
  let dir: string;
  let d: DaemonProcess | undefined;
  const held: Socket[] = [];
  afterEach(async () => {
    for (const s of held.splice(0)) s.destroy();
    await d?.stop('SIGKILL');
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('neither crashes nor spins at EMFILE, and accepts again once descriptors free up', async () => {
    dir = mkdtempSync(join(tmpdir(), 'egressd-fd-'));
    const file = join(dir, 'egressd.json');
    writeFileSync(
      file,
      JSON.stringify({
        listen: { http: '127.0.0.1:0', tls: '127.0.0.1:0', tcp: '127.0.0.1:0', dns: [] },
        admin: { listen: '127.0.0.1:0' },
        limits: { global: { reserveDescriptors: 16 } },
      }),
    );
    d = await watchDaemon(
      spawn('prlimit', ['--nofile=64:64', NODE, join(ROOT, 'src/main.ts'), 'serve', '--config', file], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, ...env },
      }),
    );
    const started = d.lines.find((l) => action(l) === 'started')!;
    const limits = d.lines.find((l) => action(l) === 'limits')!;
    expect(limits['nofile']).toMatchObject({ after: { soft: 64, hard: 64 } });
    const admin = `127.0.0.1:${started['adminPort'] as number}`;
    const tcpPort = (started['listeners'] as { kind: string; port: number }[]).find((l) => l.kind === 'tcp')!.port;
    const open = (port: number): Promise<Socket> =>
      new Promise((res) => {
        const s = connect({ host: '127.0.0.1', port });
        s.on('error', () => {});
        s.once('connect', () => res(s));
        s.once('close', () => res(s));
      });
    // Take every descriptor egressd has left with idle admin connections.
    for (let i = 0; i < 80; i++) held.push(await open(Number(admin.split(':')[1])));
    await new Promise((r) => setTimeout(r, 300));
    // A redirected-port connection now meets EMFILE at accept: libuv's reserve descriptor
    // accepts and closes it, and egressd keeps listening. (Its memory guard, which reads
    // /proc, once crashed the process right here.)
    if (d.child.exitCode !== null || d.child.signalCode !== null)
      throw new Error(`egressd exited: ${d.child.exitCode ?? d.child.signalCode} ${d.stderr().slice(-3000)} ${JSON.stringify(d.lines.slice(-5))}`);
    const cpu0 = cpuSeconds(d.child.pid!);
    for (let i = 0; i < 20; i++) (await open(tcpPort)).destroy();
    await new Promise((r) => setTimeout(r, 1000));
    const spent = cpuSeconds(d.child.pid!) - cpu0;
    expect(d.child.exitCode).toBeNull();
    expect(spent).toBeLessThan(0.9); // a busy loop would burn the whole second
    // Free the descriptors: the admin listener and the proxy listeners answer again at once.
    for (const s of held.splice(0)) s.destroy();
    const t0 = Date.now();
    let metrics = '';
    while (Date.now() - t0 < 5000) {
      try {
        metrics = await (await request(`http://${admin}/metrics`, { headersTimeout: 1000, bodyTimeout: 1000 })).body.text();
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    expect(metrics).toMatch(/^egressd_limit_descriptors\{kind="soft"\} 64$/m);
    if (setup === 'native') {
      // Each refused one was accepted with the reserve descriptor, reset, and counted: as many
      // global-limit refusals as EMFILE accept errors (20, unless a descriptor was free for a
      // moment while the machine was loaded).
      const count = (re: RegExp): number => Number(re.exec(metrics)?.[1] ?? 0);
      const shed = count(/^egressd_connections_total\{listener="tcp",verdict="refuse",reason="global-limit",ended_by="egressd"\} (\d+)$/m);
      expect(shed).toBeGreaterThan(0);
      expect(shed).toBeLessThanOrEqual(20);
      expect(count(/^egressd_accept_errors_total\{code="EMFILE"\} (\d+)$/m)).toBe(shed);
    }
    expect(Date.now() - t0).toBeLessThan(5000);
    const s = await open(tcpPort);
    held.push(s);
    // Accepted (then refused as not redirected: there is no iptables here), not failed.
    await d.waitFor((l) => action(l) === 'connection' && field(l, 'event.reason') === 'not-redirected', 5000);
    expect(d.child.exitCode).toBeNull();
  }, 60_000);
});
