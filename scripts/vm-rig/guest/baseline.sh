# Test 8 (baseline): 4k randread QD32 on the Sluice namespace and on QEMU's own emulated NVMe in
# the same VM. Params: SN (Sluice controller), QSN (QEMU controller), SECS.
. /share/lib.sh
. "${PARAMS:-/share/params.sh}"
sdev=$(wait_ns "$SN" 1 "${WAIT:-30}") || exit 1
qdev=$(wait_ns "$QSN" 1 30) || exit 1
# Fill both so reads hit written data.
for d in "$sdev" "$qdev"; do
    fio --name=fill --filename="$d" --direct=1 --ioengine=libaio --rw=write --bs=128k --iodepth=8 \
        --size=64M --eta=never --output=/tmp/fill.txt || fail "fill of $d failed"
done
# Interleaved (Sluice, QEMU, Sluice, QEMU) so background load drifts hit both alike; mean of two.
s1=$(fio_randread_iops "$sdev" "$SECS") || exit 1
q1=$(fio_randread_iops "$qdev" "$SECS") || exit 1
s2=$(fio_randread_iops "$sdev" "$SECS") || exit 1
q2=$(fio_randread_iops "$qdev" "$SECS") || exit 1
s=$(((s1 + s2) / 2))
q=$(((q1 + q2) / 2))
echo "sluice-guest: runs sluice=$s1,$s2 qemu=$q1,$q2"
echo "SLUICE_IOPS sluice=$s qemu=$q"
[ "$s" -gt 0 ] || fail "no IOPS on the Sluice namespace"
[ "$q" -gt 0 ] || fail "no IOPS on QEMU's NVMe"
