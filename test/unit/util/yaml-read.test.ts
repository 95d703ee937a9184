import { describe, expect, it } from 'vitest';
import { readYaml } from '../../../src/util/yaml-read.ts';

/** A byte order mark is not content (YAML 1.2 §5.2): an editor shows no column for it. */
const BOM = '\ufeff';

describe('readYaml: positions in a file that starts with a byte order mark', () => {
  it.each([
    ['a duplicate key on line 1', '{"a": 1, "a": 2}\n', { line: 1, column: 10 }],
    ['an alias with no anchor on line 1', 'a: *x\n', { line: 1, column: 4 }],
    ['a syntax error on line 2', 'a: 1\nb: [\n', { line: 3, column: 1 }],
  ])('%s is where it is without the mark', (_what, text, where) => {
    for (const t of [text, BOM + text]) {
      const r = readYaml(t);
      expect(r.ok, JSON.stringify(t)).toBe(false);
      if (!r.ok) expect(r.position, JSON.stringify(t)).toEqual(where);
    }
  });

  it('a field on line 1 is at column 1, not 2', () => {
    for (const t of ['bogus: 1\nother: 2\n', `${BOM}bogus: 1\nother: 2\n`]) {
      const r = readYaml(t);
      expect(r.ok).toBe(true);
      if (r.ok) {
        expect(r.locate('bogus'), JSON.stringify(t)).toEqual({ line: 1, column: 1 });
        expect(r.locate('other'), JSON.stringify(t)).toEqual({ line: 2, column: 1 });
      }
    }
  });
});

describe('readYaml: a file with more than one document', () => {
  it("says what in the file to change, at the second document, not the yaml package's advice to its caller", () => {
    const r = readYaml('sandboxes: []\n---\nsandboxes: []\n');
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.code).toBe('MULTIPLE_DOCS');
      expect(r.position).toEqual({ line: 2, column: 1 });
      expect(r.reason).toMatch(/more than one YAML document/);
      expect(r.reason).not.toMatch(/parseAllDocuments/);
    }
  });
});
