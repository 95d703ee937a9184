// `node bench/decide.ts`: how long decide() takes with 100,000 domain patterns and 100,000
// CIDRs, against a plain linear scan over the same rules in the same run, and how long the
// policy takes to validate and compile. Also the prefix trie (src/match/cidr-trie.ts) against
// a sorted-interval binary search for the CIDR lookup alone: the alternative the design
// weighed, kept here so the choice can be re-checked. The two are checked to agree first.
//
// Everything is seeded and every loop has a fixed count, so a run is bounded (about 10 s on
// one core) and repeatable. Figures are medians of several rounds; on a shared machine they
// move by tens of percent from run to run.

import { CidrTrie } from '../src/match/cidr-trie.ts';
import { compilePolicy } from '../src/policy/compile.ts';
import { decide, type Facts } from '../src/policy/decide.ts';
import { parseCidr, parseIp, type CidrBlock } from '../src/match/ip.ts';
import type { Policy } from '../src/policy/model.ts';
import { parsePolicyDocument } from '../src/policy/parse-policy.ts';
import { compileProtected } from '../src/match/protected.ts';

const DOMAINS = 100_000;
const CIDRS = 100_000;
const QUERIES = 20_000;
const ROUNDS = 5;
const LINEAR_QUERIES = 200;

// ---- seeded data -------------------------------------------------------------------------

