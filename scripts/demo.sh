#!/usr/bin/env bash
# Sets up, builds and runs greenfill's main job: a what-if simulation on the
# bundled open data (an under-used online fleet, a week of real batch arrivals,
# California's 2022 grid). Prints the savings and where they come from (one
# run per step: --attribution) and how far from the best possible (--gap);
# writes out/underused-fleet/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
cargo build --release -q -p greenfill
exec target/release/greenfill sim run --scenario examples/underused-fleet.toml --attribution --gap "$@"
