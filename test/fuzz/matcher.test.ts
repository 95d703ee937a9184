// The compiled matchers (domain trie, prefix tries, port table, decide) against a naive
// reference written plainly here: linear scans over the rules, addresses as BigInt. Inputs are
// drawn from small alphabets so that rules nest, collide and overlap often.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CidrTrie } from '../../src/match/cidr-trie.ts';
import { compilePolicy, PortTable, SharedDomains } from '../../src/policy/compile.ts';
import { decide, type Decision } from '../../src/policy/decide.ts';
import { DomainTrie } from '../../src/match/domain-trie.ts';
import type { Mode, PortRange } from '../../src/policy/model.ts';
import { compileProtected, PROTECTED_RANGES } from '../../src/match/protected.ts';

// ---- names -------------------------------------------------------------------------------

// Names are a few labels over a few shared bases, so patterns nest inside one another.
const label = fc.constantFrom('a', 'b', 'www', 'api', 'xn--bcher-kva');
const base = fc.constantFrom('com', 'example.com', 'a.example.com', 'co.uk', 'b.co.uk', 'de');
const name = fc.tuple(fc.array(label, { maxLength: 3 }), base).map(([ls, b]) => [...ls, b].join('.'));
/** A pattern is a name cut down to some of its trailing labels, exact or with `*.`. */
const suffixOf = name.chain((n) => {
  const ls = n.split('.');
  return fc.integer({ min: 0, max: ls.length - 1 }).map((k) => ls.slice(k).join('.'));
});
const pattern = fc.oneof(
  { weight: 4, arbitrary: suffixOf },
  { weight: 4, arbitrary: suffixOf.map((n) => `*.${n}`) },
  { weight: 1, arbitrary: fc.constant('*') },
);

/** The most specific matching pattern: the exact name, else the longest `*.` suffix, else `*`; first listed on ties. */
function refDomain(patterns: readonly string[], n: string): number {
  const exact = patterns.indexOf(n);
  if (exact >= 0) return exact;
  let best = -1;
  let bestLen = -1;
  patterns.forEach((p, i) => {
    if (p.startsWith('*.') && n.endsWith(p.slice(1)) && p.length - 1 > bestLen) {
      best = i;
      bestLen = p.length - 1;
    }
  });
  return best >= 0 ? best : patterns.indexOf('*');
}

// ---- addresses ---------------------------------------------------------------------------

interface Addr {
  family: 4 | 6;
  value: bigint;
}
interface Block extends Addr {
  prefix: number;
}

const byte = fc.oneof(fc.constantFrom(0, 1, 8, 10, 16, 18, 64, 100, 127, 169, 172, 192, 198, 224, 254, 255), fc.integer({ min: 0, max: 255 }));
const v4 = fc.tuple(byte, byte, byte, byte).map(([a, b, c, d]): Addr => ({ family: 4, value: BigInt(((a << 24) | (b << 16) | (c << 8) | d) >>> 0) }));
const group = fc.oneof(
  fc.constantFrom(0, 0, 0, 1, 0x64, 0xff9b, 0x2001, 0xdb8, 0x2002, 0xfc00, 0xfd00, 0xfe80, 0xff02, 0xffff),
  fc.integer({ min: 0, max: 0xffff }),
);
const v6 = fc.array(group, { minLength: 8, maxLength: 8 }).map((gs): Addr => ({ family: 6, value: gs.reduce((acc, g) => (acc << 16n) | BigInt(g), 0n) }));
const mapped = v4.map((a): Addr => ({ family: 6, value: (0xffffn << 32n) | a.value }));
const addr = fc.oneof({ weight: 5, arbitrary: v4 }, { weight: 4, arbitrary: v6 }, { weight: 1, arbitrary: mapped });

const bits = (f: 4 | 6): number => (f === 4 ? 32 : 128);
const network = (a: Addr, prefix: number): Block => {
  const host = BigInt(bits(a.family) - prefix);
  return { family: a.family, value: (a.value >> host) << host, prefix };
};
const block = addr.chain((a) => fc.integer({ min: 0, max: bits(a.family) }).map((p) => network(a, p)));

/** Plain text: IPv4 dotted, IPv6 as eight full groups (never the compressed form). */
function text(a: Addr): string {
  if (a.family === 4) return [24n, 16n, 8n, 0n].map((s) => String((a.value >> s) & 255n)).join('.');
  const gs: string[] = [];
  for (let s = 112n; s >= 0n; s -= 16n) gs.push(((a.value >> s) & 0xffffn).toString(16));
  return gs.join(':');
}
const cidrText = (b: Block): string => `${text(b)}/${b.prefix}`;

