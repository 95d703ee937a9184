import { describe, expect, it } from 'vitest';
import { duplicateKeyPath } from '../../../src/util/json-duplicate-key.ts';

describe('duplicateKeyPath', () => {
  it.each([
    ['{"a":1,"a":2}', 'a'],
    ['{"a":{"b":[1,{"c":1,"c":2}]}}', 'a.b[1].c'],
    ['[0,[1,2],{"x":1,"x":1}]', '[2].x'],
    // Decoded before comparing: an escape spells the same key.
    ['{"mode":"allow-all","m\\u006fde":"block-all"}', 'mode'],
    ['{"a\\"b":1,"a\\"b":2}', 'a"b'],
    // Keys past a nested object's end belong to the outer one again.
    ['{"n":{"k":1},"k":2,"n":3}', 'n'],
  ])('finds the key in %s at %s', (text, path) => {
    JSON.parse(text);
    expect(duplicateKeyPath(text)).toBe(path);
  });

  it.each([
    '{"a":1,"b":{"a":1}}',
    '{"a":"a","b":["a","a"]}',
    // Braces, commas, colons and quotes inside strings are text, not structure.
    '{"a":"{\\"a\\":1,","b":"\\\\","c":"[,]"}',
    ' { "a" : 1 , "b" : [ { "a" : 1 } , { "a" : 2 } ] } ',
    '"{\\"a\\":1,\\"a\\":2}"',
    '[]',
    '{}',
    '1',
  ])('finds none in %s', (text) => {
    JSON.parse(text);
    expect(duplicateKeyPath(text)).toBeNull();
  });
});
