#!/usr/bin/env bash
# Compares bourse with RabbitMQ on this machine: the scenario set of issue 5 run with the same
# load tool (bourse-perf) and the same parameters against each broker in turn, both on loopback,
# one broker running at a time. Writes docs/performance.md (machine, date, commands, tables)
# and keeps every raw JSON line in bench/results/.
#
# Usage: bench/compare.sh [options]
#   --brokers "bourse rabbitmq"   which brokers (default both)
#   --scenarios "a b ... j"       which load scenarios (default all); "none" for memory only
#   --no-memory                   skip the memory rows (idle RSS, 10,000 queues, 1,000 connections,
#                                 the queued backlogs)
#   --backlog N                   messages of the large backlog memory row (default 10000000)
#   --j-secs S                    publishing time of scenario (j) (default 30)
#   --j-drain S                   longest drain of scenario (j) (default 300)
#   --duration S                  publishing time per scenario (default 15)
#   --drain S                     longest drain after publishing (default 10)
#   --no-build                    use the binaries as they are
#   --out FILE                    markdown output (default docs/performance.md)
#   --merge FILE.jsonl            start from an earlier run's results; rows run now replace its rows
#   --report FILE.jsonl           only regenerate the markdown from a stored run (and its .env)
#   --quiet-wait S                before each run, wait up to S s for the rest of the machine to
#                                 use under half a core (default 120; 0 = don't wait)
#   --client raw|lapin            bourse-perf's client for the load scenarios (default raw: a
#                                 lean frame-level client, so the tool is not the bottleneck)
# Environment: BOURSE_BIN (default target/release/bourse; setting it skips building bourse),
#   BOURSE_DESC (what that binary is, for the report; default: this tree's commit),
#   PERF_BIN (default target/release/bourse-perf), BOURSE_PORT (5673), RABBIT_PORT (5674),
#   RABBIT_DIST_PORT (25674).
#
# Installs RabbitMQ from Debian's packages if it is missing (apt-get, needs root). Everything
# listens on 127.0.0.1 only; every run is bounded by bourse-perf's own time limits.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

brokers="bourse rabbitmq"
scenarios="a b c d e f g h i j"
memory=true
backlog=10000000
j_secs=30
j_drain=300
duration=15
drain=10
build=true
out="$root/docs/performance.md"
merge=""
report_only=""
quiet_wait=120
client=raw
while [ $# -gt 0 ]; do
    case "$1" in
        --brokers) brokers="$2"; shift 2 ;;
        --scenarios) scenarios="$2"; shift 2 ;;
        --no-memory) memory=false; shift ;;
        --duration) duration="$2"; shift 2 ;;
        --drain) drain="$2"; shift 2 ;;
        --no-build) build=false; shift ;;
        --out) out="$2"; shift 2 ;;
        --merge) merge="$2"; shift 2 ;;
        --report) report_only="$2"; shift 2 ;;
        --quiet-wait) quiet_wait="$2"; shift 2 ;;
        --client) client="$2"; shift 2 ;;
        --backlog) backlog="$2"; shift 2 ;;
        --j-secs) j_secs="$2"; shift 2 ;;
        --j-drain) j_drain="$2"; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$scenarios" = none ] && scenarios=""

if [ -n "$report_only" ]; then
    # shellcheck disable=SC1090 # written by an earlier run of this script
    source "${report_only%.jsonl}.env"
    export COMPARE_RESULTS="$report_only"
    python3 bench/report.py "$report_only" bench/performance-notes.md >"$out"
    echo "wrote $out" >&2
    exit 0
fi

bourse_port="${BOURSE_PORT:-5673}"
rabbit_port="${RABBIT_PORT:-5674}"
rabbit_dist_port="${RABBIT_DIST_PORT:-25674}"
perf="${PERF_BIN:-$root/target/release/bourse-perf}"
bourse_bin="${BOURSE_BIN:-$root/target/release/bourse}"

log() { printf '==> %s  [load %s]\n' "$*" "$(cut -d' ' -f1-3 /proc/loadavg)" >&2; }

