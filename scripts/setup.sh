#!/usr/bin/env bash
# Installs what the build needs from the system, once: cmake, a C++ compiler and
# libclang (HiGHS is built from source by good_lp's `highs` feature and bound with
# bindgen). Idempotent and quiet when everything is there already.
#
# `scripts/setup.sh demo`: only what building `greenfill` needs (the demo);
# `scripts/setup.sh` (or `all`): also what the tests need — memcached,
# containerd and a registry, PostgreSQL, Prometheus, Chromium, the emulators.
set -euo pipefail
scope=${1:-all}
case "$scope" in
  demo | all) ;;
  *) echo "setup: unknown scope '$scope' (demo or all)" >&2; exit 2 ;;
esac

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v c++ >/dev/null 2>&1 || need+=(g++)
# protoc: the containerd-client crate generates containerd's API from its .proto files.
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)

if [ "$scope" = all ]; then
# The qos benchmark's latency-critical service (and its CI smoke run).
command -v memcached >/dev/null 2>&1 || [ -x /usr/bin/memcached ] || need+=(memcached)
# A Python venv for the Redfish emulator (below).
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# openssl: the Kubernetes token test makes its cluster signing keys with it.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# Image jobs (issue 18): a real containerd with runc, and for its tests a local
# OCI registry (docker-registry), umoci and skopeo to build and push an image
# from busybox-static without the network, and htpasswd for a registry that refuses.
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v umoci >/dev/null 2>&1 || need+=(umoci)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
# promtool (Debian's prometheus package): CI checks both daemons' /metrics with it (issue 16).
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# curl: the Prometheus import test saves the server's own answer with it (issue 28).
command -v curl >/dev/null 2>&1 || need+=(curl)
# node_exporter: the import test's real exporter behind Prometheus (--preset node-cpu).
command -v prometheus-node-exporter >/dev/null 2>&1 || need+=(prometheus-node-exporter)
# PostgreSQL (initdb, pg_ctl): the replicated scheduler's store in the failover test (issue 17).
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
# Headless Chromium: CI renders the simulator's report in a browser (issue 16).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi

if ((${#need[@]})); then
  echo "setup: installing ${need[*]} (HiGHS is built from source; memcached is the qos benchmark's service)" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "$scope" = all ]; then
# The Redfish emulator (sushy-tools, OpenStack's) the power driver's tests talk to.
tools="${GREENFILL_TOOLS:-$HOME/.cache/greenfill/tools}"
if [ ! -x "$tools/sushy/bin/sushy-emulator" ]; then
  echo "setup: installing sushy-tools (Redfish emulator) in $tools/sushy" >&2
  mkdir -p "$tools"
  python3 -m venv "$tools/sushy"
  "$tools/sushy/bin/pip" install -q --disable-pip-version-check "sushy-tools==2.2.0"
fi

# Python's gRPC reflection client (v1alpha only, like Postman and older grpcurl):
# the reflection test lists the scheduler's services with it (issue 17).
if [ ! -x "$tools/grpc/bin/python" ] || ! "$tools/grpc/bin/python" -c 'import grpc_reflection' 2>/dev/null; then
  echo "setup: installing grpcio-reflection (a v1alpha reflection client) in $tools/grpc" >&2
  python3 -m venv "$tools/grpc"
  "$tools/grpc/bin/pip" install -q --disable-pip-version-check "grpcio==1.68.1" "grpcio-reflection==1.68.1"
fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
