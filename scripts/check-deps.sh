#!/usr/bin/env bash
# Dependency rules that ARCHITECTURE.md states, checked on the resolved graph:
# - the planner is a pure library: no gRPC, no async runtime, no database;
# - the simulator reaches the planner directly, never through the scheduler
#   service (and so has none of the service's dependencies either).
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
check() {
  local crate=$1
  shift
  local tree
  tree=$(cargo tree -p "$crate" -e normal --prefix none --locked --offline 2>/dev/null || cargo tree -p "$crate" -e normal --prefix none --locked)
  for bad in "$@"; do
    if grep -qE "^$bad v" <<<"$tree"; then
      echo "dependency rule broken: $crate depends on $bad (cargo tree -p $crate -e normal -i $bad)" >&2
      fail=1
    fi
  done
  echo "$crate: $(sed "s/ (\*)//" <<<"$tree" | sort -u | wc -l) crates in its normal dependency closure"
}
check greenfill-planner tonic rusqlite tokio hyper
check greenfill-sim greenfill-scheduler tonic rusqlite tokio hyper
exit $fail
