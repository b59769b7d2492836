#!/usr/bin/env bash
# Rules that ARCHITECTURE.md states, checked on the resolved dependency graph and
# on the source, so that none holds by convention only:
# - the planner is a pure library: no gRPC, no async runtime, no database;
# - the simulator reaches the planner directly, never through the scheduler
#   service (and so has none of the service's dependencies either);
# - a planning problem from live state is built by the planner's ProblemBuilder
#   only: no `Problem { .. }` literal outside the planner crate;
# - the agent's host paths are parameters: only its flag defaults (main.rs) and
#   Roots::default (telemetry/mod.rs) name /proc or /sys/fs/cgroup. Not host
#   paths, so not checked: an image job's mounts inside its container (oci.rs)
#   and a process's own /proc/self.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
deps() {
  local crate=$1
  shift
  local tree
  tree=$(cargo tree -p "$crate" -e normal --prefix none --locked)
  for bad in "$@"; do
    if grep -qE "^$bad v" <<<"$tree"; then
      echo "rule broken: $crate depends on $bad (cargo tree -p $crate -e normal -i $bad)" >&2
      fail=1
    fi
  done
  echo "$crate: $(sed 's/ (\*)//' <<<"$tree" | sort -u | wc -l) crates in its normal dependency closure"
}
deps greenfill-planner tonic rusqlite tokio hyper
deps greenfill-sim greenfill-scheduler tonic rusqlite tokio hyper

if literals=$(grep -rnE '\bProblem \{' --include=*.rs scheduler/src sim/src cli/src agent/src); then
  echo "rule broken: build planning problems with greenfill_planner::ProblemBuilder:" >&2
  echo "$literals" >&2
  fail=1
fi
if paths=$(grep -rnE '"/proc|"/sys/fs/cgroup|"/sys/class/powercap' --include=*.rs agent/src |
  grep -vE '^agent/src/(main\.rs|telemetry/mod\.rs|oci\.rs):' | grep -v '"/proc/self/'); then
  echo "rule broken: host paths in the agent must come from Roots:" >&2
  echo "$paths" >&2
  fail=1
fi
# The scheduler reads time only through greenfill_runtime::clock (the replay's
# virtual clock moves it); timers of the replayed loops (planning, carbon) too.
if clocks=$(grep -rnE 'Utc::now|SystemTime::now' --include=*.rs scheduler/src;
  grep -nE 'tokio::time::sleep' scheduler/src/service/planning.rs scheduler/src/service/carbon.rs); then
  echo "rule broken: the scheduler reads time through greenfill_runtime::clock:" >&2
  echo "$clocks" >&2
  fail=1
fi
exit $fail
