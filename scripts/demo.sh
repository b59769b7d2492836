#!/usr/bin/env bash
# Sets up, builds and runs greenfill's main job on the bundled open data.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -q -p greenfill
exec target/release/greenfill data inspect data/carbon/CISO_2022_hourly_ci.csv