let seed = 0x9e3779b9;
/** mulberry32: small, fast, and the same sequence on every run. */
function rand(): number {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const int = (n: number): number => Math.floor(rand() * n);
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;

const WORDS = ['api', 'cdn', 'static', 'edge', 'files', 'auth', 'data', 'img', 'www', 'app', 'svc', 'internal'];
const TLDS = ['com', 'net', 'org', 'io', 'dev', 'ai'];
const labelOf = (): string => `${pick(WORDS)}${int(1_000_000).toString(36)}`;

const registrable: string[] = Array.from({ length: 40_000 }, () => `${labelOf()}.${pick(TLDS)}`);
const domains: string[] = [];
for (let i = 0; i < DOMAINS; i++) {
  const base = pick(registrable);
  domains.push(rand() < 0.5 ? `*.${base}` : rand() < 0.5 ? base : `${labelOf()}.${base}`);
}

const v4Text = (v: number): string => `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
const v6Text = (gs: number[]): string => gs.map((g) => g.toString(16)).join(':');
const randomV4 = (): number => ((int(223) + 1) * 2 ** 24 + int(2 ** 24)) >>> 0;
const randomV6 = (): number[] => [0x2000 + int(0x1000), ...Array.from({ length: 7 }, () => int(0x10000))];

const cidrs: string[] = [];
for (let i = 0; i < CIDRS; i++) {
  if (rand() < 0.75) cidrs.push(`${v4Text(randomV4())}/${16 + int(17)}`);
  else cidrs.push(`${v6Text(randomV6())}/${32 + int(33)}`);
}

// ---- validate and compile ----------------------------------------------------------------

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const time = (f: () => void): number => {
  const t = performance.now();
  f();
  return performance.now() - t;
};

let policy!: Policy;
const parseMs = median(
  Array.from({ length: 3 }, () =>
    time(() => {
      const r = parsePolicyDocument({ mode: 'block-all', egress: { allowed_domains: domains, allowed_cidrs: cidrs, allowed_ports: [443, '8000-8999'] } });
      if (!r.ok) throw new Error(`benchmark policy is invalid: ${JSON.stringify(r.issues.slice(0, 3))}`);
      policy = r.value;
    }),
  ),
);
const protectedSet = compileProtected({});
let compiled = compilePolicy(policy, protectedSet);
const compileMs = median(Array.from({ length: 3 }, () => time(() => void (compiled = compilePolicy(policy, protectedSet)))));

// ---- queries -----------------------------------------------------------------------------

/** Names under the patterns (hits), random names (misses), addresses inside the CIDRs (hits). */
function queries(): Facts[] {
  const out: Facts[] = [];
  for (let i = 0; i < QUERIES; i++) {
    const kind = i % 4;
    if (kind === 0) {
      const d = pick(domains);
      out.push({ name: d.startsWith('*.') ? `${labelOf()}.${d.slice(2)}` : d, ip: v4Text(randomV4()), port: 443 });
    } else if (kind === 1) {
      out.push({ name: `${labelOf()}.${labelOf()}.${pick(TLDS)}`, ip: v4Text(randomV4()), port: 443 });
    } else if (kind === 2) {
      const r = parseCidr(pick(cidrs));
      if (!r.ok) throw new Error(r.reason);
      const w = r.block.words;
      const ip =
        r.block.family === 4
          ? v4Text((w[0]! | (int(256) & ((1 << (32 - r.block.prefix)) - 1))) >>> 0)
          : v6Text([w[0]! >>> 16, w[0]! & 0xffff, w[1]! >>> 16, w[1]! & 0xffff, 1, 2, 3, 4]);
      out.push({ name: null, ip, port: 8080 });
    } else {
      out.push({ name: null, ip: rand() < 0.5 ? v4Text(randomV4()) : v6Text(randomV6()), port: 443 });
    }
  }
  return out;
}
const qs = queries();

// ---- the linear scan ---------------------------------------------------------------------

interface LinearCidr {
  family: 4 | 6;
  words: Uint32Array;
  prefix: number;
}
const linearCidrs: LinearCidr[] = cidrs.map((c) => {
  const r = parseCidr(c);
  if (!r.ok) throw new Error(r.reason);
  return r.block;
});

/** The same verdict as decide on this block-all policy, by scanning every rule in turn. */
function linearDecide(f: Facts): 'allow' | 'refuse' {
  const a = parseIp(f.ip);
  if (a === null) return 'refuse';
  const isProtected = protectedSet.lookup(f.ip) !== null;
  let host = false;
  let unlocked = false;
  for (const [i, c] of linearCidrs.entries()) {
    if (c.family !== a.family) continue;
    let inside = true;
    for (let k = 0; k < 4 && 32 * k < c.prefix; k++) {
      const left = c.prefix - 32 * k;
      const mask = left >= 32 ? 0xffffffff : (0xffffffff << (32 - left)) >>> 0;
      if (((a.words[k]! ^ c.words[k]!) & mask) !== 0) {
        inside = false;
        break;
      }
    }
    if (inside) {
      host = true;
      if (!isProtected) break;
      if (protectedSet.coversWholly(cidrs[i]!)) unlocked = true;
    }
  }
  if (isProtected && !unlocked) return 'refuse';
  if (!host && f.name !== null) {
    for (const d of domains) {
      if (d === f.name || (d.startsWith('*.') && f.name.endsWith(d.slice(1)))) {
        host = true;
        break;
      }
    }
  }
  const port = f.port === 443 || (f.port >= 8000 && f.port <= 8999);
  return host && port ? 'allow' : 'refuse';
}

// ---- the sorted-interval alternative for IPv4 CIDRs ----------------------------------------

/** Nested CIDRs flattened into disjoint segments labelled by the innermost block. */
class IntervalTable {
  readonly starts: Uint32Array;
  readonly labels: Int32Array;
  constructor(blocks: readonly CidrBlock[]) {
    const items = blocks.map((b, i) => ({ lo: b.words[0]!, hi: b.words[0]! + 2 ** (32 - b.prefix) - 1, i })).sort((x, y) => x.lo - y.lo || y.hi - x.hi);
    const starts: number[] = [0];
    const labels: number[] = [-1];
    const stack: { hi: number; i: number }[] = [];
    const emit = (at: number, label: number) => {
      if (starts[starts.length - 1] === at) labels[labels.length - 1] = label;
      else if (labels[labels.length - 1] !== label) {
        starts.push(at);
        labels.push(label);
      }
    };
    const closeUntil = (at: number) => {
      while (stack.length > 0 && stack[stack.length - 1]!.hi < at) {
        const top = stack.pop()!;
        if (top.hi + 1 <= 0xffffffff) emit(top.hi + 1, stack.length > 0 ? stack[stack.length - 1]!.i : -1);
      }
    };
    for (const it of items) {
      closeUntil(it.lo);
      stack.push({ hi: it.hi, i: it.i });
      emit(it.lo, it.i);
    }
    closeUntil(0x100000000);
    this.starts = Uint32Array.from(starts);
    this.labels = Int32Array.from(labels);
  }
  find(v: number): number {
    const s = this.starts;
    let lo = 0;
    let hi = s.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (s[mid]! <= v) lo = mid;
      else hi = mid - 1;
    }
    return this.labels[lo]!;
  }
}

const v4Blocks = linearCidrs.filter((c) => c.family === 4);
const trie4 = new CidrTrie(4);
const trieBuildMs = time(() => v4Blocks.forEach((b, i) => trie4.insert(b.words, b.prefix, i)));
let intervals!: IntervalTable;
const intervalBuildMs = time(() => (intervals = new IntervalTable(v4Blocks)));
const probes = Array.from({ length: QUERIES }, (_, i) => {
  if (i % 2 === 0) return randomV4();
  const b = v4Blocks[int(v4Blocks.length)]!;
  return (b.words[0]! + int(2 ** (32 - b.prefix))) >>> 0;
});
const probeWords = probes.map((p) => Uint32Array.of(p, 0, 0, 0));
for (let i = 0; i < probes.length; i++) {
  const t = trie4.longest(probeWords[i]!);
  const s = intervals.find(probes[i]!);
  const pt = t < 0 ? -1 : v4Blocks[t]!.prefix;
  const ps = s < 0 ? -1 : v4Blocks[s]!.prefix;
  if (pt !== ps) throw new Error(`trie and interval table disagree on ${v4Text(probes[i]!)}: /${pt} vs /${ps}`);
}

// ---- measure -----------------------------------------------------------------------------

let sink = 0;
function nsPer(n: number, f: (i: number) => void): number {
  const rounds: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) f(i);
    rounds.push(Number(process.hrtime.bigint() - t) / n);
  }
  return median(rounds);
}

let agree = 0;
for (let i = 0; i < LINEAR_QUERIES; i++) if (decide(compiled, qs[i]!).verdict === linearDecide(qs[i]!)) agree++;
if (agree !== LINEAR_QUERIES) throw new Error(`decide and the linear scan disagree on ${LINEAR_QUERIES - agree} of ${LINEAR_QUERIES} queries`);

// Warm up the JIT before measuring.
for (let i = 0; i < QUERIES; i++) sink += decide(compiled, qs[i]!).verdict === 'allow' ? 1 : 0;

const decideNs = nsPer(QUERIES, (i) => (sink += decide(compiled, qs[i]!).verdict === 'allow' ? 1 : 0));
const kinds = ['name hit', 'name miss', 'address hit', 'address miss'];
const perKind = kinds.map((_, k) => {
  const sub = qs.filter((_, i) => i % 4 === k);
  return nsPer(sub.length, (i) => (sink += decide(compiled, sub[i]!).verdict === 'allow' ? 1 : 0));
});
const linearNs = nsPer(LINEAR_QUERIES, (i) => (sink += linearDecide(qs[i]!) === 'allow' ? 1 : 0));
const trieNs = nsPer(QUERIES, (i) => (sink += trie4.longest(probeWords[i]!)));
const intervalNs = nsPer(QUERIES, (i) => (sink += intervals.find(probes[i]!)));

const heapUsed = process.memoryUsage().heapUsed;
const fmtUs = (ns: number): string => `${(ns / 1000).toFixed(3)} µs`;
const rows: [string, string][] = [
  [`validate ${DOMAINS} domains + ${CIDRS} CIDRs (parsePolicyDocument)`, `${parseMs.toFixed(0)} ms`],
  ['compile (compilePolicy)', `${compileMs.toFixed(0)} ms`],
  ['decide, mixed queries', fmtUs(decideNs)],
  ...kinds.map((k, i): [string, string] => [`decide, ${k}`, fmtUs(perKind[i]!)]),
  ['linear scan, mixed queries', fmtUs(linearNs)],
  ['speed-up over the linear scan', `${(linearNs / decideNs).toFixed(0)}x`],
  [`IPv4 prefix trie lookup (${v4Blocks.length} blocks, ${trie4.nodes} nodes)`, fmtUs(trieNs)],
  [`IPv4 sorted-interval lookup (${intervals.starts.length} segments)`, fmtUs(intervalNs)],
  ['IPv4 build: trie / intervals', `${trieBuildMs.toFixed(0)} ms / ${intervalBuildMs.toFixed(0)} ms`],
];
const width = Math.max(...rows.map((r) => r[0].length));
console.log(`egressd decide benchmark — node ${process.version}, ${QUERIES} queries x ${ROUNDS} rounds (median)\n`);
for (const [k, v] of rows) console.log(`${k.padEnd(width)}  ${v.padStart(14)}`);
console.log(`\n(checksum ${sink % 1000}, heap in use ${(heapUsed / 2 ** 20).toFixed(0)} MiB)`);
