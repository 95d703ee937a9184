// The native loops' accept slots (native/splice_loop.h sl_loop_accept_cap): a loop holds at most
// its cap of connections that admission has not answered. A connection admitted while it is still
// silent (the loop reads its flight on, with no command yet) must be answered by the set-up
// (native-setup.ts, `answered`), or it holds its slot until its first-byte deadline, and the
// connections queued behind it wait as long. One slot per loop here: six clients stay silent
// while a seventh sends its hello, which must be spliced while the six are still open.

import { connect, type Socket } from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { buildHello } from '../../helpers/hello-builder.ts';
import { echoBack, trackedServer, type TrackedServer } from '../../helpers/listen.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../../helpers/loopback-daemon.ts';

const HELLO = Buffer.from(buildHello({ sni: ['ok.test'] }));
const SOURCE = '127.0.0.22';

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('accept slots, set up on $setup', ({ setup }) => {
  let d: LoopbackDaemon | undefined;
  let echo: TrackedServer;
  const open = new Set<Socket>();

  beforeEach(async () => {
    echo = await trackedServer(echoBack, { allowHalfOpen: false });
    d = await startLoopbackDaemon(
      loopbackConfig({
        sandboxes: [{ id: 'sb-slots', sources: [SOURCE], network: { mode: 'block-all', egress: { allowed_domains: ['ok.test'] } } }],
        upstream: { dial: 'original' },
        // The silent clients are refused only long after the test is over.
        peek: { timeoutMs: 20_000, firstByteTimeoutMs: 15_000 },
      }),
      { setup },
    );
    d.route(SOURCE, '127.0.0.1', echo.port);
    // One slot per loop (the plane is the process's: put back after).
    d.daemon.nativeSetup?.setAcceptCap(1);
  });
  afterEach(async () => {
    d?.daemon.nativeSetup?.setAcceptCap(512);
    for (const s of open) s.destroy();
    open.clear();
    await d?.stop();
    d = undefined;
    echo.close();
  });

  const connectFrom = (port: number): Promise<Socket> =>
    new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port, localAddress: SOURCE });
      open.add(s);
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });

  it('splices a hello queued behind clients that stay silent: each silent one, once admitted, frees its slot', async () => {
    const port = d!.port('tls');
    const silent = await Promise.all(Array.from({ length: 6 }, () => connectFrom(port)));
    const closed: number[] = [];
    silent.forEach((s, i) => s.once('close', () => closed.push(i)));
    const s = await connectFrom(port);
    s.write(HELLO);
    const echoed: Buffer[] = [];
    let total = 0;
    await new Promise<void>((resolve, reject) => {
      s.on('data', (b: Buffer) => {
        echoed.push(b);
        total += b.length;
        if (total >= HELLO.length) resolve();
      });
      s.once('close', () => reject(new Error(`closed after ${total} bytes`)));
    });
    expect(Buffer.concat(echoed).equals(HELLO)).toBe(true);
    // ...while every silent client still waits for its first-byte deadline, and each of them is
    // admitted in its turn (the hello's loop may take it before the other loop's queue is empty).
    expect(closed).toEqual([]);
    const admitted = (): number => d!.daemon.limits.sandboxView('sb-slots', { sandbox: 'sb-slots' }).open;
    for (const until = Date.now() + 5000; admitted() < 7 && Date.now() < until;) await new Promise((r) => setTimeout(r, 10));
    expect(admitted()).toBe(7);
    expect(closed).toEqual([]);
  }, 12_000);
});
