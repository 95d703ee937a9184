// What a query waiting for its answer keeps: its question, not its datagram. A sandbox may have
// burst + rate x timeout queries of one name waiting on its own upstream query (1000 + 500 x 2 s
// at the defaults: joined, they count against no in-flight bound), each up to 4,096 bytes on the
// wire; every sandbox as many. The answer's async frame kept each datagram until its answer.

import { createSocket } from 'node:dgram';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import * as packet from 'dns-packet';
import { describe, expect, it, onTestFinished } from 'vitest';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { loopbackConfig, startLoopbackDaemon } from '../../helpers/loopback-daemon.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const A = '127.0.0.81';
const COUNT = 400;
/** EDNS padding (RFC 7830, option 12) bringing each query to ~4,000 bytes, within MAX_QUERY_BYTES. */
const PADDING = 3_900;

describe('queries waiting on an upstream query', () => {
  it('keep their questions, not their datagrams', async () => {
    const upstream = await DnsTestServer.start();
    onTestFinished(() => upstream.close());
    upstream.set('slow.test', { kind: 'silent' });
    const d = await startLoopbackDaemon(
      loopbackConfig({
        dns: { servers: [upstream.server], timeoutMs: 4000 },
        sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['slow.test'] } } }],
      }),
    );
    onTestFinished(() => d.stop());
    const port = d.daemon.dnsListeners[0]!.port!;
    const s = createSocket('udp4');
    onTestFinished(() => void s.close());
    await new Promise<void>((r) => s.bind(0, A, r));
    let answered = 0;
    s.on('message', () => answered++);
    const msg = packet.encode({
      type: 'query',
      id: 1,
      flags: packet.RECURSION_DESIRED,
      questions: [{ type: 'A', name: 'slow.test' }],
      additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232, flags: 0, options: [{ code: 12, data: Buffer.alloc(PADDING) }] } as packet.Answer],
    });
    expect(msg.length).toBeGreaterThan(PADDING);
    gc();
    const before = process.memoryUsage().arrayBuffers;
    for (let i = 0; i < COUNT; i++) {
      await new Promise<void>((r) => s.send(msg, port, '127.0.0.1', () => r()));
      if (i % 20 === 19) await new Promise((r) => setTimeout(r, 2));
    }
    await new Promise((r) => setTimeout(r, 200));
    gc();
    const grew = process.memoryUsage().arrayBuffers - before;
    // They are all still waiting (the upstream is silent for 4 s), none answered nor refused.
    expect(answered).toBe(0);
    // Kept whole: COUNT x ~4,000 bytes (1.6 MB); by question: none of it.
    expect(grew).toBeLessThan((COUNT * msg.length) / 10);
  });
});
