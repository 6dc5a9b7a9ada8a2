#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each briefly. Usage: fuzz.sh [smoke|SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-smoke}
[ "$secs" = smoke ] && secs=10
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
[ -n "$targets" ] || { echo "no fuzz targets"; exit 1; }
for t in $targets; do
    cargo fuzz build -O "$t"
    cargo fuzz run -O "$t" -- -max_total_time="$secs" -rss_limit_mb=2048
done
