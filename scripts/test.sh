#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: installs what it needs (the wasm32-wasip2
# target, a Python venv with pika and componentize-py, componentize-js by `npm ci` in each
# JavaScript plugin, Debian's Chromium and playwright-core for the web console test), builds
# every plugin, then runs the plugin tests and the workspace's unit, property and integration
# tests.
#
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${VENV:-$root/.venv}"

step() { printf '\n==> %s\n' "$*"; }

step "Python venv with pika (client compatibility tests)"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -c 'import pika' 2>/dev/null || "$venv/bin/pip" install --quiet 'pika==1.3.2'

step "Chromium and playwright-core (web console test)"
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    elif command -v sudo >/dev/null 2>&1; then
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "chromium is missing and cannot be installed without root: apt-get install chromium" >&2
        exit 1
    fi
fi
(cd tests/console && npm ci --no-audit --no-fund --loglevel=error)

step "plugins: build, native tests, component smoke checks"
VENV="$venv" plugins/build.sh --test --check

step "binaries some tests run as processes (crash, shutdown, ctl), built before their timers start"
cargo build -p bourse --bin bourse
cargo build -p bourse-ctl --bin bourse-ctl

step "cargo test (host unit and property tests, integration tests)"
export BOURSE_PYTHON="$venv/bin/python"
export BOURSE_PLUGIN_DIST="$root/plugins/dist"
cargo test --workspace --no-fail-fast "$@"
