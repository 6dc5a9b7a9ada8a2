#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each briefly.
#
#   scripts/fuzz.sh            same as `smoke`
#   scripts/fuzz.sh smoke      10 s per target; new inputs go to a temporary directory, so the
#                              committed corpus is read but never modified
#   scripts/fuzz.sh SECONDS    SECONDS per target; new inputs are added to fuzz/corpus/<target>
#
# cargo fuzz needs nightly flags (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. AddressSanitizer is used (its runtime ships with the stable x86_64 toolchain).
# A crash leaves its input in fuzz/artifacts/<target>/ and makes this script fail.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
mode=${1:-smoke}
case "$mode" in
    smoke) secs=10 ;;
    *[!0-9]* | "") echo "usage: $0 [smoke|SECONDS]" >&2; exit 2 ;;
    *) secs=$mode ;;
esac
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
[ -n "$targets" ] || { echo "fuzz: no fuzz targets"; exit 1; }
echo "fuzz: targets: $(echo $targets)"
# One build for all targets (they share one target dir and every dependency).
cargo fuzz build -O

tmp=""
if [ "$mode" = smoke ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf -- "$tmp"' EXIT
fi
failed=()
for t in $targets; do
    corpus=(corpus/"$t")
    mkdir -p "corpus/$t" "artifacts/$t"
    # libFuzzer writes new inputs to the first directory and only reads the others.
    [ -n "$tmp" ] && corpus=("$tmp/$t" "corpus/$t") && mkdir -p "$tmp/$t"
    echo "fuzz: $t for ${secs}s"
    if ! cargo fuzz run -O "$t" "${corpus[@]}" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$t")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/)"
    exit 1
fi
echo "fuzz: all $(echo $targets | wc -w) targets ran ${secs}s without a finding"
