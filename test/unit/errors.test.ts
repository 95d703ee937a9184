// The error-code table pinned (fastify's errors.test): every class has a stable, documented,
// unique code, its own name, a message that quotes the offending value, and carries `cause`;
// and no EGRESSD_ERR_* code is used in the source without being in the table.

import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as errors from '../../src/errors.ts';
import { ERROR_CODES, EgressdError } from '../../src/errors.ts';

const SRC = resolve(import.meta.dirname, '../../src');

type ErrorClass = new (...args: never[]) => Error;

/** Every Error subclass src/errors.ts exports, found by looking, so a new one cannot be missed. */
const CLASSES: [string, ErrorClass][] = Object.entries(errors as Record<string, unknown>).filter(
  (e): e is [string, ErrorClass] => typeof e[1] === 'function' && e[1].prototype instanceof Error,
);

interface Case {
  /** Builds one instance; `cause` is passed where the constructor takes one. */
  readonly make: (cause: Error) => EgressdError;
  /** The offending value the message must quote, or null when the constructor takes none. */
  readonly quoted: string | null;
  readonly takesCause: boolean;
}

const CASES: Record<string, Case> = {
  EgressdError: { make: (c) => new EgressdError('EGRESSD_ERR_USAGE', 'Unknown flag "--frob"', { cause: c }), quoted: null, takesCause: true },
  ApiError: { make: () => new errors.ApiError(404, 'not_found', 'Sandbox "sb-9" does not exist', 'id'), quoted: '"sb-9"', takesCause: false },
  CommandFailed: {
    make: () => new errors.CommandFailed('nft', ['-f', '-'], { code: 1, stderr: 'Error: syntax error' }, 'table ip egressd'),
    quoted: 'nft -f -',
    takesCause: false,
  },
  InvalidConfigError: {
    make: () => new errors.InvalidConfigError('/etc/egressd/bad.yaml', [{ field: 'block', reason: 'Expected one of explain, drop' }]),
    quoted: '"/etc/egressd/bad.yaml"',
    takesCause: false,
  },
  ConfigReadError: { make: (c) => new errors.ConfigReadError('/etc/egressd/gone.yaml', 'ENOENT', c), quoted: '"/etc/egressd/gone.yaml"', takesCause: true },
  UsageError: { make: () => new errors.UsageError('Unknown flag "--frob"'), quoted: null, takesCause: false },
  // Takes a detail sentence (why loading failed), not a value of the caller's.
  NativeAddonError: { make: (c) => new errors.NativeAddonError('the file is not an ELF object', c), quoted: null, takesCause: true },
  OriginalDstError: { make: (c) => new errors.OriginalDstError('EBADF', c), quoted: '"EBADF"', takesCause: true },
  StateInvalidError: {
    make: (c) =>
      new errors.StateInvalidError('/var/lib/egressd/state.db', [{ entry: 'sandbox "sb-1"', field: 'network.mode', reason: 'Unknown mode "open"' }], c),
    quoted: '"/var/lib/egressd/state.db"',
    takesCause: true,
  },
  StateWriteError: {
    make: (c) => new errors.StateWriteError('/var/lib/egressd/state.db', 'ENOSPC', 'database or disk is full', c),
    quoted: '"/var/lib/egressd/state.db"',
    takesCause: true,
  },
  PortsSharedError: { make: () => new errors.PortsSharedError(['tls 0.0.0.0:15443']), quoted: '"tls 0.0.0.0:15443"', takesCause: false },
  StateRejectedError: {
    make: () =>
      new errors.StateRejectedError('/var/lib/egressd/state.db', [
        { entry: 'sandbox "thief"', field: 'sources[0]', reason: 'Source "198.18.0.1" belongs to sandbox "on-a"' },
      ]),
    quoted: '"/var/lib/egressd/state.db"',
    takesCause: false,
  },
};

