// dnsmasq on loopback as the upstream resolver of an in-process egressd (the integration suites):
// a real resolver, started by the test, serving only the `.test` names it is given and forwarding
// nothing (--no-resolv, no server). The rig's dnsmasq (netns-rig.ts) does the same in a namespace.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { digFrom } from './dig.ts';

/** Whether dnsmasq is installed (bash scripts/ensure-test-tools.sh installs it). */
export const haveDnsmasq: boolean = spawnSync('dnsmasq', ['--version'], { stdio: 'ignore' }).status === 0;

export interface Dnsmasq {
  /** `127.0.0.1:PORT`, for `dns.servers`. */
  readonly server: string;
  readonly port: number;
  /** Its query log so far (`query[A] name from 127.0.0.1` lines). */
  log(): string;
  stop(): Promise<void>;
}

const PROBE = 'ready.dnsmasq.test';

/** A free UDP port on loopback, as the kernel picks one (dnsmasq binds it a moment later). */
async function freePort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/**
 * Starts dnsmasq answering each name with its IPv4 addresses, every record with `ttl` (dnsmasq's
 * own records are served with --local-ttl, the same on every answer: any ageing a client sees is
 * egressd's). Resolves once it answers.
 */
export async function startDnsmasq(records: Record<string, readonly string[]>, ttl: number): Promise<Dnsmasq> {
  const port = await freePort();
  const args = [
    '--keep-in-foreground',
    '--conf-file=/dev/null',
    '--no-resolv',
    '--no-hosts',
    '--no-poll',
    '--pid-file=',
    '--user=root',
    '--bind-interfaces',
    '--listen-address=127.0.0.1',
    `--port=${port}`,
    `--local-ttl=${ttl}`,
    '--log-queries',
    '--log-facility=-',
    ...Object.entries(records).flatMap(([name, addrs]) => addrs.map((a) => `--host-record=${name},${a}`)),
    // Asked until it answers, so that the test's own names are asked only by the test.
    `--host-record=${PROBE},198.18.0.254`,
  ];
  const child: ChildProcess = spawn('dnsmasq', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (out += b.toString()));
  const stop = (): Promise<void> =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
    });
  for (let i = 0; i < 50; i++) {
    if (child.exitCode !== null) break;
    try {
      if ((await digFrom(port, '127.0.0.1', PROBE, 'A', '+short')).trim() !== '') {
        return { server: `127.0.0.1:${port}`, port, log: () => out, stop };
      }
    } catch {
      // not answering yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  await stop();
  throw new Error(`dnsmasq did not start on port ${port}: ${out}`);
}
