// The data path of the in-process daemons a test starts. EGRESSD_DATA_PLANE sets it for every
// daemon in the process, the data phase and the set-up alike (src/net/native-splice.ts
// dataPlaneFromEnv), as it does for `egressd serve`: `EGRESSD_DATA_PLANE=js npx vitest run ...`
// runs the suites on the JavaScript path. A test that names the native loops still runs them.

import { configureNativeSplice, nativeSpliceStarted } from '../../src/net/native-splice.ts';

/**
 * Turns the native loops back on when EGRESSD_DATA_PLANE=js turned them off, for a test that asks
 * for the native set-up or splice by name. Call before the first daemon or splice of the test
 * file starts them; once the loops run, nothing changes.
 */
export function useNativeLoops(): void {
  if (!nativeSpliceStarted()) configureNativeSplice({ enabled: true });
}
