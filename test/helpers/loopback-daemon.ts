// An in-process egressd on loopback for integration tests. There is no iptables here, so the
// original destination comes from a table keyed by the client's source address: each test
// client binds its own 127.0.0.x and says where it was "going".

import { Writable } from 'node:stream';
import type { Socket } from 'node:net';
import { pino } from 'pino';
import { validateConfig, type Config } from '../../src/config/schema.ts';
import { canonicalSource } from '../../src/match/ip.ts';
import { Daemon, type DaemonOptions } from '../../src/daemon.ts';
import { loggerOptions } from '../../src/observability/logger.ts';
import type { OriginalDestination } from '../../src/net/original-dst.ts';
import { useNativeLoops } from './data-plane.ts';
import { field, isConnection } from './log-line.ts';

export interface LoopbackDaemon {
  readonly daemon: Daemon;
  readonly logs: Record<string, unknown>[];
  /** Connections from `source` are treated as if they had been going to address:port. */
  route(source: string, address: string, port: number): void;
  port(kind: 'http' | 'tls' | 'tcp'): number;
  readonly adminUrl: string;
  waitForLog(pred: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** The connection line (event.action `connection`) of a connection from `source` logged after this call (waitForLog's timeout). */
  nextConnectionLine(source: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

export function loopbackConfig(doc: Record<string, unknown>): Config {
  const r = validateConfig({
    listen: { http: '127.0.0.1:0', tls: '127.0.0.1:0', tcp: '127.0.0.1:0', dns: '127.0.0.1:0' },
    admin: { listen: '127.0.0.1:0', token: 'test-token' },
    // The upstream servers of these tests live on the host's own loopback: the dedicated key
    // opens it (egressd's own listeners stay refused there).
    protected: { except: ['127.0.0.0/8'], reachableHostAddresses: ['127.0.0.0/8', '::1'] },
    peek: { timeoutMs: 2000, firstByteTimeoutMs: 300 },
    ...doc,
  });
  if (!r.ok) throw new Error(`Invalid test config: ${JSON.stringify(r.issues)}`);
  return r.config;
}

/**
 * `setup` picks where connections are set up (DaemonOptions.setup; `native` also starts the
 * loops when EGRESSD_DATA_PLANE=js had turned them off); default: as EGRESSD_DATA_PLANE says,
 * for the data phase too (src/net/native-splice.ts dataPlaneFromEnv). `beforeStart`: given the
 * daemon made and not started (a test that acts while it starts). `hostInterfaces`: the host's
 * interface table (DaemonOptions.hostInterfaces).
 */
export async function startLoopbackDaemon(
  config: Config,
  opts: {
    setup?: 'native' | 'node';
    beforeStart?: (daemon: Daemon) => void;
    hostInterfaces?: DaemonOptions['hostInterfaces'];
    dnsUdpReceiveBuffer?: number;
  } = {},
): Promise<LoopbackDaemon> {
  if (opts.setup === 'native') useNativeLoops();
  const logs: Record<string, unknown>[] = [];
  const waiters = new Set<() => void>();
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      for (const w of [...waiters]) w();
      cb();
    },
  });
  const log = pino(loggerOptions('info'), sink);
  const routes = new Map<string, { address: string; port: number }>();
  const originalDst = (socket: Socket): OriginalDestination => {
    const r = routes.get(canonicalSource(socket.remoteAddress ?? '') ?? '');
    return r ? { kind: 'redirected', ...r } : { kind: 'not-redirected', why: 'no test route for this source' };
  };
  const daemon = new Daemon(config, log, {
    originalDst,
    ...(opts.setup ? { setup: opts.setup } : {}),
    ...(opts.hostInterfaces ? { hostInterfaces: opts.hostInterfaces } : {}),
    ...(opts.dnsUdpReceiveBuffer !== undefined ? { dnsUdpReceiveBuffer: opts.dnsUdpReceiveBuffer } : {}),
  });
  opts.beforeStart?.(daemon);
  await daemon.start();
  const adminPort = daemon.admin.port!;
  const waitForLog: LoopbackDaemon['waitForLog'] = (pred, timeoutMs = 5000) =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = logs.find(pred);
        if (!hit) return;
        clearTimeout(timer);
        waiters.delete(check);
        resolve(hit);
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`No matching log line; last: ${JSON.stringify(logs.slice(-5))}`));
      }, timeoutMs);
      waiters.add(check);
      check();
    });
  return {
    daemon,
    logs,
    route: (source, address, port) => routes.set(source, { address, port }),
    port: (kind) => daemon.listeners.find((l) => l.kind === kind)!.port!,
    adminUrl: `http://127.0.0.1:${adminPort}`,
    waitForLog,
    nextConnectionLine: (source, timeoutMs) => {
      const seen = logs.length;
      return waitForLog((l) => logs.indexOf(l) >= seen && isConnection(l) && field(l, 'source.ip') === source, timeoutMs);
    },
    stop: () => daemon.stop(0),
  };
}
