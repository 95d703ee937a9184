// What a held connection keeps (issue 12: RSS per held connection): once its dial is under way,
// the pipeline lets go of the first flight it peeked (and what was parsed from it); the
// connection's end, hours later for a held one, still fills the outcome it logs.

import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { PolicyStore } from '../../../src/control/store.ts';
import type { ClientSide, ConnectOptions, ConnectResult } from '../../../src/net/client-side.ts';
import { handleClient, type PipelineDeps } from '../../../src/net/connection.ts';
import type { ConnectionOutcome } from '../../../src/net/outcome.ts';
import { tenantKeyOf } from '../../../src/match/tenant-key.ts';
import { ConnectionRegistry } from '../../../src/net/registry.ts';
import { DEFAULTS_TYPED } from '../../../src/schema/constants.ts';
import { DEFAULT_LINGER } from '../../../src/net/refuse.ts';
import type { NameResolver } from '../../../src/net/resolve.ts';
import type { PeekOutcome } from '../../../src/net/peek-socket.ts';
import type { Peeked } from '../../../src/peek/peek-steps.ts';
import { parseNetworkBody } from '../../../src/policy/network-body.ts';
import { buildHello } from '../../helpers/hello-builder.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const ticks = async (n = 20): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

/** A client whose first flight is a ClientHello for `allowed.test`, and whose dial is held until `end` is called. */
function heldClient(): { client: ClientSide; firstFlight: () => WeakRef<Buffer> | null; dialing: () => boolean; end: (r: ConnectResult) => void } {
  // Made once the pipeline asks, and referenced from here only weakly.
  let firstFlight: WeakRef<Buffer> | null = null;
  let end: ((r: ConnectResult) => void) | null = null;
  const client: ClientSide = {
    remoteAddress: '198.18.0.2',
    remotePort: 40000,
    originalDst: () => ({ kind: 'redirected', address: '198.18.1.2', port: 443 }),
    peek: (step) => {
      const bytes = Buffer.from(buildHello({ sni: ['allowed.test'] }));
      firstFlight = new WeakRef(bytes);
      const s = step(bytes);
      if (!s.done) throw new Error('the hello should parse in one step');
      return Promise.resolve({ kind: 'done', result: s.result, bytes } as PeekOutcome<Peeked>);
    },
    watchGone: () => () => {},
    // As the native loop does: the first flight is the loop's to write, so the options' `initial`
    // is not kept; the dial's callbacks are.
    connect: (o: ConnectOptions) => {
      const { recheck, closing } = o;
      return new Promise<ConnectResult>((resolve) => {
        end = (r) => {
          void recheck;
          void closing;
          resolve(r);
        };
      });
    },
    refuse: () => {},
    reset: () => {},
  };
  return { client, firstFlight: () => firstFlight, dialing: () => end !== null, end: (r) => end!(r) };
}

describe('a held connection', () => {
  // `resolved`: the name is looked up on the wire first, so the first flight waits for the answer.
  it.each(['original', 'resolved'] as const)(
    'lets go of its peeked first flight once the dial is under way, and still logs its end (dial %s)',
    async (dial) => {
      const network = parseNetworkBody({ mode: 'block-all', egress: { allowed_domains: ['allowed.test'], allowed_ports: [443] } });
      if (!network.ok) throw new Error(JSON.stringify(network.issues));
      const store = new PolicyStore({ protected: { extra: [], except: ['198.18.0.0/15'], nat64Prefixes: [] }, catalog: [], dnsServers: [] }, network.value);
      store.putSandbox({ id: 'sbx', sources: ['198.18.0.2'], org: null, network: network.value });
      const outcomes: ConnectionOutcome[] = [];
      const deps: PipelineDeps = {
        config: () => ({
          peek: { timeoutMs: 5000, firstByteTimeoutMs: 1000 },
          upstream: { dial, connectTimeoutMs: 5000, idleTimeoutMs: 60_000 },
          block: 'explain',
          refusal: DEFAULT_LINGER,
        }),
        policies: store,
        resolver: {
          cached: () => null,
          resolve: async () => {
            await ticks(2);
            return { ok: true, addresses: ['198.18.1.2'], cached: false };
          },
        } as unknown as NameResolver,
        registry: new ConnectionRegistry(),
        tenantOf: tenantKeyOf(DEFAULTS_TYPED.limits.unknownSourcePrefix),
        originalDst: () => {
          throw new Error('not used: the client side answers it');
        },
        emit: (o) => outcomes.push(o),
      };
      const c = heldClient();
      const done = handleClient(c.client, 'tls', deps);
      await ticks();
      expect(c.dialing()).toBe(true);
      gc();
      await ticks();
      gc();
      expect(c.firstFlight()).not.toBeNull();
      expect(c.firstFlight()!.deref(), 'the first flight is still referenced while the connection is held').toBeUndefined();

      c.end({ kind: 'spliced', address: '198.18.1.2', connectMs: 1, attempts: [], splice: { bytesUp: 517, bytesDown: 1, end: 'closed', firstFin: 'client' } });
      await done;
      expect(outcomes).toHaveLength(1);
      expect(outcomes[0]).toMatchObject({ verdict: 'allow', name: 'allowed.test', dialed: '198.18.1.2', bytesUp: 517, bytesDown: 1, endedBy: 'client' });
    },
  );
});
