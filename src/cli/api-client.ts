// `egressd sandbox|org|check`: the control-plane API from the command line, through undici.
//   egressd sandbox put ID (--file BODY.json | --sources A,B [--org ORG] [--network JSON])
//   egressd sandbox get ID | rm ID | ls
//   egressd sandbox network ID [--file BODY.json | --network JSON]   (GET, or PUT when a body is given)
//   egressd sandbox effective ID
//   egressd org put ID (--tier N | --network JSON | --file BODY.json) | get ID | rm ID
//   egressd check --sandbox ID [--host NAME] --ip ADDR --port N
// The admin URL comes from --admin or EGRESSD_ADMIN_URL (default http://127.0.0.1:9901), the
// token from EGRESSD_ADMIN_TOKEN or --token-file. Exit 0 on success (check: allowed), 1 on an
// API error (check: refused), 2 on a usage error or when the API cannot be reached.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { request } from 'undici';

export interface CliResult {
  readonly code: 0 | 1 | 2;
  readonly stdout: string;
  readonly stderr: string;
}

const usage = (msg: string): CliResult => ({ code: 2, stdout: '', stderr: `${msg}\n` });

interface Call {
  readonly method: 'GET' | 'PUT' | 'DELETE' | 'POST';
  readonly path: string;
  readonly body?: unknown;
}

function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${what} is not valid JSON: ${(err as Error).message}`);
  }
}

function bodyFrom(values: { file?: string | undefined; network?: string | undefined }): unknown {
  if (values.file !== undefined) return parseJson(readFileSync(values.file === '-' ? 0 : values.file, 'utf8'), `"${values.file}"`);
  if (values.network !== undefined) return parseJson(values.network, '--network');
  return undefined;
}

const enc = encodeURIComponent;

/** Turns argv (after the command word) into one API call, or a usage error. */
export function planCall(command: string, argv: readonly string[]): Call | CliResult {
  const { positionals, values } = parseArgs({
    args: [...argv],
    allowPositionals: true,
    strict: true,
    options: {
      file: { type: 'string' },
      network: { type: 'string' },
      sources: { type: 'string' },
      org: { type: 'string' },
      tier: { type: 'string' },
      sandbox: { type: 'string' },
      host: { type: 'string' },
      ip: { type: 'string' },
      port: { type: 'string' },
      admin: { type: 'string' },
      'token-file': { type: 'string' },
    },
  });
  const [verb, id, ...extra] = positionals;
  if (command === 'check') {
    if (values.sandbox === undefined || values.ip === undefined || values.port === undefined) {
      return usage('Usage: egressd check --sandbox ID [--host NAME] --ip ADDR --port N');
    }
    const port = Number(values.port);
    if (!Number.isInteger(port)) return usage(`--port: expected an integer, got "${values.port}"`);
    return {
      method: 'POST',
      path: '/api/v1/check',
      body: { sandbox: values.sandbox, ...(values.host !== undefined ? { host: values.host } : {}), ip: values.ip, port },
    };
  }
  if (extra.length > 0) return usage(`Unexpected argument "${extra[0]}"`);
  if (command === 'sandbox') {
    if (verb === 'ls' && id === undefined) return { method: 'GET', path: '/api/v1/sandboxes' };
    if (id === undefined) return usage('Usage: egressd sandbox put|get|rm|network|effective ID, or egressd sandbox ls');
    const base = `/api/v1/sandboxes/${enc(id)}`;
    switch (verb) {
      case 'get':
        return { method: 'GET', path: base };
      case 'rm':
        return { method: 'DELETE', path: base };
      case 'effective':
        return { method: 'GET', path: `${base}/effective` };
      case 'network': {
        const body = bodyFrom(values);
        return body === undefined ? { method: 'GET', path: `${base}/network` } : { method: 'PUT', path: `${base}/network`, body };
      }
      case 'put': {
        let body = values.file !== undefined ? bodyFrom({ file: values.file }) : undefined;
        if (body === undefined) {
          if (values.sources === undefined) return usage('egressd sandbox put ID needs --file BODY.json or --sources A,B');
          body = {
            sources: values.sources
              .split(',')
              .map((s) => s.trim())
              .filter((s) => s !== ''),
            ...(values.org !== undefined ? { org: values.org } : {}),
            ...(values.network !== undefined ? { network: parseJson(values.network, '--network') } : {}),
          };
        }
        return { method: 'PUT', path: base, body };
      }
      default:
        return usage(`Unknown sandbox command "${verb ?? ''}"; expected put, get, rm, ls, network or effective`);
    }
  }
  if (command === 'org') {
    if (id === undefined) return usage('Usage: egressd org put|get|rm ID');
    const base = `/api/v1/orgs/${enc(id)}`;
    switch (verb) {
      case 'get':
        return { method: 'GET', path: base };
      case 'rm':
        return { method: 'DELETE', path: base };
      case 'put': {
        if (values.tier !== undefined) return { method: 'PUT', path: base, body: { tier: Number(values.tier) } };
        const network = bodyFrom(values);
        if (network === undefined) return usage('egressd org put ID needs --tier N, --network JSON or --file BODY.json');
        return { method: 'PUT', path: base, body: values.file !== undefined ? network : { network } };
      }
      default:
        return usage(`Unknown org command "${verb ?? ''}"; expected put, get or rm`);
    }
  }
  return usage(`Unknown command "${command}"`);
}

export async function apiCommand(command: string, argv: readonly string[], env: NodeJS.ProcessEnv): Promise<CliResult> {
  let call: Call | CliResult;
  let admin: string;
  let token: string | undefined;
  try {
    call = planCall(command, argv);
    const { values } = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: false,
      options: { admin: { type: 'string' }, 'token-file': { type: 'string' } },
    });
    admin = (typeof values.admin === 'string' ? values.admin : undefined) ?? env['EGRESSD_ADMIN_URL'] ?? 'http://127.0.0.1:9901';
    const tokenFile = values['token-file'];
    token = typeof tokenFile === 'string' ? readFileSync(tokenFile, 'utf8').trim() : env['EGRESSD_ADMIN_TOKEN'];
  } catch (err) {
    return usage((err as Error).message);
  }
  if ('code' in call) return call;
  let status: number;
  let text: string;
  try {
    const res = await request(new URL(call.path, admin), {
      method: call.method,
      headers: {
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...(call.body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      ...(call.body !== undefined ? { body: JSON.stringify(call.body) } : {}),
      headersTimeout: 10_000,
      bodyTimeout: 10_000,
    });
    status = res.statusCode;
    text = await res.body.text();
  } catch (err) {
    return { code: 2, stdout: '', stderr: `Cannot reach the admin API at ${admin}: ${(err as Error).message}\n` };
  }
  const out = text === '' ? '' : text.endsWith('\n') ? text : `${text}\n`;
  if (status >= 400) return { code: 1, stdout: '', stderr: out };
  if (command === 'check') {
    const verdict = (parseJson(text, 'the answer') as { verdict?: string }).verdict;
    return { code: verdict === 'allow' ? 0 : 1, stdout: out, stderr: '' };
  }
  return { code: 0, stdout: out, stderr: '' };
}
