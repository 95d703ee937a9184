// Sends the queries egressd forwards to the upstream resolvers (`dns.servers`) and reads their
// answers. Each attempt leaves from a pool of query sockets (net/query-sockets.ts: a random one
// of POOL_SIZE ports, a random id; a socket per query cost ~0.5 ms of the loop each). The next
// server is tried after a share of the deadline while earlier attempts keep listening, so any
// answer that arrives within `timeoutMs` is used. A truncated answer is asked again over TCP
// (RFC 7766 §5), in one of the process's places for TCP retries.

import { getServers } from 'node:dns';
import { randomInt } from 'node:crypto';
import { connect, isIP } from 'node:net';
import { canonicalSource } from '../match/ip.ts';
import { parseDnsServer } from '../net/dns-client.ts';
import { QuerySockets, type SentQuery, type QueryTenants } from '../net/query-sockets.ts';
import { frame, parseUpstreamReply, upstreamQuery, type Answered } from './message.ts';

export interface UpstreamServer {
  readonly host: string;
  readonly port: number;
}

export type ForwardFailure = 'timeout' | 'error';

export type ForwardResult = { ok: true; answered: Answered; server: string; ms: number } | { ok: false; cause: ForwardFailure; detail: string; ms: number };

export interface ForwarderOptions {
  /** "127.0.0.1", "127.0.0.1:5353", "[::1]:5353", "::1"; empty: the system's resolvers. */
  readonly servers: readonly string[];
  /** The most one forwarded query may take, whatever the number of servers and retries. */
  readonly timeoutMs: number;
  /** The process's query sockets (shared with the resolver of dialed names); its own when absent. */
  readonly sockets?: QuerySockets;
}

/** The largest answer read over TCP: the two-octet length allows no more (RFC 1035 §4.2.2). */
const MAX_TCP_ANSWER = 65_535;
/** Each server gets one retransmission: 2 × servers attempts share the deadline. */
const TRIES_PER_SERVER = 2;
const MIN_ATTEMPT_MS = 100;

/** "127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:5353" → a server (the resolver's own reading). */
export function parseServer(text: string): UpstreamServer | null {
  const s = parseDnsServer(text);
  return s === null ? null : { host: s.address, port: s.port };
}

const label = (s: UpstreamServer): string => (isIP(s.host) === 6 ? `[${s.host}]:${s.port}` : `${s.host}:${s.port}`);

export class Forwarder {
  readonly #servers: UpstreamServer[];
  readonly #timeoutMs: number;
  readonly #sockets: QuerySockets;
  /** The sockets are this forwarder's own, to close with it. */
  readonly #ownSockets: boolean;
  /** Each query in flight's way to end it (close). */
  readonly #inflight = new Set<() => void>();
  #closed = false;

  constructor(o: ForwarderOptions) {
    const list = o.servers.length > 0 ? o.servers : getServers();
    this.#servers = list.map(parseServer).filter((s): s is UpstreamServer => s !== null);
    this.#timeoutMs = Math.max(1, o.timeoutMs);
    this.#ownSockets = o.sockets === undefined;
    this.#sockets = o.sockets ?? new QuerySockets();
  }

  get servers(): readonly string[] {
    return this.#servers.map(label);
  }

