// The benchmark's loop floor (bench/proxy/run.ts runs it as the "loop floor" column; bench/conn-js.ts
// --floor on loopback): egressd's own native loop (native/build/data_plane.node, hosted on Node's
// event loop as egressd's loop 0 is) with the least JavaScript a connection can cost. The loop
// accepts, reads the original destination and the first flight under the same rules as egressd,
// and reports; the report's handler dials at once. No admission, no parse, no verdict, no DNS, no
// log line, no metrics. Against the egressd column, the difference is what egressd's JavaScript
// costs per connection; against nginx, what the C loop and one crossing to JavaScript each way
// cost. Bench-only: it allows everything, so it listens only where the benchmark's REDIRECT sends
// the client namespace's traffic, inside the router namespace.
//
//   node bench/proxy/loop-floor.ts PORT
//
// Prints "listening" once the listener is bound; runs until SIGTERM/SIGINT.

import { createRequire } from 'node:module';
import type { DataPlaneAddon, OutcomeFn, SetupFn } from '../../src/net/native-splice.ts';
import { PEEK_CAPS } from '../../src/peek/peek-steps.ts';
import { validateConfig } from '../../src/config/schema.ts';
import { CONNECTION_ATTEMPT_DELAY_MS } from '../../src/net/dial-first.ts';

/** A running loop floor: its port, what crossed to JavaScript so far, and how to stop it. */
export interface LoopFloor {
  readonly port: number;
  readonly reports: { accepted: number; outcome: number };
  stop(): void;
}

/**
 * Starts the loop floor: `threads` loops (loop 0 hosted on Node's event loop where the addon can),
 * one listener on host:port (0: any free port), egressd's default peek and dial times. `dialTo`
 * gives the address and port to dial from the original destination the loop read (null when it
 * could not read one); it answers the original destination itself behind a REDIRECT.
 */
export function startLoopFloor(
  threads: number,
  host: string,
  port: number,
  dialTo: (orig: string | null, origPort: number) => [string, number] | null,
): LoopFloor {
  const defaults = validateConfig({});
  if (!defaults.ok) throw new Error('the built-in configuration does not validate');
  const { peek, upstream } = defaults.config;
  const addon = createRequire(import.meta.url)('../../native/build/data_plane.node') as DataPlaneAddon;
  const reports = { accepted: 0, outcome: 0 };
  // native/data_plane.c's report kinds (native-setup.ts names them): an accept, with its first
  // flight unless it came early, in which case the flight follows as a peek report.
  const EV_ACCEPTED = 1;
  const TAG = 1;
  const onSetup: SetupFn = (kind, id, loop, _tag, err, _state, _connectUs, _peer, _peerPort, orig, origPort) => {
    if (kind !== EV_ACCEPTED) return;
    reports.accepted++;
    const to = dialTo(err === 0 ? orig : null, origPort);
    if (to === null) return addon.abort(loop, id);
    // egressd's default times (connect, idle) and RFC 8305's delay between attempts.
    addon.dial(loop, id, [to[0]], to[1], upstream.connectTimeoutMs, CONNECTION_ATTEMPT_DELAY_MS, 1, upstream.idleTimeoutMs, 0, false, -1, false);
  };
  const onOutcome: OutcomeFn = () => {
    reports.outcome++;
  };
  addon.start(threads, onOutcome, onSetup, PEEK_CAPS.any, addon.hostedAvailable?.() === true);
  const bound = addon.listen(host, port, false, 1024, TAG);
  // egressd's default peek times, as native-setup.ts passes them (the stall is the first-byte wait).
  addon.peekRules(TAG, peek.timeoutMs, peek.firstByteTimeoutMs, peek.firstByteTimeoutMs);
  // The hosted loop's handles do not keep Node's event loop alive (egressd's listeners' owners do).
  const alive = setInterval(() => {}, 2 ** 30);
  return {
    port: bound,
    reports,
    stop: () => {
      addon.unlisten(TAG);
      clearInterval(alive);
    },
  };
}

if (import.meta.main) {
  const port = Number(process.argv[2]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    console.error('usage: loop-floor.ts PORT');
    process.exit(2);
  }
  const floor = startLoopFloor(1, '0.0.0.0', port, (orig, origPort) => (orig === null ? null : [orig, origPort]));
  console.log('listening');
  const stop = (): void => {
    floor.stop();
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}
