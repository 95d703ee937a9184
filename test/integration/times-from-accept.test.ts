// A connection's times count from its accept on every set-up path. The native loops report a
// connection to the pipeline only once its first flight is in, or after their 50 ms grace
// (native/splice_loop.h SL_EMPTY_GRACE_MS); the pipeline must not start its clock there. Measured
// from that hand-over, a client silent until the 500 ms first-byte wait was logged with a peek
// of 449 ms (CI, 2026-12-02), and a client that paused before its ClientHello with a peek and a
// duration short by the pause.
//
// Each check is a lower bound the client itself guarantees (it waited that long before sending),
// or an order (the peek is part of the whole), never an upper bound on how fast the machine is.
//
// The times are on the monotonic clock: a step of the wall clock (NTP) while a connection is open
// moves neither its times nor its deadlines. The step is made in this process alone, by stepping
// Date.now() (the daemon runs in it), not the machine's clock. Measured on Date.now(), a peek
// across a step back of an hour was logged -3,599,876 ms, across a step forward 3,600,127 ms.

import { execFile } from 'node:child_process';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { promisify } from 'node:util';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { buildHello } from '../helpers/hello-builder.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { action, field, type LogLine } from '../helpers/log-line.ts';

const run$ = promisify(execFile);
const FIRST_BYTE_MS = 400;
const PEEK_MS = 1500;
const HELLO = Buffer.from(buildHello({ sni: ['ok.test'] }));
/** The same hello in two records, sent apart: the peek spans the step. */
const HELLO_2 = Buffer.from(buildHello({ sni: ['ok.test'] }, { records: 2 }));
const RECORD_1 = 5 + HELLO_2.readUInt16BE(3);
/** The log's nanoseconds, in ms; the log's ms are whole, so a bound is met within one. */
const ms = (l: LogLine, name: string): number => Number(field(l, name)) / 1e6;
const SLACK_MS = 1;
/**
 * Resolves once no listening socket on `port` holds a connection not yet accepted (`ss`'s
 * Recv-Q of a listener: its accept queue; every loop's SO_REUSEPORT socket is listed). Polled,
 * at most 5 s.
 */
async function acceptedAll(port: number): Promise<void> {
  for (let i = 0; i < 500; i++) {
    const { stdout } = await run$('ss', ['-Htln', `sport = :${port}`]);
    const queued = stdout
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((line) => Number(line.trim().split(/\s+/)[1]));
    if (queued.length > 0 && queued.every((q) => q === 0)) return;
    await sleep(10);
  }
  throw new Error(`connections to port ${port} still waiting for their accept after 5 s`);
}

/** Resolves when the socket closed, whether by a FIN or a reset (once() would reject on the reset's error). */
const closed = (s: Socket): Promise<void> => new Promise((resolve) => s.once('close', () => resolve()));
const HOUR_MS = 3_600_000;

