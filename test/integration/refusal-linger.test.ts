// A refused connection's linger through the whole daemon, on both set-up paths: Node's sockets
// (refuse.ts answerAndClose) and the native loops (splice_loop.c refuse_run). After the 403 egressd
// half-closes and reads what the client still sends, and must close the connection once
// `refusal.lingerMs` has passed or `refusal.lingerMaxBytes` have come, whatever the client does:
// a client that never reads and never closes, one that drips bytes (each would wake the
// connection), one that sends without end. egressd's close is seen by the client as a reset once
// its next bytes reach the closed socket.

import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';

const SOURCE = '127.0.0.23';

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('a refusal that lingers, set up on $setup', ({ setup }) => {
  let d: LoopbackDaemon | undefined;
  afterEach(async () => {
    await d?.stop();
    d = undefined;
  });

  const start = async (refusal: { lingerMs: number; lingerMaxBytes: number }): Promise<LoopbackDaemon> => {
    d = await startLoopbackDaemon(
      loopbackConfig({
        sandboxes: [{ id: 'sb-linger', sources: [SOURCE], network: { mode: 'block-all', egress: { allowed_domains: ['ok.test'] } } }],
        upstream: { dial: 'original' },
        refusal: { ...refusal, lingerMaxConnections: 100 },
      }),
      { setup },
    );
    if (process.platform === 'linux') expect(d.daemon.nativeSetup !== null).toBe(setup === 'native');
    d.route(SOURCE, '127.0.0.1', 9); // never dialed: the name is refused
    return d;
  };

  /** A client refused with a 403 (read by nobody: it is paused), and when its socket ended (ms after the request; null: still open). */
  const refusedClient = (port: number): { socket: Socket; ended: Promise<number | null> } => {
    const socket = connect({ host: '127.0.0.1', port, localAddress: SOURCE, allowHalfOpen: true });
    const at = performance.now();
    socket.write('POST / HTTP/1.1\r\nHost: denied.test\r\nContent-Length: 1000000000\r\n\r\n');
    socket.pause(); // never reads the answer
    const ended = new Promise<number | null>((resolve) => {
      socket.once('error', () => resolve(performance.now() - at));
      socket.once('close', () => resolve(performance.now() - at));
    });
    return { socket, ended };
  };

  it('closes a client that neither reads nor closes, and drips a byte every 100 ms, once lingerMs has passed', async () => {
    const daemon = await start({ lingerMs: 1000, lingerMaxBytes: 1 << 20 });
    const c = refusedClient(daemon.port('http'));
    const drip = setInterval(() => {
      if (!c.socket.destroyed) c.socket.write('x');
    }, 100);
    try {
      const ended = await Promise.race([c.ended, sleep(10_000).then(() => null)]);
      expect(ended, 'the client was still held 10 s after a 1 s linger').not.toBeNull();
      expect(ended!).toBeGreaterThanOrEqual(900);
    } finally {
      clearInterval(drip);
      c.socket.destroy();
    }
  });

  it('closes a client that sends without end (and never reads) once lingerMaxBytes have come, long before lingerMs', async () => {
    const daemon = await start({ lingerMs: 60_000, lingerMaxBytes: 256 * 1024 });
    const c = refusedClient(daemon.port('http'));
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    let sent = 0;
    let stop = false;
    const pump = (): void => {
      // Bounded: 64 MiB at most, and only while the socket takes it.
      while (!stop && !c.socket.destroyed && sent < 64 * 1024 * 1024) {
        sent += chunk.length;
        if (!c.socket.write(chunk)) return void c.socket.once('drain', pump);
      }
    };
    pump();
    try {
      const ended = await Promise.race([c.ended, sleep(10_000).then(() => null)]);
      expect(ended, 'the client was still held 10 s into a 60 s linger, past its byte bound').not.toBeNull();
    } finally {
      stop = true;
      c.socket.destroy();
    }
  });
});
