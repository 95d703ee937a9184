// The DNS listener's TCP connections are descriptors like any other (src/dns/listener.ts,
// src/limits/admission.ts), in a real process started with RLIMIT_NOFILE 256 (prlimit): sources
// of no sandbox, each counted on its own, open their 16 connections each, far more than the
// descriptors left. egressd must keep the admin API answering and connections to its proxy
// listeners accepted, refuse the DNS connections past its bounds (REFUSED or a reset, counted and
// logged), close an idle one to make room for a new one, and serve DNS over TCP again once they
// close.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as packet from 'dns-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { watchDaemon, type DaemonProcess } from '../../helpers/daemon-process.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { action, field } from '../../helpers/log-line.ts';

const ROOT = resolve(import.meta.dirname, '../../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const hasPrlimit = process.platform === 'linux' && spawnSync('prlimit', ['--version']).status === 0;
/** Source addresses of no sandbox, 16 connections each (dns.limits.tcpPerSandbox). */
const SOURCES = 24;
const PER_SOURCE = 16;

describe.skipIf(!hasPrlimit).each([{ plane: 'native' }, { plane: 'js' }])(
  'DNS over TCP in a process with RLIMIT_NOFILE 256, data plane $plane',
  ({ plane }) => {
    let dir: string | undefined;
    let d: DaemonProcess | undefined;
    let upstream: DnsTestServer | undefined;
    const held: Socket[] = [];
    afterEach(async () => {
      for (const s of held.splice(0)) s.destroy();
      await d?.stop('SIGKILL');
      await upstream?.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it('keeps the admin API and the proxy listeners answering, and refuses the DNS connections past the budget, counted', async () => {
      upstream = await DnsTestServer.start();
      upstream.set('fast.test', { kind: 'answer', a: ['198.18.4.1'], ttl: 60 });
      dir = mkdtempSync(join(tmpdir(), 'egressd-dnsfd-'));
      const file = join(dir, 'egressd.json');
      writeFileSync(
        file,
        JSON.stringify({
          listen: { http: '127.0.0.1:0', tls: '127.0.0.1:0', tcp: '127.0.0.1:0', dns: '127.0.0.1:0' },
          admin: { listen: '127.0.0.1:0' },
          dns: { servers: [upstream.server] },
          defaultNetwork: { mode: 'allow-all' },
        }),
      );
      d = await watchDaemon(
        spawn('prlimit', ['--nofile=256:256', NODE, join(ROOT, 'src/main.ts'), 'serve', '--config', file], {
          stdio: ['ignore', 'pipe', 'pipe'],
          env: { ...process.env, EGRESSD_DATA_PLANE: plane },
        }),
      );
      const started = d.lines.find((l) => action(l) === 'started')!;
      const adminPort = started['adminPort'] as number;
      const dnsPort = (started['dnsListeners'] as { port: number }[])[0]!.port;
      const tcpPort = (started['listeners'] as { kind: string; port: number }[]).find((l) => l.kind === 'tcp')!.port;

      // Every source opens its 16 connections, each asking one query; what came back is counted.
      const got = { answered: 0, refused: 0, cut: 0 };
      const starved: string[] = [];
      for (let i = 0; i < SOURCES; i++) {
        const source = `127.0.9.${i + 1}`;
        const outcomes = await Promise.all(Array.from({ length: PER_SOURCE }, () => ask(dnsPort, source, held)));
        for (const o of outcomes) got[o]++;
        if (!outcomes.includes('answered')) starved.push(source);
      }
      const figures = JSON.stringify(got);
      // The sources that came first, holding the most, made room for each that came later.
      expect(starved, figures).toEqual([]);
      // The refused ones closed (the client hangs up on REFUSED): what is held now is what was answered.
      await new Promise((r) => setTimeout(r, 300));
      // The admin API answers, and its metrics say what was refused.
      const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`, { signal: AbortSignal.timeout(3000) })).text();
      const count = (re: RegExp): number => [...metrics.matchAll(re)].reduce((a, m) => a + Number(m[1]), 0);
      expect(count(/^egressd_accept_errors_total\{code="EMFILE"\} (\d+)$/gm), figures).toBe(0);
      const refusedCounted = count(/^egressd_dns_tcp_connections_refused_total\{scope="[a-z]+"\} (\d+)$/gm);
      const shed = count(/^egressd_dns_tcp_connections_shed_total (\d+)$/gm);
      expect(got.answered, figures).toBeGreaterThan(0);
      expect(got.refused + got.cut, figures).toBeGreaterThan(0);
      expect(refusedCounted, figures).toBe(got.refused + got.cut);
      // Each answered connection is held still, or was closed idle to make room for another.
      expect(count(/^egressd_dns_tcp_connections (\d+)$/gm) + shed, `${figures}, ${shed} shed`).toBe(got.answered);
      // Past a second with no query, the held ones are idle: a new connection takes the place
      // of the oldest idle one of a source holding the most (RFC 7766 §6.2.3).
      await new Promise((r) => setTimeout(r, 1100));
      expect(await ask(dnsPort, '127.0.9.100', held)).toBe('answered');
      const after = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`, { signal: AbortSignal.timeout(3000) })).text();
      expect(Number(/^egressd_dns_tcp_connections_shed_total (\d+)$/m.exec(after)?.[1]) - shed).toBe(1);
      const line = await d.waitFor((l) => action(l) === 'dns-tcp-refused', 3000);
      expect(field(line, 'reason'), JSON.stringify(line)).toMatch(/^(?:budget|total|sandbox)$/);
      // A connection to a proxy listener is still accepted (then refused as not redirected:
      // there is no iptables here), not lost to EMFILE.
      const s = connect({ host: '127.0.0.1', port: tcpPort });
      s.on('error', () => {});
      held.push(s);
      await d.waitFor((l) => action(l) === 'connection' && field(l, 'event.reason') === 'not-redirected', 5000);
      // Once the held connections close, DNS over TCP is served again.
      for (const c of held.splice(0)) c.destroy();
      let again: string = 'cut';
      for (let i = 0; i < 50 && again !== 'answered'; i++) {
        again = await ask(dnsPort, '127.0.9.200', held);
        if (again !== 'answered') await new Promise((r) => setTimeout(r, 50));
      }
      expect(again).toBe('answered');
      console.log(`DNS over TCP under RLIMIT_NOFILE 256 (${plane}): ${figures}, ${refusedCounted} refusals counted, ${shed} closed to make room`);
    }, 60_000);
  },
);

/**
 * Opens a TCP connection to the DNS listener from `source`, asks one query and reads the answer
 * (2 s at most); an answered connection stays open (pushed to `held`). `cut`: closed or reset
 * without an answer.
 */
function ask(port: number, source: string, held: Socket[]): Promise<'answered' | 'refused' | 'cut'> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: source });
    held.push(s);
    s.on('error', () => {});
    let buf = Buffer.alloc(0);
    const done = (o: 'answered' | 'refused' | 'cut'): void => {
      clearTimeout(timer);
      s.removeAllListeners('data');
      if (o !== 'answered') s.destroy();
      resolve(o);
    };
    const timer = setTimeout(() => done('cut'), 2000);
    s.on('connect', () => {
      const q = packet.encode({ type: 'query', id: 7, flags: packet.RECURSION_DESIRED, questions: [{ name: 'fast.test', type: 'A' }] });
      const len = Buffer.alloc(2);
      len.writeUInt16BE(q.length);
      s.write(Buffer.concat([len, q]));
    });
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length < 2 || buf.length < buf.readUInt16BE(0) + 2) return;
      const rcode = (packet.decode(buf.subarray(2, buf.readUInt16BE(0) + 2)) as { rcode?: string }).rcode;
      done(rcode === 'REFUSED' ? 'refused' : 'answered');
    });
    s.on('close', () => done('cut'));
  });
}
