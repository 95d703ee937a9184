// Wires one running egressd: configuration, the policy store, the listeners, the resolver,
// the admin listener and the logger. main.ts owns argv, signals and the exit code.

import type { Socket } from 'node:net';
import type { Config } from './config/schema.ts';
import { AdminServer, type Readiness } from './admin/server.ts';
import { handleConnection } from './net/connection.ts';
import { Listener } from './net/listener.ts';
import { nativeAddonStatus } from './net/original-dst.ts';
import type { ConnectionOutcome, OutcomeListener } from './net/outcome.ts';
import { ConnectionRegistry } from './net/registry.ts';
import { NameResolver } from './net/resolve.ts';
import type { Logger } from './observability/logger.ts';
import { PolicyStore } from './policy/store.ts';

export type DaemonState = 'starting' | 'serving' | 'draining' | 'stopped';

export class Daemon {
  #config: Config;
  readonly log: Logger;
  readonly store: PolicyStore;
  readonly registry = new ConnectionRegistry();
  readonly resolver: NameResolver;
  readonly listeners: Listener[] = [];
  readonly admin: AdminServer;
  readonly #outcomeListeners: OutcomeListener[] = [];
  #state: DaemonState = 'starting';
  #pending = new Set<Promise<void>>();

  constructor(config: Config, log: Logger) {
    this.#config = config;
    this.log = log;
    this.store = new PolicyStore({
      protected: config.protected,
      defaultNetwork: config.defaultNetwork,
      sandboxes: config.sandboxes,
    });
    this.resolver = new NameResolver({ servers: [...config.dns.servers], timeoutMs: config.dns.timeoutMs });
    const onConnection = (socket: Socket, kind: Listener['kind']): void => this.#accept(socket, kind);
    for (const kind of ['http', 'tls', 'tcp'] as const) {
      for (const ep of config.listen[kind]) this.listeners.push(new Listener(kind, ep, onConnection));
    }
    this.admin = new AdminServer(config.admin.listen, () => this.readiness());
    this.onOutcome((o) => this.#logOutcome(o));
  }

  get config(): Config {
    return this.#config;
  }

  get state(): DaemonState {
    return this.#state;
  }

  onOutcome(l: OutcomeListener): void {
    this.#outcomeListeners.push(l);
  }

  readiness(): Readiness {
    if (this.#state !== 'serving') return { ready: false, reason: `Daemon is ${this.#state}` };
    const down = this.listeners.find((l) => l.status.state !== 'listening');
    if (down) return { ready: false, reason: `Listener ${down.kind} ${down.endpoint.text} is ${down.status.state}` };
    const addon = nativeAddonStatus();
    if (!addon.ok) return { ready: false, reason: addon.reason };
    return { ready: true };
  }

  async start(): Promise<void> {
    const addon = nativeAddonStatus();
    if (!addon.ok) throw new Error(addon.reason);
    await this.admin.listen();
    try {
      await Promise.all(this.listeners.map((l) => l.listen()));
    } catch (err) {
      await this.stop(0);
      throw err;
    }
    this.#state = 'serving';
    this.log.info(
      {
        event: 'started',
        listeners: this.listeners.map((l) => ({ kind: l.kind, address: l.endpoint.host, port: l.port })),
        admin: this.config.admin.listen.text,
        sandboxes: this.store.sandboxCount,
      },
      'egressd serving',
    );
  }

  #accept(socket: Socket, kind: Listener['kind']): void {
    if (this.#state !== 'serving') {
      socket.resetAndDestroy();
      return;
    }
    const p = handleConnection(socket, kind, {
      config: () => this.#config,
      policies: this.store,
      resolver: this.resolver,
      registry: this.registry,
      emit: (o) => this.#emit(o),
    });
    this.#pending.add(p);
    void p.finally(() => this.#pending.delete(p));
  }

  #emit(o: ConnectionOutcome): void {
    for (const l of this.#outcomeListeners) {
      try {
        l(o);
      } catch (err) {
        this.log.error({ event: 'outcome-listener-failed', err }, 'An outcome listener threw');
      }
    }
  }

  #logOutcome(o: Readonly<ConnectionOutcome>): void {
    const level = o.verdict === 'allow' ? 'info' : o.verdict === 'refuse' ? 'info' : 'warn';
    this.log[level](
      {
        event: 'connection',
        listener: o.listener,
        sandbox: o.sandbox,
        source: `${o.source}:${o.sourcePort}`,
        destination: o.destination === null ? null : `${o.destination}:${o.destinationPort}`,
        name: o.name,
        rawName: o.rawName,
        protocol: o.protocol,
        alpn: o.alpn,
        ech: o.ech,
        verdict: o.verdict,
        reason: o.reason,
        rule: o.rule,
        dialed: o.dialed,
        dialFailure: o.dialFailure,
        bytesUp: o.bytesUp,
        bytesDown: o.bytesDown,
        end: o.end,
        durationMs: o.durationMs,
        peekMs: o.peekMs,
        connectMs: o.connectMs,
      },
      'connection',
    );
  }

  /**
   * Stops accepting, lets open connections finish for up to `drainMs`, then closes the rest.
   */
  async stop(drainMs: number): Promise<void> {
    if (this.#state === 'stopped') return;
    this.#state = 'draining';
    await Promise.all(this.listeners.map((l) => l.close()));
    if (this.#pending.size > 0 && drainMs > 0) {
      await Promise.race([Promise.allSettled([...this.#pending]), new Promise((r) => setTimeout(r, drainMs).unref())]);
    }
    this.registry.closeAll('shutdown');
    await Promise.allSettled([...this.#pending]);
    this.resolver.close();
    await this.admin.close();
    this.#state = 'stopped';
    this.log.info({ event: 'stopped' }, 'egressd stopped');
  }
}