const contains = (b: Block, a: Addr): boolean =>
  b.family === a.family && a.value >> BigInt(bits(b.family) - b.prefix) === b.value >> BigInt(bits(b.family) - b.prefix);

/** RFC 4291 §2.5.5.2: mapped addresses and mapped blocks of /96 or longer are IPv4. */
const MAPPED = 0xffffn << 32n;
const asV4 = <T extends Addr & { prefix?: number }>(a: T): T => {
  const prefix = a.prefix ?? 128;
  if (a.family === 6 && prefix >= 96 && a.value >> 32n === 0xffffn)
    return { ...a, family: 4, value: a.value - MAPPED, prefix: a.prefix === undefined ? undefined : prefix - 96 };
  return a;
};

function refLongest(blocks: readonly Block[], a: Addr): number {
  let best = -1;
  blocks.forEach((b, i) => {
    if (contains(b, a) && (best < 0 || b.prefix > blocks[best]!.prefix)) best = i;
  });
  return best;
}

// ---- the protected set, naively ----------------------------------------------------------

const parseRef = (cidr: string): Block => {
  const [ip, p] = cidr.split('/') as [string, string];
  if (!ip.includes(':')) return network({ family: 4, value: BigInt(ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0)) }, Number(p));
  // Expand `::` and a dotted tail by hand: the built-in list uses both.
  let groups: number[];
  const tail = ip.includes('.') ? ip.slice(ip.lastIndexOf(':') + 1) : null;
  const head = tail === null ? ip : ip.slice(0, ip.lastIndexOf(':') + 1) + '0:0';
  const [l, r] = head.split('::') as [string, string | undefined];
  const left = l === '' ? [] : l.split(':').map((g) => parseInt(g, 16));
  const right = r === undefined || r === '' ? [] : r.split(':').map((g) => parseInt(g, 16));
  groups = r === undefined ? left : [...left, ...Array<number>(8 - left.length - right.length).fill(0), ...right];
  if (tail !== null) {
    const o = tail.split('.').map(Number) as [number, number, number, number];
    groups = [...groups.slice(0, 6), (o[0] << 8) | o[1], (o[2] << 8) | o[3]];
  }
  return network({ family: 6, value: groups.reduce((acc, g) => (acc << 16n) | BigInt(g), 0n) }, Number(p));
};
const protectedBlocks = PROTECTED_RANGES.map((r) => parseRef(r.cidr)).filter((b) => !(b.family === 6 && b.prefix === 96 && b.value === MAPPED));

function refProtected(a: Addr): boolean {
  return protectedBlocks.some((b) => contains(b, a));
}

/** Every address of the block is in some protected range: contained in one, or both halves covered. */
function refCovered(b: Block): boolean {
  if (protectedBlocks.some((p) => p.family === b.family && p.prefix <= b.prefix && contains(p, b))) return true;
  if (b.prefix === bits(b.family)) return false;
  if (!protectedBlocks.some((p) => p.family === b.family && p.prefix > b.prefix && contains(b, p))) return false;
  const half = BigInt(bits(b.family) - b.prefix - 1);
  return refCovered({ ...b, prefix: b.prefix + 1 }) && refCovered({ family: b.family, value: b.value | (1n << half), prefix: b.prefix + 1 });
}

// ---- decide, naively ---------------------------------------------------------------------

interface RefSide {
  domains: string[];
  cidrs: Block[];
  ports: PortRange[];
}
const portRange = fc.oneof(
  fc.constantFrom(22, 80, 443, 8080, 1, 65535).map((p) => ({ from: p, to: p })),
  fc.tuple(fc.integer({ min: 1, max: 65535 }), fc.integer({ min: 0, max: 2000 })).map(([f, w]) => ({ from: f, to: Math.min(65535, f + w) })),
);
const port = fc.oneof(fc.constantFrom(22, 80, 443, 8080, 1, 65535), fc.integer({ min: 1, max: 65535 }));
/** Each list is empty half the time, so sides of ports alone, hosts alone and nothing at all all occur. */
const maybe = <T>(a: fc.Arbitrary<T>, max: number) => fc.oneof(fc.constant<T[]>([]), fc.array(a, { minLength: 1, maxLength: max }));
const refSide = fc.record({
  domains: maybe(pattern, 6),
  cidrs: maybe(block, 6),
  ports: maybe(portRange, 3),
});

