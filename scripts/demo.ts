// `npm run demo` (as root): one sandbox in a network namespace, egressd in front of it, the
// REDIRECT rules applied by `egressd iptables`, one allowed and one refused connection made with
// curl, each shown with egressd's log line for it; then everything is torn down (the namespaces,
// their rules, the daemon), also on failure or Ctrl-C. Bounded: every step has a timeout and the
// whole demo gives up after 120 s.
//
// It reuses the test suite's namespace rig (test/helpers/netns-rig.ts): addresses from
// 198.18.0.0/15, names under .test, a dnsmasq it starts; nothing leaves the machine.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { watchDaemon, type DaemonProcess, type LogLine } from '../test/helpers/daemon-process.ts';
import { createRig, rigUnavailableReason, type Rig } from '../test/helpers/netns-rig.ts';
import { action, destinationOf, field } from '../test/helpers/log-line.ts';

const ROOT = resolve(import.meta.dirname, '..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const CA = join(ROOT, 'certs/ca.pem');
const ALLOWED = '198.18.1.2';
const REFUSED = '198.18.1.3';
const DEADLINE_MS = 120_000;

const say = (s: string): void => void process.stdout.write(`${s}\n`);

async function main(): Promise<number> {
  const unavailable = rigUnavailableReason();
  if (unavailable !== null) {
    process.stderr.write(`npm run demo needs root and the namespace tools: ${unavailable}\n`);
    return 2;
  }
  let rig: Rig | undefined;
  let daemon: DaemonProcess | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'egressd-demo-'));
  const cleanup = async (): Promise<void> => {
    await daemon?.stop('SIGTERM').catch(() => null);
    await rig?.teardown().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  };
  const onSignal = (): void => void cleanup().then(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const deadline = setTimeout(() => {
    process.stderr.write(`demo: gave up after ${DEADLINE_MS / 1000} s\n`);
    void cleanup().then(() => process.exit(1));
  }, DEADLINE_MS);
  try {
    say('1. A sandbox namespace, a router namespace in front of it, and an "internet" namespace with two servers');
    rig = await createRig();
    await rig.servers([ALLOWED, REFUSED]);
    await rig.dns({ 'allowed.test': [ALLOWED], 'denied.test': [REFUSED] });
    say(`   namespaces ${rig.ns.sandbox}, ${rig.ns.router}, ${rig.ns.internet} (removed at the end)`);
    say(`   sandbox ${rig.sandboxV4}; allowed.test → ${ALLOWED}; denied.test → ${REFUSED}`);

    say('2. egressd in the router namespace; the sandbox may reach allowed.test only');
    const config = {
      listen: { http: ['0.0.0.0:15080'], tls: ['0.0.0.0:15443'], tcp: ['0.0.0.0:15001'] },
      admin: { listen: '127.0.0.1:9901', token: 'demo-token' },
      dns: { servers: [rig.dnsServer], sandboxServers: [rig.dnsServer] },
      protected: { except: ['198.18.0.0/15'] },
      sandboxes: [{ id: 'demo', sources: [rig.sandboxV4], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } } }],
    };
    const file = join(dir, 'egressd.json');
    writeFileSync(file, JSON.stringify(config, null, 2));
    daemon = await watchDaemon(rig.spawnIn('router', NODE, [join(ROOT, 'src/main.ts'), 'serve', '--config', file]));

    say("3. egressd iptables --apply: the sandbox interface's TCP goes to egressd (80 → 15080, 443 → 15443, the rest → 15001)");
    await rig.redirect({ http: 15080, tls: 15443, tcp: 15001 });

    for (const [name, address] of [
      ['allowed.test', ALLOWED],
      ['denied.test', REFUSED],
    ] as const) {
      say(`\n$ curl https://${name}/   (in the sandbox)`);
      const r = await rig.execIn('sandbox', 'curl', ['-sS', '--max-time', '10', '--cacert', CA, '--resolve', `${name}:443:${address}`, `https://${name}/`], {
        timeoutMs: 20_000,
      });
      say(r.code === 0 ? `   answered: ${r.stdout.trim().slice(0, 120)}` : `   curl exit ${r.code}: ${r.stderr.trim()}`);
      const line: LogLine = await daemon.waitFor((l) => action(l) === 'connection' && JSON.stringify(l).includes(name), 15_000);
      const verdict = field(line, 'egressd.verdict');
      say(
        `   egressd: ${String(verdict)} ${String(field(line, 'destination.domain'))} → ${destinationOf(line)}, ${String(field(line, 'event.reason'))}, rule ${String(field(line, 'rule.name'))}`,
      );
      say(`   its log line (ECS fields, docs/logs.md): ${JSON.stringify(line)}`);
      const expected = name === 'allowed.test' ? 'allow' : 'refuse';
      if (verdict !== expected || (r.code === 0) !== (expected === 'allow')) {
        throw new Error(`${name}: expected ${expected}, got curl exit ${r.code} and verdict ${String(verdict)}`);
      }
    }
    say('\n4. Cleaning up: daemon stopped, rules and namespaces removed');
    return 0;
  } catch (e) {
    process.stderr.write(`demo failed: ${(e as Error).message}\n${daemon?.stderr() ?? ''}`);
    return 1;
  } finally {
    clearTimeout(deadline);
    await cleanup();
  }
}

process.exitCode = await main();
