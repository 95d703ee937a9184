// The first flight's time boundaries, on both set-up paths (Node's sockets and the native loops).
// The native loop reports an accept with no byte yet after SL_EMPTY_GRACE_MS (50 ms) and an
// incomplete flight after SL_FLIGHT_GRACE_MS (50 ms), then reads on (native/splice_loop.h); the
// JavaScript path sees every chunk (peek-socket.ts). Whatever the boundaries, the invariant holds:
// the verdict, the reason, the log line's name fields, the bytes carried upstream and the bytes
// the client gets back depend only on the bytes the client sent and the policy, never on how they
// were cut or when they came within the deadlines; and both paths agree. Each case is compared
// with the same bytes sent in one write, on the same path, and that with the other path's.
//
// Pauses sit around the graces (0, 5, 45, 49, 51, 55, 70, 120 ms) and before the first-byte
// timeout; cuts inside the record header, inside the SNI, before the SNI's last byte, between two
// records, inside "Host:" and before the head's last CRLF. Each case has its own source address
// and its own upstream, so its log line and the bytes its upstream got are its own.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { once } from 'node:events';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildHello, helloBody } from '../helpers/hello-builder.ts';
import { trackedServer, type TrackedServer } from '../helpers/listen.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { action, field, type LogLine } from '../helpers/log-line.ts';

const FIRST_BYTE_MS = 600;
const PEEK_MS = 4000;

/** Sandboxes by what decides: a name (block-all, ok.test allowed), the address alone, the address unless the name is refused (allow-all, bad.test denied). */
type Policy = 'name' | 'addr' | 'addr-name';
const NETS: Record<Policy, number> = { name: 40, addr: 44, 'addr-name': 48 };
/** 1,024 sources per sandbox: 127.0.N.1 to 127.0.N+3.255, each case its own. */
const sourcesOf = (p: Policy): string[] =>
  Array.from({ length: 4 * 256 }, (_, i) => `127.0.${NETS[p] + (i >> 8)}.${i & 0xff}`).filter((a) => !a.endsWith('.0'));

const HELLO_OK = Buffer.from(buildHello({ sni: ['ok.test'] }));
const HELLO_BAD = Buffer.from(buildHello({ sni: ['bad.test'] }));
/** The same hello in two records, the name in the second (RFC 8446 §5.1 allows any split). */
const split2 = (hello: Buffer): { bytes: Buffer; boundary: number } => {
  const body = hello.subarray(5);
  // 60 bytes of handshake: the header, version, random and half the session id.
  const cut = 60;
  const rec = (b: Buffer): Buffer => Buffer.concat([Buffer.from([0x16, 0x03, 0x01, b.length >> 8, b.length & 0xff]), b]);
  const first = rec(body.subarray(0, cut));
  return { bytes: Buffer.concat([first, rec(body.subarray(cut))]), boundary: first.length };
};
/** A hello of exactly the peek's cap (MAX_HELLO_BYTES, 16 KiB) on the wire. */
const HELLO_AT_CAP = Buffer.from(buildHello({ sni: ['ok.test'], padding: 16384 - 5 - 4 - helloBody({ sni: ['ok.test'], padding: 0 }).length }));
const HEAD_OK = Buffer.from('GET /x HTTP/1.1\r\nHost: ok.test\r\nUser-Agent: t\r\n\r\n');
const HEAD_BAD = Buffer.from('GET /x HTTP/1.1\r\nHost: bad.test\r\nUser-Agent: t\r\n\r\n');

interface Flight {
  readonly key: string;
  readonly bytes: Buffer;
  /** Where to cut, by what the cut falls in. */
  readonly cuts: Record<string, number>;
}

function badLineFlight(key: string, text: string): Flight {
  const bytes = Buffer.from(text);
  return { key, bytes, cuts: { 'before the bad line': bytes.indexOf('\r\nBad Line') + 2 } };
}