  /**
   * Asks the upstreams for `name`/`type`; never rejects. `tenant`: whose query it is (a sandbox
   * id, or `source BLOCK`; or the tenants of a query others joined), charged for a retry over TCP
   * (net/query-sockets.ts tcpSlot).
   */
  query(name: string, type: string, dnssecOk: boolean, checkingDisabled: boolean, tenant: string | QueryTenants = ''): Promise<ForwardResult> {
    const started = performance.now();
    const ms = (): number => performance.now() - started;
    if (this.#closed) return Promise.resolve({ ok: false, cause: 'error', detail: 'forwarder closed', ms: 0 });
    if (this.#servers.length === 0) return Promise.resolve({ ok: false, cause: 'error', detail: 'no upstream DNS servers', ms: 0 });
    const attempts = this.#servers.length * TRIES_PER_SERVER;
    const attemptMs = Math.max(MIN_ATTEMPT_MS, Math.floor(this.#timeoutMs / attempts));
    return new Promise<ForwardResult>((resolve) => {
      let settled = false;
      let n = 0;
      let lastError = 'no answer';
      const timers: NodeJS.Timeout[] = [];
      const mine: SentQuery[] = [];
      // Ends the query's retries over TCP still waiting or connected: answered, they are no use,
      // and each holds one of the process's few places until it ends.
      const tcpDone = new AbortController();
      const finish = (r: ForwardResult): void => {
        if (settled) return;
        settled = true;
        this.#inflight.delete(stop);
        for (const t of timers) clearTimeout(t);
        for (const m of mine) m.cancel();
        tcpDone.abort();
        resolve(r);
      };
      const stop = (): void => finish({ ok: false, cause: 'error', detail: 'forwarder closed', ms: ms() });
      this.#inflight.add(stop);
      const overall = setTimeout(
        () => finish({ ok: false, cause: 'timeout', detail: `no answer within ${this.#timeoutMs} ms (${lastError})`, ms: ms() }),
        this.#timeoutMs,
      );
      timers.push(overall);
      const attempt = (): void => {
        if (settled || this.#closed) return;
        const server = this.#servers[n % this.#servers.length]!;
        n++;
        const sent = this.#sockets.send(
          server.host,
          server.port,
          (id) => upstreamQuery(id, name, type, dnssecOk, checkingDisabled),
          (buf, address, port) => {
            // RFC 5452 §9.1: only the server asked, from its port, with our id and question.
            if (port !== server.port || canonical(address) !== canonical(server.host)) return;
            const r = parseUpstreamReply(buf, sent!.id, name, type);
            if (r.kind !== 'answer') {
              if (r.kind === 'malformed') lastError = `malformed answer from ${label(server)}: ${r.why}`;
              return;
            }
            if (!r.truncated) return finish({ ok: true, answered: r.answered, server: label(server), ms: ms() });
            sent!.cancel();
            void this.#overTcp(server, name, type, dnssecOk, checkingDisabled, started + this.#timeoutMs - performance.now(), tenant, tcpDone.signal).then(
              (t) => {
                if (t.ok) finish({ ok: true, answered: t.answered, server: label(server), ms: ms() });
                else lastError = t.detail;
              },
            );
          },
          (err) => {
            if (err) lastError = err.message;
          },
        );
        if (sent === null) return finish({ ok: false, cause: 'error', detail: 'forwarder closed', ms: ms() });
        mine.push(sent);
        if (n < attempts) timers.push(setTimeout(attempt, attemptMs));
      };
      attempt();
    });
  }

  async #overTcp(
    server: UpstreamServer,
    name: string,
    type: string,
    dnssecOk: boolean,
    checkingDisabled: boolean,
    budgetMs: number,
    tenant: string | QueryTenants,
    answered: AbortSignal,
  ): Promise<{ ok: true; answered: Answered } | { ok: false; detail: string }> {
    if (budgetMs <= 0) return { ok: false, detail: 'no time left for TCP' };
    // A TCP retry is a descriptor of its own: one of the process's places (net/query-sockets.ts),
    // of the tenant's share, waited for within the budget, and given back once the query is
    // answered (`answered`), by this retry or another.
    const started = performance.now();
    const release = await this.#sockets.tcpSlot(budgetMs, tenant, answered);
    if (release === null) return { ok: false, detail: 'no place for a TCP retry within the budget' };
    budgetMs -= performance.now() - started;
    return new Promise((resolve) => {
      if (budgetMs <= 0 || this.#closed || answered.aborted) {
        release();
        return resolve({ ok: false, detail: 'no time left for TCP' });
      }
      const id = randomInt(0, 65_536);
      const sock = connect({ host: server.host, port: server.port });
      let buf = Buffer.alloc(0);
      const done = (r: { ok: true; answered: Answered } | { ok: false; detail: string }): void => {
        release();
        clearTimeout(timer);
        answered.removeEventListener('abort', onAnswered);
        sock.destroy();
        resolve(r);
      };
      const onAnswered = (): void => done({ ok: false, detail: 'answered otherwise' });
      answered.addEventListener('abort', onAnswered, { once: true });
      const timer = setTimeout(() => done({ ok: false, detail: `TCP to ${label(server)} timed out` }), budgetMs);
      sock.on('error', (e) => done({ ok: false, detail: `TCP to ${label(server)}: ${e.message}` }));
      sock.on('connect', () => sock.write(frame(upstreamQuery(id, name, type, dnssecOk, checkingDisabled))));
      sock.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (buf.length > MAX_TCP_ANSWER + 2) return done({ ok: false, detail: 'TCP answer too large' });
        if (buf.length < 2) return;
        const len = buf.readUInt16BE(0);
        if (buf.length < len + 2) return;
        // The message in a buffer of its own, exactly its size: the decoded records' Buffers (TXT,
        // unknown types) are views of it and keep it alive in the answer cache, which counts it
        // (dns/cache.ts answerBytes), so it must be neither a 64 KiB pool slab nor this read buffer.
        const msg = Buffer.allocUnsafeSlow(len);
        buf.copy(msg, 0, 2, len + 2);
        const r = parseUpstreamReply(msg, id, name, type);
        if (r.kind === 'answer') done({ ok: true, answered: r.answered });
        else done({ ok: false, detail: `TCP answer from ${label(server)}: ${r.why}` });
      });
      sock.on('close', () => done({ ok: false, detail: `TCP to ${label(server)} closed before an answer` }));
    });
  }

  /** Stops every attempt in flight (they fail as `error`); later queries fail at once. */
  close(): void {
    this.#closed = true;
    for (const stop of [...this.#inflight]) stop();
    if (this.#ownSockets) this.#sockets.close();
  }
}

function canonical(a: string): string {
  return canonicalSource(a) ?? a;
}
