// A path-compressed binary prefix trie (PATRICIA, Morrison 1968) answering longest-prefix
// match over IPv4 or IPv6 blocks. A node is a few consecutive slots of one Int32Array —
// length, value, two children, then the prefix words — so visiting it touches one cache line
// and 100,000 blocks are at most 200,000 nodes in one flat buffer. A lookup walks at most one
// node per distinct branch point on its path (≤ 33 for IPv4, ≤ 129 for IPv6; about log2(n)
// in practice) and allocates nothing.
//
// A large trie also gets a direct-indexed first level over the address's top 16 bits (the
// first stride of DIR-24-8, Gupta et al. 1998): where to resume and the best value found
// above bit 16, for each of the 65,536 values. It skips the ~16 densest levels of the walk;
// bench/decide.ts measured the IPv4 lookup at less than half the plain trie's time, ahead of
// a sorted-interval binary search. Small tries (most policies) do without its 512 KiB.

import type { IpFamily } from './ip.ts';

const NONE = -1;
/** Slot offsets within a node. */
const LEN = 0;
const VALUE = 1;
const CHILD = 2;
const PREFIX = 4;
/** Bits the first level indexes, and the node count from which it pays for its memory. */
const ROOT_BITS = 16;
const ROOT_MIN_NODES = 4096;

export class CidrTrie {
  readonly family: IpFamily;
  readonly #bits: number;
  /** Slots per node: the four fixed ones plus one prefix word (IPv4) or four (IPv6). */
  readonly #stride: number;
  /** Every node; children are stored as slot offsets, so a step needs no multiplication. */
  #n: Int32Array;
  #used = 0;
  /** For each value of the top 16 bits: the node to resume at (or -1), and the best value so far. */
  #rootNode: Int32Array | null = null;
  #rootBest: Int32Array | null = null;
  /** Whether an insert happened since the first level was built. */
  #dirty = true;

  constructor(family: IpFamily, capacity = 16) {
    this.family = family;
    this.#bits = family === 4 ? 32 : 128;
    this.#stride = PREFIX + (family === 4 ? 1 : 4);
    this.#n = new Int32Array(Math.max(2, capacity) * this.#stride);
    this.#newNode(null, 0, NONE);
  }

  /** Nodes in use (blocks plus branch points), for tests and the benchmark. */
  get nodes(): number {
    return this.#used / this.#stride;
  }

