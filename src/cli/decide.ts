// `egressd decide --policy FILE --host NAME --ip ADDR --port N`: the verdict for one
// connection, without opening anything. Exit 0 allowed, 1 refused, 2 invalid policy or usage.

import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { parseConfigText } from '../config/load.ts';
import { formatIssues } from '../errors.ts';
import { compilePolicy } from '../policy/compile.ts';
import { decide } from '../policy/decide.ts';
import { normalizeName } from '../policy/names.ts';
import { parsePolicyDocument } from '../policy/parse-policy.ts';
import { compileProtected } from '../policy/protected.ts';
import type { CommandResult } from './inspect.ts';

export interface DecideArgs {
  readonly policy: string;
  readonly host?: string;
  readonly ip: string;
  readonly port: string;
}

export function decideCommand(args: DecideArgs): CommandResult & { stderr?: string } {
  const usage = (msg: string) => ({ code: 2 as const, stdout: '', stderr: `${msg}\n` });
  let text: string;
  try {
    text = args.policy === '-' ? readFileSync(0, 'utf8') : readFileSync(args.policy, 'utf8');
  } catch (err) {
    return usage(`Cannot read policy "${args.policy}": ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
  let doc: unknown;
  try {
    doc = parseConfigText(text, args.policy);
  } catch (err) {
    return usage((err as Error).message);
  }
  const parsed = parsePolicyDocument(doc);
  if (!parsed.ok) return usage(`Invalid policy "${args.policy}":\n${formatIssues(parsed.issues)}`);
  if (isIP(args.ip.replace(/^\[|\]$/g, '')) === 0) return usage(`--ip: expected an IPv4 or IPv6 address, got "${args.ip}"`);
  if (!/^\d{1,5}$/.test(args.port) || Number(args.port) < 1 || Number(args.port) > 65535) {
    return usage(`--port: expected an integer from 1 to 65535, got "${args.port}"`);
  }
  let name: string | null = null;
  if (args.host !== undefined) {
    const n = normalizeName(args.host);
    if (!n.ok) return usage(`--host: ${n.reason}`);
    if ('name' in n) name = n.name;
  }
  const compiled = compilePolicy(parsed.value, compileProtected({}));
  const d = decide(compiled, { name, ip: args.ip.replace(/^\[|\]$/g, ''), port: Number(args.port) });
  return {
    code: d.verdict === 'allow' ? 0 : 1,
    stdout: `${JSON.stringify({ verdict: d.verdict, reason: d.reason, rule: d.rule })}\n`,
  };
}
