# Test 2 (data integrity): fio randwrite + crc32c verify on every namespace listed.
# Params: SN (controller serial), NSIDS (space-separated namespace ids), SIZE (per fio job).
. /share/lib.sh
. "${PARAMS:-/share/params.sh}"
for nsid in $NSIDS; do
    dev=$(wait_ns "$SN" "$nsid" 30) || exit 1
    note "fio verify on namespace $nsid ($dev), $SIZE per job"
    fio_verify "$dev" "$SIZE"
    echo "SLUICE_VERIFY_OK nsid=$nsid dev=$dev"
done
