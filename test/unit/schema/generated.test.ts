// The documents generated from the one schema: the committed copies are what the generator
// writes (run `node scripts/gen-schema.ts` after changing src/schema/), and the config file's
// JSON Schema is a real one: Ajv (draft 2020-12) compiles it, accepts the shipped example and
// the Kubernetes manifests' configs, and refuses what egressd refuses for its shape.

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { describe, expect, it } from 'vitest';
import { GENERATED, render } from '../../../scripts/gen-schema.ts';
import { configJsonSchema } from '../../../src/schema/define/config-file.ts';
import { validateConfig } from '../../../src/config/schema.ts';
import { ajv } from '../../helpers/ajv.ts';

const root = join(import.meta.dirname, '..', '..', '..');
const read = (p: string): string => readFileSync(join(root, p), 'utf8');

describe('the generated documents', () => {
  it.each(GENERATED.map((g) => [g.path, g] as const))('%s is committed as generated (node scripts/gen-schema.ts)', (path, g) => {
    expect(read(path)).toBe(render(g.make()));
  });
});

describe("the config file's JSON Schema", () => {
  const validate = ajv().compile(configJsonSchema());

  it('accepts the shipped example, which egressd also accepts', () => {
    const doc = parse(read('docs/examples/config.yaml')) as unknown;
    expect(validate(doc), JSON.stringify(validate.errors)).toBe(true);
    expect(validateConfig(doc).ok).toBe(true);
  });

  it.each(['deploy/kubernetes/daemonset.yaml', 'deploy/kubernetes/sidecar.yaml'])("accepts the config in %s's ConfigMap", (file) => {
    const maps = parseAllDocuments(read(file))
      .map((d) => d.toJS() as { kind?: string; data?: Record<string, string> })
      .filter((d) => d.kind === 'ConfigMap' && d.data?.['config.yaml'] !== undefined);
    expect(maps.length).toBeGreaterThan(0);
    for (const m of maps) {
      const doc = parse(m.data!['config.yaml']!) as unknown;
      expect(validate(doc), JSON.stringify(validate.errors)).toBe(true);
      expect(validateConfig(doc).ok).toBe(true);
    }
  });

  it.each([
    ['an unknown key', { listne: {} }],
    ['a number out of range', { dns: { timeoutMs: 0 } }],
    ['a value outside an enum', { block: 'silently' }],
    ['a sandbox without sources', { sandboxes: [{ id: 'a' }] }],
    ['a bad sandbox id', { sandboxes: [{ id: '-a', sources: [] }] }],
    ['a limit that is not an integer', { limits: { sandbox: { burst: 1.5 } } }],
    ['a policy of no dialect', { defaultNetwork: { mode: 'block-all', networkBlockAll: true } }],
  ])('refuses %s, as egressd does', (_what, doc) => {
    expect(validate(doc)).toBe(false);
    expect(validateConfig(doc).ok).toBe(false);
  });
});

describe('the daemon never loads TypeBox', () => {
  // TypeBox is for writing the schema; the daemon reads its generated JSON (src/schema/schemas.ts):
  // loading TypeBox's 709 modules cost an idle daemon about 7 MB of RSS.
  const files = (dir: string): string[] =>
    readdirSync(join(root, dir), { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? files(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
    );
  it('no module of src/ outside src/schema/define/ imports typebox or the definitions', () => {
    const offenders = files('src')
      .filter((f) => !f.startsWith(join('src', 'schema', 'define')))
      .filter((f) => /from '(typebox[^']*|[^']*\/define\/[^']*)'/.test(read(f)));
    expect(offenders).toEqual([]);
  });
});
