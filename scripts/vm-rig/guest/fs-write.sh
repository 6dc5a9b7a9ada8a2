# Test 3, first VM: mkfs.ext4 on namespace 1, write files, sync, record checksums in
# /share/out/sums (and on the filesystem itself). Params: SN.
. /share/lib.sh
. "${PARAMS:-/share/params.sh}"
dev=$(wait_ns "$SN" 1 "${WAIT:-30}") || exit 1
mkfs.ext4 -F -q "$dev" || fail "mkfs.ext4 $dev failed"
mkdir -p /mnt/fs
mount -t ext4 "$dev" /mnt/fs || fail "mount $dev failed"
mkdir -p /mnt/fs/data
i=0
for kib in 4 60 512 3000 8192; do
    dd if=/dev/urandom of=/mnt/fs/data/f$i bs=1024 count=$kib 2>/dev/null || fail "writing f$i failed"
    i=$((i + 1))
done
mkdir -p /mnt/fs/data/dir/sub && echo "sluice persistence" >/mnt/fs/data/dir/sub/note
sync
(cd /mnt/fs && find data -type f | sort | xargs md5sum) >/tmp/sums || fail "md5sum failed"
cp /tmp/sums /mnt/fs/sums
sync
umount /mnt/fs || fail "umount failed"
mkdir -p /share/out
cp /tmp/sums /share/out/sums
cat /tmp/sums
echo "SLUICE_FS_WRITTEN files=$(wc -l </tmp/sums)"
