# Helpers for guest test scripts (busybox sh). The harness copies this file to /share/lib.sh
# and the case's parameters to /share/params.sh; a test script sources both.
# Conventions: every failure prints "SLUICE_FAIL: <reason>" and exits non-zero; progress
# markers the harness waits for are printed as "SLUICE_<WORD> ..." on their own line.

fail() {
    echo "SLUICE_FAIL: $*" >&2
    exit 1
}

note() { echo "sluice-guest: $*"; }

# wait_for TIMEOUT_S CMD...: polls CMD every 0.2 s until it succeeds.
wait_for() {
    _t=$1
    shift
    _n=$((_t * 5))
    while [ "$_n" -gt 0 ]; do
        "$@" && return 0
        sleep 0.2
        _n=$((_n - 1))
    done
    return 1
}

# The nvme character device (nvmeX) whose controller has serial number $1.
ctrl_by_serial() {
    for c in /sys/class/nvme/nvme*; do
        [ -e "$c/serial" ] || continue
        if [ "$(sed 's/ *$//' "$c/serial")" = "$1" ]; then
            basename "$c"
            return 0
        fi
    done
    return 1
}

# The block device (/dev/nvmeXnY) of namespace $2 (default 1) on the controller with serial $1.
ns_dev() {
    _c=$(ctrl_by_serial "$1") || return 1
    _nsid=${2:-1}
    for b in /sys/class/nvme/"$_c"/nvme*n* /sys/block/"$_c"n*; do
        [ -e "$b/nsid" ] || continue
        [ "$(cat "$b/nsid")" = "$_nsid" ] || continue
        _name=$(basename "$b")
        # With native multipath the path device is nvmeXcYnZ; the disk is nvmeXnZ.
        case "$_name" in *c*n*) _name=$(echo "$_name" | sed 's/c[0-9]*n/n/') ;; esac
        [ -b "/dev/$_name" ] && { echo "/dev/$_name"; return 0; }
    done
    return 1
}

have_ns() { ns_dev "$1" "${2:-1}" >/dev/null; }

# Waits until the controller with serial $1 has namespace $2 (default 1), prints its device.
wait_ns() {
    wait_for "${3:-30}" have_ns "$1" "${2:-1}" || fail "no namespace ${2:-1} on the controller with serial $1 after ${3:-30} s ($(ls /sys/class/nvme 2>/dev/null | tr '\n' ' '))"
    ns_dev "$1" "${2:-1}"
}

# fio_verify DEV SIZE_PER_JOB: randwrite + crc32c verify, bs 4k-128k, QD32, 2 jobs on
# disjoint ranges. Fails on any error. verify_header_seed=0: fio 3.3x can report a false
# "bad header rand_seed" with variable block sizes (seen against QEMU's own NVMe too,
# axboe/fio#1898); the crc32c data check and the offset/length header checks stay.
fio_verify() {
    fio --name=verify --filename="$1" --direct=1 --ioengine=libaio --rw=randwrite \
        --bsrange=4k-128k --iodepth=32 --numjobs=2 --size="$2" --offset_increment="$2" \
        --verify=crc32c --verify_fatal=1 --verify_dump=0 --verify_header_seed=0 --group_reporting \
        --eta=never --output=/tmp/fio-verify.txt
    _rc=$?
    cat /tmp/fio-verify.txt
    [ "$_rc" = 0 ] || fail "fio verify on $1 exited with $_rc"
    grep -q 'err= 0' /tmp/fio-verify.txt || fail "fio verify on $1 reported errors"
}

# fio_randread_iops DEV SECONDS: 4k randread QD32, prints the IOPS (integer).
fio_randread_iops() {
    fio --name=randread --filename="$1" --direct=1 --ioengine=libaio --rw=randread --bs=4k \
        --iodepth=32 --numjobs=1 --time_based --runtime="$2" --ramp_time=1 --size=64M \
        --eta=never --output-format=terse --terse-version=3 --output=/tmp/fio-rr.txt ||
        fail "fio randread on $1 failed"
    awk -F';' 'NR == 1 { printf "%d\n", $8 }' /tmp/fio-rr.txt
}

# expect_fail NAME SCRIPT VAR=VALUE...: runs SCRIPT with params.sh plus the overrides.
expect_fail() {
    _name=$1
    _script=$2
    shift 2
    cp "${PARAMS:-/share/params.sh}" /tmp/neg-params.sh
    echo "WAIT=2" >>/tmp/neg-params.sh
    for kv in "$@"; do echo "$kv" >>/tmp/neg-params.sh; done
    if PARAMS=/tmp/neg-params.sh sh "/share/$_script" >/tmp/neg.out 2>&1; then
        cat /tmp/neg.out
        fail "negative check '$_name' passed, but it must fail"
    fi
    grep -q 'SLUICE_FAIL' /tmp/neg.out || { cat /tmp/neg.out; fail "negative check '$_name' failed without a reason"; }
    echo "SLUICE_NEGATIVE_OK $_name: $(grep 'SLUICE_FAIL' /tmp/neg.out | head -n 1 | sed 's/SLUICE_FAIL/caught/')"
}