# --- the scenarios (issue 5) -------------------------------------------------------------------
declare -A args desc
args[a]="-x 1 -y 1 -s 16 -a";                          desc[a]="1 publisher, 1 consumer, 16 B, autoack"
args[b]="-x 1 -y 1 -s 16 -q 100";                      desc[b]="manual ack, prefetch 100"
args[c]="-x 1 -y 1 -s 16 -q 100 -c 1000";              desc[c]="manual ack, prefetch 100, confirms (window 1000)"
args[d]="-x 1 -y 1 -s 1024 -q 100 -c 1000 -f --durable"; desc[d]="persistent 1 KiB, durable queue, confirms"
args[e]="-x 1 -y 10 -s 16 -a -t fanout -u 10";         desc[e]="fanout to 10 queues, 10 consumers"
args[f]="-x 1 -y 1 -s 16 -a -t topic -u 1 --bindings 1000"; desc[f]="topic, 1,000 wildcard bindings"
args[g]="-x 100 -y 100 -s 16 -a -u 100 -c 200";        desc[g]="100 publishers, 100 consumers, 100 queues (confirm window 200 each)"
args[h]="-x 1 -y 1 -s 16 -a -r 1000";                  desc[h]="latency at a fixed 1,000 msg/s"
args[i]="-x 1 -y 1 -s 16 -a -t x-consistent-hash -u 1"; desc[i]="WASM x-consistent-hash (vs a)"
# (j): a buffer, then a consumer. Transient 16 B messages into a non-durable queue with no
# consumer for j_secs (as (a) without its consumer), then one consumer with manual acks and
# prefetch 100 (as (b)) drains it; every body carries its publisher's sequence number and the
# consumer checks that each message arrives exactly once and in order.
args[j]="-x 1 -y 1 -s 16 -q 100 --consume-after-publish --check-order"; desc[j]="no consumer for the publishing time, then one consumer (manual ack, prefetch 100) drains, order checked"
for s in "${!args[@]}"; do args[$s]="${args[$s]} --client $client"; done

# --- build and install -------------------------------------------------------------------------
if $build; then
    if [ -n "${BOURSE_BIN:-}" ]; then
        log "building bourse-perf"
        cargo build --release -p bourse-perf
    else
        log "building bourse and bourse-perf"
        cargo build --release -p bourse -p bourse-perf
    fi
fi
[ -x "$perf" ] || { echo "no $perf (build it: cargo build --release -p bourse-perf)" >&2; exit 1; }

rabbit_server=/usr/lib/rabbitmq/bin/rabbitmq-server
if [[ " $brokers " == *" rabbitmq "* ]] && [ ! -x "$rabbit_server" ]; then
    log "installing rabbitmq-server from Debian's packages"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server
fi

work="$(mktemp -d /tmp/bourse-compare.XXXXXX)"
results="$work/results.jsonl"
if [ -n "$merge" ]; then cp "$merge" "$results"; else : > "$results"; fi

# The WASM scenario loads only the plugin it needs (the dist folder also holds hostile test
# components the broker would reject).
plugin_dir="$work/plugins"
mkdir -p "$plugin_dir"
if [ ! -f plugins/dist/x-consistent-hash.wasm ] && [ -x plugins/build.sh ]; then
    log "building the plugins (for scenario i)"
    plugins/build.sh >&2 || log "plugins/build.sh failed: scenario i will be n/a for bourse"
fi
[ -f plugins/dist/x-consistent-hash.wasm ] && cp plugins/dist/x-consistent-hash.wasm "$plugin_dir/"

# --- broker control ----------------------------------------------------------------------------
broker_pid=""
broker_uri=""
epmd_was_running=false
pgrep -x epmd >/dev/null 2>&1 && epmd_was_running=true

