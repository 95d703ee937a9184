// Compiles src/ to JavaScript in dist/ (tsconfig.build.json), so the daemon starts without
// type-stripping every module on every start (issue 12: ≈14 MB of idle RSS and start-up time).
// Runs from the package's `install` script (npm ci), before `npm start` and before the proxy
// benchmark; does nothing when dist/ is newer than every file in src/. Files that are not
// TypeScript (the catalog's YAML) are copied beside the output. Where TypeScript is not
// installed (npm ci --omit=dev), it says so and stops: bin/egressd then runs src/ directly.
//
//   node scripts/build-js.ts [--force]

import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'src');
const dist = join(root, 'dist');
const stamp = join(dist, '.built');
const tsc = join(root, 'node_modules', '.bin', 'tsc');

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)]));
}

const sources = files(src);
const newest = Math.max(
  ...sources.map((f) => statSync(f).mtimeMs),
  statSync(join(root, 'tsconfig.json')).mtimeMs,
  statSync(join(root, 'tsconfig.build.json')).mtimeMs,
);
if (!process.argv.includes('--force') && existsSync(stamp) && statSync(stamp).mtimeMs >= newest) process.exit(0);
if (!existsSync(tsc)) {
  process.stdout.write('build-js: TypeScript is not installed (production-only install); bin/egressd runs src/ directly\n');
  process.exit(0);
}
rmSync(dist, { recursive: true, force: true });
execFileSync(tsc, ['-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit', cwd: root });
for (const f of sources.filter((x) => !x.endsWith('.ts'))) {
  const to = join(dist, relative(src, f));
  mkdirSync(dirname(to), { recursive: true });
  copyFileSync(f, to);
}
writeFileSync(stamp, `${new Date().toISOString()}\n`);
process.stdout.write(`build-js: compiled ${sources.filter((x) => x.endsWith('.ts')).length} modules to ${dist}\n`);
