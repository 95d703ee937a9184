// An upstream's answer as egressd writes it again for a sandbox (message.ts: read by dns-packet,
// written by dns-packet, owner names compressed when too long). The upstream is the sandbox's
// own when it asks a name whose zone it serves, so its labels may hold any byte: a dot (`a.` then
// `b`, which dns-packet reads as `a..b`), a line break, bytes that are not UTF-8. What egressd
// judges and remembers is the records as read; what the client reads must be those records, and
// writing them must end (the listener shares one event loop with every sandbox).

import { spawnSync } from 'node:child_process';
import * as packet from 'dns-packet';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { answerResponse, parseQuery, parseUpstreamReply, type Query } from '../../src/dns/message.ts';

/** A name as wire labels: each label's bytes exactly as given (RFC 1035 §3.1: a label is any octets). */
const wireName = (labels: readonly Buffer[]): Buffer => Buffer.concat([...labels.flatMap((l) => [Buffer.from([l.length]), l]), Buffer.from([0])]);

const QUESTION = 'evil.allowed.test';
const question = (): Buffer => wireName(QUESTION.split('.').map((l) => Buffer.from(l)));

/** An upstream reply to id 7's A question for QUESTION, its records' owners given as wire names, each an A record. */
function upstreamReply(owners: readonly Buffer[], address = [198, 18, 0, 9]): Buffer {
  const header = Buffer.from([0, 7, 0x81, 0x80, 0, 1, owners.length >> 8, owners.length & 0xff, 0, 0, 0, 0]);
  const records = owners.map((o) => Buffer.concat([o, Buffer.from([0, 1, 0, 1, 0, 0, 0, 60, 0, 4, ...address])]));
  return Buffer.concat([header, question(), Buffer.from([0, 1, 0, 1]), ...records]);
}

const query = (): Query => {
  const p = parseQuery(packet.encode({ type: 'query', id: 7, flags: packet.RECURSION_DESIRED, questions: [{ name: QUESTION, type: 'A' }] }));
  if (p.kind !== 'query') throw new Error('the query does not parse');
  return p.query;
};

describe('an upstream answer written again for the client', () => {
  it('is refused when a name would not be written back as read: a dot ending a label, a line break before a dot, bytes past 63 once written', () => {
    const tail = QUESTION.split('.').map((l) => Buffer.from(l));
    const cases: Buffer[][] = [
      [Buffer.from('a.'), Buffer.from('zzzzzzzzzzzz'), ...tail],
      [Buffer.from('x\n'), Buffer.from('.y'), ...tail],
      [Buffer.alloc(40, 0xff), ...tail],
    ];
    for (const labels of cases) {
      const r = parseUpstreamReply(upstreamReply([wireName(labels)]), 7, QUESTION, 'A');
      expect(r, JSON.stringify(labels.map((l) => l.toString('latin1')))).toMatchObject({ kind: 'malformed', why: expect.stringMatching(/read back/) });
    }
    // A dot inside a label is read as two labels and written as two: the same name either way.
    expect(parseUpstreamReply(upstreamReply([wireName([Buffer.from('a.b'), ...tail])]), 7, QUESTION, 'A')).toMatchObject({ kind: 'answer' });
  });

  it('reads back, as dns-packet reads it, as the records egressd read, whatever bytes the labels hold', () => {
    const byte = fc.constantFrom(0x2e, 0x0a, 0x41, 0x61, 0x7a, 0x2d, 0x30, 0xff, 0xc3, 0x00, 0x20);
    const label = fc.array(byte, { minLength: 1, maxLength: 24 }).map((b) => Buffer.from(b));
    const tail = QUESTION.split('.').map((l) => Buffer.from(l));
    const owner = fc.oneof(
      fc.constant(question()),
      fc.array(label, { minLength: 1, maxLength: 3 }).map((ls) => wireName([...ls, ...tail])),
    );
    fc.assert(
      fc.property(fc.array(owner, { minLength: 1, maxLength: 48 }), (owners) => {
        const r = parseUpstreamReply(upstreamReply(owners), 7, QUESTION, 'A');
        if (r.kind !== 'answer') return;
        const records = packet.decode(packet.encode({ type: 'response', id: 7, questions: [], answers: [...r.answered.answers] })).answers;
        expect(records).toEqual(r.answered.answers);
        // 512 octets (no EDNS): most of these are compressed to fit, or truncated.
        const out = packet.decode(answerResponse(query(), r.answered, 0, 512));
        if (((out.flags ?? 0) & 0x200) === 0) expect(out.answers).toEqual(r.answered.answers);
      }),
      { numRuns: 400 },
    );
  });

  it('compressOwners ends at once on a message that is not dns-packet’s own, with an error', () => {
    // dns-packet writes the name `a..zzzz` as `a` and an empty label, so a record header is read
    // from the labels after it. Run apart, so that a walk that never ends fails the test.
    const src = new URL('../../src/dns/message.ts', import.meta.url).pathname;
    const code = `
      import * as packet from 'dns-packet';
      import { compressOwners } from ${JSON.stringify(src)};
      const answers = [{ name: 'a..zzzzzzzzzzzzzzzzzzzz.evil.test', type: 'A', ttl: 60, data: '198.18.0.1' },
        ...Array.from({ length: 40 }, (_, i) => ({ name: 'n' + i + '.evil.test', type: 'A', ttl: 60, data: '198.18.0.2' }))];
      const msg = packet.encode({ type: 'response', id: 1, questions: [{ name: 'evil.test', type: 'A' }], answers });
      const t = performance.now();
      try { compressOwners(msg); console.log('written'); }
      catch (e) { console.log('refused: ' + e.message); }
      console.log(Math.round(performance.now() - t));`;
    const run = spawnSync(process.execPath, ['--input-type=module', '-e', code], {
      cwd: new URL('../..', import.meta.url).pathname,
      timeout: 10_000,
      encoding: 'utf8',
    });
    expect(run.signal, run.stderr).toBeNull();
    const [said, ms] = run.stdout.trim().split('\n');
    expect(said).toMatch(/^refused: (a label|a name|\d+ octets)/);
    // It was refused after growing its label list to the most an array holds: seconds of a
    // stalled event loop, each time the answer was asked for.
    expect(Number(ms)).toBeLessThan(1000);
  });
});
