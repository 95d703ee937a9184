// Builds the Node-API addon in native/ with the system C compiler against node-api-headers.
// Node-API is ABI-stable, so one build loads on every Node line; no node-gyp, no Python, no
// download of Node's headers. Runs as the package's `install` script (npm ci).

import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const headers = (require('node-api-headers') as { include_dir: string }).include_dir;
const out = join(root, 'native', 'build');
mkdirSync(out, { recursive: true });
const cc = process.env['CC'] ?? 'cc';
const args = [
  '-shared', '-fPIC', '-O2', '-Wall', '-Wextra', '-Werror', '-std=c11', '-D_GNU_SOURCE',
  '-DNODE_GYP_MODULE_NAME=original_dst', '-DNAPI_VERSION=8',
  `-I${headers}`,
  join(root, 'native', 'original_dst.c'),
  '-o', join(out, 'original_dst.node'),
];
try {
  execFileSync(cc, args, { stdio: 'inherit' });
} catch (err) {
  process.stderr.write(`build-native: "${cc} ${args.join(' ')}" failed; a C compiler is needed (apt-get install gcc)\n`);
  throw err;
}
process.stdout.write(`build-native: built ${join(out, 'original_dst.node')}\n`);
