#!/usr/bin/env bash
# io_uring file backend vs fio: 4 KiB random read, O_DIRECT, QD32, same file, same run.
# Alternates sluice and fio RUNS times each and prints the medians and the ratio.
# usage: crates/bdev/bench/fio_compare.sh [FILE] [SIZE_MB] [SECS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../../.."
FILE=${1:-/var/tmp/sluice-bdev-bench.img}
SIZE_MB=${2:-1024}
SECS=${3:-5}
RUNS=${4:-3}
command -v fio >/dev/null || { echo "fio is not installed (apt-get install -y fio)" >&2; exit 1; }
if [ ! -f "$FILE" ] || [ "$(stat -c %s "$FILE")" -ne $((SIZE_MB * 1048576)) ]; then
    # Fully allocated (not sparse): reads must hit the device, not holes.
    dd if=/dev/urandom of="$FILE" bs=1M count="$SIZE_MB" oflag=direct status=none
fi
cargo build --release -q -p sluice-bdev --example randread
BIN=${CARGO_TARGET_DIR:-target}/release/examples/randread
s=(); w=(); f=()
for i in $(seq "$RUNS"); do
    out=$("$BIN" "$FILE" "$SECS" 32 4096 uring direct spin)
    s+=("$(sed -E 's/iops=([0-9]+).*/\1/' <<<"$out")")
    out=$("$BIN" "$FILE" "$SECS" 32 4096 uring direct wait)
    w+=("$(sed -E 's/iops=([0-9]+).*/\1/' <<<"$out")")
    j=$(fio --name=rr --filename="$FILE" --direct=1 --rw=randread --bs=4k --iodepth=32 \
        --ioengine=io_uring --runtime="$SECS" --time_based --numjobs=1 --readonly \
        --output-format=json)
    f+=("$(python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))' <<<"$j")")
    echo "run $i: sluice_spin=${s[-1]} sluice_wait=${w[-1]} fio=${f[-1]}"
done
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms=$(med "${s[@]}"); mw=$(med "${w[@]}"); mf=$(med "${f[@]}")
echo "median: sluice_spin=$ms sluice_wait=$mw fio=$mf"
echo "ratio: spin/fio=$(python3 -c "print(f'{$ms/$mf:.3f}')") wait/fio=$(python3 -c "print(f'{$mw/$mf:.3f}')")"
