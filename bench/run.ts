// Runs every benchmark in this folder, one after the other (never side by side: they would
// share the two cores), on the pinned Node line: `npm run bench`. The figures of record, with
// the machine they were taken on, are in bench/RESULTS.md.

import { spawnSync } from 'node:child_process';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const cpu = cpus()[0]?.model ?? 'unknown CPU';
console.log(`egressd benchmarks — node ${process.version}, ${process.arch}, ${cpus().length} × ${cpu}\n`);
let failed = 0;
for (const file of ['parsers.ts', 'decide.ts', 'store.ts', 'log.ts', 'dns.ts']) {
  console.log(`## ${file}\n`);
  const r = spawnSync(process.execPath, [join(here, file)], { stdio: 'inherit', timeout: 300_000 });
  if (r.status !== 0) {
    failed++;
    console.error(`${file} failed (${r.status ?? r.signal})`);
  }
  console.log('');
}
process.exitCode = failed === 0 ? 0 : 1;
