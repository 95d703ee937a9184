// The command line as buildProgram reads it, in-process: what `serve` is handed (the daemon itself
// is never started here; commands.test.ts runs the real entry point for the other commands).

import { afterEach, describe, expect, it } from 'vitest';
import { buildProgram } from '../../../src/cli/program.ts';

/** What `egressd serve ...` hands the daemon, with EGRESSD_CONFIG as given (undefined: unset). */
async function serveOptions(argv: readonly string[], config: string | undefined): Promise<{ code: number; opts: unknown[]; err: string }> {
  if (config === undefined) delete process.env['EGRESSD_CONFIG'];
  else process.env['EGRESSD_CONFIG'] = config;
  const opts: unknown[] = [];
  let err = '';
  const { run } = buildProgram({
    out: () => {},
    err: (s) => {
      err += s;
    },
    env: process.env,
    serve: (o) => {
      opts.push({ ...o });
      return Promise.resolve(0);
    },
  });
  const code = await run(['serve', ...argv]);
  return { code, opts, err };
}

describe('egressd serve: the config file', () => {
  const saved = process.env['EGRESSD_CONFIG'];
  afterEach(() => {
    if (saved === undefined) delete process.env['EGRESSD_CONFIG'];
    else process.env['EGRESSD_CONFIG'] = saved;
  });

  it('takes EGRESSD_CONFIG when --config is absent, and --config over it', async () => {
    expect((await serveOptions([], '/etc/egressd/a.yaml')).opts).toEqual([{ config: '/etc/egressd/a.yaml' }]);
    expect((await serveOptions(['--config', '/etc/egressd/b.yaml'], '/etc/egressd/a.yaml')).opts).toEqual([{ config: '/etc/egressd/b.yaml' }]);
    expect((await serveOptions([], undefined)).opts).toEqual([{}]);
  });

  // An EnvironmentFile or a manifest with `EGRESSD_CONFIG=` stopped serve with `Cannot read
  // configuration ""`, while EGRESSD_ADMIN_TOKEN, EGRESSD_ADMIN_URL and EGRESSD_DATA_PLANE set
  // but empty are unset.
  it('reads EGRESSD_CONFIG set but empty as unset: the built-in config', async () => {
    const r = await serveOptions([], '');
    expect(r.code).toBe(0);
    expect(r.opts).toEqual([{}]);
  });

  it('hands an empty --config on, to be refused as a file that cannot be read', async () => {
    expect((await serveOptions(['--config', ''], undefined)).opts).toEqual([{ config: '' }]);
  });
});
