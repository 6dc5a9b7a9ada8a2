# Test 5, second VM: every block the killed VM reported as flushed must read back intact.
# Params: SN, BLOCKS ("index:md5 ..." from the first VM's SLUICE_FLUSHED lines).
. /share/lib.sh
. "${PARAMS:-/share/params.sh}"
dev=$(wait_ns "$SN" 1 "${WAIT:-30}") || exit 1
n=0
for e in $BLOCKS; do
    i=${e%%:*}
    want=${e#*:}
    got=$(dd if="$dev" bs=65536 skip="$i" count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || fail "flushed block $i lost: md5 $got, expected $want"
    n=$((n + 1))
done
[ "$n" -gt 0 ] || fail "no flushed blocks to check"
echo "SLUICE_BLOCKS_OK checked=$n"
