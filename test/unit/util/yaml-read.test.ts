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

// YAML 1.1 merge keys (https://yaml.org/type/merge.html), which operators' files and Kubernetes-
// adjacent tooling use to share a block: read as the fields written out, each field placed where
// its value is written.
describe('readYaml: merge keys', () => {
  const base = 'base: &b\n  mode: block-all\n  egress: {allowed_ports: [443]}\n';

  it('reads the merged fields as if written out; a key written beside the merge wins, before or after it', () => {
    for (const text of [`${base}n:\n  <<: *b\n  mode: allow-all\n`, `${base}n:\n  mode: allow-all\n  <<: *b\n`]) {
      const r = readYaml(text);
      expect(r.ok, text).toBe(true);
      if (r.ok) expect((r.value as { n: unknown }).n, text).toEqual({ mode: 'allow-all', egress: { allowed_ports: [443] } });
    }
  });

  it('merges a list of maps, the earlier one winning, and an inline map', () => {
    const r = readYaml('a: &a {x: 1}\nb: &b {x: 2, y: 3}\nn:\n  <<: [*a, *b]\nm:\n  <<: {z: 4}\n');
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.value).toMatchObject({ n: { x: 1, y: 3 }, m: { z: 4 } });
  });

  it('places a merged field where its value is written, in the anchored map', () => {
    const r = readYaml(`${base}n:\n  <<: *b\n  mode: allow-all\n`);
    expect(r.ok).toBe(true);
    if (r.ok) {
      expect(r.locate('n.egress.allowed_ports[0]')).toEqual({ line: 3, column: 28 });
      expect(r.locate('n.mode')).toEqual({ line: 6, column: 3 });
    }
  });

  it('a quoted "<<" is a key like any other', () => {
    const r = readYaml(`${base}n:\n  "<<": *b\n`);
    expect(r.ok).toBe(true);
    if (r.ok) expect(Object.keys((r.value as { n: object }).n)).toEqual(['<<']);
  });

  it('refuses two merge keys in one map, at the second, saying to give one with a list', () => {
    const r = readYaml('a: &a {x: 1}\nb: &b {x: 2}\nn:\n  <<: *a\n  <<: *b\n');
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.position).toEqual({ line: 5, column: 3 });
      expect(r.reason).toMatch(/more than one merge key .*<<: \[\*a, \*b\]/);
    }
  });

  it.each([
    ['a number', 'n:\n  <<: 1\n', { line: 2, column: 7 }],
    ['a list holding a string', 'n:\n  <<: [x]\n', { line: 2, column: 8 }],
    ['an alias to a list', 'a: &a [1]\nn:\n  <<: *a\n', { line: 3, column: 7 }],
  ])('refuses a merge of %s, at it, naming what a merge takes', (_what, text, where) => {
    const r = readYaml(text);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.position).toEqual(where);
      expect(r.reason).toMatch(/A merge key \(<<\) takes a map, an alias to one, or a list of them/);
    }
  });
});

// Text declared to be JSON is JSON (RFC 8259): the YAML reader takes a superset, and a `.json`
// file it read could mean what no JSON reader would take it to mean.
describe('readYaml with json: true', () => {
  it.each([
    ['a value left out', '{"a": }', { line: 1, column: 7 }],
    ['a trailing comma', '{"a": 1,\n}', { line: 2, column: 1 }],
    ['an unquoted key', '{a: 1}', { line: 1, column: 2 }],
    ['single quotes', "{'a': 1}", { line: 1, column: 2 }],
    ['a comment', '{"a": 1} # no', { line: 1, column: 10 }],
    ['a hexadecimal number', '{"a": 0x1bb}', { line: 1, column: 8 }],
    ['a YAML block map', 'a: 1\n', { line: 1, column: 1 }],
    ['a tag', '{"a": !!str 1}', { line: 1, column: 7 }],
  ])('refuses %s at its line and column, which YAML takes', (_what, text, where) => {
    expect(readYaml(text).ok).toBe(true);
    const r = readYaml(text, { json: true });
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.syntax).toBe('JSON');
      expect(r.code).toBe('SYNTAX');
      expect(r.position).toEqual(where);
      expect(r.reason).toMatch(/^Not valid JSON: /);
    }
  });

  it('refuses a key given twice, at the second, naming its path', () => {
    const r = readYaml('{"a": {"b": 1,\n  "b": 2}}', { json: true });
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.code).toBe('DUPLICATE_KEY');
      expect(r.position).toEqual({ line: 2, column: 3 });
      expect(r.reason).toMatch(/"a\.b" is given more than once/);
    }
  });

  it('reads JSON as JSON.parse does, "<<" a key like any other, and places fields', () => {
    const text = '{"a": {"x": 1},\n "<<": {"y": 2}, "n": 1e2}';
    const r = readYaml(`\ufeff${text}`, { json: true });
    expect(r.ok).toBe(true);
    if (r.ok) {
      expect(r.value).toEqual(JSON.parse(text));
      expect(r.locate('<<')).toEqual({ line: 2, column: 2 });
      expect(r.locate('a.x')).toEqual({ line: 1, column: 8 });
    }
  });
});