/**
 * The IPv4 addresses a translator or tunnel carries an IPv6 destination on to, read off the RFCs'
 * layouts: NAT64 64:ff9b::/96 (RFC 6052 §2.1), IPv4-compatible ::/96 but :: and ::1 (RFC 4291
 * §2.5.5.1), SIIT ::ffff:0:0:0/96 (RFC 2765 §2.1), 6to4 2002::/16 (RFC 3056 §2), Teredo
 * 2001::/32 (RFC 4380 §4: the server, and the client with its bits inverted).
 */
function refEmbedded(a: Addr): Addr[] {
  if (a.family !== 6) return [];
  const v = a.value;
  const low = (x: bigint): Addr => ({ family: 4, value: x & 0xffffffffn });
  const top96 = v >> 32n;
  if (top96 === 0x64ff9b0000000000000000n) return [low(v)];
  if (top96 === 0n) return v > 1n ? [low(v)] : [];
  if (top96 === 0xffff0000n) return [low(v)];
  if (v >> 112n === 0x2002n) return [low(v >> 80n)];
  if (v >> 96n === 0x20010000n) return [low(v >> 64n), low(~v)];
  return [];
}

function refDecide(mode: Mode, allow: RefSide, deny: RefSide, n: string | null, a0: Addr, p: number): Pick<Decision, 'verdict' | 'reason' | 'matchedBy'> {
  const a = asV4(a0);
  const allowCidrs = allow.cidrs.map(asV4);
  const holding = allowCidrs.filter((b) => contains(b, a));
  if (refProtected(a) && !holding.some(refCovered)) return { verdict: 'refuse', reason: 'protected-address', matchedBy: 'protected' };
  // What a gateway carries the address on to is as protected as if it were dialed (decide.ts 1d).
  const carried = refEmbedded(a);
  for (const e of carried) {
    if (refProtected(e) && !allowCidrs.some((b) => contains(b, e) && refCovered(b)))
      return { verdict: 'refuse', reason: 'protected-address', matchedBy: 'protected' };
  }

  const hasHosts = allow.domains.length > 0 || allow.cidrs.length > 0;
  if (hasHosts || allow.ports.length > 0) {
    const portOk = allow.ports.length === 0 || allow.ports.some((r) => r.from <= p && p <= r.to);
    const byAddress = holding.length > 0;
    const byName = n !== null && refDomain(allow.domains, n) >= 0;
    if (portOk && (!hasHosts || byAddress || byName)) {
      return { verdict: 'allow', reason: 'allow-rule', matchedBy: !hasHosts ? 'port' : byAddress ? 'address' : 'name' };
    }
  }

  if (n !== null && refDomain(deny.domains, n) >= 0) return { verdict: 'refuse', reason: 'deny-rule', matchedBy: 'name' };
  if (deny.cidrs.map(asV4).some((b) => contains(b, a) || carried.some((e) => contains(b, e))))
    return { verdict: 'refuse', reason: 'deny-rule', matchedBy: 'address' };
  if (deny.ports.some((r) => r.from <= p && p <= r.to)) return { verdict: 'refuse', reason: 'deny-rule', matchedBy: 'port' };
  return mode === 'allow-all'
    ? { verdict: 'allow', reason: 'default-allow', matchedBy: 'mode' }
    : { verdict: 'refuse', reason: 'default-block', matchedBy: 'mode' };
}

// ---- the properties ----------------------------------------------------------------------