  /**
   * Adds a block: `words` is the address (IPv4 in words[0]), `prefix` its length. Host bits
   * are ignored. A block inserted twice keeps its first value, so the first rule listed wins.
   */
  insert(words: Uint32Array, prefix: number, value: number): void {
    if (!Number.isInteger(prefix) || prefix < 0 || prefix > this.#bits) throw new RangeError(`Prefix length ${prefix} is outside 0-${this.#bits}`);
    if (!Number.isInteger(value) || value < 0) throw new RangeError('A trie value must be a non-negative integer');
    this.#dirty = true;
    let node = 0;
    // Each pass moves to a node with a longer prefix, so this runs at most bits + 1 times.
    for (;;) {
      const nodeLen = this.#n[node + LEN]!;
      if (nodeLen === prefix) {
        if (this.#n[node + VALUE] === NONE) this.#n[node + VALUE] = value;
        return;
      }
      const slot = node + CHILD + bitAt(words, nodeLen);
      const c = this.#n[slot]!;
      if (c === NONE) {
        const leaf = this.#newNode(words, prefix, value);
        this.#n[slot] = leaf;
        return;
      }
      const cLen = this.#n[c + LEN]!;
      const m = this.#common(words, c, Math.min(prefix, cLen));
      if (m === cLen) {
        node = c;
        continue;
      }
      if (m === prefix) {
        // The new block is a prefix of the child's: it goes between the two.
        const mid = this.#newNode(words, prefix, value);
        this.#n[mid + CHILD + this.#bitOf(c, prefix)] = c;
        this.#n[slot] = mid;
        return;
      }
      // The two part ways at bit m: a branch node holds what they share.
      const branch = this.#newNode(words, m, NONE);
      const leaf = this.#newNode(words, prefix, value);
      this.#n[branch + CHILD + bitAt(words, m)] = leaf;
      this.#n[branch + CHILD + this.#bitOf(c, m)] = c;
      this.#n[slot] = branch;
      return;
    }
  }

  /** The value of the longest block containing the address in `words`, or -1. */
  longest(words: Uint32Array): number {
    if (this.#dirty) this.#buildRoot();
    let node = 0;
    let best = NONE;
    if (this.#rootNode !== null) {
      const top = words[0]! >>> (32 - ROOT_BITS);
      best = this.#rootBest![top]!;
      node = this.#rootNode[top]!;
      if (node === NONE) return best;
    }
    return this.#walk(words, node, best);
  }

  /** The plain walk from `node`, with `best` the value found above it. */
  #walk(words: Uint32Array, node: number, best: number): number {
    const n = this.#n;
    const bits = this.#bits;
    for (;;) {
      const l = n[node + LEN]!;
      for (let k = 0; 32 * k < l; k++) {
        const left = l - 32 * k;
        const mask = left >= 32 ? -1 : -1 << (32 - left);
        if (((words[k]! ^ n[node + PREFIX + k]!) & mask) !== 0) return best;
      }
      const v = n[node + VALUE]!;
      if (v !== NONE) best = v;
      if (l === bits) return best;
      const c = n[node + CHILD + ((words[l >>> 5]! >>> (31 - (l & 31))) & 1)]!;
      if (c === NONE) return best;
      node = c;
    }
  }

  /**
   * Fills the first level: for each top-16-bit value, the walk down to the first node longer
   * than 16 bits, keeping the best value met on the way. Bounded: 65,536 walks of at most 17
   * nodes each, once per change.
   */
  #buildRoot(): void {
    this.#dirty = false;
    if (this.nodes < ROOT_MIN_NODES) {
      this.#rootNode = null;
      this.#rootBest = null;
      return;
    }
    const size = 1 << ROOT_BITS;
    const rootNode = new Int32Array(size);
    const rootBest = new Int32Array(size);
    const n = this.#n;
    const key = new Uint32Array(4);
    for (let top = 0; top < size; top++) {
      key[0] = (top << (32 - ROOT_BITS)) >>> 0;
      let node = 0;
      let best = NONE;
      for (;;) {
        const l = n[node + LEN]!;
        if (l > ROOT_BITS) break;
        // Nodes at or above bit 16 are decided by the top bits alone.
        const mask = l === 0 ? 0 : -1 << (32 - l);
        if (((key[0]! ^ n[node + PREFIX]!) & mask) !== 0) {
          node = NONE;
          break;
        }
        const v = n[node + VALUE]!;
        if (v !== NONE) best = v;
        if (l === ROOT_BITS) {
          // The next node depends on bit 16, which the top bits do not hold: resume here.
          break;
        }
        node = n[node + CHILD + ((key[0]! >>> (31 - l)) & 1)]!;
        if (node === NONE) break;
      }
      rootNode[top] = node;
      rootBest[top] = best;
    }
    this.#rootNode = rootNode;
    this.#rootBest = rootBest;
  }

  #bitOf(node: number, i: number): number {
    return (this.#n[node + PREFIX + (i >>> 5)]! >>> (31 - (i & 31))) & 1;
  }

  /** How many leading bits, up to `limit`, `words` shares with the node's prefix. */
  #common(words: Uint32Array, node: number, limit: number): number {
    for (let k = 0; 32 * k < limit; k++) {
      const x = words[k]! ^ this.#n[node + PREFIX + k]!;
      if (x !== 0) return Math.min(limit, 32 * k + Math.clz32(x));
    }
    return limit;
  }

  #newNode(words: Uint32Array | null, len: number, value: number): number {
    if (this.#used + this.#stride > this.#n.length) {
      const grown = new Int32Array(this.#n.length * 2);
      grown.set(this.#n);
      this.#n = grown;
    }
    const node = this.#used;
    this.#used += this.#stride;
    const n = this.#n;
    n[node + LEN] = len;
    n[node + VALUE] = value;
    n[node + CHILD] = NONE;
    n[node + CHILD + 1] = NONE;
    for (let k = 0; k < this.#stride - PREFIX; k++) {
      const left = len - 32 * k;
      const mask = left <= 0 ? 0 : left >= 32 ? -1 : -1 << (32 - left);
      n[node + PREFIX + k] = words === null ? 0 : words[k]! & mask;
    }
    return node;
  }
}

function bitAt(words: Uint32Array, i: number): number {
  return (words[i >>> 5]! >>> (31 - (i & 31))) & 1;
}
