import { describe, expect, it } from 'vitest';
import { CidrTrie } from '../../../src/match/cidr-trie.ts';
import { parseCidr, parseIp } from '../../../src/match/ip.ts';

const build = (cidrs: string[]): CidrTrie => {
  const first = parseCidr(cidrs[0] ?? '0.0.0.0/32');
  const t = new CidrTrie(first.ok ? first.block.family : 4, 2);
  cidrs.forEach((c, i) => {
    const r = parseCidr(c);
    if (!r.ok) throw new Error(r.reason);
    t.insert(r.block.words, r.block.prefix, i);
  });
  return t;
};
const at = (t: CidrTrie, ip: string): number => t.longest(parseIp(ip)!.words);

describe('CidrTrie', () => {
  it('finds nothing in an empty trie', () => {
    expect(at(new CidrTrie(4), '1.2.3.4')).toBe(-1);
  });

  it('answers the longest block holding the address', () => {
    const t = build(['10.0.0.0/8', '10.1.0.0/16', '10.1.2.0/24', '10.1.2.3/32']);
    expect(at(t, '10.9.9.9')).toBe(0);
    expect(at(t, '10.1.9.9')).toBe(1);
    expect(at(t, '10.1.2.9')).toBe(2);
    expect(at(t, '10.1.2.3')).toBe(3);
    expect(at(t, '11.0.0.0')).toBe(-1);
  });

  it('gives the same answers whatever the insertion order', () => {
    const t = build(['10.1.2.3/32', '10.1.2.0/24', '10.0.0.0/8', '10.1.0.0/16']);
    expect(at(t, '10.9.9.9')).toBe(2);
    expect(at(t, '10.1.9.9')).toBe(3);
    expect(at(t, '10.1.2.9')).toBe(1);
    expect(at(t, '10.1.2.3')).toBe(0);
  });

  it('splits a path where two blocks part ways and keeps both', () => {
    const t = build(['192.168.0.0/24', '192.168.128.0/24']);
    expect(at(t, '192.168.0.7')).toBe(0);
    expect(at(t, '192.168.128.7')).toBe(1);
    expect(at(t, '192.168.64.7')).toBe(-1);
  });

  it('holds the whole space in a /0', () => {
    const t = build(['0.0.0.0/0', '8.8.8.0/24']);
    expect(at(t, '255.255.255.255')).toBe(0);
    expect(at(t, '8.8.8.8')).toBe(1);
  });

  it('keeps the first value of a block inserted twice', () => {
    const t = build(['10.0.0.0/8', '10.0.0.0/8']);
    expect(at(t, '10.0.0.1')).toBe(0);
  });

  it('matches IPv6 blocks across word boundaries', () => {
    const t = build(['2001:db8::/32', '2001:db8:0:1::/64', '2001:db8:0:1:8000::/65', '::/0', '2001:db8:0:1:8000::1/128']);
    expect(at(t, '2001:db8::1')).toBe(0);
    expect(at(t, '2001:db8:0:1::1')).toBe(1);
    expect(at(t, '2001:db8:0:1:8000::2')).toBe(2);
    expect(at(t, '2001:db8:0:1:8000::1')).toBe(4);
    expect(at(t, 'fe80::1')).toBe(3);
  });

  it('grows past its initial capacity and stays within two nodes per block', () => {
    const t = new CidrTrie(4, 2);
    for (let i = 0; i < 1000; i++) t.insert(Uint32Array.of((0x0a000000 | (i << 8)) >>> 0, 0, 0, 0), 24, i);
    for (const i of [0, 1, 255, 256, 999]) expect(at(t, `10.${i >> 8}.${i & 255}.1`)).toBe(i);
    expect(at(t, '10.3.232.1')).toBe(-1);
    expect(t.nodes).toBeLessThanOrEqual(2 * 1000);
  });

  it('answers like a linear scan once large enough to get its direct-indexed first level', () => {
    // Seeded blocks of every length, clustered in a few /8s so that short and long prefixes nest.
    let seed = 1;
    const next = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed;
    };
    const blocks: { net: number; prefix: number }[] = [];
    const firsts = [10, 100, 172, 192];
    const t = new CidrTrie(4);
    const add = () => {
      const prefix = blocks.length % 3 === 0 ? next() % 17 : 16 + (next() % 17);
      const raw = ((firsts[next() % firsts.length]! << 24) | (next() & 0xffffff)) >>> 0;
      const net = prefix === 0 ? 0 : (raw & (-1 << (32 - prefix))) >>> 0;
      t.insert(Uint32Array.of(net, 0, 0, 0), prefix, blocks.length);
      blocks.push({ net, prefix });
    };
    const linear = (a: number): number => {
      let best = -1;
      blocks.forEach((b, i) => {
        const inside = b.prefix === 0 || (a & (-1 << (32 - b.prefix))) >>> 0 === b.net;
        if (inside && (best < 0 || b.prefix > blocks[best]!.prefix)) best = i;
      });
      return best;
    };
    const check = () => {
      for (let k = 0; k < 300; k++) {
        const a = k % 2 === 0 ? next() : (blocks[next() % blocks.length]!.net + (next() & 0xff)) >>> 0;
        const got = t.longest(Uint32Array.of(a, 0, 0, 0));
        const want = linear(a);
        expect(got < 0 ? -1 : blocks[got]!.prefix).toBe(want < 0 ? -1 : blocks[want]!.prefix);
      }
    };
    for (let i = 0; i < 5000; i++) add();
    expect(t.nodes).toBeGreaterThan(4096);
    check();
    // Inserting after lookups rebuilds the first level.
    for (let i = 0; i < 500; i++) add();
    check();
  });

  it('answers like a linear scan for a large IPv6 trie too', () => {
    let seed = 7;
    const next = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed;
    };
    const toBig = (w: Uint32Array): bigint => w.reduce((acc, x) => (acc << 32n) | BigInt(x), 0n);
    const blocks: { net: bigint; prefix: number }[] = [];
    const t = new CidrTrie(6);
    for (let i = 0; i < 8000; i++) {
      const prefix = i % 3 === 0 ? next() % 17 : 16 + (next() % 49);
      const w = Uint32Array.of(((0x2001 << 16) | (i % 2 === 0 ? 0x0db8 : next() & 0x3)) >>> 0, next(), next(), next());
      const host = BigInt(128 - prefix);
      const net = (toBig(w) >> host) << host;
      t.insert(w, prefix, i);
      blocks.push({ net, prefix });
    }
    expect(t.nodes).toBeGreaterThan(4096);
    for (let k = 0; k < 300; k++) {
      const b = blocks[next() % blocks.length]!;
      const a = k % 2 === 0 ? b.net + BigInt(next()) : (BigInt(next()) << 96n) | BigInt(next());
      const words = Uint32Array.of(Number(a >> 96n), Number((a >> 64n) & 0xffffffffn), Number((a >> 32n) & 0xffffffffn), Number(a & 0xffffffffn));
      let want = -1;
      blocks.forEach((c, i) => {
        const host = BigInt(128 - c.prefix);
        if (a >> host === c.net >> host && (want < 0 || c.prefix > blocks[want]!.prefix)) want = i;
      });
      const got = t.longest(words);
      expect(got < 0 ? -1 : blocks[got]!.prefix).toBe(want < 0 ? -1 : blocks[want]!.prefix);
    }
  });

  it('refuses a prefix length beyond the family', () => {
    expect(() => new CidrTrie(4).insert(new Uint32Array(4), 33, 0)).toThrow(RangeError);
  });
});
