// The import-direction rules (.oxlintrc.json, checked on every import by `npm run lint`) cover
// every folder of src/: a new folder without a rule could import anything unnoticed. Each rule
// names folders that exist, and every folder below the commands is forbidden to import them.

import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');
/** The top layer: the commands, which may import any folder (and which no folder imports). */
const TOP = new Set(['cli']);

interface Override {
  readonly files: readonly string[];
  readonly rules?: Record<string, unknown>;
}

const config = JSON.parse(readFileSync(join(ROOT, '.oxlintrc.json'), 'utf8')) as { overrides: Override[] };
const folders = readdirSync(join(ROOT, 'src'), { withFileTypes: true })
  .filter((e) => e.isDirectory())
  .map((e) => e.name)
  .sort();

/** The folders each src/ folder may not import, from its `no-restricted-imports` patterns. */
const forbidden = new Map<string, Set<string>>();
for (const o of config.overrides) {
  const m = /^src\/([a-z-]+)\/\*\*$/.exec(o.files[0] ?? '');
  const rule = o.rules?.['no-restricted-imports'] as [string, { patterns: { group: string[] }[] }] | undefined;
  if (!m || !rule) continue;
  const set = new Set<string>();
  for (const p of rule[1].patterns) for (const g of p.group) set.add(g.replace(/^(\*\*|(\.\.\/)+)\/?/, '').replace(/\/\*\*?$/, ''));
  forbidden.set(m[1]!, set);
}

describe('the import-boundary rules', () => {
  it.each(folders.filter((f) => !TOP.has(f)))('src/%s/ has one', (folder) => {
    expect(forbidden.get(folder)?.size ?? 0).toBeGreaterThan(0);
  });

  it('name only folders that exist, never the folder itself', () => {
    for (const [folder, set] of forbidden) {
      expect(set.has(folder), folder).toBe(false);
      for (const f of set) expect(folders, `src/${folder}/ forbids src/${f}/`).toContain(f);
    }
  });

  it('forbid the commands (cli/) to every folder below them', () => {
    for (const [folder, set] of forbidden) expect(set.has('cli'), folder).toBe(true);
  });
});
