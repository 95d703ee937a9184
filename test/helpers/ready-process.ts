// A helper process in a rig namespace that prints "ready" once it can be used (a server bound, a
// listener open): the other-protocols and path MTU suites' raw-IP and Python peers.

import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Rig, RigNamespace } from './netns-rig.ts';

export interface ReadyProcess {
  readonly child: ChildProcess;
  /** Everything it printed after "ready", trimmed, once it exits. */
  readonly output: Promise<string>;
}

/**
 * Starts `cmd args` in `ns` and resolves once it prints "ready"; rejects, with its stderr, when it
 * exits first. (An object, not the output promise itself, which an async function would wait for.)
 */
export async function startReady(rig: Rig, ns: RigNamespace, cmd: string, args: string[]): Promise<ReadyProcess> {
  const child = rig.spawnIn(ns, cmd, args);
  let rest = '';
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  // 'close', not 'exit': the last lines may still be in the pipe when the process exits.
  const output = new Promise<string>((end) => child.once('close', () => end(rest.trim())));
  await new Promise<void>((ready, fail) => {
    createInterface({ input: child.stdout! }).on('line', (l) => (l === 'ready' ? ready() : (rest += `${l}\n`)));
    child.once('close', () => fail(new Error(`${cmd} ${args.join(' ')} exited before it was ready: ${stderr}`)));
  });
  return { child, output };
}