/** Steps this process's wall clock (Date.now()) by `ms` until the answer is called. */
function stepWallClock(ms: number): () => void {
  const wall = Date.now.bind(Date);
  const spy = vi.spyOn(Date, 'now').mockImplementation(() => wall() + ms);
  return () => spy.mockRestore();
}

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('times count from the accept, set up on $setup', ({ setup }) => {
  let d: LoopbackDaemon;
  let upstream: Server;
  const held = new Set<Socket>();
  let next = 1;

  beforeAll(async () => {
    upstream = createServer((s) => {
      held.add(s);
      s.on('error', () => {});
      s.on('close', () => held.delete(s));
      s.on('data', () => s.end());
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    d = await startLoopbackDaemon(
      loopbackConfig({
        sandboxes: [
          {
            id: 'sb',
            sources: Array.from({ length: 40 }, (_, i) => `127.0.36.${i + 1}`),
            network: { mode: 'block-all', egress: { allowed_domains: ['ok.test'] } },
          },
        ],
        upstream: { dial: 'original' },
        peek: { timeoutMs: PEEK_MS, firstByteTimeoutMs: FIRST_BYTE_MS },
      }),
      { setup },
    );
    if (process.platform === 'linux') expect(d.daemon.nativeSetup !== null).toBe(setup === 'native');
  });
  afterAll(async () => {
    for (const s of held) s.destroy();
    upstream.close();
    await d.stop();
  });

  /** Connects from a source of its own; `act` drives the socket; resolves with the connection's log line. */
  async function run(act: (s: Socket) => Promise<void>): Promise<LogLine> {
    const source = `127.0.36.${next++}`;
    d.route(source, '127.0.0.1', (upstream.address() as { port: number }).port);
    const s = connect({ host: '127.0.0.1', port: d.port('tls'), localAddress: source });
    s.on('error', () => {});
    await once(s, 'connect');
    const me = `${source}:${s.localPort}`;
    await act(s);
    return d.waitForLog((l) => action(l) === 'connection' && `${String(field(l, 'source.ip'))}:${String(field(l, 'source.port'))}` === me, PEEK_MS + 3000);
  }

  it('a silent client: the first-byte wait, whole', async () => {
    const l = await run(async () => {});
    expect(field(l, 'egressd.verdict')).toBe('refuse');
    expect(ms(l, 'egressd.peek_duration')).toBeGreaterThanOrEqual(FIRST_BYTE_MS - SLACK_MS);
    expect(ms(l, 'event.duration')).toBeGreaterThanOrEqual(ms(l, 'egressd.peek_duration'));
  });

  // The pause counts from when egressd has accepted (its listeners' accept queues are empty), not
  // from the client's connect: on a loaded machine the accept can come well after the handshake,
  // and the peek is rightly shorter than a pause counted from the connect.
  it.each([120, 250])('a client that waits %i ms before its ClientHello: the wait is in the peek and the duration', async (pause) => {
    const l = await run(async (s) => {
      await acceptedAll(d.port('tls'));
      await sleep(pause);
      s.write(HELLO);
      await closed(s);
    });
    expect(field(l, 'egressd.verdict')).toBe('allow');
    expect(ms(l, 'egressd.peek_duration')).toBeGreaterThanOrEqual(pause - SLACK_MS);
    expect(ms(l, 'event.duration')).toBeGreaterThanOrEqual(ms(l, 'egressd.peek_duration'));
  });

  it('a client whose ClientHello stops half-way: cut at the peek deadline counted from the accept', async () => {
    const l = await run(async (s) => {
      await sleep(80);
      s.write(HELLO.subarray(0, 40));
      await closed(s);
    });
    expect(field(l, 'event.reason')).toBe('peek-timeout');
    expect(ms(l, 'egressd.peek_duration')).toBeGreaterThanOrEqual(PEEK_MS - SLACK_MS);
    expect(ms(l, 'event.duration')).toBeGreaterThanOrEqual(ms(l, 'egressd.peek_duration'));
  });

  it.each([-HOUR_MS, HOUR_MS])('a step of the wall clock by %i ms while the client waits moves neither its times nor its deadlines', async (step) => {
    let restore = (): void => {};
    try {
      const l = await run(async (s) => {
        await sleep(60);
        restore = stepWallClock(step);
        s.write(HELLO_2.subarray(0, RECORD_1));
        await sleep(60);
        s.write(HELLO_2.subarray(RECORD_1));
        await closed(s);
      });
      // A deadline on the wall clock stepped forward would have passed at once (peek-timeout).
      expect(field(l, 'egressd.verdict')).toBe('allow');
      // The step's own sign and size, not the client's pauses (those the cases above check): a
      // step back made the times negative, a step forward an hour long. Not a bound on speed.
      expect(ms(l, 'egressd.peek_duration')).toBeGreaterThan(0);
      expect(ms(l, 'event.duration')).toBeGreaterThanOrEqual(ms(l, 'egressd.peek_duration'));
      expect(ms(l, 'event.duration')).toBeLessThan(HOUR_MS);
    } finally {
      restore();
    }
  });
});
