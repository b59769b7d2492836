#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints (warnings are errors),
# then every test of the workspace. Tests that need root, or the research-only data
# in ../shared/data, print why they skip instead of failing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# A CI run builds once from clean, so the incremental cache (1.2 GB) only costs disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$target_dir"
free_mb=$(df -Pm "$target_dir" | awk 'NR == 2 { print $4 }')
echo "== disk: ${free_mb} MB free for $target_dir (a clean build takes about 2 GB)"
if [ "$free_mb" -lt 3000 ]; then
  echo "warning: less than 3 GB free; the build may fail with 'No space left on device'" >&2
fi

start=$SECONDS
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== architecture rules (scripts/check-rules.sh)"
scripts/check-rules.sh
echo "== deploy manifests (kubernetes-validate)"
scripts/validate-deploy.sh
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile ci
else
  cargo test --workspace --locked
fi
echo "== all checks passed in $((SECONDS - start)) s; $target_dir holds $(du -sh "$target_dir" | cut -f1)"
