import { describe, expect, it, vi } from 'vitest';
import { Admission } from '../../../src/limits/admission.ts';
import { effectiveLimits, parseLimits, type SandboxLimits } from '../../../src/limits/limits-body.ts';

const LIMITS: SandboxLimits = { connections: 4, undecided: 2, perSecond: 10, burst: 3 };

function clock(): { now: () => number; advance: (ms: number) => void } {
  let t = 1_000_000;
  return { now: () => t, advance: (ms) => (t += ms) };
}

describe('Admission', () => {
  // A step of the wall clock (NTP) back by an hour, made in this process alone (Date.now()
  // stepped), under the daemon's own clock (no `now` given).
  it("refills a sandbox's bucket as before after a step of the wall clock back", async () => {
    // Stepped from before Admission is made: it may keep Date.now itself, not look it up.
    const wall = Date.now.bind(Date);
    let step = 0;
    const spy = vi.spyOn(Date, 'now').mockImplementation(() => wall() + step);
    try {
      const a = new Admission({ globalConnections: null, sandboxShare: 1 });
      const limits: SandboxLimits = { connections: 100, undecided: 100, perSecond: 50, burst: 1 };
      expect(a.admit('sb', limits, false).ok).toBe(true);
      step = -3_600_000;
      // One token back within 20 ms at 50 a second; bounded. Measured on Date.now(), the bucket
      // went 180,000 tokens into debt and the sandbox was refused for the hour.
      let ok = false;
      for (let i = 0; i < 50 && !ok; i++) {
        await new Promise((r) => setTimeout(r, 25));
        ok = a.admit('sb', limits, false).ok;
      }
      expect(ok).toBe(true);
    } finally {
      spy.mockRestore();
    }
  });

  it('refuses past the undecided limit, and admits again once a connection is decided', () => {
    const c = clock();
    const a = new Admission({ globalConnections: null, sandboxShare: 1, now: c.now });
    const t1 = a.admit('sb', LIMITS, false);
    const t2 = a.admit('sb', LIMITS, false);
    expect(t1.ok && t2.ok).toBe(true);
    const r = a.admit('sb', LIMITS, false);
    expect(r).toMatchObject({ ok: false, reason: 'sandbox-limit' });
    if (!r.ok) expect(r.detail).toContain('undecided');
    if (t1.ok) t1.ticket.decided();
    expect(a.admit('sb', LIMITS, false).ok).toBe(true);
    expect(a.undecided).toBe(2);
    expect(a.open).toBe(3);
  });

  it('refuses past the open limit; a release frees a place; tickets are idempotent', () => {
    const c = clock();
    const a = new Admission({ globalConnections: null, sandboxShare: 1, now: c.now });
    const l = { ...LIMITS, undecided: 100, burst: 100, perSecond: 100 };
    const tickets = [1, 2, 3, 4].map(() => a.admit('sb', l, false));
    expect(tickets.every((t) => t.ok)).toBe(true);
    expect(a.admit('sb', l, false)).toMatchObject({ ok: false, reason: 'sandbox-limit' });
    const first = tickets[0]!;
    if (first.ok) {
      first.ticket.release();
      first.ticket.release();
      first.ticket.decided();
    }
    expect(a.open).toBe(3);
    expect(a.undecided).toBe(3);
    expect(a.admit('sb', l, false).ok).toBe(true);
  });

  it('rate-limits with a token bucket: the burst at once, then perSecond', () => {
    const c = clock();
    const a = new Admission({ globalConnections: null, sandboxShare: 1, now: c.now });
    const l = { connections: 1000, undecided: 1000, perSecond: 10, burst: 3 };
    const first = [1, 2, 3, 4].map(() => a.admit('sb', l, false).ok);
    expect(first).toEqual([true, true, true, false]);
    c.advance(100); // one token at 10/s
    expect(a.admit('sb', l, false).ok).toBe(true);
    expect(a.admit('sb', l, false).ok).toBe(false);
    c.advance(10_000); // refills to the burst, not beyond
    expect([1, 2, 3, 4].map(() => a.admit('sb', l, false).ok)).toEqual([true, true, true, false]);
  });

  it('keeps sandboxes apart: one at its limit does not refuse another', () => {
    const a = new Admission({ globalConnections: null, sandboxShare: 1 });
    while (a.admit('greedy', LIMITS, false).ok);
    expect(a.admit('greedy', LIMITS, false)).toMatchObject({ ok: false, reason: 'sandbox-limit' });
    expect(a.admit('other', LIMITS, false).ok).toBe(true);
  });

  it('refuses with global-limit at the budget, and one sandbox past its share of it', () => {
    const a = new Admission({ globalConnections: 10, sandboxShare: 0.5 });
    const l = { connections: 1000, undecided: 1000, perSecond: 1000, burst: 1000 };
    expect(a.sandboxShare).toBe(5);
    for (let i = 0; i < 5; i++) expect(a.admit('flood', l, false).ok).toBe(true);
    expect(a.admit('flood', l, false)).toMatchObject({ ok: false, reason: 'global-limit' });
    for (let i = 0; i < 5; i++) expect(a.admit(`other-${i}`, l, false).ok).toBe(true);
    expect(a.admit('late', l, false)).toMatchObject({ ok: false, reason: 'global-limit' });
  });

  it('sheds with overload while the memory guard says so, and the sandbox limit is reported first', () => {
    const a = new Admission({ globalConnections: null, sandboxShare: 1 });
    expect(a.admit('sb', LIMITS, true)).toMatchObject({ ok: false, reason: 'overload' });
    const full = { ...LIMITS, burst: 1 };
    expect(a.admit('x', full, false).ok).toBe(true);
    expect(a.admit('x', full, true)).toMatchObject({ ok: false, reason: 'sandbox-limit' });
  });

  it('a refused connection takes no token and holds nothing', () => {
    const a = new Admission({ globalConnections: 1, sandboxShare: 1 });
    const l = { connections: 10, undecided: 10, perSecond: 1, burst: 2 };
    expect(a.admit('a', l, false).ok).toBe(true);
    for (let i = 0; i < 100; i++) expect(a.admit('b', l, false).ok).toBe(false);
    expect(a.open).toBe(1);
    expect(a.view('b')).toEqual({ key: 'b', open: 0, undecided: 0 });
  });

  it('forgets an account once nothing is open and its bucket is full again, so memory stays flat', () => {
    const c = clock();
    const a = new Admission({ globalConnections: null, sandboxShare: 1, now: c.now });
    for (let i = 0; i < 1000; i++) {
      const t = a.admit(`source 198.18.0.${i % 250}:${i}`, LIMITS, false);
      if (t.ok) t.ticket.release();
    }
    // Each used one token of three, so the bucket is not full yet: kept until refilled.
    expect(a.accounts).toBe(1000);
    c.advance(1000);
    expect(a.sweep()).toBe(1000);
    expect(a.accounts).toBe(0);
  });

  it('keeps no account for a source it refuses holding nothing, so rotating addresses under overload or a full budget grow nothing', () => {
    // A sandbox with an IPv6 /64 can open each connection from a new source of no sandbox: shed at
    // accept, each would otherwise leave an account (≈ 190 bytes) until the 10 s sweep.
    const c = clock();
    const a = new Admission({ globalConnections: 1, sandboxShare: 1, now: c.now });
    const held = a.admit('sb', LIMITS, false);
    expect(held.ok).toBe(true);
    for (let i = 0; i < 10_000; i++) {
      const key = `source 2001:db8::${i.toString(16)}`;
      expect(a.admit(key, LIMITS, i % 2 === 0)).toMatchObject({ ok: false, reason: i % 2 === 0 ? 'overload' : 'global-limit' });
    }
    expect(a.accounts).toBe(1);
    // One whose bucket is what refuses it keeps its account, connections closed or not.
    const b = new Admission({ globalConnections: null, sandboxShare: 1, now: c.now });
    for (let i = 0; i < 3; i++) {
      const t = b.admit('source 2001:db8::1', LIMITS, false);
      if (t.ok) t.ticket.release();
    }
    expect(b.admit('source 2001:db8::1', LIMITS, false)).toMatchObject({ ok: false, reason: 'sandbox-limit' });
    expect(b.admit('source 2001:db8::1', LIMITS, true)).toMatchObject({ ok: false, reason: 'sandbox-limit' });
    expect(b.accounts).toBe(1);
  });

  it('lists the sandboxes holding the most connections first', () => {
    const a = new Admission({ globalConnections: null, sandboxShare: 1 });
    const l = { connections: 100, undecided: 100, perSecond: 100, burst: 100 };
    for (let i = 0; i < 3; i++) a.admit('three', l, false);
    a.admit('one', l, false);
    for (let i = 0; i < 2; i++) a.admit('two', l, false);
    expect(a.top(2).map((v) => [v.key, v.open])).toEqual([
      ['three', 3],
      ['two', 2],
    ]);
  });
});

