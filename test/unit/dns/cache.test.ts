import { describe, expect, it } from 'vitest';
import { AnswerCache } from '../../../src/dns/cache.ts';
import type { Answered } from '../../../src/dns/message.ts';

const answer = (ttl: number): Answered => ({
  rcode: 0,
  authenticData: false,
  answers: [{ type: 'A', name: 'x.test', ttl, data: '198.18.6.1' }],
  authorities: [],
  additionals: [],
});

describe('AnswerCache: who holds the room', () => {
  it('lends a lone sandbox the whole cache, then takes room from the one holding the most, oldest first', () => {
    const c = new AnswerCache({ maxEntries: 4 });
    for (let i = 0; i < 4; i++) c.set(`a${i}`, answer(60), 'a');
    expect(c.heldBy('a')).toBe(4);
    c.set('b0', answer(60), 'b');
    expect(c.get('a0')).toBeUndefined();
    expect(c.get('a1')).toBeDefined();
    expect([c.heldBy('a'), c.heldBy('b')]).toEqual([3, 1]);
    // b asking more keeps taking from a until they hold alike; then b's own oldest goes.
    c.set('b1', answer(60), 'b');
    expect([c.heldBy('a'), c.heldBy('b')]).toEqual([2, 2]);
    c.set('b2', answer(60), 'b');
    expect(c.size).toBe(4);
    expect(c.heldBy('a') + c.heldBy('b')).toBe(4);
    // Even a recently read answer of the larger holder goes before the smaller holder's.
    c.set('b3', answer(60), 'b');
    c.set('b4', answer(60), 'b');
    expect(c.get('a3')).toBeDefined();
  });

  it('moves an answer stored again to its new owner, and forgets expired ones', () => {
    let now = 1_000;
    const c = new AnswerCache({ maxEntries: 4, clock: () => now });
    c.set('k', answer(1), 'a');
    c.set('k', answer(1), 'b');
    expect([c.heldBy('a'), c.heldBy('b')]).toEqual([0, 1]);
    now = 3_000;
    expect(c.get('k')).toBeUndefined();
    expect(c.heldBy('b')).toBe(0);
    c.clear();
    expect(c.size).toBe(0);
  });
});
