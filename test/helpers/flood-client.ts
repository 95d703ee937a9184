// The hostile sandbox of the flood tests, run inside the rig's sandbox namespace:
//   node flood-client.ts --bind ADDR --server IP --count N --hold-ms MS [--sni NAME] [--port 443]
//                        [--kinds hello,silent,drip]
// Opens N connections to IP:port from ADDR as fast as the kernel lets it (at most 256
// connecting at once), in the --kinds taken in turn: `hello` sends a whole ClientHello for
// --sni and then idles, `silent` sends nothing, `drip` sends the hello one byte a second, `mute`
// sends the hello and never reads (so a refusal's answer and FIN stay unread, and it never
// closes: what holds a lingering refusal open). Each
// stays open until the server closes it or --hold-ms after the first connect, when every
// connection left is closed. Then it measures recovery: a new hello connection every 50 ms
// until one is spliced (bytes come back from the server), `recoveryMs` after the close (null
// if none within 10 s). One JSON line of totals, then it exits; it always exits on its own
// within hold-ms + 30 s.

import { connect, type Socket } from 'node:net';
import { parseArgs } from 'node:util';
import { buildHello } from './hello-builder.ts';

const { values } = parseArgs({
  options: {
    bind: { type: 'string' },
    server: { type: 'string' },
    port: { type: 'string', default: '443' },
    count: { type: 'string', default: '1000' },
    'hold-ms': { type: 'string', default: '10000' },
    sni: { type: 'string', default: 'allowed.test' },
    kinds: { type: 'string', default: 'hello,silent,drip' },
  },
});
const count = Number(values.count);
const holdMs = Number(values['hold-ms']);
const hello = Buffer.from(buildHello({ sni: [values.sni!] }));
const ALL_KINDS = ['hello', 'silent', 'drip', 'mute'] as const;
type Kind = (typeof ALL_KINDS)[number];
const KINDS = values.kinds!.split(',') as Kind[];
for (const k of KINDS) if (!ALL_KINDS.includes(k)) throw new Error(`--kinds: unknown kind "${k}" (${ALL_KINDS.join(', ')})`);

interface Totals {
  attempted: number;
  connected: number;
  connectFailed: number;
  /** Closed or reset by egressd (or the path behind it) before the hold ended. */
  closedByPeer: number;
  /** ...of which within 1 s of connecting: refused at once. */
  closedWithin1s: number;
  /** Got at least one byte back (a spliced hello reaches the server, which answers). */
  gotData: number;
  stillOpen: number;
}
const zero = (): Totals => ({ attempted: 0, connected: 0, connectFailed: 0, closedByPeer: 0, closedWithin1s: 0, gotData: 0, stillOpen: 0 });
const byKind = Object.fromEntries(KINDS.map((k) => [k, zero()])) as Record<Kind, Totals>;
const errors: Record<string, number> = {};
const open = new Set<Socket>();
const timers = new Set<NodeJS.Timeout>();
let started = 0;
let connecting = 0;
let holdUntil = 0;
let done = false;

function one(i: number): void {
  const kind = KINDS[i % KINDS.length]!;
  const t = byKind[kind];
  t.attempted++;
  connecting++;
  let connectedAt = 0;
  let finished = false;
  const s = connect({ host: values.server!, port: Number(values.port), localAddress: values.bind! });
  // Paused before the 'data' listener below, which then does not start the reading.
  if (kind === 'mute') s.pause();
  const finish = (byPeer: boolean, err?: NodeJS.ErrnoException): void => {
    if (finished) return;
    finished = true;
    if (connectedAt === 0) {
      connecting--;
      t.connectFailed++;
      const code = err?.code ?? 'closed';
      errors[code] = (errors[code] ?? 0) + 1;
      pump();
    } else if (byPeer && !done) {
      t.closedByPeer++;
      if (Date.now() - connectedAt <= 1000) t.closedWithin1s++;
    }
    open.delete(s);
    s.destroy();
  };
  s.on('connect', () => {
    connectedAt = Date.now();
    holdUntil ||= connectedAt + holdMs;
    connecting--;
    t.connected++;
    open.add(s);
    if (kind === 'hello' || kind === 'mute') s.write(hello);
    if (kind === 'drip') {
      let at = 0;
      const tick = setInterval(() => {
        if (at >= hello.length || s.destroyed) {
          clearInterval(tick);
          return;
        }
        s.write(hello.subarray(at, ++at));
      }, 1000);
      timers.add(tick);
    }
    pump();
  });
  let counted = false;
  s.on('data', () => {
    if (!counted) t.gotData++;
    counted = true;
  });
  s.on('error', (e: NodeJS.ErrnoException) => finish(true, e));
  s.on('end', () => finish(true));
  s.on('close', () => finish(true));
}

function pump(): void {
  while (!done && started < count && connecting < 256) one(started++);
}

function end(): void {
  if (done) return;
  done = true;
  for (const t of timers) clearInterval(t);
  const stillOpen = open.size;
  // Which kind each open socket was is not kept; the total is what the tests read.
  for (const s of open) s.destroy();
  const total = zero();
  for (const k of KINDS) for (const key of Object.keys(total) as (keyof Totals)[]) total[key] += byKind[k][key];
  total.stillOpen = stillOpen;
  const closedAt = Date.now();
  void recover(closedAt).then((recoveryMs) => {
    console.log(JSON.stringify({ event: 'done', ...total, recoveryMs, byKind, errors }));
    setTimeout(() => process.exit(0), 100);
  });
}

/** Tries a hello connection every 50 ms; resolves with the ms until one got bytes back. */
async function recover(since: number): Promise<number | null> {
  while (Date.now() - since < 10_000) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host: values.server!, port: Number(values.port), localAddress: values.bind! });
      const t = setTimeout(() => fin(false), 1000);
      const fin = (v: boolean): void => {
        clearTimeout(t);
        s.destroy();
        resolve(v);
      };
      s.on('connect', () => s.write(hello));
      s.on('data', () => fin(true));
      s.on('error', () => fin(false));
      s.on('close', () => fin(false));
    });
    if (ok) return Date.now() - since;
    await new Promise((r) => setTimeout(r, 50));
  }
  return null;
}

pump();
const check = setInterval(() => {
  if ((holdUntil !== 0 && Date.now() >= holdUntil) || (started >= count && connecting === 0 && open.size === 0)) {
    clearInterval(check);
    end();
  }
}, 50);
setTimeout(end, holdMs + 30_000).unref();
setTimeout(() => process.exit(1), holdMs + 45_000).unref();
