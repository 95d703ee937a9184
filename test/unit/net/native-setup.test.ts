// How the native set-up hands accepted connections to the pipeline: in the report's own call
// while nothing waits (the verdict and the dial command leave with the report that brought the
// first flight), and past ACCEPT_CHUNK in one batch of reports, a chunk per turn of the event loop
// (a flood must leave /healthz its turns). The addon is a recording stand-in: no loop runs here.

import { setImmediate as turn } from 'node:timers/promises';
import { describe, expect, it, vi } from 'vitest';
import { PolicyStore } from '../../../src/control/store.ts';
import { handleClient, type PipelineDeps } from '../../../src/net/connection.ts';
import type { DataPlaneAddon } from '../../../src/net/native-splice.ts';
import { NativeSetup, type NativeClient } from '../../../src/net/native-setup.ts';
import type { ConnectionOutcome } from '../../../src/net/outcome.ts';
import { tenantKeyOf } from '../../../src/match/tenant-key.ts';
import { ConnectionRegistry } from '../../../src/net/registry.ts';
import { DEFAULTS_TYPED } from '../../../src/schema/constants.ts';
import { NameResolver } from '../../../src/net/resolve.ts';
import { parseNetworkBody } from '../../../src/policy/network-body.ts';
import { anyStepper, PEEK_CAPS } from '../../../src/peek/peek-steps.ts';
import { buildHello } from '../../helpers/hello-builder.ts';

const EV_ACCEPTED = 1;

function plane(): { setup: NativeSetup; handled: number[]; tag: number; accept: (id: number) => void } {
  const addon = { listen: () => 4430, abort: () => {}, answered: () => {}, setPolicyVersion: () => {} } as unknown as DataPlaneAddon;
  const setup = new NativeSetup(addon, 1);
  const handled: number[] = [];
  const { tag } = setup.listen(
    'tls',
    { host: '127.0.0.1', port: 0, text: '127.0.0.1:0' },
    {
      onAccept: (c: NativeClient) => handled.push(c.id),
      onShed: () => {},
    },
  );
  const accept = (id: number): void => setup.event(EV_ACCEPTED, id, 0, tag, 0, 0, 0, '198.18.0.2', 40000 + id, '198.18.1.2', 443, null, 0);
  return { setup, handled, tag, accept };
}

describe('NativeSetup hands accepted connections over', () => {
  it('in the report’s own call when nothing waits', () => {
    const p = plane();
    p.accept(1);
    expect(p.handled).toEqual([1]);
  });

  it('64 of one batch at once, the rest a chunk per turn, in order; the next batch at once again', async () => {
    const p = plane();
    for (let id = 1; id <= 150; id++) p.accept(id);
    expect(p.handled).toEqual(Array.from({ length: 64 }, (_, i) => i + 1));
    // A report arriving while others wait goes behind them.
    await Promise.resolve();
    p.accept(151);
    expect(p.handled.length).toBe(64);
    await turn();
    expect(p.handled.length).toBe(128);
    await turn();
    expect(p.handled).toEqual(Array.from({ length: 151 }, (_, i) => i + 1));
    await turn();
    p.accept(152);
    expect(p.handled.at(-1)).toBe(152);
  });
});

const EV_PEEK = 2;
const EV_CONNECTED = 3;
const PEEK_MORE = 0;
const PEEK_CLOSED = 5;
const PEEK_WAITING = 6;
/** native-splice.ts ENDS: the client's reset. */
const END_CLIENT_RESET = 1;
const END_ABORTED = 4;
const hello = Buffer.from(buildHello({ sni: ['a.test'] }));
const opts = () => ({ deadline: performance.now() + 5000, maxBytes: PEEK_CAPS.any, firstByteTimeoutMs: 1000 });

