// egressd reads the TCP settings of the network namespace it dials from at start, and warns when
// a source port it closed first is held for TIME_WAIT's 60 s (tcp_tw_reuse other than 1, or no
// TCP timestamps): one sandbox's short connections to an address can then spend every source
// port to it, and the other sandboxes' connections fail EADDRNOTAVAIL (peerhunt's reproduction,
// docs/deployment.md; istio/istio#44008, cilium/cilium#36427). Each daemon runs in a network
// namespace of its own (`unshare -n`), where the test sets the sysctls, so the host's stay as they are.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loopbackDocument } from '../helpers/config-file.ts';
import { watchDaemon, type DaemonProcess } from '../helpers/daemon-process.ts';
import { action } from '../helpers/log-line.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const probe = spawnSync('unshare', ['-n', 'sh', '-c', 'sysctl -qw net.ipv4.tcp_tw_reuse=1'], { encoding: 'utf8' });
const skip = probe.status === 0 ? null : `unshare -n with sysctl failed (${(probe.stderr || probe.error?.message || '').trim()}): needs root`;
if (skip !== null) console.warn(`host-tcp: skipped (${skip})`);

describe.skipIf(skip !== null)('the TCP settings egressd dials under', () => {
  const dir = mkdtempSync(join(tmpdir(), 'egressd-host-tcp-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const config = join(dir, 'egressd.json');
  writeFileSync(config, JSON.stringify(loopbackDocument()));

  const start = async (sysctls: string) => {
    const script = `ip link set lo up && sysctl -qw ${sysctls} && exec "$0" "$@"`;
    return watchDaemon(
      spawn('unshare', ['-n', 'sh', '-c', script, NODE, join(ROOT, 'src/main.ts'), 'serve', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] }),
    );
  };

  /** GET /readyz inside the daemon's namespace (its admin port is on the namespace's loopback). */
  const readyz = async (d: DaemonProcess): Promise<{ status: number; body: unknown }> => {
    const port = Number(d.lines.find((l) => action(l) === 'started')!['adminPort']);
    const r = spawnSync('nsenter', ['-t', String(d.child.pid), '-n', 'curl', '-s', '-w', '%{http_code}', `http://127.0.0.1:${port}/readyz`], {
      encoding: 'utf8',
    });
    // The body ends with its line break; the status follows it.
    const cut = r.stdout.lastIndexOf('\n') + 1;
    return { status: Number(r.stdout.slice(cut)), body: JSON.parse(r.stdout.slice(0, cut)) as unknown };
  };

  it.each([
    [
      'net.ipv4.tcp_tw_reuse=2 net.ipv4.ip_local_port_range="40000 40599"',
      /tcp_tw_reuse is 2 \(loopback only\)/,
      { twReuse: 2, timestamps: 1, localPorts: { from: 40000, to: 40599 } },
      10,
    ],
    ['net.ipv4.tcp_tw_reuse=0', /tcp_tw_reuse is 0/, { twReuse: 0 }, null],
    ['net.ipv4.tcp_tw_reuse=1 net.ipv4.tcp_timestamps=0', /tcp_timestamps is 0/, { twReuse: 1, timestamps: 0 }, null],
  ])('warns once at start under %s, naming the setting and the rate it allows', async (sysctls, reason, tcp, perSecond) => {
    const d = await start(sysctls);
    try {
      const warn = d.lines.find((l) => action(l) === 'time-wait-reuse-off');
      expect(warn).toMatchObject({ 'log.level': 'warn', reason: expect.stringMatching(reason), tcp });
      if (perSecond !== null) expect(warn!['message']).toContain(`about ${perSecond} connections a second`);
      expect(d.lines.filter((l) => action(l) === 'time-wait-reuse-off')).toHaveLength(1);
      expect(d.lines.find((l) => action(l) === 'limits')).toMatchObject({ tcp });
    } finally {
      await d.stop();
    }
  });

  // tcp_migrate_req 0 (the kernel's default) resets a connection caught in its handshake when a
  // rolling restart closes the old listeners (test/e2e/migrate-req.test.ts): said once at start and
  // by /readyz, which stays 200.
  it('warns once at start under net.ipv4.tcp_migrate_req=0, and /readyz says so while ready', async () => {
    const d = await start('net.ipv4.tcp_migrate_req=0');
    try {
      const warn = d.lines.filter((l) => action(l) === 'migrate-req-off');
      expect(warn).toHaveLength(1);
      expect(warn[0]).toMatchObject({ 'log.level': 'warn', reason: expect.stringMatching(/^net\.ipv4\.tcp_migrate_req is 0: /), tcp: { migrateReq: 0 } });
      const ready = await readyz(d);
      expect(ready.status).toBe(200);
      expect(ready.body).toMatchObject({ status: 'ready', warnings: [warn[0]!['reason']] });
    } finally {
      await d.stop();
    }
  });

  it('says nothing of tcp_migrate_req when it is 1', async () => {
    const d = await start('net.ipv4.tcp_migrate_req=1');
    try {
      expect(d.lines.find((l) => action(l) === 'limits')).toMatchObject({ tcp: { migrateReq: 1 } });
      expect(d.lines.filter((l) => action(l) === 'migrate-req-off')).toEqual([]);
      expect((await readyz(d)).body).toEqual({ status: 'ready' });
    } finally {
      await d.stop();
    }
  });

  it('says nothing when ports in TIME_WAIT are reused (tcp_tw_reuse=1 with timestamps)', async () => {
    const d = await start('net.ipv4.tcp_tw_reuse=1 net.ipv4.tcp_timestamps=1');
    try {
      expect(d.lines.find((l) => action(l) === 'limits')).toMatchObject({ tcp: { twReuse: 1, timestamps: 1 } });
      expect(d.lines.filter((l) => action(l) === 'time-wait-reuse-off')).toEqual([]);
    } finally {
      await d.stop();
    }
  });
});