describe('Admission, lingering refusals', () => {
  const MANY: SandboxLimits = { connections: 1000, undecided: 1000, perSecond: 1000, burst: 1000 };
  /** Admits one connection of `key`, refuses it, and asks for its linger (the ticket then released, as the pipeline does). */
  function refuseAndLinger(a: Admission, key: string): ReturnType<Admission['lingerOne']> {
    const r = a.admit(key, MANY, false);
    if (!r.ok) throw new Error(`not admitted: ${r.detail}`);
    r.ticket.decided();
    const hold = r.ticket.linger();
    r.ticket.release();
    return hold;
  }

  it('lets one sandbox linger on half its share of the descriptors, gives up the rest, and leaves it and the others room', () => {
    const givenUp: string[] = [];
    // Budget 10 connections (20 descriptors); a sandbox's share 5 connections (10 descriptors).
    const a = new Admission({ globalConnections: 10, sandboxShare: 0.5, onLingerGivenUp: (why) => givenUp.push(why) });
    const holds = Array.from({ length: 20 }, () => refuseAndLinger(a, 'flood'));
    expect(holds.filter((h) => h !== null)).toHaveLength(5);
    expect(a.lingering).toBe(5);
    expect(givenUp).toEqual(Array(15).fill('sandbox'));
    // Lingering counts against admission, a descriptor each: 5 + 2 × 2 of the share's 10.
    expect(a.admit('flood', MANY, false).ok).toBe(true);
    expect(a.admit('flood', MANY, false).ok).toBe(true);
    expect(a.admit('flood', MANY, false)).toMatchObject({ ok: false, reason: 'global-limit' });
    // The other sandbox has its share: 20 - 9 descriptors in all, 5 connections.
    const other = Array.from({ length: 5 }, () => a.admit('calm', MANY, false));
    expect(other.every((t) => t.ok)).toBe(true);
    expect(a.admit('calm', MANY, false)).toMatchObject({ ok: false, reason: 'global-limit' });
    // A released linger gives its descriptor back, once.
    holds[0]!.release();
    holds[0]!.release();
    expect(a.lingering).toBe(4);
  });

  it("gives up a linger past half the budget's descriptors, whichever sandboxes linger", () => {
    const givenUp: string[] = [];
    const a = new Admission({ globalConnections: 4, sandboxShare: 1, onLingerGivenUp: (why) => givenUp.push(why) });
    const holds = ['a', 'b', 'c', 'd', 'e'].map((k) => refuseAndLinger(a, k));
    expect(holds.map((h) => h !== null)).toEqual([true, true, true, true, false]);
    expect(givenUp).toEqual(['global']);
  });

  it('with no descriptor budget, places every linger (lingerMaxConnections alone shortens them)', () => {
    const a = new Admission({ globalConnections: null, sandboxShare: 0.5 });
    const holds = Array.from({ length: 100 }, () => refuseAndLinger(a, 'sb'));
    expect(holds.every((h) => h !== null)).toBe(true);
    expect(a.lingering).toBe(100);
  });

  // RFC 8305 staggered attempts: each attempt past a connection's first is a descriptor of its own.
  it("grants extra dial attempts from what the budget and the sandbox's share leave, and counts them against admission until given back", () => {
    // Budget 10 connections (20 descriptors); a sandbox's share 5 connections (10 descriptors).
    const withheld: number[] = [];
    const a = new Admission({ globalConnections: 10, sandboxShare: 0.5, onAttemptsWithheld: (n) => withheld.push(n) });
    const admit = (k: string) => {
      const r = a.admit(k, MANY, false);
      if (!r.ok) throw new Error(`not admitted: ${r.detail}`);
      return r.ticket;
    };
    const t1 = admit('flood');
    const t2 = admit('flood');
    // 4 of the share's 10 descriptors are the two connections': 6 left for attempts.
    expect(t1.attempts(15)).toBe(6);
    expect(t2.attempts(15)).toBe(0);
    expect(a.attemptsHeld).toBe(6);
    expect(withheld).toEqual([9, 15]);
    // The attempts hold the share: no third connection until the dial is over.
    expect(a.admit('flood', MANY, false)).toMatchObject({ ok: false, reason: 'global-limit' });
    const refused = a.admit('flood', MANY, false);
    if (!refused.ok) expect(refused.detail).toContain('6 extra dial attempts');
    // The other sandbox keeps its share.
    const calm = Array.from({ length: 5 }, () => admit('calm'));
    expect(calm[0]!.attempts(3)).toBe(0);
    // 7 connections (14 descriptors) and 6 attempts: no room for an eighth, though 7 < 10.
    expect(a.budgetFull).toBe(true);
    t1.attemptsDone();
    t1.attemptsDone();
    expect(a.attemptsHeld).toBe(0);
    expect(a.budgetFull).toBe(false);
    expect(admit('flood').attempts(1)).toBe(1);
    // A release gives back what the ticket still held; a released ticket is granted nothing.
    t2.release();
    expect(t2.attempts(5)).toBe(0);
    expect(a.attemptsHeld).toBe(1);
  });

  it('with no descriptor budget, grants every attempt asked for', () => {
    const a = new Admission({ globalConnections: null, sandboxShare: 0.5 });
    const r = a.admit('sb', MANY, false);
    expect(r.ok && r.ticket.attempts(15)).toBe(15);
    expect(r.ok && r.ticket.attempts(-2)).toBe(0);
  });

  it('keeps an account while it lingers, and forgets it once the linger ends', () => {
    const c = clock();
    const a = new Admission({ globalConnections: null, sandboxShare: 1, now: c.now });
    const hold = refuseAndLinger(a, 'sb');
    c.advance(10_000);
    expect(a.sweep()).toBe(0);
    expect(a.accounts).toBe(1);
    hold!.release();
    expect(a.accounts).toBe(0);
  });
});