describe('compiled matchers agree with a linear scan', () => {
  it('DomainTrie.match picks the pattern the reference picks', () => {
    fc.assert(
      fc.property(fc.array(pattern, { maxLength: 30 }), fc.array(name, { minLength: 1, maxLength: 20 }), (patterns, names) => {
        const t = new DomainTrie();
        // Hashing by length makes most labels collide: the string-keyed fallback must agree too.
        const weak = new DomainTrie((_, start, end) => end - start);
        patterns.forEach((p, i) => {
          t.insert(p, i);
          weak.insert(p, i);
        });
        for (const n of names) {
          expect(t.match(n)).toBe(refDomain(patterns, n));
          expect(weak.match(n)).toBe(refDomain(patterns, n));
        }
      }),
      { numRuns: 1000 },
    );
  });

  it('CidrTrie.longest picks the longest holding block (IPv4 and IPv6)', () => {
    fc.assert(
      fc.property(fc.constantFrom<4 | 6>(4, 6), fc.array(block, { maxLength: 40 }), fc.array(addr, { minLength: 1, maxLength: 20 }), (family, all, addrs) => {
        const blocks = all.filter((b) => b.family === family);
        const t = new CidrTrie(family, 2);
        // The first listed of equal blocks is kept; give the reference the same view.
        blocks.forEach((b, i) => t.insert(wordsOf(b), b.prefix, i));
        for (const a of addrs) {
          if (a.family !== family) continue;
          const got = t.longest(wordsOf(a));
          const want = refLongest(blocks, a);
          expect(got < 0 ? -1 : blocks[got]!.prefix).toBe(want < 0 ? -1 : blocks[want]!.prefix);
          if (got >= 0) {
            expect(contains(blocks[got]!, a)).toBe(true);
            expect(got).toBe(blocks.findIndex((b) => b.prefix === blocks[got]!.prefix && contains(b, a)));
          }
        }
      }),
      { numRuns: 1000 },
    );
  });

  it('PortTable.find answers a listed range holding the port, or -1 when none does', () => {
    fc.assert(
      fc.property(fc.array(portRange, { minLength: 1, maxLength: 20 }), fc.array(port, { minLength: 1, maxLength: 30 }), (ranges, ports) => {
        const t = new PortTable(ranges);
        for (const p of ports) {
          const i = t.find(p);
          const any = ranges.some((r) => r.from <= p && p <= r.to);
          if (!any) expect(i).toBe(-1);
          else expect(ranges[i]!.from <= p && p <= ranges[i]!.to).toBe(true);
        }
      }),
      { numRuns: 1000 },
    );
  });

  it('decide gives the reference verdict, reason and matchedBy', () => {
    const protectedSet = compileProtected({});
    const facts = fc.record({ name: fc.option(name, { nil: null }), addr, port });
    fc.assert(
      fc.property(
        fc.constantFrom<Mode>('allow-all', 'block-all'),
        refSide,
        refSide,
        fc.array(facts, { minLength: 1, maxLength: 10 }),
        (mode, allow, deny, fs) => {
          const toSide = (s: RefSide) => ({ domains: s.domains, cidrs: s.cidrs.map(cidrText), ports: s.ports });
          const compiled = compilePolicy({ mode, allow: toSide(allow), deny: toSide(deny) }, protectedSet);
          for (const f of fs) {
            const d = decide(compiled, { name: f.name, ip: text(f.addr), port: f.port });
            expect({ verdict: d.verdict, reason: d.reason, matchedBy: d.matchedBy }).toEqual(refDecide(mode, allow, deny, f.name, f.addr, f.port));
          }
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('a side joined to shared patterns (the catalog) decides as one list with its own patterns first: verdict, reason, rule', () => {
    const protectedSet = compileProtected({});
    const facts = fc.record({ name: fc.option(name, { nil: null }), addr, port });
    fc.assert(
      fc.property(
        fc.constantFrom<Mode>('allow-all', 'block-all'),
        refSide,
        maybe(pattern, 8),
        refSide,
        fc.array(facts, { minLength: 1, maxLength: 10 }),
        (mode, allow, shared, deny, fs) => {
          const toSide = (s: RefSide) => ({ domains: s.domains, cidrs: s.cidrs.map(cidrText), ports: s.ports });
          const joined = compilePolicy({ mode, allow: toSide(allow), deny: toSide(deny) }, protectedSet, new SharedDomains(shared));
          const listed = compilePolicy({ mode, allow: { ...toSide(allow), domains: [...allow.domains, ...shared] }, deny: toSide(deny) }, protectedSet);
          // The hit-count slots differ by design (joined patterns are counted apart, rule-hits.ts);
          // what the verdict says must not.
          const said = ({ verdict, reason, rule, matchedBy }: Decision) => ({ verdict, reason, rule, matchedBy });
          for (const f of fs) {
            const facts = { name: f.name, ip: text(f.addr), port: f.port };
            expect(said(decide(joined, facts))).toEqual(said(decide(listed, facts)));
          }
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('the protected set agrees with the naive range scan and coverage check', () => {
    const p = compileProtected({});
    fc.assert(
      fc.property(block, (b) => {
        const a = asV4(b);
        expect(p.lookup(text(b)) !== null).toBe(refProtected(a));
        expect(p.coversWholly(cidrText(b))).toBe(refCovered(asV4(b)));
      }),
      { numRuns: 2000 },
    );
  });
});

function wordsOf(a: Addr): Uint32Array {
  const w = new Uint32Array(4);
  if (a.family === 4) w[0] = Number(a.value);
  else for (let k = 0; k < 4; k++) w[k] = Number((a.value >> BigInt(96 - 32 * k)) & 0xffffffffn);
  return w;
}
