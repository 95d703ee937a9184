// The config file as the daemon and `egressd validate` read it (src/config/load.ts): what the
// YAML or JSON reader takes, and where each problem is said to be.

import { describe, expect, it } from 'vitest';
import { configFromText } from '../../../src/config/load.ts';

/** The error configFromText raises for `text`, as an operator reads it. */
function refusal(text: string, file = 'egressd.yaml'): string {
  try {
    configFromText(text, file);
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error(`accepted: ${text}`);
}

describe('merge keys in the config file', () => {
  const shared = 'sandboxes:\n  - id: a\n    sources: ["198.18.0.1"]\n    network: &net\n      mode: block-all\n      egress:\n        allowed_ports: [443]\n';

  it('a sandbox that merges another\'s network has the same policy as one that writes it out', () => {
    const merged = configFromText(`${shared}  - id: b\n    sources: ["198.18.0.2"]\n    network:\n      <<: *net\n`, 'merged.yaml');
    const written = configFromText(
      `${shared}  - id: b\n    sources: ["198.18.0.2"]\n    network:\n      mode: block-all\n      egress:\n        allowed_ports: [443]\n`,
      'written.yaml',
    );
    expect(merged.sandboxes).toEqual(written.sandboxes);
  });

  it('the merged fields are validated where they are used, each problem at the line its value is written on', () => {
    const text = shared.replace('[443]', '[70000]') + '  - id: b\n    sources: ["198.18.0.2"]\n    network:\n      <<: *net\n      bogus: 1\n';
    const msg = refusal(text);
    expect(msg).toMatch(/^sandboxes\[1\]\.network\.egress\.allowed_ports\[0\]: Port "70000" is outside 1-65535 \(line 7, column 25\)$/m);
    expect(msg).toMatch(/^sandboxes\[1\]\.network\.bogus: Unknown field "bogus".* \(line 12, column 7\)$/m);
  });
});