describe('parseLimits', () => {
  it('takes any of the four keys', () => {
    expect(parseLimits({ connections: 10, burst: 5 }, 'limits')).toEqual({ ok: true, value: { connections: 10, burst: 5 } });
    expect(parseLimits({}, 'limits')).toEqual({ ok: true, value: {} });
  });

  it('names the field and the reason for each bad key, all at once', () => {
    const r = parseLimits({ connections: 0, perSecond: 1.5, burst: '4', rate: 1 }, 'sandboxes[0].limits');
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.issues.map((i) => i.field).sort((a, b) => a.localeCompare(b))).toEqual([
        'sandboxes[0].limits.burst',
        'sandboxes[0].limits.connections',
        'sandboxes[0].limits.perSecond',
        'sandboxes[0].limits.rate',
      ]);
      expect(r.issues.find((i) => i.field.endsWith('.connections'))!.reason).toMatch(/integer from 1 to 10000000, got number "?0"?/);
    }
    expect(parseLimits([1], 'limits').ok).toBe(false);
    expect(parseLimits(null, 'limits').ok).toBe(false);
  });
});

describe('effectiveLimits', () => {
  it('takes each key from the sandbox, then its organization, then the defaults', () => {
    const d = { connections: 1024, undecided: 256, perSecond: 200, burst: 400 };
    expect(effectiveLimits(d, { connections: 5 }, { connections: 50, perSecond: 7 })).toEqual({ connections: 5, undecided: 256, perSecond: 7, burst: 400 });
    expect(effectiveLimits(d, undefined, null)).toEqual(d);
  });

  it("counts DNS TCP connections in the budget and the sandbox's share: a quarter of the descriptors, an eighth more for refusing ones", () => {
    const c = clock();
    const a = new Admission({ globalConnections: 16, sandboxShare: 0.5, now: c.now });
    // 32 descriptors: DNS takes at most 8, whoever holds them; the eight sources of no sandbox below hold one each.
    const holds = Array.from({ length: 8 }, (_, i) => a.dnsTcp(`source 198.18.0.${i}`, 1000, false));
    for (const h of holds) expect(typeof h).toBe('object');
    expect(a.dnsTcp('source 198.18.0.99', 1000, false)).toBe('budget');
    expect(a.dnsTcpHeld).toBe(8);
    // Refusing ones have a part of their own: an eighth, 4.
    for (let i = 0; i < 4; i++) expect(typeof a.dnsTcp('source 198.18.0.99', 1000, true)).toBe('object');
    expect(a.dnsTcp('source 198.18.0.99', 1000, true)).toBe('budget');
    // Proxied connections have what is left: (32 - 12) / 2 = 10.
    let admitted = 0;
    while (a.admit(`sb${admitted}`, { ...LIMITS, burst: 100 }, false).ok) admitted++;
    expect(admitted).toBe(10);
    expect(a.budgetFull).toBe(true);
    // Given back, the descriptor is free again, and an account holding nothing is forgotten.
    (holds[0] as { release(): void }).release();
    (holds[0] as { release(): void }).release();
    expect(a.dnsTcpHeld).toBe(11);
    expect(a.dnsTcp('source 198.18.0.0', 1000, false)).not.toBe('budget');
  });

  it('refuses a DNS TCP connection past the total, and past the sandbox share, with the scope', () => {
    const a = new Admission({ globalConnections: 100, sandboxShare: 0.02, now: clock().now });
    // A share of 2 connections: 4 descriptors. One proxied connection takes two.
    const t = a.admit('sb', LIMITS, false);
    expect(t.ok).toBe(true);
    expect(typeof a.dnsTcp('sb', 10, false)).toBe('object');
    expect(typeof a.dnsTcp('sb', 10, false)).toBe('object');
    expect(a.dnsTcp('sb', 10, false)).toBe('sandbox');
    expect(a.dnsTcp('other', 2, false)).toBe('total');
    // The proxied side sees the DNS descriptors: the share is full.
    expect(a.admit('sb', LIMITS, false)).toMatchObject({ ok: false, reason: 'global-limit' });
  });
});
