#!/bin/bash
# Run every test binary of crates/sluice (release, VM tests excluded) RUNS times, COPIES
# copies at once, with LOAD busy loops beside them, to find timing assumptions that only
# break on a loaded machine. Prints "<binary>: <failed>/<runs> failed" per copy and keeps
# the panic messages of failed runs in $OUT/<binary>.<copy>.fail.
#
#   crates/sluice/bench/stress_tests.sh [RUNS=20] [COPIES=2] [LOAD=2]
#
# Uses $CARGO_TARGET_DIR (default target/). Needs only bash and coreutils.
set -u
RUNS=${1:-20}
COPIES=${2:-2}
LOAD=${3:-2}
OUT=$(mktemp -d /tmp/sluice-stress.XXXXXX)
cd "$(dirname "$0")/../../.." || exit 1

bins=$(cargo test --release -p sluice --no-run 2>&1 |
    sed -n 's/^ *Executable tests\/\([a-z_]*\)\.rs (\(.*\))$/\2/p' | grep -v vm_e2e)
[ -n "$bins" ] || { echo "no test binaries built" >&2; exit 1; }

loaders=()
for _ in $(seq 1 "$LOAD"); do
    (while :; do :; done) &
    loaders+=($!)
done
trap 'kill "${loaders[@]}" 2>/dev/null' EXIT

run_copy() { # binary copy
    local bin=$1 copy=$2 fails=0 name
    name=$(basename "$bin" | sed 's/-[0-9a-f]*$//')
    for i in $(seq 1 "$RUNS"); do
        if ! out=$("$bin" -q 2>&1); then
            fails=$((fails + 1))
            { echo "=== run $i"; echo "$out" | grep -A12 -E '^---- |panicked'; } \
                >>"$OUT/$name.$copy.fail"
        fi
    done
    echo "$name (copy $copy): $fails/$RUNS failed"
}

for bin in $bins; do
    copies=()
    for c in $(seq 1 "$COPIES"); do
        run_copy "$bin" "$c" &
        copies+=($!)
    done
    wait "${copies[@]}"
done
echo "failure details (if any): $OUT"
