#!/usr/bin/env bash
# `npm test`: the whole suite in named stages, so a failure says where it is. Each stage stops
# the run; the last line names the stage that failed. Run one stage alone with
# `bash scripts/test-stages.sh STAGE` (lint, typecheck, unit, integration, e2e, js-path).
#   lint         oxlint (type-aware, import boundaries) and prettier --check
#   typecheck    tsc --noEmit
#   unit         test/unit and test/fuzz, with coverage floors on src/peek, src/policy, src/match
#   integration  test/integration: real processes and loopback sockets
#   e2e          test/e2e: network namespaces and iptables (as root; skipped with the reason otherwise)
#   js-path      the data-path suites again with EGRESSD_DATA_PLANE=js, in-process daemons and
#                spawned ones alike (the stages above run the default native set-up, and the
#                suites' own =native variants): both data paths pass the same tests
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"

# The suites whose connections take the data path, run again on the JavaScript path.
JS_PATH_INTEGRATION=(
  test/integration/daemon.test.ts test/integration/after-dial.test.ts test/integration/first-flight.test.ts
  test/integration/limits.test.ts test/integration/descriptors.test.ts test/integration/net
)
JS_PATH_E2E=(test/e2e/data-path.test.ts test/e2e/verdicts.test.ts test/e2e/name-spellings.test.ts test/e2e/edges.test.ts test/e2e/limits.test.ts)

run_stage() {
  case "$1" in
    lint) npm run -s lint ;;
    typecheck) tsc --noEmit ;;
    unit) vitest run --project unit --coverage ;;
    integration) vitest run --project integration ;;
    e2e) vitest run --project e2e ;;
    js-path) EGRESSD_DATA_PLANE=js vitest run --project integration "${JS_PATH_INTEGRATION[@]}" &&
      EGRESSD_DATA_PLANE=js vitest run --project e2e "${JS_PATH_E2E[@]}" ;;
    *) echo "unknown stage \"$1\"; stages: lint typecheck unit integration e2e js-path" >&2; return 2 ;;
  esac
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(lint typecheck unit integration e2e js-path)
for s in "${stages[@]}"; do
  echo "== test stage: $s"
  start=$SECONDS
  if ! run_stage "$s"; then
    echo "== test stage FAILED: $s (after $((SECONDS - start)) s)" >&2
    exit 1
  fi
  echo "== test stage passed: $s ($((SECONDS - start)) s)"
done
