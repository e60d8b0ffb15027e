#!/usr/bin/env bash
# Builds every exchange-type plugin into plugins/dist/:
#   - the Rust plugins (this Cargo workspace) for wasm32-wasip2, release profile;
#   - the Python plugins (python/*/app.py) with componentize-py, from a venv at $VENV;
#   - the JavaScript plugins (js/*/) with componentize-js, installed by `npm ci` in each;
#   - two files that are not components at all, for the host's loader tests.
# Idempotent and fast when nothing changed (cargo's own freshness check, a stamp per Python
# and JavaScript plugin, copies only when bytes differ). Offline once the first run has
# installed the target, the crates, componentize-py and each JavaScript plugin's node_modules.
#
# Usage: plugins/build.sh [--test] [--check]
#   --test   also run the native unit tests (cargo test here, python -m unittest and
#            node --test per plugin)
#   --check  also load every dist/*.wasm in wasmtime (pip package) and exercise it (smoke.py)
# Environment: VENV (default: <repo>/.venv), COMPONENTIZE_PY_VERSION, CARGO_BUILD_JOBS.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="${VENV:-$root/.venv}"
componentize_version="${COMPONENTIZE_PY_VERSION:-0.25.1}"
wasmtime_py_version="50.0.1"
dist="$here/dist"
target=wasm32-wasip2
run_tests=false
run_check=false
for arg in "$@"; do
    case "$arg" in
        --test) run_tests=true ;;
        --check) run_check=true ;;
        *) echo "usage: $0 [--test] [--check]" >&2; exit 2 ;;
    esac
done

# The plugins always build into their own target dir, whatever CARGO_TARGET_DIR says, so the
# paths below hold (and the host's debug/release artefacts never mix with wasm ones).
export CARGO_TARGET_DIR="$here/target"

started=$SECONDS
step() { printf '==> %s\n' "$*"; }

# Copies $1 to $2 unless $2 already has the same bytes (keeps mtimes of unchanged files).
install_file() {
    if ! cmp -s "$1" "$2"; then
        cp "$1" "$2.tmp" && mv "$2.tmp" "$2"
    fi
}

mkdir -p "$dist" "$dist/.stamps"
expected=(not-a-component.wasm random-bytes.wasm)

# --- Rust ------------------------------------------------------------------------------------
if ! rustup target list --installed | grep -qx "$target"; then
    step "installing the $target target"
    rustup target add "$target"
fi

step "cargo build --release --target $target"
(cd "$here" && cargo build --quiet --locked --release --target "$target" --workspace)

# Every cdylib of the workspace is a plugin; dist/ names it after its crate (= its type name).
cdylibs="$(cd "$here" && cargo metadata --locked --offline --no-deps --format-version 1 | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    if any("cdylib" in t["crate_types"] for t in p["targets"]):
        print(p["name"])
')"
for crate in $cdylibs; do
    install_file "$here/target/$target/release/${crate//-/_}.wasm" "$dist/$crate.wasm"
    expected+=("$crate.wasm")
done

# --- Python ----------------------------------------------------------------------------------
if [[ ! -x "$venv/bin/python" ]]; then
    step "creating the venv $venv"
    python3 -m venv "$venv"
fi
if [[ "$("$venv/bin/componentize-py" --version 2>/dev/null)" != "componentize-py $componentize_version" ]]; then
    step "installing componentize-py $componentize_version"
    "$venv/bin/pip" install --quiet "componentize-py==$componentize_version"
fi