describe('the error classes', () => {
  it('are all covered by this test, and there is at least one', () => {
    expect(CLASSES.length).toBeGreaterThan(1);
    expect(CLASSES.map(([n]) => n).sort()).toEqual(Object.keys(CASES).sort());
  });

  it.each(CLASSES)('%s extends EgressdError and carries a code from ERROR_CODES', (name) => {
    const e = CASES[name]!.make(new Error('underlying'));
    expect(e).toBeInstanceOf(EgressdError);
    expect(e).toBeInstanceOf(Error);
    expect(Object.keys(ERROR_CODES)).toContain(e.code);
  });

  it.each(CLASSES)('%s sets name to its class name', (name, cls) => {
    const e = CASES[name]!.make(new Error('underlying'));
    expect(e).toBeInstanceOf(cls);
    expect(e.name).toBe(name);
    expect(String(e)).toMatch(new RegExp(`^${name}: `));
  });

  it.each(CLASSES.filter(([n]) => CASES[n]?.quoted !== null))('%s quotes the offending value in its message', (name) => {
    const c = CASES[name]!;
    expect(c.make(new Error('underlying')).message).toContain(c.quoted);
  });

  it.each(CLASSES.filter(([n]) => CASES[n]?.takesCause))('%s carries the cause it is given', (name) => {
    const cause = new Error('underlying');
    expect(CASES[name]!.make(cause).cause).toBe(cause);
  });

  it('give each condition its own code: no two subclasses share one', () => {
    const subclasses = CLASSES.filter(([n]) => n !== 'EgressdError');
    const codes = subclasses.map(([n]) => CASES[n]!.make(new Error('x')).code);
    expect(new Set(codes).size).toBe(codes.length);
  });

  it('are each raised somewhere under src/ (a class nothing throws is not part of the vocabulary)', () => {
    const src = readdirSync(SRC, { recursive: true, encoding: 'utf8' })
      .filter((f) => f.endsWith('.ts') && f !== 'errors.ts')
      .map((f) => readFileSync(join(SRC, f), 'utf8'))
      .join('\n');
    const unraised = CLASSES.map(([n]) => n).filter((n) => n !== 'EgressdError' && !src.includes(`new ${n}(`));
    expect(unraised).toEqual([]);
  });

  it('ApiError takes its status from API_ERRORS, and its details from the caller', () => {
    const e = new errors.ApiError(409, 'conflict', 'Source "198.18.0.2" belongs to sandbox "a"', 'sources[0]');
    expect([e.status, e.apiCode, e.field]).toEqual([409, 'conflict', 'sources[0]']);
    expect(new errors.ApiError(503, 'state_write_failed', 'x').status).toBe(errors.API_ERRORS.state_write_failed.status);
  });

  it('keep the issues an invalid config was refused for', () => {
    const issues = [{ field: 'mode', reason: 'Unknown mode "open"' }];
    const c = new errors.InvalidConfigError('x.yaml', issues);
    expect(c.issues).toEqual(issues);
    expect(c.file).toBe('x.yaml');
    expect(c.message).toContain('mode: Unknown mode "open"');
  });
});

describe('ERROR_CODES', () => {
  it('names every code EGRESSD_ERR_ and documents it with a sentence of its own', () => {
    const descriptions = Object.values(ERROR_CODES) as string[];
    for (const [code, description] of Object.entries(ERROR_CODES)) {
      expect(code).toMatch(/^EGRESSD_ERR_[A-Z0-9]+(?:_[A-Z0-9]+)*$/);
      expect(description.trim()).not.toBe('');
      expect(description).toMatch(/^[A-Za-z]/);
    }
    expect(new Set(descriptions).size).toBe(descriptions.length);
  });

  it('holds every EGRESSD_ERR_* code used anywhere under src/', () => {
    const used = new Set<string>();
    for (const f of readdirSync(SRC, { recursive: true, encoding: 'utf8' })) {
      if (!f.endsWith('.ts')) continue;
      for (const m of readFileSync(join(SRC, f), 'utf8').matchAll(/EGRESSD_ERR_[A-Z0-9_]+/g)) used.add(m[0]);
    }
    expect(used.size).toBeGreaterThan(0);
    const missing = [...used].filter((c) => !Object.hasOwn(ERROR_CODES, c));
    expect(missing).toEqual([]);
  });

  it('has no code that no error class raises', () => {
    const raised = new Set(CLASSES.filter(([n]) => n !== 'EgressdError').map(([n]) => CASES[n]!.make(new Error('x')).code));
    expect(Object.keys(ERROR_CODES).filter((c) => !raised.has(c as errors.ErrorCode))).toEqual([]);
  });
});
