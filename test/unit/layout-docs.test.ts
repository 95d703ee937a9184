// README's connection diagram and layout, and CONTRIBUTING's walk of one connection, name files
// and folders by path: each must exist, so a rename or a move that forgets the docs fails here.

import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');
const read = (file: string): string => readFileSync(join(ROOT, file), 'utf8');
/** `src/net/dial.ts`, `native/`, or a diagram's short form (`net/dial` for src/net/dial.ts). */
const exists = (path: string): boolean => [path, `src/${path}`, `src/${path}.ts`].some((p) => existsSync(join(ROOT, p)));

/** The fenced block after a heading. */
function blockAfter(md: string, heading: string): string {
  const at = md.indexOf(heading);
  expect(at, heading).toBeGreaterThanOrEqual(0);
  return /```[a-z]*\n([\s\S]*?)```/.exec(md.slice(at))![1]!;
}

describe('the docs name paths that exist', () => {
  it('CONTRIBUTING.md: every path in backquotes', () => {
    const paths = [...read('CONTRIBUTING.md').matchAll(/`((?:src|native|scripts|test|docs|bench)\/[A-Za-z0-9_./-]*)`/g)].map((m) => m[1]!);
    expect(paths.length).toBeGreaterThan(30);
    for (const p of paths) expect(exists(p), p).toBe(true);
  });

  // The helpers bullet is read by a contributor from a clean clone: each thing it names in
  // backquotes is a helper file there (`curl.ts`) or a function one of them exports (`curlIn`),
  // never a tool of some workplace that the repository does not hold.
  it("CONTRIBUTING.md: the shared test helpers' files and functions", () => {
    const md = read('CONTRIBUTING.md');
    const bullet = /- \*\*One copy of each helper\.\*\*[\s\S]*?(?=\n- \*\*)/.exec(md)![0].split('Tests share their scaffolding')[1]!;
    const named = [...bullet.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
    const files = named.filter((n) => /\.(ts|py)$/.test(n));
    expect(files.length).toBeGreaterThan(5);
    for (const f of files) expect(existsSync(join(ROOT, 'test/helpers', f)), f).toBe(true);
    const exported = files.map((f) => read(join('test/helpers', f))).join('\n');
    for (const n of named.filter((x) => !files.includes(x) && x !== 'test/helpers/')) {
      // An exported function, or a method of an exported interface (DaemonProcess.outcome).
      const declared = new RegExp(`(?:export (?:async )?(?:function|const|class) ${n}\\b|^\\s+${n}\\()`, 'm');
      expect(declared.test(exported), `${n}: neither a helper file nor one of their exports`).toBe(true);
    }
  });

  it("README.md: the connection diagram's files and the layout's folders", () => {
    const md = read('README.md');
    const diagram = [
      ...blockAfter(md, '## How one connection flows').matchAll(
        /(?<![\w/])((?:native|net|peek|policy|control|limits|observability|dns|match)\/[A-Za-z0-9_.-]*)/g,
      ),
    ].map((m) => m[1]!);
    expect(diagram.length).toBeGreaterThan(10);
    for (const p of diagram) expect(exists(p), p).toBe(true);
    const layout = [...blockAfter(md, '## Repository layout').matchAll(/^([a-z][\w./-]*)\s/gm)].map((m) => m[1]!);
    expect(layout.length).toBeGreaterThan(10);
    for (const p of layout) expect(exists(p), p).toBe(true);
  });
});