for app in "$here"/python/*/app.py; do
    dir="$(dirname "$app")"
    name="x-$(basename "$dir")"
    out="$dist/$name.wasm"
    expected+=("$name.wasm")
    # The stamp covers the sources, the WIT and the tool version.
    stamp="$(cat "$dir"/*.py "$root"/wit/*.wit <("$venv/bin/componentize-py" --version) | sha256sum | cut -d' ' -f1)"
    if [[ -f "$out" && "$(cat "$dist/.stamps/$name" 2>/dev/null)" == "$stamp" ]]; then
        continue
    fi
    step "componentize-py $name"
    (cd "$dir" && "$venv/bin/componentize-py" -d "$root/wit" -w exchange-type \
        componentize app -o "$out.tmp" >/dev/null)
    mv "$out.tmp" "$out"
    echo "$stamp" >"$dist/.stamps/$name"
done

# --- JavaScript ------------------------------------------------------------------------------
# Each js/*/ is an npm package whose build.mjs calls componentize-js's componentize(); its
# package-lock.json pins the tool. `npm ci` runs only when the lock changed since the last one.
for pkg in "$here"/js/*/package.json; do
    dir="$(dirname "$pkg")"
    name="x-$(basename "$dir")"
    out="$dist/$name.wasm"
    expected+=("$name.wasm")
    lock="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
    if [[ "$(cat "$dir/node_modules/.bourse-lock" 2>/dev/null)" != "$lock" ]]; then
        step "npm ci in js/$(basename "$dir")"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
        echo "$lock" >"$dir/node_modules/.bourse-lock"
    fi
    # The stamp covers the sources, the WIT and the lock (so the tool's version).
    stamp="$(cat "$dir"/*.js "$dir"/build.mjs "$dir/package-lock.json" "$root"/wit/*.wit | sha256sum | cut -d' ' -f1)"
    if [[ -f "$out" && "$(cat "$dist/.stamps/$name" 2>/dev/null)" == "$stamp" ]]; then
        continue
    fi
    step "componentize-js $name"
    (cd "$dir" && node build.mjs "$out" "$root/wit")
    echo "$stamp" >"$dist/.stamps/$name"
done

# --- Not components --------------------------------------------------------------------------
# A valid *core* module (exports `route: func() -> i32`), which the host must refuse to load
# as a component, and bytes that are not wasm at all. Both deterministic.
python3 - "$dist" <<'EOF'
import pathlib, random, sys
dist = pathlib.Path(sys.argv[1])
core = bytes.fromhex(
    "0061736d01000000"            # magic, version 1: a core module
    "010501600001" "7f"           # type section: () -> i32
    "03020100"                    # function section: one function of type 0
    "0709010572" "6f757465" "0000"  # export section: "route" = function 0
    "0a0601040041000b"            # code section: i32.const 0, end
)
random.seed(0xB0055E)
noise = bytes(random.getrandbits(8) for _ in range(4096))
for name, data in (("not-a-component.wasm", core), ("random-bytes.wasm", noise)):
    path = dist / name
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)
EOF

# Files of plugins that no longer exist would mislead the host's tests.
for f in "$dist"/*.wasm; do
    [[ " ${expected[*]} " == *" $(basename "$f") "* ]] || rm -f "$f"
done

# --- Report ----------------------------------------------------------------------------------
echo "built into ${dist#"$root"/}/ in $((SECONDS - started))s:"
for f in "$dist"/*.wasm; do
    printf '  %-26s %10s bytes\n' "$(basename "$f")" "$(stat -c %s "$f")"
done

if $run_tests; then
    step "native unit tests"
    (cd "$here" && cargo test --quiet --locked --workspace)
    for dir in "$here"/python/*/; do
        (cd "$dir" && python3 -m unittest --quiet)
    done
    for dir in "$here"/js/*/; do
        (cd "$dir" && node --test --test-reporter=dot)
    done
fi

if $run_check; then
    if ! "$venv/bin/python" -c "import wasmtime" 2>/dev/null; then
        step "installing wasmtime (Python) $wasmtime_py_version"
        "$venv/bin/pip" install --quiet "wasmtime==$wasmtime_py_version"
    fi
    step "smoke-testing the components"
    "$venv/bin/python" "$here/smoke.py" "$dist"
fi
