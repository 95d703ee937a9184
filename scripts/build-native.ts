// Builds the Node-API addons in native/ with the system C compiler against node-api-headers.
// Node-API is ABI-stable, so one build loads on every Node line; no node-gyp, no Python, no
// download of Node's headers. Runs as the package's `install` script (npm ci).
//
// Every native/*.c is built: a file that declares NAPI_MODULE is an addon of its own
// (native/build/<file>.node); every other file is plain C linked into each addon. native/test/
// holds the C tests, built and run by test/integration/native/.

import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { C_FLAGS, CC as cc } from './native-flags.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const headers = (require('node-api-headers') as { include_dir: string }).include_dir;
const src = join(root, 'native');
const out = join(src, 'build');
mkdirSync(out, { recursive: true });

const files = readdirSync(src)
  .filter((f) => f.endsWith('.c'))
  .sort();
const isAddon = (f: string): boolean => /^\s*NAPI_MODULE\s*\(/m.test(readFileSync(join(src, f), 'utf8'));
const addons = files.filter(isAddon);
const shared = files.filter((f) => !isAddon(f)).map((f) => join(src, f));

for (const addon of addons) {
  const name = basename(addon, '.c');
  const args = [
    '-shared',
    '-fPIC',
    ...C_FLAGS,
    `-DNODE_GYP_MODULE_NAME=${name}`,
    '-DNAPI_VERSION=8',
    `-I${headers}`,
    `-I${src}`,
    join(src, addon),
    ...shared,
    '-o',
    join(out, `${name}.node`),
  ];
  try {
    execFileSync(cc, args, { stdio: 'inherit' });
  } catch (err) {
    process.stderr.write(`build-native: "${cc} ${args.join(' ')}" failed; a C compiler is needed (apt-get install gcc)\n`);
    throw err;
  }
  process.stdout.write(`build-native: built ${join(out, `${name}.node`)}\n`);
}