const FLIGHTS: Record<string, Flight> = {
  'tls-ok': {
    key: 'tls-ok',
    bytes: HELLO_OK,
    cuts: { 'record header': 3, 'inside the SNI': HELLO_OK.indexOf('ok.test') + 2, "before the SNI's last byte": HELLO_OK.indexOf('ok.test') + 6 },
  },
  'tls-bad': {
    key: 'tls-bad',
    bytes: HELLO_BAD,
    cuts: { 'record header': 3, 'inside the SNI': HELLO_BAD.indexOf('bad.test') + 2, "before the SNI's last byte": HELLO_BAD.indexOf('bad.test') + 7 },
  },
  'tls2-ok': { key: 'tls2-ok', bytes: split2(HELLO_OK).bytes, cuts: { 'between two records': split2(HELLO_OK).boundary } },
  'tls2-bad': { key: 'tls2-bad', bytes: split2(HELLO_BAD).bytes, cuts: { 'between two records': split2(HELLO_BAD).boundary } },
  'http-ok': {
    key: 'http-ok',
    bytes: HEAD_OK,
    cuts: { 'inside "Host:"': HEAD_OK.indexOf('Host:') + 2, 'before the final CRLF': HEAD_OK.length - 2 },
  },
  'http-bad': {
    key: 'http-bad',
    bytes: HEAD_BAD,
    cuts: { 'inside "Host:"': HEAD_BAD.indexOf('Host:') + 2, 'before the final CRLF': HEAD_BAD.length - 2 },
  },
  'tls-ok+data': {
    key: 'tls-ok+data',
    bytes: Buffer.concat([HELLO_OK, Buffer.from('PIPELINED-APPLICATION-DATA')]),
    cuts: { 'between the hello and the data': HELLO_OK.length, "before the hello's last byte": HELLO_OK.length - 1 },
  },
  'http-ok+body': {
    key: 'http-ok+body',
    bytes: Buffer.concat([HEAD_OK, Buffer.from('BODY')]),
    cuts: { 'between the head and the body': HEAD_OK.length, 'inside the final CRLF': HEAD_OK.length - 1 },
  },
  'tls-at-cap': {
    key: 'tls-at-cap',
    bytes: HELLO_AT_CAP,
    cuts: { 'inside the SNI': HELLO_AT_CAP.indexOf('ok.test') + 2, "before the hello's last byte": HELLO_AT_CAP.length - 1 },
  },
  // A head that never ends: more than the cap (too-large), whenever its pieces come.
  'http-endless': {
    key: 'http-endless',
    bytes: Buffer.from(`GET / HTTP/1.1\r\nHost: ok.test\r\nX-Pad: ${'a'.repeat(17_000)}`),
    cuts: { 'half-way': 8000, 'one byte before the cap': 16383 },
  },
  // A bad header line in a head with no end yet: refused as malformed-http as soon as the parser
  // reads it, in one write; cut just before it, the parser must still read it before any end.
  'http-late-bad-line': badLineFlight('http-late-bad-line', `GET / HTTP/1.1\r\nHost: ok.test\r\nX-Pad: ${'a'.repeat(2000)}\r\nBad Line\r\n`),
  // The same within 1 KiB of the cap, and more bytes after it than the cap takes.
  'http-bad-line-at-cap': badLineFlight(
    'http-bad-line-at-cap',
    `GET / HTTP/1.1\r\nHost: ok.test\r\nX-Pad: ${'a'.repeat(15_600)}\r\nBad Line\r\nX-More: ${'b'.repeat(2000)}`,
  ),
  // Neither TLS nor HTTP: judged by address (a server-first client speaking first).
  ssh: { key: 'ssh', bytes: Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'), cuts: { 'inside "SSH"': 2, 'before the CRLF': 19 } },
};

/** How a client sends a flight: pieces, each after a pause (the first one's from the connect). */
interface Plan {
  readonly listener: 'tls' | 'http' | 'tcp';
  readonly policy: Policy;
  readonly flight: Flight;
  /** Offsets where the flight is cut (ascending, inside it). */
  readonly cuts: readonly number[];
  /** A pause before each piece: cuts.length + 1 of them. */
  readonly gaps: readonly number[];
  /** A byte of TCP urgent data (MSG_OOB) sent right before the piece of this index. */
  readonly urgentBefore?: number;
  /** After the last piece and this pause, the client's FIN or reset (instead of a FIN once its bytes came back). */
  readonly end?: { readonly how: 'fin' | 'reset'; readonly afterMs: number };
}

/** What is compared: the same bytes in one write must give all of it. */
interface Seen {
  verdict: unknown;
  reason: unknown;
  protocol: unknown;
  domain: unknown;
  sni: unknown;
  url: unknown;
  raw: unknown;
  alpn: unknown;
  up: unknown;
  down: unknown;
  /** Every byte the case's upstream got, hex, and whether it was in one connection. */
  upstream: string;
  upstreamConns: number;
  /** What the client got back (the echo, or the refusal's answer), hex. */
  echoed: string;
}

interface Upstream extends TrackedServer {
  received: Buffer[][];
}

async function recordingUpstream(): Promise<Upstream> {
  const received: Buffer[][] = [];
  const server = await trackedServer((s) => {
    const r: Buffer[] = [];
    received.push(r);
    s.on('data', (b: Buffer) => {
      r.push(b);
      s.write(b);
    });
    s.on('end', () => s.end());
  });
  return { ...server, received };
}

const piecesOf = (plan: Plan): Buffer[] => {
  const at = [0, ...plan.cuts, plan.flight.bytes.length];
  return at.slice(1).map((end, i) => plan.flight.bytes.subarray(at[i]!, end));
};

/**
 * Sends the plan from `source` on Node's socket: each piece after its pause, then the FIN once
 * the whole flight came back (a TLS client's FIN before its answer is its going: docs/logs.md).
 * Resolves with the bytes that came back and the local port, when the connection closed.
 */
function nodeClient(source: string, port: number, plan: Plan): Promise<{ echoed: Buffer; localPort: number }> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: source, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    let localPort = 0;
    const total = plan.flight.bytes.length;
    let got = 0;
    s.on('data', (b: Buffer) => {
      chunks.push(b);
      got += b.length;
      if (got >= total && !plan.end) s.end();
    });
    s.on('error', () => {});
    s.on('end', () => s.end());
    const guard = setTimeout(() => s.destroy(), PEEK_MS + 3000);
    s.on('close', () => {
      clearTimeout(guard);
      resolve({ echoed: Buffer.concat(chunks), localPort });
    });
    s.once('connect', () => {
      localPort = s.localPort!;
      void (async () => {
        const pieces = piecesOf(plan);
        for (let i = 0; i < pieces.length; i++) {
          if (plan.gaps[i]! > 0) await sleep(plan.gaps[i]!);
          if (s.destroyed) return;
          s.write(pieces[i]!);
        }
        if (!plan.end) return;
        if (plan.end.afterMs > 0) await sleep(plan.end.afterMs);
        if (plan.end.how === 'fin') s.end();
        else s.resetAndDestroy();
      })();
    });
  });
}

