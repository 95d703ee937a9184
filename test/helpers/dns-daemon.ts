// The set-up most DNS integration tests share: an upstream DNS server on loopback (a
// DnsTestServer, a RecordedDns or dnsmasq), then an in-process egressd whose config names it, both
// started before a describe block's tests and stopped after them.

import { afterAll, beforeAll } from 'vitest';
import type { Daemon } from '../../src/daemon.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from './loopback-daemon.ts';

/** An upstream DNS server: `server` for dns.servers, and how it is stopped (dnsmasq's stop, the others' close). */
type Upstream = { readonly server: string } & ({ close(): Promise<void> } | { stop(): Promise<void> });

/** What the block's tests use; each field throws when read outside the block's run. */
export interface DnsDaemon<U> {
  readonly upstream: U;
  readonly egressd: LoopbackDaemon;
  /** The port of egressd's first DNS listener (the only one in loopbackConfig's default). */
  readonly port: number;
}

/**
 * Within a `describe` block: `upstream()` starts the upstream server (and sets its answers), then
 * egressd starts on `loopbackConfig(config(upstream))` with `opts` (startLoopbackDaemon's), before
 * the block's tests. After them, egressd is stopped and then the upstream closed, whichever of
 * them was started, even when a test or the start itself failed. A block's own afterAll runs
 * before these (vitest runs after-hooks last registered first), so sockets it holds are closed
 * while egressd still runs.
 */
export function dnsDaemonPerBlock<U extends Upstream>(
  upstream: () => Promise<U>,
  config: (upstream: U) => Record<string, unknown>,
  opts?: Parameters<typeof startLoopbackDaemon>[1],
): DnsDaemon<U> {
  let u: U | undefined;
  let d: LoopbackDaemon | undefined;
  beforeAll(async () => {
    u = await upstream();
    d = await startLoopbackDaemon(loopbackConfig(config(u)), opts);
  });
  afterAll(async () => {
    await d?.stop();
    if (u) await ('close' in u ? u.close() : u.stop());
  });
  const started = (): { u: U; d: LoopbackDaemon } => {
    if (!u || !d) throw new Error('The upstream and egressd run only while the block runs');
    return { u, d };
  };
  return {
    get upstream() {
      return started().u;
    },
    get egressd() {
      return started().d;
    },
    get port() {
      return started().d.daemon.dnsListeners[0]!.port!;
    },
  };
}

/** loopbackConfig's `listen` with two DNS listeners, on `first` and then `second` (ports ephemeral). */
export function twoDnsListeners(first: string, second: string): Record<string, unknown> {
  return { http: '127.0.0.1:0', tls: '127.0.0.1:0', tcp: '127.0.0.1:0', dns: [`${first}:0`, `${second}:0`] };
}

/**
 * startLoopbackDaemon's `beforeStart` for a daemon with two DNS listeners (twoDnsListeners): the
 * second listener's bind waits until the first is bound (10 s at most, then the start fails), and
 * then until `whileHeld(first's port, daemon)` is done, so that it acts on the first listener while
 * the start is still going on. It holds nothing of its own to tear down.
 */
export function holdSecondDnsListener(whileHeld: (firstPort: number, daemon: Daemon) => Promise<void>): (daemon: Daemon) => void {
  return (daemon) => {
    const [first, second] = daemon.dnsListeners;
    if (!first || !second) throw new Error(`Two DNS listeners are needed, the daemon has ${daemon.dnsListeners.length}`);
    const listen = second.listen.bind(second);
    second.listen = async () => {
      for (let i = 0; i < 1000 && first.port === null; i++) await new Promise((r) => setTimeout(r, 10));
      if (first.port === null) throw new Error('The first DNS listener was not bound within 10 s');
      await whileHeld(first.port, daemon);
      return listen();
    };
  };
}
