import * as packet from 'dns-packet';
import { describe, expect, it } from 'vitest';
import { refusedFor } from '../../../src/dns/message.ts';

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