// argv: source, port, plan as JSON {pieces: hex[], gaps: ms[], urgentBefore: index or -1,
// expect: bytes}. Prints {"echoed": hex, "port": local port} once the connection closed.
const PY_CLIENT = `
import json, socket, sys, time, threading
src, port, plan = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind((src, 0))
s.settimeout(${(PEEK_MS + 3000) / 1000})
s.connect(("127.0.0.1", port))
got = bytearray()
def read():
    try:
        while True:
            c = s.recv(65536)
            if not c:
                return
            got.extend(c)
            if len(got) >= plan["expect"]:
                s.shutdown(socket.SHUT_WR)
    except Exception:
        pass
t = threading.Thread(target=read)
t.start()
try:
    for i, (piece, gap) in enumerate(zip(plan["pieces"], plan["gaps"])):
        if gap > 0:
            time.sleep(gap / 1000)
        if plan["urgentBefore"] == i:
            s.send(b"!", socket.MSG_OOB)
        s.sendall(bytes.fromhex(piece))
except Exception:
    pass
t.join(${(PEEK_MS + 3000) / 1000})
print(json.dumps({"echoed": got.hex(), "port": s.getsockname()[1]}))
s.close()
`;

/** The system's interpreter when there is one: a version manager's shim takes over a second to start. */
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

