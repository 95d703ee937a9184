import { describe, expect, it } from 'vitest';
import { AnswerCache, answerBytes } from '../../../src/dns/cache.ts';
import * as packet from 'dns-packet';
import type { Answer } from 'dns-packet';
import { parseUpstreamReply, type Answered } from '../../../src/dns/message.ts';

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
    expect(c.get('a0', 'a')).toBeUndefined();
    expect(c.get('a1', 'a')).toBeDefined();
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
    expect(c.get('a3', 'a')).toBeDefined();
  });

  it("keeps each owner's view of a question apart, and forgets expired ones", () => {
    let now = 1_000;
    const c = new AnswerCache({ maxEntries: 4, clock: () => now });
    c.set('k', answer(1), 'a');
    c.set('k', answer(1), 'b');
    expect([c.heldBy('a'), c.heldBy('b')]).toEqual([1, 1]);
    now = 3_000;
    expect(c.get('k', 'b')).toBeUndefined();
    expect(c.heldBy('b')).toBe(0);
    c.clear();
    expect(c.size).toBe(0);
  });
});

describe('AnswerCache: each sandbox its own view', () => {
  it("ages a sandbox's TTLs from its own first sight of an answer another fetched, not from the fetch", () => {
    let now = 1_000;
    const c = new AnswerCache({ clock: () => now });
    c.set('k', answer(300), 'a', 40);
    now = 121_000;
    expect(c.get('k', 'a')?.ageS).toBe(120);
    // b has no view of it: it must not be answered from a's.
    expect(c.get('k', 'b')).toBeUndefined();
    const sh = c.shared('k', 'b');
    expect(sh?.fetchMs).toBe(40);
    c.adopt('k', sh!.answered, 'b');
    expect(c.get('k', 'b')?.ageS).toBe(0);
    now = 131_000;
    expect(c.get('k', 'b')?.ageS).toBe(10);
  });

  it("keeps a view its whole TTL from its first sight, past the shared answer's end, and no shared answer past its TTL from the fetch", () => {
    let now = 1_000;
    const c = new AnswerCache({ clock: () => now });
    c.set('k', answer(300), 'a');
    now = 291_000;
    c.adopt('k', c.shared('k', 'b')!.answered, 'b');
    now = 302_000;
    // a's view and the shared answer are over; b's lives on, so its end dates nothing of a's.
    expect(c.get('k', 'a')).toBeUndefined();
    expect(c.shared('k', 'b')).toBeUndefined();
    expect(c.get('k', 'b')?.ageS).toBe(11);
    now = 592_000;
    expect(c.get('k', 'b')).toBeUndefined();
  });

  it('lets a shared answer go with the last view that holds it', () => {
    const c = new AnswerCache({ maxEntries: 2 });
    c.set('k', answer(300), 'a');
    c.adopt('k', c.shared('k', 'b')!.answered, 'b');
    expect(c.sharedSize).toBe(1);
    // a's flood evicts a's own view; b's still holds the shared answer.
    c.set('x', answer(300), 'a');
    expect(c.get('k', 'a')).toBeUndefined();
    expect(c.sharedSize).toBe(2);
    c.set('y', answer(300), 'b');
    c.set('z', answer(300), 'b');
    expect(c.get('k', 'b')).toBeUndefined();
    expect(c.shared('k', 'b')).toBeUndefined();
  });
});

describe('AnswerCache: a view that left before its TTL', () => {
  // The probe: a fetches k, b takes a view of it (or not), a's own flood evicts a's view, a asks
  // k again. Were the shared answer there only while b's view held it, a was answered from it
  // (the TTLs and records of its first fetch) when b had asked, and by the upstream afresh
  // (whose TTLs its cache had aged since a's fetch, its records perhaps changed) when not.
  const probe = (bAsked: boolean): boolean => {
    const c = new AnswerCache({ maxEntries: 4 });
    c.set('k', answer(300), 'a', 5);
    if (bAsked) c.adopt('k', c.shared('k', 'b')!.answered, 'b');
    for (let i = 0; c.get('k', 'a') !== undefined; i++) c.set(`n${i}`, answer(300), 'a');
    return c.shared('k', 'a') !== undefined;
  };

  it('is not answered from the shared answer, whether another sandbox holds it or not', () => {
    expect([probe(false), probe(true)]).toEqual([false, false]);
  });

  it('leaves the shared answer to the other sandboxes that never had a view of it', () => {
    const c = new AnswerCache({ maxEntries: 4 });
    c.set('k', answer(300), 'a');
    c.adopt('k', c.shared('k', 'b')!.answered, 'b');
    for (let i = 0; c.get('k', 'a') !== undefined; i++) c.set(`n${i}`, answer(300), 'a');
    expect(c.shared('k', 'c')).toBeDefined();
    expect(c.shared('k', 'a')).toBeUndefined();
  });

  it('remembers at most 256 owners that left it, then goes for every sandbox', () => {
    // Room for one answer of 100 records and a few small ones: each owner's second large answer
    // evicts its own view of k first (it holds the most bytes), never a's.
    const c = new AnswerCache({ maxBytes: 25_000 });
    c.set('k', answer(300), 'a');
    for (let i = 0; i < 257; i++) {
      const o = `o${i}`;
      expect(c.shared('k', 'fresh')).toBeDefined();
      c.adopt('k', c.shared('k', o)!.answered, o);
      c.set(`${o}-1`, manyA(100), o);
      c.set(`${o}-2`, manyA(100), o);
      expect([c.get('k', o), c.get('k', 'a') !== undefined]).toEqual([undefined, true]);
    }
    expect(c.shared('k', 'fresh')).toBeUndefined();
  });
});

