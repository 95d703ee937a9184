// A DNS query over UDP that reaches egressd's DNS listener before egressd serves: the listeners
// are bound one after the other while the start goes on, and in a rollout the kernel shares
// queries with the new process from its bind on (SO_REUSEPORT). Such a query was dropped,
// unanswered, and its client waited out its resolver's timeout (glibc's: 5 s) where the draining
// process beside it would have answered. It now waits for the start, then is answered. A query
// over TCP met the same: its connection was reset at accept (the listener's `accepting` said no),
// and a client that had fallen back to TCP for a truncated answer lost the name.

import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import * as packet from 'dns-packet';
import { describe, expect, it, onTestFinished } from 'vitest';
import { holdSecondDnsListener, twoDnsListeners } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { loopbackConfig, startLoopbackDaemon } from '../../helpers/loopback-daemon.ts';
import { askOverTcp } from '../../helpers/tcp-dns.ts';

const A = '127.0.0.81';
/** The two listeners' addresses: the query goes to the first while the second is being bound. */
const FIRST = '127.0.0.1';
const SECOND = '127.0.0.2';
/** How long the start is held once the query is sent: time enough for it to reach the daemon. */
const HOLD_MS = 300;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

describe('a DNS query that comes while egressd starts', () => {
  it('is answered once egressd serves, not dropped', async () => {
    const upstream = await DnsTestServer.start();
    onTestFinished(() => upstream.close());
    upstream.set('fast.test', { kind: 'answer', a: ['198.18.2.1'], ttl: 60 });
    let answer: Promise<Buffer> | undefined;
    const d = await startLoopbackDaemon(
      loopbackConfig({
        listen: twoDnsListeners(FIRST, SECOND),
        dns: { servers: [upstream.server] },
        sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['fast.test'] } } }],
      }),
      {
        beforeStart: holdSecondDnsListener(async (firstPort) => {
          answer = askUdp(firstPort, A, 'fast.test');
          answer.catch(() => {});
          await new Promise((r) => setTimeout(r, HOLD_MS));
        }),
      },
    );
    onTestFinished(() => d.stop());
    const r = packet.decode(await answer!) as { rcode?: string; answers?: { data?: unknown }[] };
    expect(r.rcode).toBe('NOERROR');
    expect(r.answers?.map((a) => a.data)).toEqual(['198.18.2.1']);
  });

  it('over TCP is answered once egressd serves, its connection not reset', async () => {
    const upstream = await DnsTestServer.start();
    onTestFinished(() => upstream.close());
    upstream.set('fast.test', { kind: 'answer', a: ['198.18.2.1'], ttl: 60 });
    let answer: Promise<{ rcode: string | undefined }> | undefined;
    const d = await startLoopbackDaemon(
      loopbackConfig({
        listen: twoDnsListeners(FIRST, SECOND),
        dns: { servers: [upstream.server] },
        sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['fast.test'] } } }],
      }),
      {
        beforeStart: holdSecondDnsListener(async (firstPort) => {
          const s = connect({ host: FIRST, port: firstPort, localAddress: A });
          s.on('error', () => {});
          onTestFinished(() => void s.destroy());
          answer = askOverTcp(s, 'fast.test');
          answer.catch(() => {});
          await new Promise((r) => setTimeout(r, HOLD_MS));
        }),
      },
    );
    onTestFinished(() => d.stop());
    expect(await answer!).toEqual({ rcode: 'NOERROR' });
  });
});

describe('the places a start holds (1,024)', () => {
  it('are shared: one sandbox sending 1,100 queries during a start does not take the place of another sandbox’s query', async () => {
    const upstream = await DnsTestServer.start();
    onTestFinished(() => upstream.close());
    upstream.set('fast.test', { kind: 'answer', a: ['198.18.2.1'], ttl: 60 });
    const FLOOD = '127.0.0.82';
    let answer: Promise<Buffer> | undefined;
    const d = await startLoopbackDaemon(
      loopbackConfig({
        listen: twoDnsListeners(FIRST, SECOND),
        dns: { servers: [upstream.server] },
        sandboxes: [
          { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['fast.test'] } } },
          { id: 'sb-flood', sources: [FLOOD], network: { mode: 'block-all' } },
        ],
      }),
      {
        beforeStart: holdSecondDnsListener(async (firstPort) => {
          await sendMany(firstPort, FLOOD, 1100);
          // Time for the flood to be read before the other sandbox's query comes.
          await new Promise((r) => setTimeout(r, 200));
          answer = askUdp(firstPort, A, 'fast.test');
          answer.catch(() => {});
          await new Promise((r) => setTimeout(r, HOLD_MS));
        }),
      },
    );
    onTestFinished(() => d.stop());
    const r = packet.decode(await answer!) as { rcode?: string; answers?: { data?: unknown }[] };
    expect(r.rcode).toBe('NOERROR');
    expect(r.answers?.map((a) => a.data)).toEqual(['198.18.2.1']);
  });
});

