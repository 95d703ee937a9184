// Dials the first of several addresses that answers: RFC 8305 §5 staggered connection attempts.
// One attempt starts; the next starts when it fails or after `attemptDelayMs` (the RFC's
// "Connection Attempt Delay", 250 ms recommended) without an answer, whichever comes first;
// the first to connect wins and the others are abandoned; all of it within one overall
// `connectTimeoutMs`.
//
// Each attempt in flight holds a descriptor, so admission may allow fewer at once than there are
// addresses (`parallel`, limits/admission.ts). At that cap the next address waits for one to
// fail, or for the oldest to have had its share of the time left — the time left split evenly
// between it and the addresses not yet tried, so that each address left gets its part of the
// connect timeout — when that one is given up (`timeout`) for the next. Never
// sooner than the attempt delay after the last start: the cap makes fewer attempts run at once,
// never more of them start (a short connect timeout shared by many addresses would otherwise
// give up each before a merely distant address could answer).

import type { Socket } from 'node:net';
import { dial, type DialFailure } from './dial.ts';

/** RFC 8305 §5: "the recommended value for the Connection Attempt Delay is 250 ms". */
export const CONNECTION_ATTEMPT_DELAY_MS = 250;

export interface Attempt {
  readonly address: string;
  /** How it ended: connected, a failure cause, or abandoned once another won (`cancelled`). */
  readonly result: 'connected' | DialFailure | 'cancelled';
}

export type DialFirstResult =
  | { ok: true; socket: Socket; address: string; connectMs: number; attempts: readonly Attempt[] }
  | { ok: false; cause: DialFailure; detail: string; attempts: readonly Attempt[] };

export interface DialFirstOptions {
  /** IP address literals, in the order to try them (address-order.ts). */
  readonly addresses: readonly string[];
  readonly port: number;
  /** The overall budget, across every attempt. */
  readonly connectTimeoutMs: number;
  readonly attemptDelayMs?: number;
  /** The most attempts in flight at once (at least 1); all of them when absent. */
  readonly parallel?: number;
  /** Aborting abandons every attempt and settles as `aborted`. */
  readonly signal: AbortSignal;
}

export function dialFirst(o: DialFirstOptions): Promise<DialFirstResult> {
  const delay = o.attemptDelayMs ?? CONNECTION_ATTEMPT_DELAY_MS;
  const parallel = Math.max(1, o.parallel ?? Infinity);
  const started = performance.now();
  const deadline = started + o.connectTimeoutMs;
  return new Promise((resolve) => {
    const attempts: { address: string; result: Attempt['result'] | null }[] = [];
    /** The attempts in flight, oldest first. */
    const live: { slot: { address: string; result: Attempt['result'] | null }; abort: AbortController; at: number }[] = [];
    let settled = false;
    let next = 0;
    let lastFailure: { cause: DialFailure; detail: string } | null = null;
    let stagger: NodeJS.Timeout | undefined;
    const snapshot = (): Attempt[] => attempts.map((a) => ({ address: a.address, result: a.result ?? 'cancelled' }));
    const settle = (r: DialFirstResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(stagger);
      clearTimeout(overall);
      o.signal.removeEventListener('abort', onAbort);
      for (const a of live) a.abort.abort();
      live.length = 0;
      resolve(r);
    };
    const fail = (cause: DialFailure, detail: string): void => settle({ ok: false, cause, detail, attempts: snapshot() });
    const target = (a: string): string => `${a.includes(':') ? `[${a}]` : a}:${o.port}`;

    const start = (): void => {
      clearTimeout(stagger);
      if (settled || next >= o.addresses.length) return;
      const now = performance.now();
      const remaining = deadline - now;
      if (remaining <= 0) return;
      if (live.length >= parallel) {
        // At the cap (see the top of this file): the oldest had its share and gives way.
        const oldest = live.shift()!;
        oldest.slot.result = 'timeout';
        lastFailure = { cause: 'timeout', detail: `Connecting to "${target(oldest.slot.address)}" took longer than its share of the connect timeout` };
        oldest.abort.abort();
      }
      const slot = { address: o.addresses[next++]!, result: null as Attempt['result'] | null };
      attempts.push(slot);
      const attempt = { slot, abort: new AbortController(), at: now };
      live.push(attempt);
      void dial({ address: slot.address, port: o.port, connectTimeoutMs: Math.ceil(remaining), signal: attempt.abort.signal }).then((r) => {
        const i = live.indexOf(attempt);
        if (i >= 0) live.splice(i, 1);
        if (r.ok) {
          if (settled || i < 0) {
            r.socket.destroy();
            return;
          }
          slot.result = 'connected';
          const connectMs = Math.round((performance.now() - started) * 1000) / 1000;
          settle({ ok: true, socket: r.socket, address: slot.address, connectMs, attempts: snapshot() });
          return;
        }
        // Given up for the next address (start): already told, and replaced.
        if (settled || i < 0) return;
        slot.result = r.cause;
        lastFailure = { cause: r.cause, detail: r.detail };
        // RFC 8305 §5: a failed attempt starts the next one at once.
        if (next < o.addresses.length) start();
        else if (live.length === 0) fail(r.cause, attempts.length > 1 ? `Every address failed; last: ${r.detail}` : r.detail);
      });
      if (next < o.addresses.length) {
        const first = live[0]!;
        // Below the cap, the RFC's delay; at it, once the oldest has had its share, and the delay.
        const wait = live.length < parallel ? delay : Math.max(delay, (deadline - first.at) / (1 + o.addresses.length - next) - (now - first.at));
        stagger = setTimeout(start, Math.max(0, wait));
      }
    };
    const overall = setTimeout(
      () => {
        // Still unanswered at the deadline: timed out, as the native loop reports them.
        for (const a of live) a.slot.result = 'timeout';
        const tried = attempts.map((a) => a.address).join(', ');
        fail('timeout', `No address answered within ${o.connectTimeoutMs} ms (tried ${tried || 'none'})${lastFailure ? `; last: ${lastFailure.detail}` : ''}`);
      },
      Math.max(1, o.connectTimeoutMs),
    );
    const onAbort = (): void => fail('aborted', 'Dialing was aborted');
    if (o.signal.aborted) return onAbort();
    o.signal.addEventListener('abort', onAbort, { once: true });
    if (o.addresses.length === 0) return fail('other', 'No address to dial');
    start();
  });
}
