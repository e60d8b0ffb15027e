#!/usr/bin/env bash
# Times "from nothing to a routed message" with `bourse plugin`, per language (docs/plugins.md):
# new, build, test, deploy, test --broker in a fresh temporary directory outside the
# repository, against a broker whose management API is at $URL (start one first, e.g.
# `target/debug/bourse --management-listen 127.0.0.1:15672 --data-dir "$(mktemp -d)"`).
#
# Usage: scripts/plugin-walkthrough.sh [rust] [python] [js]    (default: all three)
# Environment: URL (default http://127.0.0.1:15672), BIN (default target/debug, holding
# bourse and bourse-ctl). componentize-py is taken from <repo>/.venv/bin, npm prefers its cache.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${BIN:-$root/target/debug}"
url="${URL:-http://127.0.0.1:15672}"
export PATH="$root/.venv/bin:$bin:$PATH" npm_config_prefer_offline=true
unset CARGO_TARGET_DIR
langs=("$@"); [[ ${#langs[@]} -gt 0 ]] || langs=(rust python js)

for lang in "${langs[@]}"; do
    work="$(mktemp -d)"
    name="x-walk-$lang-$RANDOM"
    total=0
    timed() {
        local start end
        start=$(date +%s%N)
        if ! "$@" >"$work/log" 2>&1; then
            echo "failed: $*" >&2; cat "$work/log" >&2; exit 1
        fi
        end=$(date +%s%N)
        total=$((total + end - start))
        printf '%-7s %-32s %6.1f s\n' "$lang" "${*:2:3}" "$(echo "($end - $start) / 10^9" | bc -l)"
    }
    cd "$work"
    timed bourse plugin new "$name" --lang "$lang"
    cd "$name"
    timed bourse plugin build
    timed bourse plugin test
    timed bourse plugin deploy --url "$url"
    timed bourse plugin test --broker --url "$url"
    tail -n 1 "$work/log"
    printf '%-7s %-32s %6.1f s\n' "$lang" "total" "$(echo "$total / 10^9" | bc -l)"
    cd /; rm -rf "$work"
done
