#!/usr/bin/env bash
# Builds the example plugins and starts the broker on 127.0.0.1:5672 with them loaded.
# Extra arguments go to `bourse` (see `bourse --help`), e.g. --listen 127.0.0.1:5673.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
plugins/build.sh
exec cargo run --release -p bourse -- --plugin-dir "$root/plugins/dist" --data-dir "$root/bourse-data" "$@"
