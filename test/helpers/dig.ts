// dig (a real DNS client) against egressd's DNS listener on loopback, for the integration suites.

import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Whether dig is installed (bash scripts/ensure-test-tools.sh installs bind9-dnsutils). */
export const haveDig: boolean = spawnSync('dig', ['-v'], { stdio: 'ignore' }).status === 0;

/** dig's output for a query to 127.0.0.1:port sent from address `from` (a sandbox's source): one try, 2 s. */
export async function digFrom(port: number, from: string, ...args: string[]): Promise<string> {
  return (await run('dig', ['@127.0.0.1', '-p', String(port), '-b', from, '+tries=1', '+time=2', ...args])).stdout;
}
