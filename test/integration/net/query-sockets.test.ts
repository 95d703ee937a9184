// The process's pool of DNS query sockets (src/net/query-sockets.ts) against a loopback UDP
// echo: replies reach the query whose id they carry, on its socket only; the TCP places are
// handed on in order and given up at their deadline or at close, and one tenant holds no more
// than its share while the places left are fewer than a share.

import { createSocket } from 'node:dgram';
import { describe, expect, it, onTestFinished } from 'vitest';
import { QuerySockets, QueryTenants, tenantShare, type TcpHeldBack } from '../../../src/net/query-sockets.ts';

/** A UDP server on 127.0.0.1 that sends every datagram back; its port. */
async function echo(): Promise<number> {
  const s = createSocket('udp4');
  s.on('message', (m, r) => s.send(m, r.port, r.address));
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve));
  onTestFinished(() => void s.close());
  return s.address().port;
}

const query = (id: number): Buffer => {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(id, 0);
  return b;
};

describe('QuerySockets', () => {
  it('opens at most its size of sockets, gives each query an id free on its socket, and routes each reply to it', async () => {
    const port = await echo();
    const pool = new QuerySockets({ size: 2 });
    onTestFinished(() => pool.close());
    const got = new Map<number, number>();
    const sent = Array.from({ length: 50 }, (_, i) => {
      const q = pool.send('127.0.0.1', port, query, (buf) => got.set(i, buf.readUInt16BE(0)))!;
      return q;
    });
    await new Promise((r) => setTimeout(r, 200));
    expect(pool.open).toBeLessThanOrEqual(2);
    // Every query heard its own reply, with its own id, and no other.
    expect([...got.keys()].sort((a, b) => a - b)).toEqual(sent.map((_, i) => i));
    for (const [i, id] of got) expect(id).toBe(sent[i]!.id);
    expect(pool.waiting).toBe(50);
    for (const q of sent) q.cancel();
    expect(pool.waiting).toBe(0);
  });

  it('hands TCP places on oldest first, gives a waiter up at its deadline, and every waiter up at close', async () => {
    const pool = new QuerySockets({ tcpMax: 1 });
    const first = await pool.tcpSlot(0);
    expect(first).not.toBeNull();
    expect(await pool.tcpSlot(0)).toBeNull();
    expect(await pool.tcpSlot(20)).toBeNull();
    const order: string[] = [];
    const a = pool.tcpSlot(5_000).then((r) => (order.push('a'), r));
    const b = pool.tcpSlot(5_000).then((r) => (order.push('b'), r));
    first!();
    first!();
    const ra = await a;
    expect(order).toEqual(['a']);
    ra!();
    const rb = await b;
    expect(order).toEqual(['a', 'b']);
    const c = pool.tcpSlot(5_000);
    pool.close();
    expect(await c).toBeNull();
    rb!();
    expect(await pool.tcpSlot(0)).toBeNull();
    expect(pool.send('127.0.0.1', 9, query, () => {})).toBeNull();
  });

  it("lends a tenant the places others do not use, but never the last share's worth; a freed place goes to the tenant holding fewest", async () => {
    const heldBack: TcpHeldBack[] = [];
    const pool = new QuerySockets({ tcpMax: 8, onTcpHeldBack: (why) => heldBack.push(why) });
    onTestFinished(() => pool.close());
    expect(tenantShare(8)).toBe(2);
    // Tenant a takes all it may: its share of 2, then lent places while more than 2 stay free.
    const a: (() => void)[] = [];
    for (;;) {
      const r = await pool.tcpSlot(0, 'a');
      if (r === null) break;
      a.push(r);
    }
    expect(a).toHaveLength(6);
    expect(heldBack).toEqual(['sandbox']);
    // Tenant b is not kept waiting: the places a may not take are there for it.
    const b1 = await pool.tcpSlot(0, 'b');
    const b2 = await pool.tcpSlot(0, 'b');
    expect(b1).not.toBeNull();
    expect(b2).not.toBeNull();
    expect(pool.tcpInUse).toBe(8);
    // All taken: a and c wait. A place a frees goes to c (holding none), not back to a.
    const order: string[] = [];
    const aMore = pool.tcpSlot(5_000, 'a').then((r) => (order.push('a'), r));
    const c = pool.tcpSlot(5_000, 'c').then((r) => (order.push('c'), r));
    expect(heldBack).toEqual(['sandbox', 'global', 'global']);
    a.pop()!();
    const rc = await c;
    expect(rc).not.toBeNull();
    expect(order).toEqual(['c']);
    // b lets go: two places free, but a (holding five) would leave fewer than a share free.
    b1!();
    b2!();
    await new Promise((r) => setTimeout(r, 20));
    expect(order).toEqual(['c']);
    // c lets go: three free, and a's waiting retry takes one.
    rc!();
    const ra = await aMore;
    expect(ra).not.toBeNull();
    expect(order).toEqual(['c', 'a']);
    for (const r of [...a, ra!]) r();
    expect(pool.tcpInUse).toBe(0);
  });

  it('gives a waiting retry up when its signal aborts (its query answered otherwise), and hands the place to the next', async () => {
    const pool = new QuerySockets({ tcpMax: 1 });
    onTestFinished(() => pool.close());
    const held = await pool.tcpSlot(0, 'a');
    expect(held).not.toBeNull();
    const answered = new AbortController();
    const gone = pool.tcpSlot(5_000, 'b', answered.signal);
    const next = pool.tcpSlot(5_000, 'c');
    answered.abort();
    expect(await gone).toBeNull();
    held!();
    const rc = await next;
    expect(rc).not.toBeNull();
    expect(pool.tcpInUse).toBe(1);
    rc!();
    expect(await pool.tcpSlot(5_000, 'd', answered.signal)).toBeNull();
    expect(pool.tcpInUse).toBe(0);
  });

  it("charges a shared query's retry to whichever of its tenants may take a place, one that joins while it waits too", async () => {
    let joined = 0;
    const pool = new QuerySockets({ tcpMax: 8, onTcpJoined: () => joined++ });
    onTestFinished(() => pool.close());
    const a: (() => void)[] = [];
    for (let r = await pool.tcpSlot(0, 'a'); r !== null; r = await pool.tcpSlot(0, 'a')) a.push(r);
    expect(a).toHaveLength(6);
    // a's query, waiting: b joins it, and the retry takes a place of b's at once.
    const shared = new QueryTenants('a');
    const waiting = pool.tcpSlot(5_000, shared);
    let granted = false;
    void waiting.then(() => (granted = true));
    await new Promise((r) => setImmediate(r));
    expect(granted).toBe(false);
    shared.join('b');
    const rb = await waiting;
    expect(rb).not.toBeNull();
    expect(joined).toBe(1);
    // Charged to b: b has one place of its share left, and a still none.
    expect(await pool.tcpSlot(0, 'a')).toBeNull();
    const b2 = await pool.tcpSlot(0, 'b');
    expect(b2).not.toBeNull();
    expect(await pool.tcpSlot(0, 'b')).toBeNull();
    // A query already joined by a tenant holding fewer places is charged to it from the start.
    b2!();
    rb!();
    const both = new QueryTenants('a');
    both.join('c');
    const rc = await pool.tcpSlot(0, both);
    expect(rc).not.toBeNull();
    expect(joined).toBe(2);
    for (const r of [...a, rc!]) r();
    expect(pool.tcpInUse).toBe(0);
  });
});
