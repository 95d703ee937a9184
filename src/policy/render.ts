// Renders model values back into the sandbox0 wire vocabulary, for GET answers and logs.

import type { PortRange } from './model.ts';

/** `[{from:443,to:443},{from:8000,to:8999}]` → `[443, "8000-8999"]`. */
export function formatPorts(ports: readonly PortRange[]): (number | string)[] {
  return ports.map((p) => (p.from === p.to ? p.from : `${p.from}-${p.to}`));
}
