// The limits controller's own clock: how often it logs accept(2)'s failures.

import { Writable } from 'node:stream';
import pino from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { LimitsController } from '../../../src/limits/controller.ts';
import { tenantKeyOf } from '../../../src/match/tenant-key.ts';
import { Metrics } from '../../../src/observability/metrics.ts';
import { DEFAULTS_TYPED } from '../../../src/schema/constants.ts';

describe('LimitsController.acceptError', () => {
  // A step of the wall clock (NTP) back by an hour, made in this process alone (Date.now() stepped).
  it('logs a failure again after its second though the wall clock stepped back', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        lines.push(chunk.toString('utf8'));
        cb();
      },
    });
    const c = new LimitsController(
      () => DEFAULTS_TYPED.limits,
      pino(sink),
      new Metrics(),
      () => ({ sandbox: null }),
      tenantKeyOf(DEFAULTS_TYPED.limits.unknownSourcePrefix),
    );
    const logged = (): number => lines.filter((l) => l.includes('accept-failed')).length;
    const emfile = Object.assign(new Error('accept'), { code: 'EMFILE' });
    c.acceptError(emfile, 'tls');
    c.acceptError(emfile, 'tls');
    expect(logged()).toBe(1);
    const wall = Date.now.bind(Date);
    const spy = vi.spyOn(Date, 'now').mockImplementation(() => wall() - 3_600_000);
    try {
      await new Promise((r) => setTimeout(r, 1100));
      c.acceptError(emfile, 'tls');
      // Measured on Date.now(), the next line waited out the hour.
      expect(logged()).toBe(2);
    } finally {
      spy.mockRestore();
    }
  });
});
