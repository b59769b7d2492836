#!/usr/bin/env bash
# The real NVML path on a machine with an NVIDIA GPU: inventory, power read,
# and a power-limit round trip (set to the card's minimum, read back, restored)
# through greenfill-agent's own NVML code. Prints what it saw. Needs root for
# the cap (NVML refuses limit changes otherwise).
#
# Where there is no GPU (no libnvidia-ml, or NVML finds none) it prints
# "no GPU" and exits 0: CI runs the fake NVML path in the tests instead.
#
#   benches/gpu-check.sh            # release build of the agent, then the check
#   AGENT=target/debug/greenfill-agent benches/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
AGENT=${AGENT:-target/release/greenfill-agent}
if [ ! -x "$AGENT" ]; then
  cargo build --release --locked -p greenfill-agent --bin greenfill-agent
fi
if ! ldconfig -p 2>/dev/null | grep -q 'libnvidia-ml\.so' && [ -z "${GREENFILL_FAKE_GPUS:-}" ]; then
  echo "no GPU: libnvidia-ml.so is not installed here"
  exit 0
fi
echo "== inventory"
out=$("$AGENT" gpus)
echo "$out"
case "$out" in
  "no GPU"*) exit 0 ;;
esac
echo "== power-limit round trip"
if [ "$(id -u)" -ne 0 ]; then
  echo "skipped: setting a power limit needs root"
  exit 0
fi
"$AGENT" gpus --check-cap | grep ' cap: '
report=$(mktemp)
trap 'rm -f "$report"' EXIT
"$AGENT" gpus --check-cap --json > "$report"
REPORT=$report python3 - <<'PY'
import json, os
d = json.load(open(os.environ["REPORT"]))
bad = [c for c in d["cap_checks"] if abs(c["read_back_w"] - c["set_w"]) > 1 or abs(c["restored_w"] - c["original_w"]) > 1]
for c in bad:
    print(f"GPU {c['index']}: set {c['set_w']} W, read back {c['read_back_w']} W, restored {c['restored_w']} W of {c['original_w']} W")
print(f"{len(d['cap_checks'])} GPU(s) checked, {len(bad)} failed")
raise SystemExit(1 if bad else 0)
PY
