// A connection the kernel and the listeners had accepted when SIGTERM came, on both set-up paths:
// its client is connected and has sent its first bytes, but egressd had not judged it yet (the
// native loops report a connection once its first flight is read). The drain lets the open
// connections finish; this one was reset unjudged, with no log line and no count, on the native
// set-up (egressd's default) every time: a client of a draining egressd in a rollout saw a reset
// where the process beside it would have served it. It is now judged and carried in the drain.

import { describe, expect, it } from 'vitest';
import { echoThroughEgressd } from '../../helpers/echo-through-egressd.ts';
import { field, isConnection } from '../../helpers/log-line.ts';

const SOURCE = '127.0.8.30';

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('a connection accepted just before a stop, set up on $setup', ({ setup }) => {
  it('is judged and carried while egressd drains, not reset unseen', async () => {
    const { d, client, closed } = await echoThroughEgressd(SOURCE, setup);
    let got = '';
    client.on('data', (b: Buffer) => {
      got += b.toString('latin1');
      if (got === 'ping') client.end();
    });
    // Connected and its first bytes sent: the stop (SIGTERM's) comes before egressd has judged it.
    let stopped: Promise<void> | undefined;
    client.once('connect', () => {
      client.write('ping');
      stopped = d.daemon.stop(5000);
    });
    await closed;
    await stopped;
    expect(got).toBe('ping');
    const line = d.logs.find((l) => isConnection(l) && field(l, 'source.ip') === SOURCE);
    expect(line && { verdict: field(line, 'egressd.verdict'), endedBy: field(line, 'egressd.ended_by') }).toEqual({ verdict: 'allow', endedBy: 'client' });
  });
});
