// Runs a command to its end and hands back what it said: the CLI suites judge egressd by its
// exit code, stdout and stderr. A child that hangs is killed (SIGKILL after `timeoutMs`), not waited on.

import { spawn } from 'node:child_process';

export interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export function runProcess(
  cmd: string,
  args: readonly string[],
  opts: { readonly stdin?: Uint8Array | string; readonly env?: NodeJS.ProcessEnv; readonly timeoutMs?: number } = {},
): Promise<Run> {
  return new Promise((done, fail) => {
    const child = spawn(cmd, args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      timeout: opts.timeoutMs ?? 20_000,
      killSignal: 'SIGKILL',
      ...(opts.env ? { env: opts.env } : {}),
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', fail);
    child.on('close', (code) => done({ code, stdout, stderr }));
    child.stdin.on('error', () => {});
    child.stdin.end(opts.stdin);
  });
}