wait_port() { # port, seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

start_bourse() {
    rm -rf "$work/bourse-data"
    (ulimit -n 20000; exec "$bourse_bin" --listen "127.0.0.1:$bourse_port" \
        --data-dir "$work/bourse-data" --plugin-dir "$plugin_dir" --management-listen off --prometheus-listen off) >>"$work/bourse.log" 2>&1 &
    broker_pid=$!
    broker_uri="amqp://guest:guest@127.0.0.1:$bourse_port/%2f"
    wait_port "$bourse_port" 30 || { tail -20 "$work/bourse.log" >&2; echo "bourse did not start" >&2; exit 1; }
}

rabbit_env() {
    export RABBITMQ_CONFIG_FILE="$work/rabbitmq.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$work/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$work/rabbit-mnesia"
    export RABBITMQ_LOG_BASE="$work/rabbit-log"
    export RABBITMQ_NODENAME="bourse-bench@localhost"
    export RABBITMQ_PID_FILE="$work/rabbit.pid"
    export RABBITMQ_DIST_PORT="$rabbit_dist_port"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export ERL_EPMD_ADDRESS=127.0.0.1
}

start_rabbit() {
    rabbit_env
    cat > "$RABBITMQ_CONFIG_FILE" <<EOF
listeners.tcp.default = 127.0.0.1:$rabbit_port
loopback_users.guest = true
log.console = false
log.file.level = warning
EOF
    # The consistent-hash exchange ships with the server; nothing else (no management).
    echo '[rabbitmq_consistent_hash_exchange].' > "$RABBITMQ_ENABLED_PLUGINS_FILE"
    rm -rf "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_PID_FILE"
    (ulimit -n 20000; exec "$rabbit_server") >>"$work/rabbit.log" 2>&1 &
    wait_port "$rabbit_port" 90 || { tail -20 "$work/rabbit.log" >&2; echo "RabbitMQ did not start" >&2; exit 1; }
    local i
    for ((i = 0; i < 100; i++)); do [ -s "$RABBITMQ_PID_FILE" ] && break; sleep 0.1; done
    broker_pid="$(cat "$RABBITMQ_PID_FILE")" # beam.smp, not the wrapper script
    broker_uri="amqp://guest:guest@127.0.0.1:$rabbit_port/%2f"
}

stop_broker() {
    [ -n "$broker_pid" ] || return 0
    kill -TERM "$broker_pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 300; i++)); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$broker_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    broker_pid=""
}

cleanup() {
    stop_broker
    if ! $epmd_was_running && pgrep -x epmd >/dev/null 2>&1; then
        epmd -kill >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

start_broker() { # name
    case "$1" in
        bourse) start_bourse ;;
        rabbitmq) start_rabbit ;;
    esac
}

# Appends one bourse-perf JSON line to the results, tagged with broker, scenario and load.
record() { # broker scenario json-file
    local line
    line="$(tail -n 1 "$3")"
    [ -n "$line" ] || line='{"failed":"no output"}'
    jq -c --arg b "$1" --arg s "$2" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
        '. + {broker_name: $b, scenario: $s, loadavg_after: $load}' <<<"$line" >>"$results" \
        || echo "{\"broker_name\":\"$1\",\"scenario\":\"$2\",\"failed\":\"unparsable output\"}" >>"$results"
}

# Busy CPU-seconds of the whole machine so far (USER_HZ ticks / 100).
machine_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }

# The machine is shared: wait (bounded) until everything but our idle broker uses under half a
# core over two seconds, so a run starts quiet. bourse-perf reports what others used anyway.
wait_quiet() {
    local waited=0 a b
    while [ "$waited" -lt "$quiet_wait" ]; do
        a=$(machine_busy); sleep 2; b=$(machine_busy)
        [ $((b - a)) -lt 100 ] && return 0
        [ "$waited" -eq 0 ] && log "machine busy ($(( (b - a) / 2 ))% CPU by others); waiting up to ${quiet_wait} s"
        waited=$((waited + 2))
    done
    log "still busy after ${quiet_wait} s; running anyway"
}

