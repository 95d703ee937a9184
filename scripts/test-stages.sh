#!/usr/bin/env bash
# `npm test`: the whole suite in named stages, so a failure says where it is. Each stage stops
# the run; the last line names the stage that failed. Run one stage alone with
# `bash scripts/test-stages.sh STAGE` (lint, typecheck, unit, integration, e2e).
#   lint         oxlint (type-aware, import boundaries) and prettier --check
#   typecheck    tsc --noEmit
#   unit         test/unit and test/fuzz, with coverage floors on src/peek, src/policy, src/match
#   integration  test/integration: real processes and loopback sockets
#   e2e          test/e2e: network namespaces and iptables (as root; skipped with the reason otherwise)
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"

run_stage() {
  case "$1" in
    lint) npm run -s lint ;;
    typecheck) tsc --noEmit ;;
    unit) vitest run --project unit --coverage ;;
    integration) vitest run --project integration ;;
    e2e) vitest run --project e2e ;;
    *) echo "unknown stage \"$1\"; stages: lint typecheck unit integration e2e" >&2; return 2 ;;
  esac
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(lint typecheck unit integration e2e)
for s in "${stages[@]}"; do
  echo "== test stage: $s"
  start=$SECONDS
  if ! run_stage "$s"; then
    echo "== test stage FAILED: $s (after $((SECONDS - start)) s)" >&2
    exit 1
  fi
  echo "== test stage passed: $s ($((SECONDS - start)) s)"
done
