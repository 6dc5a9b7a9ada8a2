# Test 5, first VM (killed by the harness): fio randwrite on the upper half of namespace 1 while
# 64 KiB blocks of random data are written to the lower half one at a time, each flushed
# (conv=fsync => NVMe Flush) before "SLUICE_FLUSHED <index> <md5>" is printed. Params: SN.
. /share/lib.sh
. "${PARAMS:-/share/params.sh}"
dev=$(wait_ns "$SN" 1 "${WAIT:-30}") || exit 1
size=$(($(cat /sys/block/"$(basename "$dev")"/size) * 512))
half=$((size / 2))
fio --name=bg --filename="$dev" --direct=1 --ioengine=libaio --rw=randwrite --bs=16k --iodepth=16 \
    --offset="$half" --size=$((half / 2)) --time_based --runtime=600 --eta=never --output=/tmp/fio-bg.txt &
sleep 1
echo "SLUICE_FIO_RUNNING"
i=0
while [ "$i" -lt 10000 ]; do
    dd if=/dev/urandom of=/tmp/blk bs=65536 count=1 2>/dev/null
    dd if=/tmp/blk of="$dev" bs=65536 seek="$i" count=1 conv=fsync,notrunc oflag=direct 2>/dev/null ||
        fail "write of block $i failed"
    echo "SLUICE_FLUSHED $i $(md5sum </tmp/blk | cut -d' ' -f1)"
    i=$((i + 1))
done
