# Test 4 (hot plug). Namespace 1 runs fio verify-less randrw all along; the harness adds
# namespace 2 after SLUICE_HOTPLUG_READY and removes it after SLUICE_NS_ADDED.
# Params: SN, WAIT (seconds to wait for each change).
. /share/lib.sh
. "${PARAMS:-/share/params.sh}"
dev=$(wait_ns "$SN" 1 "${WAIT:-30}") || exit 1
have_ns "$SN" 2 && fail "namespace 2 exists before the hot add"
fio --name=bg --filename="$dev" --direct=1 --ioengine=libaio --rw=randrw --bs=4k --iodepth=16 \
    --time_based --runtime=600 --size=32M --eta=never --output=/tmp/fio-bg.txt &
fio_pid=$!
sleep 1
kill -0 "$fio_pid" 2>/dev/null || fail "background fio did not start: $(cat /tmp/fio-bg.txt)"
echo "SLUICE_HOTPLUG_READY"
dev2=$(wait_ns "$SN" 2 "$WAIT") || { kill "$fio_pid"; exit 1; }
dd if="$dev2" of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null || fail "cannot read the hot-added $dev2"
echo "SLUICE_NS_ADDED dev=$dev2"
gone() { ! have_ns "$SN" 2; }
wait_for "$WAIT" gone || { kill "$fio_pid"; fail "namespace 2 still present $WAIT s after the hot remove"; }
echo "SLUICE_NS_REMOVED"
kill -0 "$fio_pid" 2>/dev/null || fail "fio on namespace 1 stopped during the hot plug: $(cat /tmp/fio-bg.txt)"
kill -INT "$fio_pid"
wait "$fio_pid"
rc=$?
cat /tmp/fio-bg.txt
grep -q 'err= 0' /tmp/fio-bg.txt || fail "fio on namespace 1 reported errors (rc $rc)"
echo "SLUICE_HOTPLUG_OK"