/** A plane whose addon records its commands, with the whole pipeline (connection.ts) behind it. */
function pipeline() {
  const commands: string[] = [];
  const addon = {
    listen: () => 4430,
    abort: () => commands.push('abort'),
    answered: () => commands.push('answered'),
    setPolicyVersion: () => {},
    peek: () => commands.push('peek'),
    peekRules: () => {},
    dial: (_loop: number, _id: number, addresses: string[]) => commands.push(`dial ${addresses.join(' ')}`),
    refuse: () => commands.push('refuse'),
    splice: () => commands.push('splice'),
  } as unknown as DataPlaneAddon;
  const setup = new NativeSetup(addon, 1);
  const body = parseNetworkBody({ mode: 'block-all', egress: { allowed_domains: ['a.test'] } });
  if (!body.ok) throw new Error('bad policy');
  // 198.18.0.0/15 (RFC 2544) is protected unless opened, as the bench and the e2e rig open it.
  const store = new PolicyStore({ protected: { extra: [], except: ['198.18.0.0/15'], nat64Prefixes: [] }, catalog: [], dnsServers: [] }, body.value);
  const resolver = new NameResolver({ servers: ['127.0.0.1:1'], timeoutMs: 100 });
  const outcomes: ConnectionOutcome[] = [];
  const clients: NativeClient[] = [];
  const deps: PipelineDeps = {
    config: () =>
      ({
        peek: { timeoutMs: 5000, firstByteTimeoutMs: 1000 },
        upstream: { dial: 'original', connectTimeoutMs: 1000, idleTimeoutMs: 60_000 },
        block: 'reset',
        refusal: { lingerMs: 0, lingerMaxBytes: 0, maxLingering: 1 },
      }) as unknown as ReturnType<PipelineDeps['config']>,
    policies: store,
    resolver,
    registry: new ConnectionRegistry(),
    tenantOf: tenantKeyOf(DEFAULTS_TYPED.limits.unknownSourcePrefix),
    originalDst: () => ({ kind: 'not-redirected', why: 'unused' }),
    emit: (o) => outcomes.push(o),
  };
  const { tag } = setup.listen(
    'tls',
    { host: '127.0.0.1', port: 0, text: '127.0.0.1:0' },
    {
      onAccept: (c, kind) => {
        clients.push(c);
        void handleClient(c, kind, deps);
      },
      onShed: () => {},
    },
  );
  const accept = (id: number, state: number, bytes: Buffer | null): void =>
    setup.event(EV_ACCEPTED, id, 0, tag, 0, state, 0, '198.18.0.2', 40000, '198.18.1.2', 443, bytes, 0);
  const report = (id: number, state: number, bytes: Buffer | null): void => setup.event(EV_PEEK, id, 0, tag, 0, state, 0, null, 0, null, 0, bytes, 0);
  /** The loop's outcome of a connection that was not spliced: `end` is sl_end's code (native-splice.ts ENDS). */
  const ended = (id: number, end: number): void => setup.outcome(id, 0, 0, end, 0, -1, 0, [], -1, 0);
  /** The loop's report that the dial connected (`index`), not spliced: the policy changed meanwhile. */
  const connected = (id: number, index: number): void => setup.event(EV_CONNECTED, id, 0, tag, 0, index, 1500, null, 0, null, 0, null, 0);
  return { commands, accept, report, outcomes, outcome: setup.outcome, ended, connected, clients, store };
}

describe('a connection whose first flight came with its report', () => {
  it('is judged and dialed within that very report, before it returns; the dial answers it, nothing more is sent', async () => {
    const p = pipeline();
    p.accept(1, PEEK_MORE, hello);
    expect(p.commands).toEqual(['dial 198.18.1.2']);
    await turn();
    expect(p.commands).toEqual(['dial 198.18.1.2']);
  });

  it('after an early accept, is judged and dialed within the report that brings the flight', async () => {
    const p = pipeline();
    p.accept(2, PEEK_WAITING, null);
    expect(p.commands).toEqual([]);
    // Admitted with no command (the loop reads its flight on): the loop is told, by the next
    // turn, that its accept slot is free (native/splice_loop.h sl_loop_answered).
    await turn();
    expect(p.commands).toEqual(['answered']);
    p.report(2, PEEK_MORE, hello);
    // The pipeline waited on a promise: the dial follows within the same report's turn.
    await Promise.resolve();
    await Promise.resolve();
    expect(p.commands).toEqual(['answered', 'dial 198.18.1.2']);
  });

  it('is refused within that very report when the policy refuses its name', () => {
    const p = pipeline();
    p.accept(3, PEEK_MORE, Buffer.from(buildHello({ sni: ['b.test'] })));
    expect(p.commands).toEqual(['refuse']);
  });
});

describe("a connection's times on the native set-up", () => {
  // performance.now() held still, so that the figures are exact: the accept at 1000, the loop's
  // end at 2000, its report handled at 5000 (3000 ms in the queue to Node's thread).
  it('end where the loop ended it, not where its report came', async () => {
    let now = 1000;
    const spy = vi.spyOn(performance, 'now').mockImplementation(() => now);
    try {
      const p = pipeline();
      p.accept(1, PEEK_MORE, hello);
      expect(p.commands).toEqual(['dial 198.18.1.2']);
      now = 5000;
      // closed (ENDS[0]), the first address, connected in 1.5 ms, the client's FIN first, 3000 ms ago.
      p.outcome(1, 10, 20, 0, 0, 0, 1500, [0], 0, 3000);
      for (let i = 0; i < 10 && p.outcomes.length === 0; i++) await Promise.resolve();
      // Measured to the report's handling, 4000.
      expect(p.outcomes[0]).toMatchObject({ verdict: 'allow', end: 'closed', connectMs: 1.5, durationMs: 1000 });
    } finally {
      spy.mockRestore();
    }
  });
});

describe('a connection egressd resets while its first flight is read', () => {
  // docs/logs.md: egressd's own reset (critical memory pressure, shutdown) is peek-closed whatever
  // the client had sent. The loop runs the abort after its turn's events, so it may first report
  // the bytes before the client's own reset (splice_loop.c client_left): those are not judged.
  it('is peek-closed, though a bad line and the client’s reset were reported before the abort took effect', async () => {
    const p = pipeline();
    p.accept(4, PEEK_WAITING, Buffer.from('GET /x HTTP/1.1\r\nHost: a.test\r\n'));
    p.clients.at(-1)!.resetAndDestroy();
    p.report(4, PEEK_CLOSED, Buffer.from('Bad Line\r\n'));
    p.ended(4, END_CLIENT_RESET);
    await turn();
    expect(p.outcomes.map((o) => ({ verdict: o.verdict, reason: o.reason }))).toEqual([{ verdict: 'error', reason: 'peek-closed' }]);
    expect(p.commands).toEqual(['abort']);
  });
});

