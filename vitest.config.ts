import { defineConfig } from 'vitest/config';

// Three projects, run as separate stages by `npm test` (scripts/test-stages.sh):
// `unit` is pure code (and the fuzz suites), `integration` real processes and loopback sockets,
// both anywhere and in parallel; `e2e` builds network namespaces and iptables rules, needs
// root, and runs one file at a time.
export default defineConfig({
  test: {
    // Rebuilds native/build and dist/ when a pull changed their sources (cheap when nothing did).
    globalSetup: ['test/global-setup.ts'],
    coverage: {
      provider: 'v8',
      // The parsers and the pure policy core, measured by the unit stage alone: they must be
      // covered by tests that need no socket.
      include: ['src/peek/**/*.ts', 'src/policy/**/*.ts', 'src/match/**/*.ts'],
      reporter: ['text-summary'],
      thresholds: {
        // Floors a little under today's figures (peek 97-100 %, policy ~90 %, match ~96 %).
        'src/peek/**/*.ts': { lines: 95, branches: 95, functions: 95, statements: 95 },
        'src/policy/**/*.ts': { lines: 85, branches: 80, functions: 85, statements: 85 },
        'src/match/**/*.ts': { lines: 95, branches: 90, functions: 90, statements: 95 },
      },
    },
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts', 'test/fuzz/**/*.test.ts'],
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          fileParallelism: false,
          testTimeout: 60_000,
          hookTimeout: 60_000,
        },
      },
    ],
  },
});
