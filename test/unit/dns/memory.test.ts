import { describe, expect, it } from 'vitest';
import { ResolvedNames } from '../../../src/dns/memory.ts';
import { TokenBuckets } from '../../../src/dns/token-bucket.ts';

describe('ResolvedNames', () => {
  it('remembers names per sandbox until TTL plus grace', () => {
    let now = 0;
    const m = new ResolvedNames({ graceMs: 1000, perSandbox: 10, clock: () => now });
    m.remember('a', 'x.test', ['198.18.1.10'], 5);
    m.remember('a', 'y.test', ['198.18.1.10'], 60);
    expect(m.namesFor('a', '198.18.1.10')).toEqual(['x.test', 'y.test']);
    expect(m.namesFor('b', '198.18.1.10')).toEqual([]);
    now = 5999;
    expect(m.namesFor('a', '198.18.1.10')).toEqual(['x.test', 'y.test']);
    now = 6001;
    expect(m.namesFor('a', '198.18.1.10')).toEqual(['y.test']);
    expect(m.view('a')).toEqual([{ address: '198.18.1.10', names: [{ name: 'y.test', expiresInMs: 54_999 }] }]);
  });

  it('says when the first name given for an address expires: a verdict on those names holds until then', () => {
    let now = 0;
    const m = new ResolvedNames({ graceMs: 1000, perSandbox: 10, clock: () => now });
    expect(m.expiryOf('a', '198.18.1.10')).toBe(Infinity);
    m.remember('a', 'y.test', ['198.18.1.10'], 60);
    m.remember('a', 'x.test', ['198.18.1.10'], 5);
    expect(m.expiryOf('a', '198.18.1.10')).toBe(6000);
    expect(m.expiryOf('b', '198.18.1.10')).toBe(Infinity);
    // Given again with a longer TTL: the later expiry stands.
    now = 3000;
    m.remember('a', 'x.test', ['198.18.1.10'], 100);
    expect(m.expiryOf('a', '198.18.1.10')).toBe(61_000);
    // Given again with a shorter TTL: the sandbox may still hold the longer answer, so the
    // later expiry still stands.
    now = 4000;
    m.remember('a', 'x.test', ['198.18.1.10'], 1);
    expect(m.namesFor('a', '198.18.1.10')).toEqual(['y.test', 'x.test']);
    now = 100_000;
    expect(m.namesFor('a', '198.18.1.10')).toEqual(['x.test']);
  });

  it('keeps at most perSandbox addresses, dropping the least recently given', () => {
    const m = new ResolvedNames({ graceMs: 0, perSandbox: 2, clock: () => 0 });
    m.remember('a', 'x.test', ['198.18.1.1', '198.18.1.2', '198.18.1.3'], 60);
    expect(m.namesFor('a', '198.18.1.1')).toEqual([]);
    expect(m.namesFor('a', '198.18.1.3')).toEqual(['x.test']);
    expect(m.total).toBe(2);
    expect(m.top(5)).toEqual([{ sandbox: 'a', addresses: 2 }]);
    m.forget('a');
    expect(m.total).toBe(0);
  });

  // A sandbox chooses the names it asks (random labels under an allowed wildcard) and, through a
  // zone it runs, the addresses they give: 16 names of 253 characters for each of 4096 addresses
  // held 20 MB of heap per sandbox, where one name of 20 characters an address holds 1.5 MB.
  it("bounds each sandbox's names by size too: long names for many addresses evict the least recently given first", () => {
    const m = new ResolvedNames({ graceMs: 0, perSandbox: 64, clock: () => 0 });
    const name = (i: number, j: number): string => `n${i}-${j}.`.padEnd(240, 'x') + '.test';
    for (let i = 0; i < 64; i++) for (let j = 0; j < 16; j++) m.remember('a', name(i, j), [`198.18.0.${i}`], 60);
    m.remember('b', 'b.test', ['198.18.0.1'], 60);
    const chars = m.view('a').reduce((n, e) => n + e.names.reduce((k, x) => k + x.name.length, 0), 0);
    expect(chars).toBeLessThanOrEqual(64 * 512);
    expect(m.bytesOf('a')).toBeLessThanOrEqual(64 * 512);
    // The latest kept whole, the earliest gone, the other sandbox untouched.
    expect(m.namesFor('a', '198.18.0.63')).toHaveLength(16);
    expect(m.namesFor('a', '198.18.0.0')).toEqual([]);
    expect(m.namesFor('b', '198.18.0.1')).toEqual(['b.test']);
  });

  it('keeps perSandbox addresses of ordinary names, and one address with all its names under a tiny perSandbox', () => {
    const m = new ResolvedNames({ graceMs: 0, perSandbox: 4096, clock: () => 0 });
    for (let i = 0; i < 4096; i++) m.remember('a', `host-${i}.service.example-cdn.test`, [`198.18.${i >> 8}.${i & 255}`], 60);
    expect(m.total).toBe(4096);
    const one = new ResolvedNames({ graceMs: 0, perSandbox: 1, clock: () => 0 });
    for (let j = 0; j < 16; j++) one.remember('a', `${j}.`.padEnd(248, 'y') + '.test', ['198.18.0.1'], 60);
    expect(one.namesFor('a', '198.18.0.1')).toHaveLength(16);
  });

  it("keeps the aliases each name was given through, the latest answer's chain standing", () => {
    const m = new ResolvedNames({ graceMs: 0, perSandbox: 10, clock: () => 0 });
    m.remember('a', 'www.x.test', ['198.18.1.10'], 60, ['edge.cdn.test', 'pop.cdn.test']);
    m.remember('a', 'plain.x.test', ['198.18.1.10'], 60);
    expect(m.chainsFor('a', '198.18.1.10')).toEqual([
      { name: 'www.x.test', aliases: ['edge.cdn.test', 'pop.cdn.test'] },
      { name: 'plain.x.test', aliases: [] },
    ]);
    m.remember('a', 'www.x.test', ['198.18.1.10'], 60, ['other.cdn.test']);
    expect(m.chainsFor('a', '198.18.1.10').find((g) => g.name === 'www.x.test')?.aliases).toEqual(['other.cdn.test']);
    expect(m.view('a')[0]!.names).toContainEqual({ name: 'www.x.test', expiresInMs: 60_000, aliases: ['other.cdn.test'] });
    // A chain longer than any a resolver follows is not remembered: judged by address alone.
    m.remember(
      'a',
      'long.x.test',
      ['198.18.1.11'],
      60,
      Array.from({ length: 13 }, (_, i) => `h${i}.cdn.test`),
    );
    expect(m.namesFor('a', '198.18.1.11')).toEqual([]);
    // Nor does an earlier answer's shorter chain stand for it: the name is forgotten there.
    m.remember(
      'a',
      'www.x.test',
      ['198.18.1.10', '198.18.1.12'],
      60,
      Array.from({ length: 13 }, (_, i) => `h${i}.cdn.test`),
    );
    expect(m.namesFor('a', '198.18.1.10')).toEqual(['plain.x.test']);
    expect(m.namesFor('a', '198.18.1.12')).toEqual([]);
    expect(m.total).toBe(1);
  });

  it('keeps each alias as a deny rule judges it: ASCII, one byte a character as the bytes count it', () => {
    const m = new ResolvedNames({ graceMs: 0, perSandbox: 10, clock: () => 0 });
    // dns-packet reads a label of invalid UTF-8 as U+FFFD each byte: a two-byte string.
    const odd = `${'\ufffd'.repeat(63)}.${'\ufffd'.repeat(63)}.${'\ufffd'.repeat(63)}.cdn.test`;
    m.remember('a', 'www.x.test', ['198.18.1.10'], 60, ['Edge.CDN.test', odd, '*.cdn.test', 'x.a!b.cdn.test', '']);
    const [given] = m.chainsFor('a', '198.18.1.10');
    expect(given!.aliases).toEqual(['edge.cdn.test', '*.cdn.test']);
    for (const a of given!.aliases) expect(a).toMatch(/^[\x21-\x7e]{1,255}$/);
  });

  it('counts the aliases in the bytes: long chains of long names keep the table within perSandbox × 512 bytes', () => {
    const m = new ResolvedNames({ graceMs: 0, perSandbox: 64, clock: () => 0 });
    // Host names of 245 characters, in labels of at most 63 (a longer one is no host name).
    const long = (i: number, j: number, k: number): string => (`n${i}-${j}-${k}.` + `${'x'.repeat(60)}.`.repeat(3)).padEnd(240, 'y') + '.test';
    const chain = (i: number, j: number): string[] => Array.from({ length: 12 }, (_, k) => long(i, j, k + 1));
    for (let i = 0; i < 64; i++) for (let j = 0; j < 16; j++) m.remember('a', long(i, j, 0), [`198.18.0.${i}`], 60, chain(i, j));
    expect(m.bytesOf('a')).toBeLessThanOrEqual(64 * 512);
    const aliasChars = m.view('a').reduce((n, e) => n + e.names.reduce((k, x) => k + (x.aliases ?? []).join('').length, 0), 0);
    expect(aliasChars).toBeLessThanOrEqual(64 * 512);
    // The latest name of the latest address is kept whole, with its chain.
    expect(m.chainsFor('a', '198.18.0.63').at(-1)).toEqual({ name: long(63, 15, 0), aliases: chain(63, 15) });
  });
});

