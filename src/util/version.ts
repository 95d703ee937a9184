// The version egressd reports: in `egressd --version`, the egressd_build_info metric and the OTLP
// resource. Its own file, with nothing but node:fs, so the CLI can print it without loading the
// metrics code (prom-client) that the other readers need.

import { readFileSync } from 'node:fs';

/** package.json's `version` (semver, such as "0.1.0"), read once; src/ and dist/ sit at the same depth. */
export const EGRESSD_VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
