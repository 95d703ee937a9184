// Per-rule hit counts: how many connections each rule of a compiled policy decided, so an
// operator can see dead rules and the rule behind a refusal. A rule's identity is its list and
// index with its text (`allowed_domains[3]`, `allowed_domains "*.pypi.org"`), stable for the
// life of the compiled policy; counts start at zero when a policy is set again (a new compiled
// policy) and are kept in memory only.
//
// Slots: one per listed entry — the allow side's domains, CIDRs, ports, then the deny side's —
// and one for the mode. Shared patterns joined to the allow side (the essential-services
// catalog) are counted per policy too, in a map, since most of them are never hit. The array
// is allocated on the first hit, so 10,000 idle sandboxes cost nothing.

import type { Side } from './model.ts';
import type { SideName, SharedDomains } from './compile.ts';
import type { Decision } from './decide.ts';

export type RuleList = 'domains' | 'cidrs' | 'ports';

/** One rule of a policy as the effective view lists it. */
export interface RuleHitsView {
  /** `allowed_domains[0]`, `denied_ports[1]`, `essential_services[12]`, `mode`. */
  readonly id: string;
  /** The rule as a verdict names it: `allowed_domains "pypi.org"`, `mode "block-all"`. */
  readonly rule: string;
  readonly hits: number;
}

export class RuleCounts {
  readonly #allow: Side;
  readonly #deny: Side;
  readonly #mode: string;
  readonly #joined: SharedDomains | null;
  readonly #modeSlot: number;
  #counts: Float64Array | null = null;
  /** The mode's decision, built once by decide() (policy/decide.ts); not a count. */
  modeDecision: Decision | null = null;
  #joinedCounts: Map<number, number> | null = null;

  constructor(allow: Side, deny: Side, mode: string, joined: SharedDomains | null) {
    this.#allow = allow;
    this.#deny = deny;
    this.#mode = mode;
    this.#joined = joined !== null && joined.patterns.length > 0 ? joined : null;
    this.#modeSlot = sideSize(allow) + sideSize(deny);
  }

  /** The slot of entry `i` of a list, or of the mode when `list` is null. -1 for a joined pattern's index past the side's own (see `add`). */
  slot(side: SideName, list: RuleList | null, i: number): number {
    if (list === null) return this.#modeSlot;
    const s = side === 'allowed' ? this.#allow : this.#deny;
    const base = side === 'allowed' ? 0 : sideSize(this.#allow);
    if (list === 'domains') return i < s.domains.length ? base + i : JOINED_BASE + (i - s.domains.length);
    if (list === 'cidrs') return base + s.domains.length + i;
    return base + s.domains.length + s.cidrs.length + i;
  }

  /** Counts one connection decided by the rule in `slot` (from `slot`). */
  add(slot: number): void {
    if (slot < 0) return;
    if (slot >= JOINED_BASE) {
      const m = (this.#joinedCounts ??= new Map());
      m.set(slot - JOINED_BASE, (m.get(slot - JOINED_BASE) ?? 0) + 1);
      return;
    }
    (this.#counts ??= new Float64Array(this.#modeSlot + 1))[slot]! += 1;
  }

  /**
   * Every rule with its count, in policy order then the mode; the joined catalog's patterns
   * only when hit (they are the operator's, and there are about 150 of them).
   */
  list(): RuleHitsView[] {
    const out: RuleHitsView[] = [];
    const c = this.#counts;
    let slot = 0;
    const push = (id: string, rule: string): void => {
      out.push({ id, rule, hits: c === null ? 0 : c[slot]! });
      slot++;
    };
    for (const [name, side] of [
      ['allowed', this.#allow],
      ['denied', this.#deny],
    ] as const) {
      side.domains.forEach((d, i) => push(`${name}_domains[${i}]`, `${name}_domains ${JSON.stringify(d)}`));
      side.cidrs.forEach((d, i) => push(`${name}_cidrs[${i}]`, `${name}_cidrs ${JSON.stringify(d)}`));
      side.ports.forEach((p, i) => push(`${name}_ports[${i}]`, `${name}_ports "${p.from === p.to ? p.from : `${p.from}-${p.to}`}"`));
    }
    if (this.#joined !== null && this.#joinedCounts !== null) {
      for (const [i, n] of [...this.#joinedCounts].sort((a, b) => a[0] - b[0])) {
        out.push({ id: `essential_services[${i}]`, rule: `allowed_domains ${JSON.stringify(this.#joined.patterns[i])}`, hits: n });
      }
    }
    push('mode', `mode "${this.#mode}"`);
    return out;
  }
}

/** Joined patterns' slots start here (far past any policy's own entries). */
const JOINED_BASE = 2 ** 40;

function sideSize(s: Side): number {
  return s.domains.length + s.cidrs.length + s.ports.length;
}
