// Builds the Node-API addons in native/ with the system C compiler against node-api-headers.
// Node-API is ABI-stable, so one build loads on every Node line; no node-gyp, no Python, no
// download of Node's headers. Runs as the package's `install` script (npm ci), and before
// `npm start`, the test runs (test/global-setup.ts) and the proxy benchmark, where it does
// nothing while native/build/.built records the hash of today's inputs (scripts/build-stamp.ts):
// the C sources and headers, Node-API's headers, this script, the compiler and its flags. So a
// `git pull` that changes a C file rebuilds the addons before the next test or start.
//
// Every native/*.c is built: a file that declares NAPI_MODULE is an addon of its own
// (native/build/<file>.node); every other file is plain C linked into each addon. native/test/
// holds the C tests, built and run by test/integration/native/. Each addon is linked to a
// temporary name and renamed into place, so a process that already loaded the old one keeps it
// whole.
//
//   node scripts/build-native.ts [--force] [--root DIR]   (--root: another checkout, for tests)

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { filesUnder, inputsHash, stampMatches, writeStamp } from './build-stamp.ts';
import { C_FLAGS, CC as cc } from './native-flags.ts';

const rootAt = process.argv.indexOf('--root');
const root = rootAt > 0 ? process.argv[rootAt + 1]! : join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const headers = (require('node-api-headers') as { include_dir: string }).include_dir;
// libuv's header: data_plane.c hosts a loop on Node's event loop with it. From the Node that runs
// this build (a release's own `include/node`), else the pinned Node package's, else Debian's
// (libnode-dev). libuv keeps its ABI across 1.x, so the addon loads on any Node that loads
// Node-API 8. Without one the addon is built without hosting (hostedAvailable() false), and every
// loop has a thread of its own.
const uvInclude = [
  join(dirname(process.execPath), '..', 'include', 'node'),
  join(root, 'node_modules', 'node', 'node_modules', `node-${process.platform}-${process.arch}`, 'include', 'node'),
  '/usr/include/node',
].find((d) => existsSync(join(d, 'uv.h')));
const src = join(root, 'native');
const out = join(src, 'build');
const stamp = join(out, '.built');
mkdirSync(out, { recursive: true });

const files = readdirSync(src)
  .filter((f) => f.endsWith('.c'))
  .sort();
const isAddon = (f: string): boolean => /^\s*NAPI_MODULE\s*\(/m.test(readFileSync(join(src, f), 'utf8'));
const addons = files.filter(isAddon);
const shared = files.filter((f) => !isAddon(f)).map((f) => join(src, f));
const outputs = addons.map((f) => join(out, `${basename(f, '.c')}.node`));

const inputs = [
  ...readdirSync(src)
    .filter((f) => f.endsWith('.c') || f.endsWith('.h'))
    .map((f) => join(src, f)),
  ...filesUnder(headers),
  ...(uvInclude ? filesUnder(join(uvInclude, 'uv')).concat(join(uvInclude, 'uv.h')) : []),
  fileURLToPath(import.meta.url),
  fileURLToPath(new URL('./native-flags.ts', import.meta.url)),
  fileURLToPath(new URL('./build-stamp.ts', import.meta.url)),
];
const hash = inputsHash(root, inputs, [cc, ...C_FLAGS, uvInclude ?? 'no libuv header']);
if (!process.argv.includes('--force') && outputs.every((o) => existsSync(o)) && stampMatches(stamp, hash)) process.exit(0);
rmSync(stamp, { force: true });

for (const addon of addons) {
  const name = basename(addon, '.c');
  const target = join(out, `${name}.node`);
  const temporary = `${target}.${process.pid}.tmp`;
  const args = [
    '-shared',
    '-fPIC',
    ...C_FLAGS,
    `-DNODE_GYP_MODULE_NAME=${name}`,
    '-DNAPI_VERSION=8',
    `-I${headers}`,
    ...(uvInclude ? ['-DEGRESSD_HAVE_UV', `-idirafter${uvInclude}`] : []),
    `-I${src}`,
    join(src, addon),
    ...shared,
    '-o',
    temporary,
  ];
  try {
    execFileSync(cc, args, { stdio: 'inherit' });
  } catch (err) {
    rmSync(temporary, { force: true });
    process.stderr.write(`build-native: "${cc} ${args.join(' ')}" failed; a C compiler is needed (apt-get install gcc)\n`);
    throw err;
  }
  renameSync(temporary, target);
  process.stdout.write(`build-native: built ${target}\n`);
}
writeStamp(stamp, hash);
