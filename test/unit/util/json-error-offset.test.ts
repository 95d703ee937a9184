import { describe, expect, it } from 'vitest';
import { jsonErrorOffset } from '../../../src/util/json-error-offset.ts';

/** V8's position for the error, when its message gives one. */
function v8Position(text: string): number | null | 'valid' {
  try {
    JSON.parse(text);
    return 'valid';
  } catch (e) {
    const at = /at position (\d+)/.exec((e as Error).message);
    return at === null ? null : Number(at[1]);
  }
}

const BROKEN = [
  '',
  ' ',
  '{',
  '[1,2',
  '{"a" 1}',
  '{"a":1}}',
  '{"a": x}',
  '{"a": 1,\n "b": x, "c": 3}',
  '[1, 2,]',
  '{"a": 1,}',
  '{,}',
  '[01]',
  '[1.]',
  '[-]',
  '[1e]',
  '[tru]',
  '[nul',
  '["a\\x"]',
  '["a\\u12"]',
  '["a\nb"]',
  '"unterminated',
  '{"a": {"b": [1, {"c": ]}}',
  "{'a': 1}",
  '\ufeff{}',
  '{"a":1} x',
  '[1 2]',
];
const VALID = [
  '0',
  '-0.5e+3',
  '"\\u00e9\\n"',
  '[]',
  '{}',
  ' {"a": [1, {"b": null}, true, false, "x"]} ',
  '[[[[[[]]]]]]',
  `${'['.repeat(10_000)}${']'.repeat(10_000)}`,
];

describe('jsonErrorOffset: where a text stops being JSON', () => {
  it.each(VALID)('is null for JSON: %j', (text) => {
    expect(jsonErrorOffset(text)).toBeNull();
  });

  it.each(BROKEN)('agrees with V8 on what is JSON, and on where it is not when V8 says: %j', (text) => {
    const v8 = v8Position(text);
    expect(v8).not.toBe('valid');
    const offset = jsonErrorOffset(text);
    expect(offset).not.toBeNull();
    if (v8 !== null) expect(offset).toBe(v8);
  });

  it('names the unexpected token V8 gives no position for', () => {
    expect(jsonErrorOffset('{"a": x}')).toBe(6);
    expect(jsonErrorOffset('{"a": 1,\n "b": x, "c": 3}')).toBe(15);
    expect(jsonErrorOffset("{'a': 1}")).toBe(1);
    expect(jsonErrorOffset('\ufeff{}')).toBe(0);
    expect(jsonErrorOffset('[tru]')).toBe(4);
  });

  it('is the end of the text for a text that ends early', () => {
    for (const text of ['', '{', '[1,', '{"a":', '"abc', '[nul']) expect(jsonErrorOffset(text), text).toBe(text.length);
  });
});
