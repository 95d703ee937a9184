// compressOwners (src/dns/message.ts) against two readers of its output: dns-packet, egressd's
// own, and c-ares, Node's resolver (`dns.Resolver`), a client a sandbox runs. An answer too long
// as dns-packet first writes it is written again with its owner names pointing at earlier
// suffixes; a pointer to the wrong octets would hand the client an address under another name
// than the one egressd remembered it for (dns/service.ts #remember: the A records of the
// question's CNAME chain). The answers are drawn so that most need the compression to fit: a
// chain in order, as c-ares follows it, owners in mixed case (RFC 5452 §9 0x20 and servers that
// keep the case they were given), and records of other owners that share the chain's suffixes.
// (c-ares reads an A record of any owner as an address of the question's: those are left out.)

import { createSocket } from 'node:dgram';
import { Resolver } from 'node:dns/promises';
import { createServer, type AddressInfo } from 'node:net';
import { isDeepStrictEqual } from 'node:util';
import * as packet from 'dns-packet';
import type { Answer } from 'dns-packet';
import fc from 'fast-check';
import { describe, expect, it, onTestFinished } from 'vitest';
import { answerResponse, frame, parseQuery, udpLimit, type Answered } from '../../../src/dns/message.ts';
import { chainOwners } from '../../../src/net/dns-client.ts';

const label = fc.stringMatching(/^[a-z0-9][a-z0-9-]{0,14}$/);
/** The name with each letter's case drawn. */
const cased = (name: string): fc.Arbitrary<string> =>
  fc.array(fc.boolean(), { minLength: name.length, maxLength: name.length }).map((up) => up.map((u, i) => (u ? name[i]!.toUpperCase() : name[i]!)).join(''));

interface Case {
  readonly question: string;
  readonly answers: Answer[];
}

const caseArb: fc.Arbitrary<Case> = fc
  .record({
    zone: fc.array(label, { minLength: 1, maxLength: 3 }).map((ls) => `${ls.join('.')}.test`),
    hops: fc.array(label, { minLength: 0, maxLength: 3 }),
    tail: fc.array(label, { minLength: 1, maxLength: 3 }),
    addresses: fc.uniqueArray(fc.integer({ min: 1, max: 65_000 }), { minLength: 1, maxLength: 40 }),
    others: fc.array(fc.tuple(label, fc.integer({ min: 1, max: 250 }), fc.boolean()), { maxLength: 12 }),
  })
  .chain(({ zone, hops, tail, addresses, others }) => {
    const question = `www.${zone}`;
    // Each alias a longer name under the zone or under a CDN's that shares its last labels.
    const chain = [question, ...hops.map((h, i) => (i % 2 === 0 ? `${h}.${tail.join('.')}.cdn.${zone}` : `${h}.${zone}`))];
    const last = chain.at(-1)!;
    const a = (owner: string, n: number): Answer => ({ name: owner, type: 'A', ttl: 60, data: `198.18.${n >> 8}.${n & 0xff}` });
    return fc
      .tuple(
        fc.constant(question),
        fc.tuple(...chain.map(cased)),
        fc.tuple(...addresses.map(() => cased(last))),
        // c-ares takes every A record of an answer, whatever its owner (egressd keeps the chain's):
        // the other owners' records are TXT, which no address is read from.
        fc.tuple(
          ...others.map(([l, n, under]) =>
            cased(under ? `${l}.${last}` : `${l}.${zone}`).map((o): Answer => ({ name: o, type: 'TXT', ttl: 60, data: [Buffer.from(`n=${n}`)] })),
          ),
        ),
      )
      .map(([q, casedChain, owners, noise]): Case => {
        const answers: Answer[] = [];
        for (let i = 0; i + 1 < casedChain.length; i++) answers.push({ name: casedChain[i]!, type: 'CNAME', ttl: 60, data: chain[i + 1]! });
        owners.forEach((o, i) => answers.push(a(o, addresses[i]!)));
        return { question: q, answers: [...answers, ...noise] };
      });
  });

/** The addresses egressd remembers for the question (dns/service.ts #remember). */
function remembered(c: Case): string[] {
  const owners = chainOwners(c.question, c.answers);
  return c.answers.flatMap((r) => (r.type === 'A' && owners.has(r.name.toLowerCase()) ? [r.data] : []));
}

describe('answers with compressed owner names, as dns-packet and c-ares read them', () => {
  it('give each reader the records egressd judged, and the question’s addresses egressd remembers', async () => {
    let current: Answered | null = null;
    let compressed = 0;
    const misread: string[] = [];
    const server = createSocket('udp4');
    onTestFinished(() => void server.close());
    server.on('message', (msg, from) => {
      const p = parseQuery(msg);
      if (p.kind !== 'query' || current === null) return;
      const out = answerResponse(p.query, current, 0, udpLimit(p.query));
      const whole = packet.encode({ type: 'response', id: p.query.id, questions: [p.query.question], answers: [...current.answers] });
      if (out.length < whole.length) compressed++;
      // dns-packet reads what the client is sent as the records written whole, or a truncated answer.
      const read = packet.decode(out);
      if (((read.flags ?? 0) & 0x200) === 0 && !isDeepStrictEqual(read.answers, packet.decode(whole).answers)) misread.push(p.query.name);
      server.send(out, from.port, from.address);
    });
    await new Promise<void>((resolve) => server.bind(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    // A truncated answer is asked again over TCP (RFC 7766 §5), on the same port.
    const tcp = createServer((sock) => {
      sock.on('error', () => {});
      let buf = Buffer.alloc(0);
      sock.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          const p = parseQuery(buf.subarray(2, 2 + buf.readUInt16BE(0)));
          buf = buf.subarray(2 + buf.readUInt16BE(0));
          if (p.kind === 'query' && current !== null) sock.write(frame(answerResponse(p.query, current, 0, 65_535)));
        }
      });
    });
    onTestFinished(() => void tcp.close());
    await new Promise<void>((resolve) => tcp.listen(port, '127.0.0.1', resolve));
    const resolver = new Resolver({ timeout: 500, tries: 1 });
    resolver.setServers([`127.0.0.1:${port}`]);

    await fc.assert(
      fc.asyncProperty(caseArb, async (c) => {
        current = { rcode: 0, authenticData: false, answers: c.answers, authorities: [], additionals: [] };
        const got = await resolver.resolve4(c.question);
        expect([...got].sort()).toEqual(remembered(c).sort());
      }),
      { numRuns: 150 },
    );
    expect(misread).toEqual([]);
    // Most cases took the compressed path (a case that fits whole is not written again).
    expect(compressed).toBeGreaterThan(50);
  });
});