// What the yaml package reads with only a warning, or reads into what no field takes, is a
// refusal at its place: a tag egressd does not resolve was read as its bare text
// (`token: !secret admin` was the token "admin"), and YAML 1.1's types as objects.
describe('readYaml: tags', () => {
  it.each([
    ['a custom tag', 'token: !secret admin\n', '!secret'],
    ['a custom tag on a list', 'sources: !include [a.yaml]\n', '!include'],
    ['YAML 1.1 binary', 'x: !!binary aGVsbG8=\n', '!!binary'],
    ['YAML 1.1 set', 'x: !!set {a, b}\n', '!!set'],
    ['YAML 1.1 timestamp', 'x: !!timestamp 2001-01-01\n', '!!timestamp'],
    ['a core tag on a value it does not fit', 'x: !!int abc\n', '!!int'],
  ])('refuses %s at the tag, naming it', (_what, text, tag) => {
    const r = readYaml(text);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.code).toBe('TAG_RESOLVE_FAILED');
      expect(r.position).toEqual({ line: 1, column: text.indexOf('!') + 1 });
      expect(r.reason).toContain(tag);
      expect(r.reason).toMatch(/!!str, !!int, !!float, !!bool, !!null, !!map and !!seq/);
    }
  });

  it('reads the core schema tags', () => {
    const r = readYaml('a: !!str 443\nb: !!int "443"\nc: !!bool true\nd: !!null ""\ne: !!seq [1]\nf: !!map {g: 1}\nh: !!float 1.5\n');
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.value).toEqual({ a: '443', b: 443, c: true, d: null, e: [1], f: { g: 1 }, h: 1.5 });
  });

  it('refuses an unknown directive or YAML version the yaml package only warns of', () => {
    for (const text of ['%YAML 1.3\n---\na: 1\n', '%FOO bar\n---\na: 1\n']) {
      const r = readYaml(text);
      expect(r.ok, text).toBe(false);
      if (!r.ok) expect(r.position, text).toMatchObject({ line: 1 });
    }
  });
});

describe('readYaml: keys', () => {
  it('refuses a key that is a list or a map, at it', () => {
    for (const text of ['? [a]\n: 1\n', '{[a]: 1}\n', '? {a: 1}\n: 1\n']) {
      const r = readYaml(text);
      expect(r.ok, text).toBe(false);
      if (!r.ok) {
        expect(r.code, text).toBe('NON_STRING_KEY');
        expect(r.reason, text).toMatch(/A key must be a string, not a list or a map/);
        expect(r.position?.line, text).toBe(1);
      }
    }
  });

  it('refuses two keys that are one key once read, as a duplicate: 1 and "1", true and "true"', () => {
    for (const text of ['1: a\n"1": b\n', 'true: a\n"true": b\n', 'null: a\n"null": b\n']) {
      const r = readYaml(text);
      expect(r.ok, text).toBe(false);
      if (!r.ok) expect([r.code, r.position], text).toEqual(['DUPLICATE_KEY', { line: 2, column: 1 }]);
    }
  });

  it('reads a key that looks like a number, a boolean or null as its text', () => {
    const r = readYaml('1: a\ntrue: b\nnull: c\non: d\n0x1b: e\n');
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.value).toEqual({ '1': 'a', true: 'b', null: 'c', on: 'd', '0x1b': 'e' });
  });
});

