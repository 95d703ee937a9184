// Collecting validation problems from hostile documents: every problem is reported at once, but
// the report itself is bounded, so a body of a million bad entries cannot become a million-line
// answer. Past the cap one last issue says how many were left out.

/** A problem found while validating a policy or config: the field path and the reason. */
export interface FieldIssue {
  /** Dotted path from the document root, e.g. `egress.allowed_cidrs[2]`. */
  readonly field: string;
  /** Sentence-case reason quoting the offending value, e.g. `Port "70000" is outside 1-65535`. */
  readonly reason: string;
}

/** A bound on one list in a policy body, far above the 100,000 entries compile is built for. */
export const MAX_LIST_ENTRIES = 1_000_000;

export class CappedIssues {
  readonly list: FieldIssue[] = [];
  dropped = 0;
  readonly #cap: number;
  /** The field the "N more problems" issue is filed under: the document root's name. */
  readonly #rootField: string;

  constructor(rootField = '', cap = 100) {
    this.#rootField = rootField;
    this.#cap = cap;
  }

  add(field: string, reason: string): void {
    if (this.list.length < this.#cap) this.list.push({ field, reason });
    else this.dropped++;
  }

  /** Adds another validator's issues under `prefix` (`network` + `allow[0]` → `network.allow[0]`). */
  addAll(prefix: string, issues: readonly FieldIssue[]): void {
    for (const i of issues) this.add(joinField(prefix, i.field), i.reason);
  }

  get ok(): boolean {
    return this.list.length === 0;
  }

  result(): FieldIssue[] {
    return this.dropped === 0 ? this.list : [...this.list, { field: this.#rootField, reason: `${this.dropped} more problems not shown` }];
  }
}

export function joinField(prefix: string, field: string): string {
  if (prefix === '') return field;
  if (field === '') return prefix;
  return field.startsWith('[') ? `${prefix}${field}` : `${prefix}.${field}`;
}
