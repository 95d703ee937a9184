// Domain patterns searched label by label from the right (a reverse-label trie): matching a
// name costs one Map lookup per label it shares with some pattern, whatever the number of
// patterns, and stops at the first label no pattern has.
//
// Children are keyed by a hash of the label computed in place, so a lookup slices no strings
// and allocates nothing (bench/decide.ts measured this at a quarter of the time of
// Map<string, Node> with a slice per label). Two labels with the same hash under one parent
// go to a second, string-keyed Map (V8 seeds its string hashes), so crafted collisions cost
// one extra lookup, never a scan. The hash is seeded per process for the same reason.

const NONE = -1;

interface Node {
  readonly label: string;
  /** The value of the pattern that is exactly this name. */
  exact: number;
  /** The value of `*.` this name: every name strictly below it. */
  wild: number;
  kids: Map<number, Node> | null;
  /** Children whose label hash is already taken by another label. */
  collided: Map<string, Node> | null;
}

const newNode = (label: string): Node => ({ label, exact: NONE, wild: NONE, kids: null, collided: null });

const SEED = (Math.random() * 0x100000000) | 0;

export type LabelHash = (s: string, start: number, end: number) => number;

/** FNV-1a over `s[start, end)`, from a per-process basis. */
function labelHash(s: string, start: number, end: number): number {
  let h = 0x811c9dc5 ^ SEED;
  for (let i = start; i < end; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h | 0;
}

function sameLabel(label: string, s: string, start: number, end: number): boolean {
  if (label.length !== end - start) return false;
  for (let i = 0; i < label.length; i++) if (label.charCodeAt(i) !== s.charCodeAt(start + i)) return false;
  return true;
}

function child(node: Node, hash: LabelHash, s: string, start: number, end: number): Node | undefined {
  const c = node.kids?.get(hash(s, start, end));
  if (c === undefined) return undefined;
  if (sameLabel(c.label, s, start, end)) return c;
  return node.collided?.get(s.slice(start, end));
}

export class DomainTrie {
  readonly #root: Node = newNode('');
  /** The value of the pattern `*`, which matches every name. */
  #any = NONE;
  #size = 0;
  readonly #hash: LabelHash;

  /** `hash` is for tests that need labels to collide; production uses the seeded FNV-1a. */
  constructor(hash: LabelHash = labelHash) {
    this.#hash = hash;
  }

  get size(): number {
    return this.#size;
  }

  /**
   * Adds a normalized pattern (names.ts normalizePattern): `name`, `*.name` or `*`. A pattern
   * added twice keeps its first value, so the first rule listed is the one reported.
   */
  insert(pattern: string, value: number): void {
    if (value < 0) throw new RangeError('A trie value must be non-negative');
    this.#size++;
    if (pattern === '*') {
      if (this.#any === NONE) this.#any = value;
      return;
    }
    const wildcard = pattern.startsWith('*.');
    const name = wildcard ? pattern.slice(2) : pattern;
    if (name.length === 0 || name.includes('*')) throw new TypeError(`Pattern "${pattern}" is not normalized`);
    let node = this.#root;
    let end = name.length;
    // One pass per label; a normalized name has at most 127.
    while (end > 0) {
      const dot = name.lastIndexOf('.', end - 1);
      let next = child(node, this.#hash, name, dot + 1, end);
      if (next === undefined) {
        next = newNode(name.slice(dot + 1, end));
        const h = this.#hash(name, dot + 1, end);
        node.kids ??= new Map();
        if (node.kids.has(h)) (node.collided ??= new Map()).set(next.label, next);
        else node.kids.set(h, next);
      }
      node = next;
      end = dot < 0 ? 0 : dot;
    }
    if (wildcard) {
      if (node.wild === NONE) node.wild = value;
    } else if (node.exact === NONE) {
      node.exact = value;
    }
  }

  /**
   * The value of the most specific pattern matching a normalized name — the exact name, else
   * the deepest `*.` above it, else `*` — or -1.
   */
  match(name: string): number {
    let node = this.#root;
    let best = NONE;
    let end = name.length;
    while (end > 0) {
      const dot = name.lastIndexOf('.', end - 1);
      const next = child(node, this.#hash, name, dot + 1, end);
      if (next === undefined) break;
      if (dot < 0) {
        if (next.exact !== NONE) return next.exact;
        break;
      }
      if (next.wild !== NONE) best = next.wild;
      node = next;
      end = dot;
    }
    return best !== NONE ? best : this.#any;
  }

  /**
   * How specific the pattern `match(name)` finds is, to choose between two tries that both
   * match (a policy's own patterns and a shared catalog, compile.ts): Infinity for the exact
   * name, the number of labels below `*.` for a wildcard (`*.b.c` is 2), 0 for `*`, -1 for no
   * match.
   */
  specificity(name: string): number {
    let node = this.#root;
    let best = this.#any === NONE ? -1 : 0;
    let depth = 0;
    let end = name.length;
    while (end > 0) {
      const dot = name.lastIndexOf('.', end - 1);
      const next = child(node, this.#hash, name, dot + 1, end);
      if (next === undefined) break;
      depth++;
      if (dot < 0) {
        if (next.exact !== NONE) return Infinity;
        break;
      }
      if (next.wild !== NONE) best = depth;
      node = next;
      end = dot;
    }
    return best;
  }
}