async function pyClient(source: string, port: number, plan: Plan): Promise<{ echoed: Buffer; localPort: number }> {
  const arg = JSON.stringify({
    pieces: piecesOf(plan).map((p) => p.toString('hex')),
    gaps: plan.gaps,
    urgentBefore: plan.urgentBefore ?? -1,
    expect: plan.flight.bytes.length,
  });
  const child = spawn(PYTHON, ['-c', PY_CLIENT, source, String(port), arg], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  await once(child, 'close');
  const r = JSON.parse(out) as { echoed: string; port: number };
  return { echoed: Buffer.from(r.echoed, 'hex'), localPort: r.port };
}

const seenOf = (l: LogLine, up: Upstream, echoed: Buffer): Seen => ({
  verdict: field(l, 'egressd.verdict'),
  reason: field(l, 'event.reason'),
  protocol: field(l, 'network.protocol'),
  domain: field(l, 'destination.domain'),
  sni: field(l, 'tls.client.server_name'),
  url: field(l, 'url.domain'),
  raw: field(l, 'egressd.raw_name'),
  alpn: field(l, 'egressd.alpn'),
  up: field(l, 'source.bytes'),
  down: field(l, 'destination.bytes'),
  upstream: Buffer.concat(up.received.flat()).toString('hex'),
  upstreamConns: up.received.length,
  // The refusal's answer names the destination's port, each case's own upstream's.
  echoed: Buffer.from(echoed.toString('latin1').replaceAll(`port ${up.port}`, 'port UPSTREAM'), 'latin1').toString('hex'),
});

/** The one-write answers of the path that ran first, by plan: the other path must agree. */
const firstPath = new Map<string, Seen>();

// `pressed`: one slot per loop for unanswered connections (splice_loop.h sl_loop_accept_cap): a
// connection waits in the kernel's queue while another is unanswered, and its flight may be
// there whole at its accept; a loop that gives up its graces when it holds more than half its
// slots would do so for every connection here. The same flights must give the same answers.
describe.each([
  { setup: 'node' as const, pressed: false, what: 'on node' },
  { setup: 'native' as const, pressed: false, what: 'on native' },
  { setup: 'native' as const, pressed: true, what: 'on native, one accept slot per loop' },
])('the first flight at its time boundaries, set up $what', ({ setup, pressed }) => {
  let d: LoopbackDaemon;
  const free: Record<Policy, string[]> = { name: sourcesOf('name'), addr: sourcesOf('addr'), 'addr-name': sourcesOf('addr-name') };
  /** The connections made, as source address:port, to find a second line for any of them. */
  const made: string[] = [];
  const whose = (l: LogLine): string => `${String(field(l, 'source.ip'))}:${String(field(l, 'source.port'))}`;
  const oneWrite = new Map<string, Seen>();

  beforeAll(async () => {
    d = await startLoopbackDaemon(
      loopbackConfig({
        sandboxes: [
          { id: 'sb-name', sources: sourcesOf('name'), network: { mode: 'block-all', egress: { allowed_domains: ['ok.test'] } } },
          { id: 'sb-addr', sources: sourcesOf('addr'), network: { mode: 'block-all', egress: { allowed_cidrs: ['127.0.0.1/32'] } } },
          {
            id: 'sb-addr-name',
            sources: sourcesOf('addr-name'),
            // A name a deny rule names refuses it (docs/dialects.md: a deny rule is consulted first).
            network: { mode: 'allow-all', egress: { denied_domains: ['bad.test'] } },
          },
        ],
        upstream: { dial: 'original' },
        peek: { timeoutMs: PEEK_MS, firstByteTimeoutMs: FIRST_BYTE_MS },
      }),
      { setup },
    );
    if (process.platform === 'linux') expect(d.daemon.nativeSetup !== null).toBe(setup === 'native');
    // The plane is the process's: put back after.
    if (pressed) d.daemon.nativeSetup?.setAcceptCap(1);
  });
  afterAll(async () => {
    if (pressed) d.daemon.nativeSetup?.setAcceptCap(512);
    // One line per connection: a second one would come within a batch (100 ms).
    await sleep(300);
    const lines = d.logs.filter((l) => action(l) === 'connection').map(whose);
    const twice = made.filter((c) => lines.filter((x) => x === c).length !== 1);
    await d.stop();
    expect(twice).toEqual([]);
  });

  /** Runs one plan from `source` (routed to `up`); the connection's log line and what the client got back. */
  async function connection(source: string, plan: Plan): Promise<{ line: LogLine; echoed: Buffer }> {
    const client = plan.urgentBefore === undefined ? nodeClient : pyClient;
    const { echoed, localPort } = await client(source, d.port(plan.listener), plan);
    // Ports repeat across source addresses: a connection is both.
    const me = `${source}:${localPort}`;
    made.push(me);
    const line = await d.waitForLog((l) => action(l) === 'connection' && whose(l) === me, PEEK_MS + 3000);
    return { line, echoed };
  }

  /** Runs one plan on its own source and upstream; what it saw. */
  async function run(plan: Plan): Promise<Seen> {
    const source = free[plan.policy].shift()!;
    const up = await recordingUpstream();
    try {
      d.route(source, '127.0.0.1', up.port);
      const { line, echoed } = await connection(source, plan);
      return seenOf(line, up, echoed);
    } finally {
      up.close();
    }
  }

  /** The same bytes in one write, once per path and plan (and the same as on the path that ran first). */
  async function reference(plan: Plan): Promise<Seen> {
    const key = `${plan.listener}/${plan.policy}/${plan.flight.key}`;
    let r = oneWrite.get(key);
    if (r) return r;
    r = await run({ listener: plan.listener, policy: plan.policy, flight: plan.flight, cuts: [], gaps: [0] });
    oneWrite.set(key, r);
    const other = firstPath.get(key);
    if (other) expect(r, `${key}: one write, ${setup} against the other path`).toEqual(other);
    else firstPath.set(key, r);
    return r;
  }

  async function expectSame(plan: Plan): Promise<void> {
    const ref = await reference(plan);
    const seen = await run(plan);
    expect(seen, `${plan.listener}/${plan.policy}/${plan.flight.key} cut at ${plan.cuts.join(',')} after ${plan.gaps.join(',')} ms`).toEqual(ref);
  }

  it('answers one write of each flight as its policy says', async () => {
    const r = async (listener: Plan['listener'], policy: Policy, f: string) => reference({ listener, policy, flight: FLIGHTS[f]!, cuts: [], gaps: [0] });
    expect(await r('tls', 'name', 'tls-ok')).toMatchObject({ verdict: 'allow', reason: 'allow-rule', sni: 'ok.test', domain: 'ok.test', up: HELLO_OK.length });
    expect(await r('tls', 'name', 'tls-bad')).toMatchObject({ verdict: 'refuse', reason: 'default-block', sni: 'bad.test', upstream: '' });
    expect(await r('http', 'name', 'http-ok')).toMatchObject({ verdict: 'allow', reason: 'allow-rule', domain: 'ok.test', up: HEAD_OK.length });
    expect(await r('http', 'name', 'http-bad')).toMatchObject({ verdict: 'refuse', reason: 'default-block', domain: 'bad.test', upstream: '' });
    expect(await r('tcp', 'addr-name', 'tls-bad')).toMatchObject({ verdict: 'refuse', domain: 'bad.test', upstream: '' });
    expect(await r('tcp', 'addr', 'tls-ok')).toMatchObject({ verdict: 'allow', sni: undefined, up: HELLO_OK.length, upstream: HELLO_OK.toString('hex') });
  });

  const PAUSES = [0, 5, 45, 49, 51, 55, 70, 120];
  const twoPieces: [string, string, string, number][] = [];
  for (const f of ['tls-ok', 'tls-bad', 'tls2-ok', 'tls2-bad', 'http-ok', 'http-bad'])
    for (const cut of Object.keys(FLIGHTS[f]!.cuts)) for (const p of PAUSES) twoPieces.push([f, cut, `${p} ms`, p]);

  it.each(twoPieces)('%s cut %s, the rest after %s: as in one write', async (f, cut, _ms, pause) => {
    const flight = FLIGHTS[f]!;
    await expectSame({ listener: f.startsWith('http') ? 'http' : 'tls', policy: 'name', flight, cuts: [flight.cuts[cut]!], gaps: [0, pause] });
  });

  const more: [string, Plan['listener'], Policy, number, string, string][] = [];
  for (const [f, listener, policy] of [
    ['tls-ok+data', 'tls', 'name'],
    ['http-ok+body', 'http', 'name'],
    ['tls-at-cap', 'tls', 'name'],
    ['http-endless', 'http', 'name'],
    ['ssh', 'tcp', 'name'],
    ['ssh', 'tcp', 'addr-name'],
  ] as const)
    for (const cut of Object.keys(FLIGHTS[f]!.cuts)) for (const p of [0, 45, 51, 55, 120]) more.push([`${f} cut ${cut}`, listener, policy, p, f, cut]);

  it.each(more)('%s on %s (%s), the rest after %i ms: as in one write', async (_what, listener, policy, pause, f, cut) => {
    const flight = FLIGHTS[f]!;
    await expectSame({ listener, policy, flight, cuts: [flight.cuts[cut]!], gaps: [0, pause] });
  });

  it.each([
    ['tls', 'name', 'tls-ok'],
    ['tls', 'name', 'tls-bad'],
    ['http', 'name', 'http-ok'],
    ['http', 'name', 'http-bad'],
    ['tcp', 'name', 'tls-ok'],
    ['tcp', 'name', 'http-bad'],
    // Allowed by address whatever the name: dialed without waiting for a byte (server-first).
    ['tcp', 'addr', 'tls-ok'],
    ['tcp', 'addr', 'http-ok'],
    ['tls', 'addr', 'tls-bad'],
    // Allowed by address unless the name is refused: the name is waited for.
    ['tcp', 'addr-name', 'tls-ok'],
    ['tcp', 'addr-name', 'tls-bad'],
    ['tls', 'addr-name', 'tls-bad'],
  ] as const)('an empty accept on %s (%s), then %s whole after 45, 55 and 120 ms: as in one write', async (listener, policy, f) => {
    for (const wait of [45, 55, 120]) await expectSame({ listener, policy, flight: FLIGHTS[f]!, cuts: [], gaps: [wait] });
  });

  it('a flight started shortly before the first-byte timeout and cut around the graces: as in one write', async () => {
    const f = FLIGHTS['tls-ok']!;
    await expectSame({ listener: 'tls', policy: 'name', flight: f, cuts: [f.cuts['inside the SNI']!], gaps: [FIRST_BYTE_MS - 150, 55] });
    const h = FLIGHTS['http-bad']!;
    await expectSame({ listener: 'http', policy: 'name', flight: h, cuts: [h.cuts['inside "Host:"']!], gaps: [FIRST_BYTE_MS - 150, 51] });
  });

  // The peek ends without the parser's answer (the cap, the deadline, the client's FIN or reset)
  // only when the bytes have none: the parser, asked less often while bytes drip in (peek-steps.ts
  // httpStepper), is asked once more then, or the reason depends on how the bytes were cut. A
  // reset too: the bytes received decide where they alone decide, a bad line among them
  // (splice_loop.c client_left; first-flight-endings.test.ts).
  it.each([
    ['http-late-bad-line', 'silence'],
    ['http-late-bad-line', 'fin'],
    ['http-late-bad-line', 'reset'],
    ['http-bad-line-at-cap', 'silence'],
    ['http-endless', 'silence'],
  ] as const)('%s cut before its end, the rest after 55 ms, then %s: the reason of one write', async (f, how) => {
    const flight = FLIGHTS[f]!;
    const cut = Object.values(flight.cuts)[0]!;
    const ref = await reference({ listener: 'http', policy: 'name', flight, cuts: [], gaps: [0] });
    expect(ref.reason).toBe(f === 'http-endless' ? 'too-large' : 'malformed-http');
    const seen = await run({
      listener: 'http',
      policy: 'name',
      flight,
      cuts: [cut],
      gaps: [0, 55],
      ...(how !== 'silence' ? { end: { how, afterMs: 20 } } : {}),
    });
    const judged = (x: Seen) => ({ verdict: x.verdict, reason: x.reason, protocol: x.protocol, domain: x.domain, url: x.url, upstream: x.upstream });
    expect(judged(seen)).toEqual(judged(ref));
    if (how === 'silence') expect(seen).toEqual(ref);
  });

  // Urgent data is out of band: a reader without SO_OOBINLINE (Node's, the loop's recv) never
  // sees the byte, and a read stops at its mark with the rest queued behind it (splice_loop.c
  // sl_conn.urg). The flight is the bytes around it, whenever it comes.
  it.each([
    ['tls-ok', 'inside the SNI', 55, 1],
    ['tls-bad', "before the SNI's last byte", 51, 1],
    ['tls2-ok', 'between two records', 45, 1],
    ['http-ok', 'inside "Host:"', 55, 1],
    ['http-ok', 'before the final CRLF', 5, 1],
    ['tls-ok', 'record header', 55, 0],
  ] as const)('%s cut %s, the rest after %i ms, a byte of urgent data before piece %i: as in one write without it', async (f, cut, pause, before) => {
    const flight = FLIGHTS[f]!;
    const listener = f.startsWith('http') ? 'http' : 'tls';
    await expectSame({ listener, policy: 'name', flight, cuts: [flight.cuts[cut]!], gaps: [before === 0 ? 55 : 0, pause], urgentBefore: before });
  });

  it('an empty accept, a byte of urgent data after 55 ms, then the whole hello: as in one write without it', async () => {
    await expectSame({ listener: 'tls', policy: 'name', flight: FLIGHTS['tls-ok']!, cuts: [], gaps: [55], urgentBefore: 0 });
  });

  // A client that goes before its flight is whole: peek-closed, nothing upstream, whichever side
  // of a grace its FIN or reset falls on.
  it.each([
    ['fin', 'tls-ok', 'inside the SNI', 0],
    ['fin', 'tls-ok', 'inside the SNI', 51],
    ['fin', 'tls-ok', 'inside the SNI', 55],
    ['fin', 'http-ok', 'before the final CRLF', 52],
    ['reset', 'tls-ok', 'inside the SNI', 20],
    ['reset', 'tls-ok', 'inside the SNI', 55],
    ['reset', 'tls2-bad', 'between two records', 49],
    ['reset', 'http-ok', 'inside "Host:"', 70],
  ] as const)('a %s %s ms after half of %s (cut %s): peek-closed, nothing upstream', async (how, f, cut, after) => {
    const flight = FLIGHTS[f]!;
    const listener = f.startsWith('http') ? 'http' : 'tls';
    const half: Flight = { ...flight, key: `${flight.key}-half`, bytes: flight.bytes.subarray(0, flight.cuts[cut]) };
    const seen = await run({ listener, policy: 'name', flight: half, cuts: [], gaps: [0], end: { how, afterMs: after } });
    expect(seen).toMatchObject({ reason: 'peek-closed', up: 0, upstream: '', upstreamConns: 0 });
  });

  it.each([
    ['fin', 30],
    ['fin', 55],
    ['reset', 30],
    ['reset', 55],
  ] as const)('a %s %i ms after an accept with no byte: peek-closed, nothing upstream', async (how, after) => {
    const none: Flight = { key: 'none', bytes: Buffer.alloc(0), cuts: {} };
    const seen = await run({ listener: 'tls', policy: 'name', flight: none, cuts: [], gaps: [0], end: { how, afterMs: after } });
    expect(seen).toMatchObject({ reason: 'peek-closed', up: 0, upstream: '', upstreamConns: 0 });
  });

  // The flight whole, its FIN right behind it, after a grace: a refused name is refused for its
  // name; an allowed one is carried (or, when the FIN is read before the upstream answers, ended
  // as client-fin: docs/logs.md), never with a byte more or less than the hello.
  it.each([
    ['tls-bad', 'inside the SNI', 51],
    ['tls-bad', 'inside the SNI', 55],
    ['http-bad', 'inside "Host:"', 55],
    ['tls-ok', 'inside the SNI', 51],
    ['tls-ok', 'inside the SNI', 55],
    ['tls2-ok', 'between two records', 70],
  ] as const)('%s cut %s, the rest and a FIN after %i ms: judged on its name, never a byte lost or added', async (f, cut, pause) => {
    const flight = FLIGHTS[f]!;
    const listener = f.startsWith('http') ? 'http' : 'tls';
    const ref = await reference({ listener, policy: 'name', flight, cuts: [], gaps: [0] });
    const seen = await run({ listener, policy: 'name', flight, cuts: [flight.cuts[cut]!], gaps: [0, pause], end: { how: 'fin', afterMs: 0 } });
    expect({ domain: seen.domain, sni: seen.sni, url: seen.url, protocol: seen.protocol }).toEqual({
      domain: ref.domain,
      sni: ref.sni,
      url: ref.url,
      protocol: ref.protocol,
    });
    if (ref.verdict === 'refuse') {
      expect(seen).toMatchObject({ verdict: 'refuse', reason: ref.reason, upstream: '', up: 0 });
    } else {
      expect(seen.verdict).toBe('allow');
      expect([ref.upstream, '']).toContain(seen.upstream);
      expect(seen.up).toBe(seen.upstream.length / 2);
    }
  });

  // Two connections from one source, their pieces interleaved around the graces: each judged on
  // its own bytes, and the allowed one's bytes alone reach the upstream, once.
  it.each([
    [0, 51, 55],
    [45, 49, 51],
    [5, 55, 120],
  ])(
    'two connections from one source dripping in turn (B starts %i ms after A, A ends after %i, B after %i ms): each as in one write',
    async (bStart, aRest, bRest) => {
      const ok = FLIGHTS['tls-ok']!;
      const bad = FLIGHTS['tls-bad']!;
      const refOk = await reference({ listener: 'tls', policy: 'name', flight: ok, cuts: [], gaps: [0] });
      const refBad = await reference({ listener: 'tls', policy: 'name', flight: bad, cuts: [], gaps: [0] });
      const source = free.name.shift()!;
      const up = await recordingUpstream();
      try {
        d.route(source, '127.0.0.1', up.port);
        const [a, b] = await Promise.all([
          connection(source, { listener: 'tls', policy: 'name', flight: ok, cuts: [ok.cuts['inside the SNI']!], gaps: [0, aRest] }),
          connection(source, { listener: 'tls', policy: 'name', flight: bad, cuts: [bad.cuts['inside the SNI']!], gaps: [bStart, bRest] }),
        ]);
        const name = (l: LogLine) => [field(l, 'egressd.verdict'), field(l, 'event.reason'), field(l, 'tls.client.server_name'), field(l, 'source.bytes')];
        expect(name(a.line)).toEqual([refOk.verdict, refOk.reason, refOk.sni, refOk.up]);
        expect(name(b.line)).toEqual([refBad.verdict, refBad.reason, refBad.sni, refBad.up]);
        expect(up.received.map((r) => Buffer.concat(r).toString('hex'))).toEqual([refOk.upstream]);
        expect(a.echoed.toString('hex')).toBe(refOk.echoed);
      } finally {
        up.close();
      }
    },
  );

  // Any cut into 2-4 pieces, any pauses around the graces (or none), the first piece at once or
  // after an empty accept: the same as one write. Bounded: each run takes at most ~400 ms.
  it('a property: any cut and pauses around the graces give what one write gives', async () => {
    const GAPS = [0, 0, 1, 5, 45, 49, 50, 51, 55, 70, 120];
    const plans = fc
      .record({
        f: fc.constantFrom('tls-ok', 'tls-bad', 'tls2-ok', 'tls2-bad', 'http-ok', 'http-bad', 'tls-ok+data', 'http-ok+body', 'ssh'),
        listener: fc.constantFrom('own', 'tcp'),
        policy: fc.constantFrom<Policy>('name', 'name', 'addr-name'),
        cutsAt: fc.uniqueArray(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 3 }),
        gaps: fc.array(fc.constantFrom(...GAPS), { minLength: 4, maxLength: 4 }),
        firstAt: fc.constantFrom(0, 0, 45, 55),
      })
      .map(({ f, listener, policy, cutsAt, gaps, firstAt }): Plan => {
        const flight = FLIGHTS[f]!;
        const n = flight.bytes.length;
        const cuts = [...new Set(cutsAt.map((x) => 1 + Math.floor(x * (n - 2))))].sort((x, y) => x - y);
        return {
          listener: listener === 'tcp' || f === 'ssh' ? 'tcp' : f.startsWith('http') ? 'http' : 'tls',
          policy,
          flight,
          cuts,
          gaps: [firstAt, ...gaps.slice(0, cuts.length)],
        };
      });
    await fc.assert(
      fc.asyncProperty(plans, async (plan) => {
        await expectSame(plan);
      }),
      { numRuns: 80, seed: 20261202, endOnFailure: true },
    );
  }, 60_000);
});