run_perf() { # broker scenario bourse-perf-args...
    local b="$1" s="$2"
    shift 2
    wait_quiet
    log "$b: $s: bourse-perf $*"
    "$perf" "$@" --uri "$broker_uri" --broker-pid "$broker_pid" --label "$b/$s" \
        >"$work/$b-$s.json" 2>"$work/$b-$s.log" || log "$b: $s: bourse-perf exited with $?"
    tail -n 2 "$work/$b-$s.log" | grep -v '^\[' >&2 || true
    record "$b" "$s" "$work/$b-$s.json"
}

# --- the runs ----------------------------------------------------------------------------------
started_at="$(date -u '+%Y-%m-%d %H:%M UTC')"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
for b in $brokers; do
    if $memory; then
        # Each memory row on a freshly started broker: freed memory is kept by allocators and
        # garbage collectors and would be reused by the next row.
        start_broker "$b"; sleep 5
        run_perf "$b" mem-idle idle -n 0 --hold-secs 0
        stop_broker
        start_broker "$b"; sleep 5
        run_perf "$b" mem-queues idle -n 1 -u 10000 --hold-secs 2
        stop_broker
        start_broker "$b"; sleep 5
        run_perf "$b" mem-conns idle -n 1000 --hold-secs 5
        stop_broker
        # Queued backlogs: transient 16 B messages in a non-durable queue with no consumer. The
        # large one is beyond any in-memory window; 100,000 fit in RAM (the per-message cost in
        # memory). RSS is measured once the queue reports every message.
        for n in "$backlog" 100000; do
            start_broker "$b"; sleep 5
            run_perf "$b" "mem-backlog-$n" load -x 1 -y 0 -u 1 -s 16 -z 0 -C "$n" --backlog-rss \
                --drain-secs 300 --timeout-secs 1200 --client "$client"
            stop_broker
        done
    fi
    if [ -n "$scenarios" ]; then
        start_broker "$b"; sleep 3
        for s in $scenarios; do
            # shellcheck disable=SC2086 # the scenario's flags are words
            if [ "$s" = j ]; then
                # shellcheck disable=SC2086
                run_perf "$b" "$s" load -z "$j_secs" --drain-secs "$j_drain" ${args[$s]}
                sleep 2
                continue
            fi
            run_perf "$b" "$s" load -z "$duration" --drain-secs "$drain" ${args[$s]}
            sleep 2
        done
        stop_broker
    fi
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# Raw results, kept next to the script.
mkdir -p bench/results
stamp="$(date -u '+%Y%m%d-%H%M')"
cp "$results" "bench/results/$stamp.jsonl"
log "raw results: bench/results/$stamp.jsonl"

# --- the report --------------------------------------------------------------------------------
export COMPARE_STARTED="$started_at" COMPARE_LOAD_BEFORE="$load_before" COMPARE_LOAD_AFTER="$load_after"
export COMPARE_MERGED="$merge"
export COMPARE_DURATION="$duration" COMPARE_DRAIN="$drain" COMPARE_RESULTS="bench/results/$stamp.jsonl"
export COMPARE_BOURSE_COMMIT="${BOURSE_DESC:-}"
[ -n "$COMPARE_BOURSE_COMMIT" ] || COMPARE_BOURSE_COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- host 2>/dev/null || echo ' (with uncommitted host/ changes)')"
export COMPARE_BOURSE_BIN="$bourse_bin"
export COMPARE_RABBIT_VERSION="$(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo 'not installed')"
export COMPARE_ERLANG_VERSION="$(dpkg-query -W -f '${Version}' erlang-base 2>/dev/null || echo '?')"
export COMPARE_CPU="$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
export COMPARE_NPROC="$(nproc)"
export COMPARE_MEM="$(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
export COMPARE_KERNEL="$(uname -r)"
for s in a b c d e f g h i j; do export "COMPARE_ARGS_$s=${args[$s]}" "COMPARE_DESC_$s=${desc[$s]}"; done
export COMPARE_J_SECS="$j_secs" COMPARE_J_DRAIN="$j_drain" COMPARE_BACKLOG="$backlog"
declare -px | sed -n 's/^declare -x \(COMPARE_\)/export \1/p' >"bench/results/$stamp.env"
python3 bench/report.py "$results" bench/performance-notes.md >"$out"
log "wrote $out"
