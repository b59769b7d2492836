#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints (warnings are errors),
# then every test of the workspace. Tests that need root, or the research-only data
# in ../shared/data, print why they skip instead of failing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

start=$SECONDS
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== deploy manifests (kubernetes-validate)"
scripts/validate-deploy.sh
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile ci
else
  cargo test --workspace --locked
fi
echo "== all checks passed in $((SECONDS - start)) s"