// YAML 1.1 (PyYAML, go-yaml v2, Ruby's Psych: the tools that may write or check the same file)
// reads a leading zero as octal, 0443 as 291; YAML 1.2 as decimal, 443. A port or a limit whose
// value depends on the reader is refused; 0o (1.2 octal) and a file that declares %YAML 1.1 say
// which they mean.
describe('readYaml: integers with a leading zero', () => {
  it.each([
    ['0443', 443, 291],
    ['-010', -10, -8],
    ['+0777', 777, 511],
  ])('refuses %s (%d in YAML 1.2, %d in 1.1) at it', (n, v12, v11) => {
    const r = readYaml(`ports: [1, ${n}]\n`);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.code).toBe('AMBIGUOUS_NUMBER');
      expect(r.position).toEqual({ line: 1, column: 12 });
      expect(r.reason).toContain(`${n} is ${v12} in YAML 1.2 but ${v11} in YAML 1.1`);
    }
  });

  it('reads 0, 0o777, 0x1bb, 1e3, a quoted "0443" and a leading zero under %YAML 1.1', () => {
    const r = readYaml('a: [0, -0, 0o777, 0x1bb, 1e3, 0.5, "0443"]\n');
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.value).toEqual({ a: [0, -0, 511, 443, 1000, 0.5, '0443'] });
    const v11 = readYaml('%YAML 1.1\n---\na: 0443\n');
    expect(v11.ok).toBe(true);
    if (v11.ok) expect(v11.value).toEqual({ a: 291 });
  });
});

// The yaml package's maxAliasCount (100) counts uses of an anchor, not what they expand to: a
// config with 100 sandboxes sharing one network anchor was refused as "a resource exhaustion
// attack", while the bomb it guards against grows exponentially. The expanded size is bounded.
describe('readYaml: aliases', () => {
  it('reads 1,000 uses of one anchor, by alias or merge', () => {
    const uses = Array.from({ length: 1000 }, (_, i) => `  - {id: s${i}, a: *net, m: {<<: *net}}`).join('\n');
    const r = readYaml(`base: &net {mode: block-all, egress: {allowed_ports: [443]}}\nlist:\n${uses}\n`);
    expect(r.ok).toBe(true);
    if (r.ok)
      expect((r.value as { list: unknown[] }).list[999]).toEqual({
        id: 's999',
        a: { mode: 'block-all', egress: { allowed_ports: [443] } },
        m: { mode: 'block-all', egress: { allowed_ports: [443] } },
      });
  });

  it('refuses a billion laughs, at its first alias, before building anything', () => {
    const lines = ['a: &a [x, x, x, x, x, x, x, x, x, x]'];
    for (let i = 1; i < 9; i++)
      lines.push(
        `${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${Array(10)
          .fill(`*${String.fromCharCode(96 + i)}`)
          .join(', ')}]`,
      );
    const r = readYaml(`${lines.join('\n')}\n`);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.code).toBe('ALIAS');
      expect(r.position).toEqual({ line: 2, column: 8 });
      expect(r.reason).toMatch(/^Aliases expand the document past 400000 values \(an alias bomb\)/);
    }
  });

  it('refuses an alias inside the node it names, at the alias', () => {
    for (const text of ['a: &a [1, *a]\n', 'n: &n\n  mode: x\n  <<: *n\n']) {
      const r = readYaml(text);
      expect(r.ok, text).toBe(false);
      if (!r.ok) {
        expect(r.reason, text).toMatch(/inside the node it names/);
        expect(r.position, text).toEqual(text.startsWith('a') ? { line: 1, column: 11 } : { line: 3, column: 7 });
      }
    }
  });
});

describe('readYaml: nesting', () => {
  it('refuses lists nested past what the reader takes, in words about the file, not its call stack', () => {
    const r = readYaml(`a: ${'['.repeat(100_000)}${']'.repeat(100_000)}\n`);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.code).toBe('RESOURCE_EXHAUSTION');
      expect(r.reason).toMatch(/^Lists and maps nest here deeper than egressd reads/);
      expect(r.position?.line).toBe(1);
    }
  });
});
