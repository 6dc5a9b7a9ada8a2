#!/usr/bin/env bash
# The benchmark matrix of issue 7: 4 KiB and 128 KiB x randread/randwrite/randrw x QD 1/32/128
# x null and RAM backends, target with one busy poll thread (core 0), `sluice perf` on core 1.
# Every point runs RUNS times, alternated with the machine-limit probe (depth 1 and 32), and
# CPU steal is read from /proc/stat around every run. Results: one JSON line per run in
# $OUT/runs.jsonl and the summary table (median / best IOPS, p50 / p99, ratio to the probe,
# steal) printed by bench/summarize.py.
#
#   bench/run-matrix.sh                 # full matrix, 5 runs x 5 s per point
#   RUNS=3 TIME=2 bench/run-matrix.sh --quick   # QD32 4 KiB randread only (null and RAM)
#   SLUICE=/path/to/sluice PROBE=/path/to/ring_probe bench/run-matrix.sh --quick  # no build
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
TIME=${TIME:-5}
OUT=${OUT:-$(mktemp -d /tmp/sluice-bench.XXXXXX)}
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
# SLUICE / PROBE: use prebuilt binaries (e.g. to compare two builds) instead of building.
if [[ -z "${SLUICE:-}" ]]; then
  cargo build --release --bin sluice -p sluice >&2
  SLUICE=$CARGO_TARGET_DIR/release/sluice
fi
if [[ -z "${PROBE:-}" ]]; then
  cargo build --release -p sluice-nvme-host --example ring_probe >&2
  PROBE=$CARGO_TARGET_DIR/release/examples/ring_probe
fi

WORK=$(mktemp -d /tmp/sluice-bench-target.XXXXXX)
RPC=$WORK/rpc.sock
"$SLUICE" serve --empty -m 0x1 --poll-mode busy -r "$RPC" --log-level warn >"$OUT/serve.log" 2>&1 &
SERVE_PID=$!
cleanup() { kill "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 100); do [[ -S "$RPC" ]] && break; sleep 0.1; done
rpc() { "$SLUICE" rpc -s "$RPC" "$@" >/dev/null; }
rpc nvmf_create_transport -t VFIOUSER
rpc bdev_null_create Null0 1024 512
rpc bdev_malloc_create -b Malloc0 1024 512
i=0
for b in Null0 Malloc0; do
  nqn=nqn.2024-01.io.sluice:bench$i
  mkdir -p "$WORK/$b"
  rpc nvmf_create_subsystem -a -s "SN$i" "$nqn"
  rpc nvmf_subsystem_add_ns "$nqn" "$b"
  rpc nvmf_subsystem_add_listener -t VFIOUSER -a "$WORK/$b" -s 0 "$nqn"
  i=$((i + 1))
done
# Fill the RAM disk once so reads return written data.
"$SLUICE" perf -r "trtype:VFIOUSER traddr:$WORK/Malloc0" -q 32 -o 131072 -w write \
  --number-ios 8192 -c 0x2 --no-progress >/dev/null

# steal and total jiffies from the aggregate cpu line
cpu_times() { awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print $9, t}' /proc/stat; }
# The target's poll thread: nanoseconds on CPU and involuntary context switches (times it
# was preempted). With QD in flight, every preemption of a few ms delays up to QD I/Os,
# which is what shows up in p99 / p99.9 on a loaded machine.
POLL_TID=""
for t in /proc/$SERVE_PID/task/*; do
  [[ "$(cat "$t/comm" 2>/dev/null)" == sluice-poll-0 ]] && POLL_TID=$(basename "$t")
done
poll_times() {
  if [[ -n "$POLL_TID" && -r /proc/$SERVE_PID/task/$POLL_TID/schedstat ]]; then
    echo "$(cut -d' ' -f1 /proc/$SERVE_PID/task/$POLL_TID/schedstat)" \
      "$(awk '/^nonvoluntary_ctxt_switches/{print $2}' /proc/$SERVE_PID/task/$POLL_TID/status)"
  else
    echo 0 0
  fi
}

run_point() { # backend size workload qd run
  local b=$1 o=$2 w=$3 q=$4 r=$5 s0 t0 s1 t1
  read -r s0 t0 < <(cpu_times)
  local probe; probe=$("$PROBE" --depth 1 --depth 32 -t 1 --cores 0,1 | paste -sd, -)
  local c0 n0 c1 n1 w0 w1
  read -r c0 n0 < <(poll_times)
  w0=$(date +%s%N)
  local perf; perf=$("$SLUICE" perf -r "trtype:VFIOUSER traddr:$WORK/$b" -q "$q" -o "$o" -w "$w" \
      -M 50 -t "$TIME" -c 0x2 --json --no-progress)
  w1=$(date +%s%N)
  read -r c1 n1 < <(poll_times)
  read -r s1 t1 < <(cpu_times)
  printf '{"backend":"%s","io_size":%s,"workload":"%s","qd":%s,"run":%s,"probe":[%s],"steal_pct":%s,"load1":%s,"poll_cpu_pct":%s,"poll_preempt":%s,"perf":%s}\n' \
    "$b" "$o" "$w" "$q" "$r" "$probe" \
    "$(awk -v a="$s0" -v b="$s1" -v c="$t0" -v d="$t1" 'BEGIN{ if (d>c) printf "%.2f", 100*(b-a)/(d-c); else print 0 }')" \
    "$(cut -d' ' -f1 /proc/loadavg)" \
    "$(awk -v a="$c0" -v b="$c1" -v c="$w0" -v d="$w1" 'BEGIN{ if (d>c) printf "%.1f", 100*(b-a)/(d-c); else print 0 }')" \
    "$((n1 - n0))" \
    "$(echo "$perf" | tr -d '\n')" >>"$OUT/runs.jsonl"
}

if [[ $QUICK == 1 ]]; then
  SIZES=(4096); WORKLOADS=(randread); QDS=(32)
else
  SIZES=(4096 131072); WORKLOADS=(randread randwrite randrw); QDS=(1 32 128)
fi
for r in $(seq "$RUNS"); do
  for b in Null0 Malloc0; do
    for o in "${SIZES[@]}"; do
      for w in "${WORKLOADS[@]}"; do
        for q in "${QDS[@]}"; do
          echo "run $r: $b $o $w qd$q" >&2
          run_point "$b" "$o" "$w" "$q" "$r"
        done
      done
    done
  done
done
python3 bench/summarize.py "$OUT/runs.jsonl"
echo "raw runs: $OUT/runs.jsonl" >&2
