// The C test of the native splice loop (native/test/splice_loop_test.c): compiled here with the
// same flags as the addon and run, so `npm test` (and CI) fails when the loop does. Run twice:
// with the loop's own pipes (the kernel's, grown to 1 MiB for a bulk direction), and with pipes
// of 2 buffers that never grow, the least the kernel gives a process past
// fs/pipe-user-pages-soft, where a splice fills the pipe after 2 segments; under
// AddressSanitizer; and with every loop hosted by a thread of the test (sl_loop_start_hosted, as
// data_plane.c hosts loop 0 on Node's event loop), plainly and under AddressSanitizer. Every
// build audits the loop's timer heap at each turn (SL_TIMER_AUDIT: a connection due earlier than
// its key aborts the test), so a change that moves a timer earlier without arming it fails here.
// The timer storm's seed is fixed (SL_STORM_SEED=n explores others) and named in each of its
// failures: SL_STORM_SEED=n SL_STORM_ONLY=1 runs that storm alone again.

import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { expect, it, onTestFinished } from 'vitest';
import { C_FLAGS, CC } from '../../../scripts/native-flags.ts';

const NATIVE = resolve(import.meta.dirname, '../../../native');

it.skipIf(process.platform !== 'linux').each([
  ['its own pipe size', []],
  ['pipes of 2 buffers', ['-DSL_NEW_PIPE_SIZE=8192', '-DSL_PIPE_SIZE=0']],
  // A late event of a closed socket read through a freed connection is caught here, not by the
  // checks (the memory usually still says "dead"), and so is any other use after free.
  ['AddressSanitizer', ['-fsanitize=address', '-fno-omit-frame-pointer', '-g']],
  ['hosted loops', ['-DSL_TEST_HOSTED']],
  ['hosted loops under AddressSanitizer', ['-DSL_TEST_HOSTED', '-fsanitize=address', '-fno-omit-frame-pointer', '-g']],
])(
  'the native loop passes its C test with %s (splice: bulk, half-close, urgent data neither ends nor stalls a transfer (nor loses its bytes to a FIN that came behind a slow reader), reset, the bytes before a reset passed on first (found with it in one wake-up, behind a slow reader, or with its error taken by a splice), idle, abort, pipe reuse, a pipe with bytes never pooled, blocked writes, a blocked direction not woken by its source, stop; set-up: accept, peek deadlines, dial with the next address and a timeout, the reset of a client waiting, being dialed or having its flight read ends it at once, a dial command on its way included, and so does one that came with its flight before the accept (a FIN does not, unless told that a TLS client FIN ends it), two attempts ending in one wake-up (each event applied to its own attempt only), a policy change, refusal, a refusal larger than the buffers, EMFILE shedding, the cap of unanswered connections; out of descriptors: pooled pipes give way to an accept and a dial, a transfer with no pipe is copied; the first flight: framing, one report across reads and records, each deadline, server-first; hosted: the answers posted in a turn run in it, with no wake-up, and a command run between turns counts its times from then; timers: hundreds of connections at random (seeded), each ending once, never before its due; the heap gives its room back after a burst)',
  (_name, defines) => {
    const dir = mkdtempSync(join(tmpdir(), 'egressd-splice-loop-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const bin = join(dir, 'splice_loop_test');
    const sources = ['test/splice_loop_test.c', 'splice_loop.c', 'first_flight.c'].map((f) => join(NATIVE, f));
    execFileSync(CC, [...C_FLAGS, '-DSL_TIMER_AUDIT', ...defines, `-I${NATIVE}`, ...sources, '-o', bin], { stdio: 'pipe' });
    // maxBuffer: past spawnSync's 1 MiB of output (an AddressSanitizer report, a storm's failures)
    // the run would be killed and its output cut.
    const r = spawnSync(bin, { encoding: 'utf8', timeout: 150_000, maxBuffer: 64 << 20 });
    // Killed (the timeout, a signal): the test it was in is the last line of stdout, and the
    // checks that failed before are in stderr, whose last line lists each with its count.
    const lastStarted = r.stdout.trimEnd().split('\n').at(-1) ?? '';
    expect(
      { status: r.status, signal: r.signal, error: r.error?.message, stderr: r.stderr },
      `the C test (${_name}) failed; stdout's last line: ${lastStarted}`,
    ).toEqual({ status: 0, signal: null, error: undefined, stderr: '' });
    expect(r.stdout).toContain('all checks passed');
  },
  // Compiling under AddressSanitizer and running every case (some wait out real deadlines) took
  // 36 s on a loaded machine, past the project's 30 s.
  180_000,
);
