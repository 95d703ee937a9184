// curl in one of the rig's namespaces, with its arguments named: the e2e suites say what a request
// is (which address the name resolves to, which CA, which family) instead of repeating argv.

import { isIP } from 'node:net';
import type { ExecResult, Rig, RigNamespace } from './netns-rig.ts';

export interface CurlOptions {
  /**
   * The address the URL's host resolves to (`--resolve host:port:address`, the port from the URL
   * or its scheme); an IPv6 address is bracketed here. The request still names the host (SNI,
   * Host), and the connection goes to this address: how a test points a name anywhere.
   */
  readonly resolve?: string;
  /** `--cacert`: the CA the server's certificate must chain to. */
  readonly cacert?: string;
  /** `-k`: do not verify the server's certificate. */
  readonly insecure?: boolean;
  /** `-4` / `-6`. */
  readonly family?: 4 | 6;
  /** `--interface`: the source address (a second sandbox on the same veth). */
  readonly source?: string;
  /** `--max-time`, seconds; 10 unless given. */
  readonly maxTimeS?: number;
  /** `-X`. */
  readonly method?: string;
  /** `-H`, each `name: value`. */
  readonly headers?: readonly string[];
  /** `--data`: the request body. */
  readonly data?: string;
  /** `-o`: where the body goes (stdout unless given). */
  readonly output?: string;
  /** `-w`: printed after the transfer, e.g. `%{http_code}`. */
  readonly writeOut?: string;
  /** Any other arguments, before the URL (`-T file`, `--limit-rate 1300k`, `-g`). */
  readonly extra?: readonly string[];
  /** How long the process may run before it is killed, ms; max-time plus 10 s unless given. */
  readonly timeoutMs?: number;
}

/** curl's argv for `url` (`-sS` always: quiet, but errors on stderr). */
export function curlArgs(url: string, opts: CurlOptions = {}): string[] {
  const args = ['-sS', '--max-time', String(opts.maxTimeS ?? 10)];
  if (opts.family) args.push(`-${opts.family}`);
  if (opts.source) args.push('--interface', opts.source);
  if (opts.cacert) args.push('--cacert', opts.cacert);
  if (opts.insecure) args.push('-k');
  if (opts.resolve !== undefined) {
    const u = new URL(url);
    const port = u.port || (u.protocol === 'https:' ? '443' : '80');
    const address = isIP(opts.resolve) === 6 ? `[${opts.resolve}]` : opts.resolve;
    args.push('--resolve', `${u.hostname}:${port}:${address}`);
  }
  if (opts.method) args.push('-X', opts.method);
  for (const h of opts.headers ?? []) args.push('-H', h);
  if (opts.data !== undefined) args.push('--data', opts.data);
  if (opts.output !== undefined) args.push('-o', opts.output);
  if (opts.writeOut !== undefined) args.push('-w', opts.writeOut);
  args.push(...(opts.extra ?? []), url);
  return args;
}

/** Runs curl in namespace `ns` of the rig. */
export function curlIn(rig: Rig, ns: RigNamespace, url: string, opts: CurlOptions = {}): Promise<ExecResult> {
  return rig.execIn(ns, 'curl', curlArgs(url, opts), { timeoutMs: opts.timeoutMs ?? (opts.maxTimeS ?? 10) * 1000 + 10_000 });
}

/** The HTTP status `url` answers with from namespace `ns` (the body discarded); 0 when no response came. */
export async function statusIn(rig: Rig, ns: RigNamespace, url: string, opts: CurlOptions = {}): Promise<number> {
  const r = await curlIn(rig, ns, url, { ...opts, output: '/dev/null', writeOut: '%{http_code}' });
  return Number(r.stdout || 0);
}

/** A request to egressd's admin API from the router namespace, with the bearer token and a JSON body. */
export function adminIn(
  rig: Rig,
  token: string,
  method: string,
  path: string,
  body?: unknown,
  opts: CurlOptions & { admin?: string } = {},
): Promise<ExecResult> {
  const { admin = '127.0.0.1:9901', ...rest } = opts;
  return curlIn(rig, 'router', `http://${admin}${path}`, {
    ...rest,
    method,
    headers: [`authorization: Bearer ${token}`, 'content-type: application/json'],
    ...(body === undefined ? {} : { data: JSON.stringify(body) }),
  });
}
