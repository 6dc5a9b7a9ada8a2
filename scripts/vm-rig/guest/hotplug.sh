# Test 4 (hot plug). Short fio verify runs loop on namespace 1 all along; the harness adds
# namespace 2 after SLUICE_HOTPLUG_READY and removes it after SLUICE_NS_ADDED. Every run must
# pass, and runs must complete while namespace 2 comes and goes.
# Params: SN, WAIT (seconds to wait for each change).
. /share/lib.sh
. "${PARAMS:-/share/params.sh}"
dev=$(wait_ns "$SN" 1 "${WAIT:-30}") || exit 1
have_ns "$SN" 2 && fail "namespace 2 exists before the hot add"

rm -f /tmp/bg.stop /tmp/bg.err
echo 0 >/tmp/bg.count
trap 'touch /tmp/bg.stop' EXIT
(
    n=0
    while [ ! -e /tmp/bg.stop ]; do
        fio --name=bg --filename="$dev" --direct=1 --ioengine=libaio --rw=randwrite --bs=4k \
            --iodepth=16 --size=4M --offset=$(((n % 8) * 4))M --verify=crc32c --verify_fatal=1 \
            --eta=never --output=/tmp/bg.out
        rc=$?
        if [ "$rc" != 0 ] || ! grep -q 'err= 0' /tmp/bg.out; then
            cp /tmp/bg.out /tmp/bg.err
            break
        fi
        n=$((n + 1))
        echo "$n" >/tmp/bg.count
    done
) &
bg=$!
bg_ok() { [ ! -e /tmp/bg.err ] || { cat /tmp/bg.err; fail "fio verify on namespace 1 failed during the hot plug"; }; }
runs() { cat /tmp/bg.count; }
wait_runs_past() { _c=$1; wait_for "${2:-$WAIT}" sh -c "[ -e /tmp/bg.err ] || [ \$(cat /tmp/bg.count) -gt $_c ]"; }

wait_runs_past 0 60 || fail "no fio run on namespace 1 completed in 60 s"
bg_ok
echo "SLUICE_HOTPLUG_READY runs=$(runs)"
dev2=$(wait_ns "$SN" 2 "$WAIT") || { touch /tmp/bg.stop; exit 1; }
dd if="$dev2" of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null || fail "cannot read the hot-added $dev2"
c=$(runs)
wait_runs_past "$c" 60 || fail "fio on namespace 1 made no progress after the hot add (runs $(runs))"
bg_ok
echo "SLUICE_NS_ADDED dev=$dev2 runs=$(runs)"
gone() { ! have_ns "$SN" 2; }
wait_for "$WAIT" gone || { touch /tmp/bg.stop; fail "namespace 2 still present $WAIT s after the hot remove"; }
c=$(runs)
wait_runs_past "$c" 60 || fail "fio on namespace 1 made no progress after the hot remove (runs $(runs))"
bg_ok
echo "SLUICE_NS_REMOVED runs=$(runs)"
touch /tmp/bg.stop
wait "$bg"
bg_ok
echo "SLUICE_HOTPLUG_OK runs=$(runs)"
