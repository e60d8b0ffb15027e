#!/usr/bin/env bash
# Delayed delivery benchmarks (docs/delayed.md, "Measured"): runs `bourse-perf delayed` against
# a release bourse three times, each on a fresh data directory: 1 M transient messages due over
# a minute (publish rate, fire rate, lateness), the same persistent on a durable exchange, and
# 10 M transient messages due in 1-2 h (RSS with them waiting). Prints one JSON line per run.
#
# Usage: bench/delayed.sh            (build first: cargo build --release -p bourse -p bourse-perf)
# Environment: BOURSE_BIN, PERF_BIN (default target/release/...), DELAYED_PORT (5691).
# Takes about 8 minutes and 1 GB of disk under /tmp; listens on 127.0.0.1 only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bourse="${BOURSE_BIN:-$root/target/release/bourse}"
perf="${PERF_BIN:-$root/target/release/bourse-perf}"
port="${DELAYED_PORT:-5691}"
data="$(mktemp -d /tmp/bourse-delayed.XXXXXX)"
trap 'rm -rf "$data"' EXIT

run() { # name bourse-perf-args...
    local name=$1; shift
    rm -rf "$data/$name"; mkdir -p "$data/$name"
    "$bourse" --listen "127.0.0.1:$port" --data-dir "$data/$name" \
        --management-listen off --prometheus-listen off >"$data/$name.log" 2>&1 &
    local pid=$!
    sleep 2
    echo "== $name $(date -u +%T) loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    "$perf" delayed --uri "amqp://guest:guest@127.0.0.1:$port/%2f" --broker-pid "$pid" --label "$name" "$@" || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$data/$name"
}
run 1m -C 1000000 --min-delay-ms 60000 --spread-ms 60000
run 1m-persistent -C 1000000 --min-delay-ms 60000 --spread-ms 60000 -f
run 10m -C 10000000 --min-delay-ms 3600000 --spread-ms 3600000 --no-wait
