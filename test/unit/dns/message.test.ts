import * as packet from 'dns-packet';
import type { Answer } from 'dns-packet';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compressOwners, heldQuery, MAX_QUERY_BYTES, parseQuery, refusedFor } from '../../../src/dns/message.ts';

const decoded = (b: Buffer | null) => packet.decode(b!) as packet.Packet & { rcode?: string };

describe('refusedFor', () => {
  it('answers a query REFUSED with its id and question', () => {
    const q = packet.encode({ type: 'query', id: 4242, flags: packet.RECURSION_DESIRED, questions: [{ name: 'Allowed.test', type: 'AAAA' }] });
    const r = decoded(refusedFor(q));
    expect(r).toMatchObject({ type: 'response', id: 4242, rcode: 'REFUSED', answers: [] });
    expect(r.questions).toEqual([{ name: 'Allowed.test', type: 'AAAA', class: 'IN' }]);
  });

  it('answers REFUSED even to a query it would otherwise answer FORMERR, and nothing to a response or a runt', () => {
    const two = packet.encode({
      type: 'query',
      id: 7,
      questions: [
        { name: 'a.test', type: 'A' },
        { name: 'b.test', type: 'A' },
      ],
    });
    expect(decoded(refusedFor(two))).toMatchObject({ id: 7, rcode: 'REFUSED' });
    expect(refusedFor(packet.encode({ type: 'response', id: 8, questions: [{ name: 'a.test', type: 'A' }] }))).toBeNull();
    expect(refusedFor(Buffer.from([1, 2, 3]))).toBeNull();
  });
});

describe('compressOwners', () => {
  const label = fc.stringMatching(/^[a-zA-Z0-9-]{1,12}$/);
  const name = fc.array(label, { minLength: 1, maxLength: 5 }).map((ls) => ls.join('.'));
  const record = (names: string[]): fc.Arbitrary<Answer> =>
    fc.oneof(
      fc.record({ name: fc.constantFrom(...names), type: fc.constant('A' as const), ttl: fc.nat(600), data: fc.ipV4() }),
      fc.record({ name: fc.constantFrom(...names), type: fc.constant('CNAME' as const), ttl: fc.nat(600), data: fc.constantFrom(...names) }),
      fc.record({ name: fc.constantFrom(...names), type: fc.constant('NS' as const), ttl: fc.nat(600), data: fc.constantFrom(...names) }),
      fc.record({
        name: fc.constantFrom(...names),
        type: fc.constant('MX' as const),
        ttl: fc.nat(600),
        data: fc.record({ preference: fc.nat(100), exchange: fc.constantFrom(...names) }),
      }),
      fc.record({ name: fc.constantFrom(...names), type: fc.constant('TXT' as const), ttl: fc.nat(600), data: fc.constant([Buffer.from('v=x')]) }),
    ) as fc.Arbitrary<Answer>;

  it('reads back to the same message, never longer, whatever names repeat and in whatever case', () => {
    fc.assert(
      fc.property(
        fc
          .array(name, { minLength: 1, maxLength: 6 })
          .chain((names) => fc.tuple(fc.constant(names), fc.array(record(names), { maxLength: 20 }), fc.array(record(names), { maxLength: 5 }), fc.boolean())),
        ([names, answers, additionals, edns]) => {
          const msg = packet.encode({
            type: 'response',
            id: 9,
            flags: packet.RECURSION_DESIRED,
            questions: [{ name: names[0]!, type: 'A', class: 'IN' }],
            answers,
            authorities: [{ name: names.at(-1)!, type: 'SOA', ttl: 60, data: { mname: names[0]!, rname: `h.${names[0]!}` } } as Answer],
            additionals: [...additionals, ...(edns ? [{ type: 'OPT', name: '.', udpPayloadSize: 1232, options: [] } as unknown as Answer] : [])],
          });
          const small = compressOwners(msg)!;
          expect(small.length).toBeLessThanOrEqual(msg.length);
          expect(packet.decode(small)).toEqual(packet.decode(msg));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('gives up, null, once what it writes passes the limit it is given', () => {
    const answers = Array.from({ length: 40 }, (_, i): Answer => ({ name: `n${i}.long-owner-name.allowed.test`, type: 'A', ttl: 60, data: '198.18.0.1' }));
    const msg = packet.encode({ type: 'response', id: 1, questions: [{ name: 'allowed.test', type: 'A' }], answers });
    const small = compressOwners(msg)!;
    expect(compressOwners(msg, small.length)).toEqual(small);
    expect(compressOwners(msg, small.length - 1)).toBeNull();
    expect(compressOwners(msg, 512)).toBeNull();
  });

  it('points a repeated owner at its first writing, and keeps the question as asked', () => {
    const msg = packet.encode({
      type: 'response',
      id: 1,
      questions: [{ name: 'WwW.Allowed.test', type: 'A' }],
      answers: [
        { name: 'www.allowed.test', type: 'CNAME', ttl: 60, data: 'edge.cdn.test' },
        { name: 'edge.cdn.test', type: 'A', ttl: 60, data: '198.18.0.1' },
        { name: 'edge.cdn.test', type: 'A', ttl: 60, data: '198.18.0.2' },
      ],
    });
    const small = compressOwners(msg)!;
    // The question as asked. The CNAME's owner differs from it in case but for `test`, which
    // becomes a pointer (6 octets to 2); both A owners (15 octets each) point at the CNAME's target.
    expect(small.subarray(12, 30).toString('latin1')).toBe('\x03WwW\x07Allowed\x04test\x00');
    expect(small.length).toBe(msg.length - (6 - 2) - 2 * (15 - 2));
    expect(packet.decode(small).answers).toEqual(packet.decode(msg).answers);
  });
});

describe('heldQuery', () => {
  it('keeps a message past MAX_QUERY_BYTES as its 12-byte header, which parseQuery reads as it reads the whole', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 65_535 }), fc.integer({ min: 0, max: 65_535 }), fc.integer({ min: 0, max: 9_000 }), (id, flags, size) => {
        const msg = Buffer.alloc(size, 0xab);
        if (size >= 2) msg.writeUInt16BE(id, 0);
        if (size >= 4) msg.writeUInt16BE(flags, 2);
        const held = heldQuery(msg);
        expect(held.length).toBe(size);
        expect(held.bytes.length).toBe(size > MAX_QUERY_BYTES ? 12 : size);
        expect(parseQuery(held.bytes, held.length)).toEqual(parseQuery(msg));
      }),
    );
  });

  it('keeps a copy, not a view of the datagram', () => {
    const msg = Buffer.alloc(MAX_QUERY_BYTES + 1);
    expect(heldQuery(msg).bytes.buffer).not.toBe(msg.buffer);
    expect(heldQuery(msg).bytes.buffer.byteLength).toBe(12);
  });
});
