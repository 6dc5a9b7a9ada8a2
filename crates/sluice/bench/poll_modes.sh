#!/usr/bin/env bash
# Poll-mode benchmark of the sluice daemon (issue 5, acceptance 6).
#
#  1. Idle CPU: `sluice serve` (adaptive, the default) with one connected idle controller
#     (examples/idle_client: controller enabled, one I/O queue pair, AER outstanding);
#     CPU time of the daemon process from /proc/<pid>/stat over SECONDS (default 30).
#     Goal: < 2% of one core.
#  2. Throughput: `sluice perf -q 32 -o 4096 -w randread` for PERF_SECONDS (default 10)
#     against a RAM namespace, daemon in --poll-mode adaptive, then busy.
#     Goal: adaptive >= 0.9x busy.
#
# Usage: crates/sluice/bench/poll_modes.sh [SECONDS] [PERF_SECONDS]
# Release build; uses $CARGO_TARGET_DIR (default ./target). Pin with -m if you have cores
# to spare, e.g. SLUICE_CPUMASK=0x2. Extra `sluice serve` flags (e.g. adaptive tuning):
# SLUICE_SERVE_ARGS="--poll-max-sleep-us 4000".
set -euo pipefail
cd "$(dirname "$0")/../../.."
IDLE_SECS=${1:-30}
PERF_SECS=${2:-10}
MASK=${SLUICE_CPUMASK:-0x1}
cargo build --release -q -p sluice --bin sluice --example idle_client
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/sluice
IDLE=$TARGET/release/examples/idle_client
WORK=$(mktemp -d)
DAEMON=
cleanup() { [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
TRID="trtype:VFIOUSER traddr:$WORK/q subnqn:nqn.2019-07.io.spdk:cnode0"

start_daemon() { # $1 = poll mode
    rm -rf "$WORK/q"
    "$BIN" serve -m "$MASK" --poll-mode "$1" -r "$WORK/rpc.sock" --quickstart-dir "$WORK/q" \
        --quickstart-size-mib 512 --log-level warn ${SLUICE_SERVE_ARGS:-} >/dev/null 2>"$WORK/daemon-$1.log" &
    DAEMON=$!
    for _ in $(seq 100); do [ -S "$WORK/q/cntrl" ] && return 0; sleep 0.1; done
    echo "daemon did not start" >&2; cat "$WORK/daemon-$1.log" >&2; exit 1
}
stop_daemon() { kill -TERM "$DAEMON"; wait "$DAEMON" || true; DAEMON=; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "== idle CPU, adaptive, one connected idle controller, ${IDLE_SECS}s"
start_daemon adaptive
"$IDLE" "$WORK/q/cntrl" $((IDLE_SECS + 5)) &
CLIENT=$!
sleep 2
T0=$(cpu_ticks "$DAEMON")
sleep "$IDLE_SECS"
T1=$(cpu_ticks "$DAEMON")
HZ=$(getconf CLK_TCK)
IDLE_PCT=$(awk -v a="$T0" -v b="$T1" -v hz="$HZ" -v s="$IDLE_SECS" 'BEGIN { printf "%.2f", (b - a) / hz / s * 100 }')
echo "daemon CPU while idle: ${IDLE_PCT}% of one core"
kill "$CLIENT" 2>/dev/null || true
wait "$CLIENT" 2>/dev/null || true
stop_daemon

declare -A IOPS
for mode in adaptive busy; do
    echo "== randread 4 KiB QD32, ${PERF_SECS}s, --poll-mode $mode"
    start_daemon "$mode"
    OUT=$("$BIN" perf -r "$TRID" -q 32 -o 4096 -w randread -t "$PERF_SECS")
    echo "$OUT" | grep -E "^Total|percentiles"
    IOPS[$mode]=$(echo "$OUT" | awk '/^Total/ {print $3}')
    stop_daemon
done
RATIO=$(awk -v a="${IOPS[adaptive]}" -v b="${IOPS[busy]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
echo
echo "idle_cpu_percent=$IDLE_PCT adaptive_iops=${IOPS[adaptive]} busy_iops=${IOPS[busy]} adaptive_over_busy=$RATIO"
