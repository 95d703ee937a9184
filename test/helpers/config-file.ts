// The config file a test hands to `egressd serve` or `egressd validate`: written as
// `<dir>/egressd.json`, and for a daemon on the test host, every listener and the admin endpoint
// on 127.0.0.1 port 0 (the kernel picks a free port), so it runs beside every other test.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Writes `config` as `<dir>/egressd.json`; returns its path. */
export function writeConfig(dir: string, config: unknown): string {
  const file = join(dir, 'egressd.json');
  writeFileSync(file, JSON.stringify(config));
  return file;
}

/**
 * A config document whose listeners (http, tls, tcp, dns) and admin endpoint are all on
 * 127.0.0.1 port 0, with `doc`'s keys over it; `admin` adds keys to the admin endpoint's (a token).
 */
export function loopbackDocument(doc: Record<string, unknown> = {}, admin: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    listen: { http: '127.0.0.1:0', tls: '127.0.0.1:0', tcp: '127.0.0.1:0', dns: '127.0.0.1:0' },
    admin: { listen: '127.0.0.1:0', ...admin },
    ...doc,
  };
}
