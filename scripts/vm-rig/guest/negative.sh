# Negative checks of the guest checks themselves (run by vm_00 on QEMU's NVMe): each variant
# of the parameters is wrong on purpose, and the check must FAIL with a SLUICE_FAIL reason.
# Params: the discovery.sh ones plus BLOCK0 (md5 of the first 64 KiB block as written).
. /share/lib.sh
. "${PARAMS:-/share/params.sh}"

expect_fail wrong-serial discovery.sh "SN=no-such-serial"
expect_fail wrong-model discovery.sh "MN='Not This Model'"
expect_fail wrong-firmware discovery.sh "FR=0.0.0"
expect_fail wrong-size discovery.sh "NSZE_BLOCKS=12345"
expect_fail wrong-lba-size discovery.sh "LBA_SIZE=4096"
expect_fail too-few-queues discovery.sh "MIN_IOQ=64"
oacs=$(nvme id-ctrl "/dev/$(ctrl_by_serial "$SN")" | awk -F': ' '$1 ~ /^oacs / { print $2 }')
expect_fail wrong-dbbuf discovery.sh "DBBUF=$((1 - ((oacs >> 8) & 1)))"
dd if=/dev/urandom of=/tmp/b0 bs=65536 count=1 2>/dev/null
dev=$(wait_ns "$SN" 1 5) || exit 1
dd if=/tmp/b0 of="$dev" bs=65536 seek=0 count=1 conv=fsync,notrunc oflag=direct 2>/dev/null || fail "write failed"
good=$(md5sum </tmp/b0 | cut -d' ' -f1)
PARAMS=/dev/null SN=$SN BLOCKS="0:$good" sh -c '. /share/check-blocks.sh' >/tmp/pos.out 2>&1 ||
    { cat /tmp/pos.out; fail "check-blocks rejected a correct block"; }
expect_fail lost-block check-blocks.sh "BLOCKS='0:00000000000000000000000000000000'"
expect_fail no-blocks check-blocks.sh "BLOCKS=''"
# The hot plug check on a controller where nothing is hot-added must fail (and stop its I/O).
expect_fail no-hot-add hotplug.sh "WAIT=3"
wait_for 60 sh -c '! pgrep -f name=bg >/dev/null' || fail "hotplug.sh left its fio loop running"
echo "SLUICE_NEGATIVES_DONE"
