# Test 3, second VM: fsck and mount the filesystem written by fs-write.sh, compare checksums
# with /share/sums (copied by the harness from the first VM). Params: SN.
. /share/lib.sh
. "${PARAMS:-/share/params.sh}"
dev=$(wait_ns "$SN" 1 "${WAIT:-30}") || exit 1
sums=${SUMS:-/share/sums}
[ -s "$sums" ] || fail "no checksum list from the first VM"
e2fsck -fn "$dev" || fail "e2fsck found problems on $dev"
mkdir -p /mnt/fs
mount -t ext4 "$dev" /mnt/fs || fail "mount $dev failed"
(cd /mnt/fs && md5sum -c "$sums") || fail "checksums differ after the VM restart"
cmp "$sums" /mnt/fs/sums || fail "the checksum file on the filesystem differs"
umount /mnt/fs
echo "SLUICE_FS_VERIFIED files=$(wc -l <"$sums")"