describe('a connection egressd resets while it is dialed', () => {
  // The loop may connect (and report it, to be judged again after a policy change) before it runs
  // the abort: that report is not judged, and nothing more is asked of the loop. The outcome says
  // what happened: connected, then aborted by egressd.
  for (const refusesNow of [false, true]) {
    it(`is not judged on a connect reported after the abort (the policy ${refusesNow ? 'refuses' : 'allows'} it by then)`, async () => {
      const p = pipeline();
      p.accept(5, PEEK_MORE, hello);
      expect(p.commands).toEqual(['dial 198.18.1.2']);
      if (refusesNow) {
        const body = parseNetworkBody({ mode: 'block-all', egress: { allowed_domains: ['c.test'] } });
        if (!body.ok) throw new Error('bad policy');
        p.store.setDefault(body.value);
      }
      p.clients.at(-1)!.resetAndDestroy();
      p.connected(5, 0);
      // aborted (ENDS[4]) after the first address connected in 1.5 ms.
      p.outcome(5, 0, 0, END_ABORTED, 0, 0, 1500, [0], -1, 0);
      for (let i = 0; i < 10 && p.outcomes.length === 0; i++) await Promise.resolve();
      expect(p.commands).toEqual(['dial 198.18.1.2', 'abort']);
      expect(p.outcomes).toHaveLength(1);
      expect(p.outcomes[0]).toMatchObject({ verdict: 'allow', end: 'aborted', dialed: '198.18.1.2', endedBy: 'egressd' });
    });
  }
});

describe('NativeClient.peekNow', () => {
  const clientOf = () => {
    const asked: unknown[][] = [];
    const addon = {
      listen: () => 4430,
      abort: () => {},
      answered: () => {},
      setPolicyVersion: () => {},
      peek: (...a: unknown[]) => asked.push(a),
    } as unknown as DataPlaneAddon;
    const setup = new NativeSetup(addon, 1);
    const clients: NativeClient[] = [];
    const { tag } = setup.listen('tls', { host: '127.0.0.1', port: 0, text: '127.0.0.1:0' }, { onAccept: (c) => clients.push(c), onShed: () => {} });
    return {
      asked,
      accept: (id: number, state: number, bytes: Buffer | null): NativeClient => {
        setup.event(EV_ACCEPTED, id, 0, tag, 0, state, 0, '198.18.0.2', 40000, '198.18.1.2', 443, bytes, 0);
        return clients.at(-1)!;
      },
      report: (id: number, state: number, bytes: Buffer | null): void => setup.event(EV_PEEK, id, 0, tag, 0, state, 0, null, 0, null, 0, bytes, 0),
    };
  };

  it('settles at once on a whole flight in the accept report, asking the loop nothing', () => {
    const p = clientOf();
    const c = p.accept(1, PEEK_MORE, hello);
    expect(c.peekNow(anyStepper(), opts())).toMatchObject({ kind: 'done', bytes: hello });
    expect(p.asked).toEqual([]);
  });

  it('answers null after an early accept; peek() then settles on the loop’s report', async () => {
    const p = clientOf();
    const c = p.accept(2, PEEK_WAITING, null);
    const step = anyStepper();
    const o = opts();
    expect(c.peekNow(step, o)).toBeNull();
    const pending = c.peek(step, o);
    p.report(2, PEEK_MORE, hello);
    expect(await pending).toMatchObject({ kind: 'done', bytes: hello });
    expect(p.asked).toEqual([]);
  });

  it('asks the loop for the rest of a short flight after the wall clock stepped forward: its deadline is on the monotonic clock', () => {
    const p = clientOf();
    const o = opts();
    // An hour's step of Date.now() (NTP): measured on it, the peek timed out at once.
    const wall = Date.now.bind(Date);
    const spy = vi.spyOn(Date, 'now').mockImplementation(() => wall() + 3_600_000);
    try {
      const c = p.accept(4, PEEK_MORE, hello.subarray(0, 3));
      expect(c.peekNow(anyStepper(), o)).toBeNull();
      expect(p.asked.length).toBe(1);
    } finally {
      spy.mockRestore();
    }
  });

  it('answers null on a short flight, having asked the loop for the rest once; peek() settles on it', async () => {
    const p = clientOf();
    const c = p.accept(3, PEEK_MORE, hello.subarray(0, 3));
    const step = anyStepper();
    const o = opts();
    expect(c.peekNow(step, o)).toBeNull();
    expect(p.asked.length).toBe(1);
    const pending = c.peek(step, o);
    p.report(3, PEEK_MORE, hello.subarray(3));
    expect(await pending).toMatchObject({ kind: 'done', bytes: hello });
    expect(p.asked.length).toBe(1);
  });
});
