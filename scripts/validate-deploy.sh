#!/usr/bin/env bash
# Validate deploy/kubernetes/*.yaml against the Kubernetes schemas, offline once
# installed (kubernetes-validate bundles them), strictly (unknown fields fail).
# Installs kubernetes-validate into target/deploy-venv the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/deploy-venv
if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate>=1.30"
fi
"$venv/bin/kubernetes-validate" --strict --quiet -k 1.30.0 deploy/kubernetes/*.yaml
echo "deploy/kubernetes: every manifest valid for Kubernetes 1.30 (strict)"