describe('a datagram past 4,096 bytes that comes while egressd starts', () => {
  it('is held by its header and length, not its bytes, and answered FORMERR once egressd serves', async () => {
    // Each held datagram kept all its bytes (up to 65,507) until the start ended, though it is
    // answered FORMERR from its header and length alone: 1,024 places held ~64 MiB.
    const upstream = await DnsTestServer.start();
    onTestFinished(() => upstream.close());
    const COUNT = 200;
    const BYTES = 60_000;
    let grew = NaN;
    let answers: Promise<Buffer[]> | undefined;
    const d = await startLoopbackDaemon(
      loopbackConfig({
        listen: twoDnsListeners(FIRST, SECOND),
        dns: { servers: [upstream.server] },
        sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all' } }],
      }),
      {
        beforeStart: holdSecondDnsListener(async (firstPort) => {
          gc();
          const before = process.memoryUsage().arrayBuffers;
          const large = sendLarge(firstPort, A, COUNT, BYTES);
          answers = large.answers;
          answers.catch(() => {});
          await large.sent;
          // Time for the last datagrams to be read, then what the held ones keep.
          await new Promise((r) => setTimeout(r, 100));
          gc();
          grew = process.memoryUsage().arrayBuffers - before;
        }),
      },
    );
    onTestFinished(() => d.stop());
    const got = await answers!;
    expect(got.length).toBe(COUNT);
    for (const m of got) expect((packet.decode(m) as { rcode?: string }).rcode).toBe('FORMERR');
    // Held whole: COUNT * BYTES (12 MB); by header: a few KiB.
    expect(grew).toBeLessThan((COUNT * BYTES) / 10);
  });
});

/**
 * `count` datagrams of `bytes` from `from`, each a query header (id i) and zeros, paced so the
 * listener reads each before the next (a full receive buffer drops them). `sent` once all are
 * sent; `answers` once all `count` came, rejected when they have not within 5 s of the last sent.
 */
function sendLarge(port: number, from: string, count: number, bytes: number): { sent: Promise<void>; answers: Promise<Buffer[]> } {
  const s = createSocket('udp4');
  const got: Buffer[] = [];
  let sent!: () => void;
  const allSent = new Promise<void>((resolve) => (sent = resolve));
  const answers = new Promise<Buffer[]>((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    s.on('message', (m) => {
      got.push(m);
      if (got.length < count) return;
      clearTimeout(timer);
      s.close();
      resolve(got);
    });
    void (async () => {
      await new Promise<void>((r) => s.bind(0, from, r));
      const msg = Buffer.alloc(bytes);
      for (let i = 0; i < count; i++) {
        msg.writeUInt16BE(i, 0);
        msg.writeUInt16BE(packet.RECURSION_DESIRED, 2);
        msg.writeUInt16BE(1, 4);
        await new Promise<void>((r) => s.send(msg, port, '127.0.0.1', () => r()));
        await new Promise((r) => setTimeout(r, 1));
      }
      sent();
      timer = setTimeout(() => {
        s.close();
        reject(new Error(`${got.length} of ${count} answers within 5 s`));
      }, 5000);
    })();
  });
  return { sent: allSent, answers };
}

/** `count` queries over UDP from `from`, sent without waiting for answers; resolves once all are sent. */
async function sendMany(port: number, from: string, count: number): Promise<void> {
  const s = createSocket('udp4');
  await new Promise<void>((resolve) => s.bind(0, from, resolve));
  for (let i = 0; i < count; i++) {
    const msg = packet.encode({ type: 'query', id: i, flags: packet.RECURSION_DESIRED, questions: [{ type: 'A', name: `n${i}.flood.test` }] });
    await new Promise<void>((resolve) => s.send(msg, port, '127.0.0.1', () => resolve()));
  }
  s.close();
}

/** One query over UDP from `from`, its answer; rejects when none comes within 5 s (a resolver's timeout). */
function askUdp(port: number, from: string, name: string): Promise<Buffer> {
  const msg = packet.encode({ type: 'query', id: 7, flags: packet.RECURSION_DESIRED, questions: [{ type: 'A', name }] });
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    const timer = setTimeout(() => {
      s.close();
      reject(new Error('no answer within 5 s'));
    }, 5000);
    s.on('message', (m) => {
      clearTimeout(timer);
      s.close();
      resolve(m);
    });
    s.bind(0, from, () => s.send(msg, port, '127.0.0.1'));
  });
}
