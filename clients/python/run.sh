#!/usr/bin/env bash
# Generate the Python stubs from proto/ and run greenfill_client.py against a
# scheduler: clients/python/run.sh HOST:PORT TOKEN
# Creates a virtualenv under target/ (grpcio, grpcio-tools from PyPI) once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${GREENFILL_PY_VENV:-$repo/target/python-client-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import grpc, grpc_tools" 2>/dev/null; then
  # Exit 77 ("skipped") when the toolchain cannot be set up, so callers can
  # tell a missing PyPI from a failing client.
  python3 -m venv "$venv" || exit 77
  "$venv/bin/pip" install --quiet --disable-pip-version-check "grpcio>=1.60" "grpcio-tools>=1.60" || exit 77
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$venv/bin/python" -m grpc_tools.protoc -I "$repo/proto/proto" --python_out="$out" --grpc_python_out="$out" \
  "$repo"/proto/proto/greenfill/v1/*.proto
touch "$out/greenfill/__init__.py" "$out/greenfill/v1/__init__.py"
PYTHONPATH="$out" "$venv/bin/python" "$here/greenfill_client.py" "$@"
