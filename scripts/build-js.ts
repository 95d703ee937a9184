// Compiles src/ to JavaScript in dist/ (tsconfig.build.json), so the daemon starts without
// type-stripping every module on every start (issue 12: ≈14 MB of idle RSS and start-up time).
// Runs from the package's `install` script (npm ci), and before `npm start`, the test runs
// (test/global-setup.ts) and the proxy benchmark, where it does nothing while dist/.built records
// the hash of today's inputs (scripts/build-stamp.ts): every file in src/, both tsconfig files
// and this script. So a `git pull` that changes src/ recompiles before the next test or start.
// The new tree is compiled beside dist/ and swapped in whole. Files that are not TypeScript (the
// catalog's YAML) are copied beside the output. Where TypeScript is not installed
// (npm ci --omit=dev), it says so and stops: bin/egressd then runs src/ directly.
//
//   node scripts/build-js.ts [--force] [--root DIR]   (--root: another checkout, for tests)

import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { filesUnder, inputsHash, stampMatches, writeStamp } from './build-stamp.ts';

const rootAt = process.argv.indexOf('--root');
const root = rootAt > 0 ? process.argv[rootAt + 1]! : join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'src');
const dist = join(root, 'dist');
const stamp = join(dist, '.built');
const tsc = join(root, 'node_modules', '.bin', 'tsc');

const sources = filesUnder(src);
const hash = inputsHash(root, [
  ...sources,
  join(root, 'tsconfig.json'),
  join(root, 'tsconfig.build.json'),
  fileURLToPath(import.meta.url),
  fileURLToPath(new URL('./build-stamp.ts', import.meta.url)),
]);
if (!process.argv.includes('--force') && stampMatches(stamp, hash)) process.exit(0);
if (!existsSync(tsc)) {
  process.stdout.write('build-js: TypeScript is not installed (production-only install); bin/egressd runs src/ directly\n');
  process.exit(0);
}
const next = join(root, `.dist-${process.pid}.tmp`);
const old = join(root, `.dist-old-${process.pid}.tmp`);
rmSync(next, { recursive: true, force: true });
try {
  try {
    execFileSync(tsc, ['-p', join(root, 'tsconfig.build.json'), '--outDir', next], { stdio: 'inherit', cwd: root });
  } catch (err) {
    // tsc's status 2: type errors, and the JavaScript written all the same (types are only
    // stripped). The typecheck (npm run typecheck, a stage of npm test) is where they fail; a
    // test run in the middle of a change still runs the code as written.
    if ((err as { status?: number }).status !== 2) throw err;
    process.stderr.write('build-js: src/ has type errors (above); compiled as written\n');
  }
  for (const f of sources.filter((x) => !x.endsWith('.ts'))) {
    const to = join(next, relative(src, f));
    mkdirSync(dirname(to), { recursive: true });
    copyFileSync(f, to);
  }
  writeStamp(join(next, '.built'), hash);
  if (existsSync(dist)) renameSync(dist, old);
  renameSync(next, dist);
} finally {
  rmSync(next, { recursive: true, force: true });
  rmSync(old, { recursive: true, force: true });
}
process.stdout.write(`build-js: compiled ${sources.filter((x) => x.endsWith('.ts')).length} modules to ${dist}\n`);
