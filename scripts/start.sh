#!/usr/bin/env bash
# Builds the example plugins and starts the broker on 127.0.0.1:5672 with them loaded, and the
# management API and web console on http://127.0.0.1:15672/ (user guest, password guest).
#
# Only the example plugins are loaded: the hostile components in plugins/hostile/ (x-loop,
# x-membomb, ...) and the two non-components exist for the sandbox tests, not for a broker
# someone uses. Every argument goes to `bourse` (see `bourse --help`); --plugin-dir and
# --data-dir given here replace the defaults below (plugins/dist's examples, ./bourse-data).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
plugins/build.sh

# The hostile crates' names are the exchange types (= file names) to leave out.
skip=" not-a-component random-bytes "
for manifest in plugins/hostile/*/Cargo.toml; do
    skip+="$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$manifest" | head -n1) "
done
examples="$root/target/example-plugins"
mkdir -p "$examples"
rm -f "$examples"/*.wasm
for wasm in plugins/dist/*.wasm; do
    name="$(basename "$wasm" .wasm)"
    [[ "$skip" == *" $name "* ]] || cp "$wasm" "$examples/"
done

defaults=()
given=" $* "
[[ "$given" == *" --plugin-dir"* ]] || defaults+=(--plugin-dir "$examples")
[[ "$given" == *" --data-dir"* ]] || defaults+=(--data-dir "$root/bourse-data")
exec cargo run --release -p bourse -- "${defaults[@]}" "$@"