describe('ResolvedNames total, top and bytesOf', () => {
  it('count no address whose every name has expired, and give back what it held', () => {
    let now = 0;
    const m = new ResolvedNames({ graceMs: 1000, perSandbox: 4096, clock: () => now });
    for (let i = 0; i < 10; i++) m.remember('a', `n${i}.test`, [`198.18.0.${i}`], 1);
    m.remember('b', 'long.test', ['198.18.1.1'], 300);
    expect([m.total, m.top(2), m.bytesOf('a') > 0]).toEqual([
      11,
      [
        { sandbox: 'a', addresses: 10 },
        { sandbox: 'b', addresses: 1 },
      ],
      true,
    ]);
    // TTL 1 s plus 1 s of grace: every name of sandbox a is gone, b's stays.
    now = 2_001;
    expect(m.view('a')).toEqual([]);
    expect([m.total, m.top(2), m.bytesOf('a')]).toEqual([1, [{ sandbox: 'b', addresses: 1 }], 0]);
    // Remembered again, it counts again.
    m.remember('a', 'n0.test', ['198.18.0.0'], 1);
    expect([m.total, m.top(1)]).toEqual([2, [{ sandbox: 'a', addresses: 1 }]]);
  });

  it('drop expired addresses from the least recently given on, up to the first still remembered', () => {
    let now = 0;
    const m = new ResolvedNames({ graceMs: 0, perSandbox: 4096, clock: () => now });
    m.remember('a', 'short.test', ['198.18.0.1'], 1);
    m.remember('a', 'long.test', ['198.18.0.2'], 60);
    m.remember('a', 'short2.test', ['198.18.0.3'], 1);
    now = 1_001;
    // The first given expired and goes; the third waits behind the second, live until 60 s.
    expect([m.total, m.view('a').map((x) => x.address)]).toEqual([2, ['198.18.0.2']]);
    now = 60_001;
    expect(m.total).toBe(0);
  });
});

describe('TokenBuckets', () => {
  it('allows the burst, then the rate', () => {
    let now = 0;
    const b = new TokenBuckets({ perSecond: 10, burst: 3, clock: () => now });
    expect([b.take('a'), b.take('a'), b.take('a'), b.take('a')]).toEqual([true, true, true, false]);
    expect(b.take('b')).toBe(true);
    now = 100;
    expect([b.take('a'), b.take('a')]).toEqual([true, false]);
  });

  it('takes several tokens at once only when the bucket holds them all, and at most the burst', () => {
    let now = 0;
    const b = new TokenBuckets({ perSecond: 10, burst: 5, clock: () => now });
    expect(b.take('a', 4)).toBe(true);
    // One left: three are not taken in part.
    expect(b.take('a', 3)).toBe(false);
    expect(b.take('a')).toBe(true);
    now = 500;
    // Full again: a cost above the burst takes the whole bucket rather than never being paid.
    expect(b.take('a', 50)).toBe(true);
    expect(b.take('a')).toBe(false);
  });
});
