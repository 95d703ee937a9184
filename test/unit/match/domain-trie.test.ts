import { describe, expect, it } from 'vitest';
import { DomainTrie } from '../../../src/match/domain-trie.ts';

const build = (patterns: string[]): DomainTrie => {
  const t = new DomainTrie();
  patterns.forEach((p, i) => t.insert(p, i));
  return t;
};

describe('DomainTrie', () => {
  it('matches an exact pattern on that name only', () => {
    const t = build(['example.com']);
    expect(t.match('example.com')).toBe(0);
    expect(t.match('www.example.com')).toBe(-1);
    expect(t.match('com')).toBe(-1);
    expect(t.match('notexample.com')).toBe(-1);
    expect(t.match('example.com.evil.net')).toBe(-1);
  });

  it('matches *.x on every name below x at any depth, never x itself', () => {
    const t = build(['*.example.com']);
    expect(t.match('a.example.com')).toBe(0);
    expect(t.match('a.b.c.example.com')).toBe(0);
    expect(t.match('example.com')).toBe(-1);
    expect(t.match('badexample.com')).toBe(-1);
  });

  it('matches * on every name', () => {
    const t = build(['*']);
    expect(t.match('example.com')).toBe(0);
    expect(t.match('localhost')).toBe(0);
  });

  it('prefers the exact name, then the deepest wildcard, then *', () => {
    const t = build(['*', '*.example.com', '*.api.example.com', 'v1.api.example.com']);
    expect(t.match('v1.api.example.com')).toBe(3);
    expect(t.match('v2.api.example.com')).toBe(2);
    expect(t.match('www.example.com')).toBe(1);
    expect(t.match('api.example.com')).toBe(1);
    expect(t.match('other.org')).toBe(0);
  });

  it('holds a name and its wildcard side by side', () => {
    const t = build(['github.com', '*.github.com']);
    expect(t.match('github.com')).toBe(0);
    expect(t.match('api.github.com')).toBe(1);
  });

  it('ranks the pattern it matches: the exact name above the deepest wildcard above *', () => {
    const t = build(['*', '*.com', '*.example.com', 'api.example.com']);
    expect(t.specificity('api.example.com')).toBe(Infinity);
    expect(t.specificity('www.example.com')).toBe(2);
    expect(t.specificity('a.b.example.com')).toBe(2);
    expect(t.specificity('other.com')).toBe(1);
    expect(t.specificity('example.org')).toBe(0);
    expect(build(['*.example.com']).specificity('example.org')).toBe(-1);
    expect(build(['*.example.com']).specificity('example.com')).toBe(-1);
  });

  it('keeps the first value of a pattern inserted twice', () => {
    const t = build(['a.com', 'a.com', '*.a.com', '*.a.com']);
    expect(t.match('a.com')).toBe(0);
    expect(t.match('x.a.com')).toBe(2);
  });

  it('tells apart labels whose hashes collide', () => {
    const t = new DomainTrie(() => 7);
    ['a.com', '*.b.com', 'c.org', 'a.b.com'].forEach((p, i) => t.insert(p, i));
    expect(t.match('a.com')).toBe(0);
    expect(t.match('x.b.com')).toBe(1);
    expect(t.match('a.b.com')).toBe(3);
    expect(t.match('c.org')).toBe(2);
    expect(t.match('b.com')).toBe(-1);
    expect(t.match('c.com')).toBe(-1);
    expect(t.match('a.org')).toBe(-1);
  });

  it('refuses a pattern that is not normalized', () => {
    expect(() => new DomainTrie().insert('a.*.com', 0)).toThrow(TypeError);
    expect(() => new DomainTrie().insert('*.', 0)).toThrow(TypeError);
  });
});
