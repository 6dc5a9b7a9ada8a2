#!/usr/bin/env bash
# The whole test suite (README's test command; .ci/run calls exactly this). Installs what it
# needs first (idempotent), so it runs on a fresh Debian 12 machine as root with no stdin.
#
# Stages: install deps, rustfmt, clippy, unit + integration tests, fuzz smoke, VM rig, VM
# tests. A failing stage does not stop the later ones (except install deps and the rig, which
# later stages depend on); the summary lists every stage with its time and the script exits
# non-zero if any stage failed.
#
# One optimized build serves both the workspace tests and the VM suite (scripts/vm-test.sh
# builds `--release` too), with debug assertions and overflow checks kept on for the tests.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true

t_start=$(date +%s)
summary=()
failed=()
# Each stage's output is also kept in target/ci-logs/<stage>.log (the summary greps them).
LOG_DIR=${CARGO_TARGET_DIR:-target}/ci-logs
mkdir -p "$LOG_DIR" && rm -f -- "$LOG_DIR"/*.log
echo "test.sh: $(date -u +%FT%TZ) on $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $(cargo --version); logs in $LOG_DIR"

# stage NAME TIMEOUT_SECS CMD...: runs one stage, timed, under a hard limit.
stage() {
    local name=$1 limit=$2 t0 rc dt
    shift 2
    t0=$(date +%s)
    printf '\n==== %s  stage: %s (load %s) ====\n' "$(date -u +%FT%TZ)" "$name" "$(cut -d' ' -f1-3 /proc/loadavg)"
    timeout --kill-after=30 "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    dt=$(($(date +%s) - t0))
    if [ "$rc" = 0 ]; then
        summary+=("$(printf '%-14s ok      %4dm%02ds' "$name" $((dt / 60)) $((dt % 60)))")
    else
        [ "$rc" = 124 ] && echo "stage $name: TIMED OUT after ${limit}s"
        summary+=("$(printf '%-14s FAILED  %4dm%02ds  (exit %d)' "$name" $((dt / 60)) $((dt % 60)) "$rc")")
        failed+=("$name")
    fi
    printf '==== %s  stage: %s: exit %d after %ds ====\n' "$(date -u +%FT%TZ)" "$name" "$rc" "$dt"
    return "$rc"
}

finish() {
    local total=$(($(date +%s) - t_start))
    printf '\n==== summary ====\n'
    printf '%s\n' "${summary[@]}"
    # Failing tests by name (libtest prints "test NAME ... FAILED"; fuzz findings name the target).
    grep -hE '^test .* \.\.\. FAILED$|^fuzz: FAILED' "$LOG_DIR"/*.log 2>/dev/null | sed 's/^/failed: /' || true
    if [ "${#failed[@]}" -eq 0 ]; then
        printf 'TEST SUMMARY: PASS: all %d stages passed in %dm%02ds\n' "${#summary[@]}" $((total / 60)) $((total % 60))
        exit 0
    fi
    # Why: each panic line with the message line after it (the log tail is all CI keeps).
    grep -hA2 -E "^thread '.*' \(?[0-9]*\)? ?panicked at" "$LOG_DIR"/*.log 2>/dev/null | head -40 | sed 's/^/why: /' || true
    printf 'TEST SUMMARY: FAIL: %s (%d of %d stages run failed) in %dm%02ds\n' \
        "${failed[*]}" "${#failed[@]}" "${#summary[@]}" $((total / 60)) $((total % 60))
    exit 1
}

stage install-deps 1200 ./scripts/install-deps.sh || finish
stage fmt 300 cargo fmt --all -- --check
stage clippy 1800 cargo clippy --workspace --all-targets --locked -- -D warnings
stage tests 2400 cargo test --workspace --release --locked --no-fail-fast
stage fuzz 1200 ./scripts/fuzz.sh smoke
if stage vm-rig 1200 ./scripts/vm-rig/setup.sh; then
    stage vm-tests 2400 ./scripts/vm-test.sh
else
    summary+=("$(printf '%-14s SKIPPED (no rig)' vm-tests)")
    failed+=(vm-tests)
fi
finish
