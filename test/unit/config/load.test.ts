// The config file as the daemon and `egressd validate` read it (src/config/load.ts): what the
// YAML or JSON reader takes, and where each problem is said to be.

import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configFromText, loadConfig } from '../../../src/config/load.ts';
import { ConfigReadError } from '../../../src/errors.ts';

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

  it("a sandbox that merges another's network has the same policy as one that writes it out", () => {
    const merged = configFromText(`${shared}  - id: b\n    sources: ["198.18.0.2"]\n    network:\n      <<: *net\n`, 'merged.yaml');
    const written = configFromText(
      `${shared}  - id: b\n    sources: ["198.18.0.2"]\n    network:\n      mode: block-all\n      egress:\n        allowed_ports: [443]\n`,
      'written.yaml',
    );
    expect(merged.sandboxes).toEqual(written.sandboxes);
  });

  it('150 sandboxes may share one network anchor: the yaml package refused the 100th use as "a resource exhaustion attack"', () => {
    let text = 'defaultNetwork: &net\n  mode: block-all\n  egress: {allowed_ports: [443]}\nsandboxes:\n';
    for (let i = 0; i < 150; i++) text += `  - {id: s${i}, sources: ["198.18.1.${i + 1}"], network: {<<: *net}}\n`;
    expect(configFromText(text, 'shared.yaml').sandboxes).toHaveLength(150);
  });

  it('the merged fields are validated where they are used, each problem at the line its value is written on', () => {
    const text = shared.replace('[443]', '[70000]') + '  - id: b\n    sources: ["198.18.0.2"]\n    network:\n      <<: *net\n      bogus: 1\n';
    const msg = refusal(text);
    expect(msg).toMatch(/^sandboxes\[1\]\.network\.egress\.allowed_ports\[0\]: Port "70000" is outside 1-65535 \(line 7, column 25\)$/m);
    expect(msg).toMatch(/^sandboxes\[1\]\.network\.bogus: Unknown field "bogus".* \(line 12, column 7\)$/m);
  });
});

// A file named .json is JSON (RFC 8259) alone: read as YAML, `{"reportOnly": }` was
// `reportOnly: null`, and comments, single quotes and trailing commas passed.
describe('a config file named .json', () => {
  it.each([
    ['a value left out', '{"block": "drop",\n "reportOnly": }', '2:16'],
    ['a trailing comma', '{"block": "drop",}', '1:18'],
    ['an unquoted key', '{block: "drop"}', '1:2'],
    ['single quotes', "{'block': 'drop'}", '1:2'],
    ['a comment', '{"block": "drop"} # drop', '1:19'],
    ['YAML', 'block: drop\n', '1:1'],
  ])('refuses %s, at FILE:LINE:COLUMN, which the same text named .yaml reads', (_what, text, at) => {
    // Read (`reportOnly: null` is then a problem of validation), not refused as unreadable.
    expect(() => configFromText(text, 'egressd.yaml')).not.toThrow(ConfigReadError);
    const msg = refusal(text, 'egressd.json');
    expect(msg).toMatch(
      new RegExp(
        `^egressd\\.json:${at}: Cannot read configuration "egressd\\.json": Not valid JSON: .* \\(JSON SYNTAX, line ${at.replace(':', ', column ')}\\)`,
      ),
    );
  });

  it('refuses a key given twice, naming its path, at the second', () => {
    expect(refusal('{"peek": {"timeoutMs": 5000,\n  "timeoutMs": 1}}', 'egressd.json')).toMatch(
      /^egressd\.json:2:3: .*The key "peek\.timeoutMs" is given more than once.* \(JSON DUPLICATE_KEY, line 2, column 3\)/,
    );
  });

  it('places a validation problem at its line and column, as in YAML, and takes "<<" as a key', () => {
    const msg = refusal('{"block": "drop",\n "peek": {"timeoutMs": 0}, "<<": {}}', 'egressd.json');
    expect(msg).toMatch(/^peek\.timeoutMs: .* \(line 2, column 11\)$/m);
    expect(msg).toMatch(/^<<: Unknown field "<<"/m);
  });
});

describe('what the YAML reader read as something else, refused at its place', () => {
  it('a tag egressd does not resolve: the token was the bare text after !secret', () => {
    expect(refusal('admin:\n  listen: "127.0.0.1:9901"\n  token: !secret admin-token\n')).toMatch(
      /^egressd\.yaml:3:10: .*The tag !secret cannot be read.* \(YAML TAG_RESOLVE_FAILED, line 3, column 10\)/,
    );
  });

  it('a port with a leading zero, 443 to egressd and 291 to a YAML 1.1 reader of the same file', () => {
    const text = 'sandboxes:\n  - id: a\n    sources: ["198.18.0.1"]\n    network:\n      mode: block-all\n      egress: {allowed_ports: [0443]}\n';
    expect(refusal(text)).toMatch(/^egressd\.yaml:6:32: .*0443 is 443 in YAML 1\.2 but 291 in YAML 1\.1.* \(YAML AMBIGUOUS_NUMBER, line 6, column 32\)/);
    expect(configFromText(text.replace('0443', '443'), 'fixed.yaml').sandboxes[0]).toBeDefined();
  });
});

// Read with readFile(file, 'utf8'), a byte that is not UTF-8 became U+FFFD without a word: a
// Latin-1 file was read as another text than the one its writer saved.
describe('a config file that is not UTF-8', () => {
  it('is refused at its first byte that is not, as FILE:LINE:COLUMN', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'egressd-load-'));
    try {
      const file = join(dir, 'latin1.yaml');
      writeFileSync(file, Buffer.concat([Buffer.from('reportOnly: false\nadmin:\n  token: "b'), Buffer.from([0xfc]), Buffer.from('cher"\n')]));
      await expect(loadConfig(file)).rejects.toThrow(
        new RegExp(`^${file.replace(/[.]/g, '\\.')}:3:12: Cannot read configuration .*: Not UTF-8: byte 0xFC \\(offset 36\\)`),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.each(['token', 'previousToken'])('admin.%s', (key) => {
  // Each was taken, and every API call answered 401: the daemon reads a presented token as one
  // word (`Bearer <token>`).
  it.each([
    ['a blank', `admin:\n  ${key}: "two words"\n`, 'it holds a blank (U+0020) at offset 3'],
    ['a line break (a block scalar keeps its last)', `admin:\n  ${key}: |\n    tok-1\n`, 'it holds a line break (U+000A) at offset 5'],
    ['a letter outside ASCII', `admin:\n  ${key}: "tök"\n`, 'it holds U+00F6 at offset 1'],
  ])('holding %s is refused, without quoting it', (_name, text, reason) => {
    const message = refusal(text);
    expect(message).toContain(`admin.${key}: Not a usable admin token: ${reason}`);
    expect(message).not.toMatch(/two words|tok-1|tök/);
  });

  it('one word of visible ASCII is the token', () => {
    const admin = configFromText(`admin:\n  ${key}: "tok-1.A_b~+/=!"\n`, 'egressd.yaml').admin;
    expect(key === 'token' ? admin.token : admin.previousToken).toBe('tok-1.A_b~+/=!');
  });
});
