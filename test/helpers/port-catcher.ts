// A process in one of the rig's namespaces that listens dual-stack on the ports given and answers
// each connection with "caught PORT": where a REDIRECT or DNAT sent a connection, read from the
// client's side (the iptables e2e tests).

import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { NODE } from './e2e-daemon.ts';
import type { Rig, RigNamespace } from './netns-rig.ts';

const CATCHER = `
const net = require('node:net');
const ports = process.argv.slice(1).map(Number);
let ready = 0;
for (const port of ports) {
  net.createServer((s) => s.end('caught ' + port + '\\n'))
    .listen({ host: '::', port }, () => { if (++ready === ports.length) console.log('ready'); });
}
`;

/** Starts a catcher in `ns` on `ports`; resolves once every port listens. */
export async function startCatcher(rig: Rig, ns: RigNamespace, ports: readonly number[]): Promise<ChildProcess> {
  const catcher = rig.spawnIn(ns, NODE, ['-e', CATCHER, ...ports.map(String)]);
  await new Promise<void>((ready) => createInterface({ input: catcher.stdout! }).on('line', (l) => l === 'ready' && ready()));
  return catcher;
}

/** Stops a catcher and waits for it to exit, so the next one can bind the same ports. */
export async function stopCatcher(catcher: ChildProcess | undefined): Promise<void> {
  if (catcher?.pid === undefined || catcher.exitCode !== null || catcher.signalCode !== null) return;
  const gone = once(catcher, 'exit');
  process.kill(catcher.pid, 'SIGTERM');
  await gone;
}