/** An answer of `n` A records (what 64 KiB of wire carries by the thousand). */
const manyA = (n: number): Answered => ({
  rcode: 0,
  authenticData: false,
  answers: Array.from({ length: n }, (_, i) => ({ type: 'A' as const, name: 'big.test', ttl: 60, data: `198.18.${i >> 8}.${i & 255}` })),
  authorities: [],
  additionals: [],
});

describe('AnswerCache: bytes', () => {
  it('keeps the bytes under the budget by evicting the sandbox holding the most bytes, oldest first', () => {
    const big = answerBytes(manyA(1000));
    const c = new AnswerCache({ maxEntries: 10_000, maxBytes: 4 * big });
    for (let i = 0; i < 10; i++) c.set(`b${i}`, answer(60), 'b');
    const small = c.bytesHeldBy('b');
    for (let i = 0; i < 20; i++) {
      c.set(`a${i}`, manyA(1000), 'a');
      expect(c.bytes).toBeLessThanOrEqual(4 * big);
    }
    // b holds fewer bytes than a: every b answer survived, a lost its oldest to its newest.
    for (let i = 0; i < 10; i++) expect(c.get(`b${i}`, 'b'), `b${i}`).toBeDefined();
    expect(c.bytesHeldBy('b')).toBe(small);
    expect(c.get('a0', 'a')).toBeUndefined();
    expect(c.get('a19', 'a')).toBeDefined();
    expect(c.bytes).toBe(c.bytesHeldBy('a') + c.bytesHeldBy('b'));
    // A sandbox holding few bytes still gets room: taken from a, not from b.
    c.set('c0', manyA(1000), 'c');
    expect(c.get('c0', 'c')).toBeDefined();
    expect(c.bytesHeldBy('b')).toBe(small);
  });

  it('keeps no answer larger than the whole budget, and counts an answer stored again once', () => {
    const c = new AnswerCache({ maxBytes: answerBytes(manyA(100)) });
    c.set('huge', manyA(1000), 'a');
    expect(c.get('huge', 'a')).toBeUndefined();
    expect(c.bytes).toBe(0);
    c.set('k', answer(60), 'a');
    const once = c.bytes;
    c.set('k', answer(60), 'a');
    expect([c.bytes, c.bytesHeldBy('a')]).toEqual([once, once]);
  });
});

describe('answerBytes', () => {
  it('grows with the records and their strings', () => {
    expect(answerBytes(manyA(2000))).toBeGreaterThan(2 * answerBytes(manyA(999)));
    // At least what 4,000 A records decoded from the wire were measured to take (167 bytes each).
    const wire = packet.encode({
      type: 'response',
      id: 7,
      flags: 0x8180,
      questions: [{ type: 'A', name: 'big.test' }],
      answers: manyA(4000).answers as Answer[],
    });
    const r = parseUpstreamReply(wire, 7, 'big.test', 'A');
    expect(r.kind).toBe('answer');
    if (r.kind === 'answer') expect(answerBytes(r.answered)).toBeGreaterThanOrEqual(4000 * 167);
  });

  it('counts the message a small record is a view of, once per message', () => {
    const message = Buffer.allocUnsafeSlow(60_000);
    const txt = (data: Buffer[]): Answered => ({
      rcode: 0,
      authenticData: false,
      answers: [{ type: 'TXT', name: 'x.test', ttl: 60, data }],
      authorities: [],
      additionals: [],
    });
    const one = answerBytes(txt([message.subarray(100, 110)]));
    expect(one).toBeGreaterThanOrEqual(60_000);
    expect(answerBytes(txt([message.subarray(100, 110), message.subarray(200, 210)]))).toBeLessThan(one + 1000);
  });
});
