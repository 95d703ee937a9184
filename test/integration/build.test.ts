// The addons (native/build) and the compiled JavaScript (dist/) follow their sources by content:
// `npm ci` builds them, and a `git pull` that changes native/*.c or src/ must not leave the old
// ones to be run by the next `npm test` or `npm start`. Each build runs here in a scratch checkout
// (--root): it builds, does nothing while the inputs' bytes are the same (even when their times
// moved, as a checkout moves them), and rebuilds when a byte changed. And the entry points ask
// for both builds: vitest's globalSetup and `npm start`.

import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync, existsSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');

function scratch(): string {
  const dir = mkdtempSync(join(tmpdir(), 'egressd-build-'));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs a build script against `root`; its stdout (empty when it had nothing to do). */
const build = (script: string, root: string): string => execFileSync(NODE, [join(ROOT, 'scripts', script), '--root', root], { encoding: 'utf8' });

/** Sets a file's times to now, keeping its bytes (what a checkout of the same content does). */
function touch(file: string): void {
  const now = new Date();
  utimesSync(file, now, now);
}

const addonSource = (version: number): string =>
  [
    '#include <node_api.h>',
    '#include "version.h"',
    'static napi_value init(napi_env env, napi_value exports) {',
    '  napi_value v;',
    `  napi_create_int32(env, VERSION + ${version}, &v);`,
    '  napi_set_named_property(env, exports, "version", v);',
    '  return exports;',
    '}',
    'NAPI_MODULE(NODE_GYP_MODULE_NAME, init)',
    '',
  ].join('\n');

describe.runIf(process.platform === 'linux')('the builds follow their sources by content', () => {
  it('build-native: builds, does nothing while the C sources and headers are the same, rebuilds when one changed', () => {
    const root = scratch();
    mkdirSync(join(root, 'native'));
    writeFileSync(join(root, 'native/demo.c'), addonSource(1));
    writeFileSync(join(root, 'native/version.h'), '#define VERSION 100\n');
    const addon = join(root, 'native/build/demo.node');
    const version = (): number => Number(execFileSync(NODE, ['-p', `require(${JSON.stringify(addon)}).version`], { encoding: 'utf8' }));

    expect(build('build-native.ts', root)).toContain('built');
    expect(version()).toBe(101);
    const first = statSync(addon);

    expect(build('build-native.ts', root)).toBe('');
    touch(join(root, 'native/demo.c'));
    touch(join(root, 'native/version.h'));
    expect(build('build-native.ts', root)).toBe('');
    expect(statSync(addon).ino).toBe(first.ino);

    writeFileSync(join(root, 'native/demo.c'), addonSource(2));
    expect(build('build-native.ts', root)).toContain('built');
    expect(version()).toBe(102);
    writeFileSync(join(root, 'native/version.h'), '#define VERSION 200\n');
    expect(build('build-native.ts', root)).toContain('built');
    expect(version()).toBe(202);

    rmSync(addon);
    expect(build('build-native.ts', root), 'an output that went missing').toContain('built');
    expect(version()).toBe(202);
  }, 120_000);

  it('build-js: compiles, does nothing while src/ is the same (and bin/egressd then runs dist/), recompiles when a byte changed', () => {
    const root = scratch();
    for (const f of ['tsconfig.json', 'tsconfig.build.json']) copyFileSync(join(ROOT, f), join(root, f));
    symlinkSync(join(ROOT, 'node_modules'), join(root, 'node_modules'));
    writeFileSync(join(root, 'package.json'), '{ "type": "module" }\n');
    mkdirSync(join(root, 'src'));
    writeFileSync(join(root, 'src/main.ts'), "export const version: number = 1;\nexport { gone } from './gone.ts';\n");
    writeFileSync(join(root, 'src/gone.ts'), 'export const gone = true;\n');
    writeFileSync(join(root, 'src/catalog.yaml'), 'a: 1\n');

    expect(build('build-js.ts', root)).toContain('compiled');
    expect(readFileSync(join(root, 'dist/main.js'), 'utf8')).toContain('version = 1');
    expect(readFileSync(join(root, 'dist/catalog.yaml'), 'utf8')).toBe('a: 1\n');

    expect(build('build-js.ts', root)).toBe('');
    touch(join(root, 'src/main.ts'));
    expect(statSync(join(root, 'src/main.ts')).mtimeMs).toBeGreaterThan(statSync(join(root, 'dist/.built')).mtimeMs);
    expect(build('build-js.ts', root)).toBe('');
    // bin/egressd's own test: dist/ runs when no file in src/ is newer than the stamp.
    expect(statSync(join(root, 'dist/.built')).mtimeMs).toBeGreaterThanOrEqual(statSync(join(root, 'src/main.ts')).mtimeMs);

    writeFileSync(join(root, 'src/main.ts'), 'export const version: number = 2;\n');
    rmSync(join(root, 'src/gone.ts'));
    expect(build('build-js.ts', root)).toContain('compiled');
    expect(readFileSync(join(root, 'dist/main.js'), 'utf8')).toContain('version = 2');
    expect(existsSync(join(root, 'dist/gone.js')), 'the output of a deleted source').toBe(false);

    // A type error mid-change: compiled as written (the typecheck stage is where it fails).
    writeFileSync(join(root, 'src/main.ts'), 'export const version: number = "3";\n');
    expect(build('build-js.ts', root)).toContain('compiled');
    expect(readFileSync(join(root, 'dist/main.js'), 'utf8')).toContain('version = "3"');
  }, 120_000);

  it('every test run and `npm start` ask for both builds first', () => {
    const config = readFileSync(join(ROOT, 'vitest.config.ts'), 'utf8');
    expect(config).toMatch(/globalSetup:\s*\['test\/global-setup\.ts'\]/);
    const setup = readFileSync(join(ROOT, 'test/global-setup.ts'), 'utf8');
    expect(setup).toContain("'scripts/build-native.ts', 'scripts/build-js.ts'");
    const start = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts['start']!;
    const steps = start.split('&&').map((s) => s.trim());
    expect(steps.slice(0, 2)).toEqual(['node scripts/build-native.ts', 'node scripts/build-js.ts']);
    expect(steps.at(-1)).toMatch(/dist\/main\.js serve$/);
  });
});
