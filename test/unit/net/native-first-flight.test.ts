// The native set-up's one report per connection (native/splice_loop.h sl_loop_rules): a listener
// with peek times has the loops read the first flight themselves. An empty accept is reported at
// once as WAITING, and the pipeline then waits for the loop's own report, asking nothing; that
// report may come before the pipeline asks, and is kept. The addon is a recording stand-in.

import { describe, expect, it } from 'vitest';
import type { DataPlaneAddon } from '../../../src/net/native-splice.ts';
import { NativeSetup, type NativeClient } from '../../../src/net/native-setup.ts';
import { anyStepper, PEEK_CAPS } from '../../../src/peek/peek-steps.ts';
import { buildHello } from '../../helpers/hello-builder.ts';

const EV_ACCEPTED = 1;
const EV_PEEK = 2;
const PEEK_MORE = 0;
const PEEK_SILENT = 3;
const PEEK_CLOSED = 5;
const PEEK_WAITING = 6;
/** native-splice.ts ENDS: sl_end's codes. */
const END_CLIENT_RESET = 1;
const END_ABORTED = 4;

function plane(peek = { timeoutMs: 5000, firstByteTimeoutMs: 1000 }) {
  const calls: { peek: unknown[][]; rules: unknown[][]; abort: unknown[][] } = { peek: [], rules: [], abort: [] };
  const addon = {
    listen: () => 4430,
    abort: (...a: unknown[]) => calls.abort.push(a),
    answered: () => {},
    setPolicyVersion: () => {},
    peek: (...a: unknown[]) => calls.peek.push(a),
    peekRules: (...a: unknown[]) => calls.rules.push(a),
  } as unknown as DataPlaneAddon;
  const setup = new NativeSetup(addon, 1);
  const clients: NativeClient[] = [];
  let rules = peek;
  const { tag } = setup.listen(
    'tls',
    { host: '127.0.0.1', port: 0, text: '127.0.0.1:0' },
    { onAccept: (c: NativeClient) => clients.push(c), onShed: () => {}, peek: () => rules },
  );
  const accept = (id: number, state: number, bytes: Buffer | null): NativeClient => {
    setup.event(EV_ACCEPTED, id, 0, tag, 0, state, 0, '198.18.0.2', 40000, '198.18.1.2', 443, bytes, 0);
    return clients.at(-1)!;
  };
  const report = (id: number, state: number, bytes: Buffer | null): void => setup.event(EV_PEEK, id, 0, tag, 0, state, 0, null, 0, null, 0, bytes, 0);
  const change = (next: typeof peek): void => {
    rules = next;
    setup.peekRulesChanged();
  };
  const outcome = (id: number, end: number): void => setup.outcome(id, 0, 0, end, 0, -1, 0, [], -1, 0);
  return { setup, calls, tag, accept, report, change, outcome };
}

const hello = Buffer.from(buildHello({ sni: ['a.test'] }));
const opts = () => ({ deadline: performance.now() + 5000, maxBytes: PEEK_CAPS.any, firstByteTimeoutMs: 1000 });

describe('the native loops read the first flight and report it once', () => {
  it("give the loops the peek's times at listen, and again when they change", () => {
    const p = plane();
    expect(p.calls.rules).toEqual([[p.tag, 5000, 1000, 1000]]);
    p.change({ timeoutMs: 3000, firstByteTimeoutMs: 250 });
    expect(p.calls.rules.at(-1)).toEqual([p.tag, 3000, 250, 250]);
  });

  it('judge a whole flight from the accept report alone', async () => {
    const p = plane();
    const c = p.accept(1, PEEK_MORE, hello);
    const o = await c.peek(anyStepper(), opts());
    expect(o.kind).toBe('done');
    expect(p.calls.peek).toEqual([]);
  });

  it('after an empty accept report, wait for the loop’s report without asking', async () => {
    const p = plane();
    const c = p.accept(2, PEEK_WAITING, null);
    const pending = c.peek(anyStepper(), opts());
    p.report(2, PEEK_MORE, hello);
    const o = await pending;
    expect(o).toMatchObject({ kind: 'done', bytes: hello });
    expect(p.calls.peek).toEqual([]);
  });

  it('keep the loop’s report when it comes before the pipeline asks, bytes in order', async () => {
    const p = plane();
    const c = p.accept(3, PEEK_WAITING, hello.subarray(0, 10));
    p.report(3, PEEK_MORE, hello.subarray(10));
    const o = await c.peek(anyStepper(), opts());
    expect(o).toMatchObject({ kind: 'done', bytes: hello });
    expect(p.calls.peek).toEqual([]);
  });

  it('take a silent report kept from before as silent', async () => {
    const p = plane();
    const c = p.accept(4, PEEK_WAITING, null);
    p.report(4, PEEK_SILENT, null);
    expect((await c.peek(anyStepper(), opts())).kind).toBe('silent');
  });

  it('still ask for more when the loop reported a flight the parser finds short', async () => {
    const p = plane();
    const c = p.accept(5, PEEK_MORE, hello.subarray(0, 3));
    const pending = c.peek(anyStepper(), opts());
    expect(p.calls.peek.length).toBe(1);
    p.report(5, PEEK_MORE, hello.subarray(3));
    expect((await pending).kind).toBe('done');
  });

  // egressd's own reset (critical memory pressure, shutdown) ends a peek as it is, as on Node's
  // sockets, where no byte comes after resetAndDestroy (peek-socket.ts onClose): the abort is a
  // command the loop runs after the events of its turn, so a report may still come between the
  // reset and the outcome, the client's bytes and its going (client_left) or the flight made
  // whole. Judged, it made a bad request reset under pressure a malformed-http refusal, and a
  // denied name a refusal by policy, where Node's sockets log peek-closed.
  it.each([
    ['a bad line and the client’s reset', PEEK_CLOSED, 'Bad Line\r\n', END_CLIENT_RESET],
    ['the rest of the head, whole', PEEK_MORE, 'User-Agent: t\r\n\r\n', END_ABORTED],
  ])('after egressd reset it, judge no report that came before the outcome: %s', async (_what, state, rest, end) => {
    const p = plane();
    const head = Buffer.from('GET /x HTTP/1.1\r\nHost: a.test\r\n');
    const c = p.accept(6, PEEK_WAITING, head);
    const pending = c.peek(anyStepper(), opts());
    c.resetAndDestroy();
    expect(p.calls.abort).toEqual([[0, 6]]);
    p.report(6, state, Buffer.from(rest));
    p.outcome(6, end);
    expect(await pending).toEqual({ kind: 'closed', bytes: head });
  });
});
