# Test 1 (discovery). Params: SN MN FR (expected identify strings), NSZE_BLOCKS (namespace
# size in logical blocks), LBA_SIZE (bytes), MSIX=1 to require MSI-X, MIN_IOQ (min blk-mq queues),
# DBBUF=1|0 to require that Doorbell Buffer Config (shadow doorbells, OACS bit 8) is / is not
# offered (unset: not checked).
. /share/lib.sh
. "${PARAMS:-/share/params.sh}"

dev=$(wait_ns "$SN" 1 "${WAIT:-30}") || exit 1
ctrl=$(ctrl_by_serial "$SN")
note "controller $ctrl, namespace $dev"

drv=$(basename "$(readlink /sys/class/nvme/"$ctrl"/device/driver)")
[ "$drv" = nvme ] || fail "driver bound to $ctrl is '$drv', expected nvme"

nvme id-ctrl "/dev/$ctrl" >/tmp/idctrl.txt || fail "nvme id-ctrl /dev/$ctrl failed"
field() { awk -F': ' -v k="$1" '{ sub(/ +$/, "", $1) } $1 == k { v = $2; sub(/ +$/, "", v); print v; exit }' /tmp/idctrl.txt; }
sn=$(field sn)
mn=$(field mn)
fr=$(field fr)
echo "SLUICE_IDCTRL sn='$sn' mn='$mn' fr='$fr'"
[ "$sn" = "$SN" ] || fail "id-ctrl sn is '$sn', expected '$SN'"
oacs=$(field oacs)
echo "SLUICE_OACS oacs=$oacs dbbuf=$(((oacs >> 8) & 1))"
case "${DBBUF:-}" in
    1) [ $(((oacs >> 8) & 1)) = 1 ] || fail "shadow doorbells (Doorbell Buffer Config, OACS bit 8) not offered: oacs=$oacs" ;;
    0) [ $(((oacs >> 8) & 1)) = 0 ] || fail "shadow doorbells offered although disabled: oacs=$oacs" ;;
esac
[ -z "$MN" ] || [ "$mn" = "$MN" ] || fail "id-ctrl mn is '$mn', expected '$MN'"
if [ -n "$FR" ]; then [ "$fr" = "$FR" ] || fail "id-ctrl fr is '$fr', expected '$FR'"; else [ -n "$fr" ] || fail "id-ctrl fr (firmware revision) is empty"; fi

nvme list >/tmp/list.txt 2>&1 || fail "nvme list failed: $(cat /tmp/list.txt)"
cat /tmp/list.txt
grep -q "$dev" /tmp/list.txt || fail "nvme list does not show $dev"
name=$(basename "$dev")
lbs=$(cat /sys/block/"$name"/queue/logical_block_size)
sectors=$(cat /sys/block/"$name"/size)
blocks=$((sectors * 512 / lbs))
echo "SLUICE_NS dev=$dev lba_size=$lbs blocks=$blocks"
[ "$lbs" = "$LBA_SIZE" ] || fail "$dev logical block size is $lbs, expected $LBA_SIZE"
[ "$blocks" = "$NSZE_BLOCKS" ] || fail "$dev has $blocks blocks, expected $NSZE_BLOCKS"
nvme id-ns "$dev" >/tmp/idns.txt || fail "nvme id-ns $dev failed"
grep -q "in use" /tmp/idns.txt || fail "nvme id-ns shows no LBA format in use"
lbads=0
while [ $((1 << lbads)) -lt "$LBA_SIZE" ]; do lbads=$((lbads + 1)); done
grep "in use" /tmp/idns.txt | grep -q "lbads:$lbads " ||
    fail "LBA format in use is not $LBA_SIZE bytes (lbads:$lbads): $(grep 'in use' /tmp/idns.txt)"
# nvme list: "Usage" shows "<used> <unit> / <size> <unit>" in decimal units, "Format" "<lba> B + <ms> B".
line=$(grep "^$dev " /tmp/list.txt)
echo "$line" | grep -q " $LBA_SIZE  *B +  *0 B " || fail "nvme list format column is not '$LBA_SIZE B + 0 B': $line"
bytes=$((blocks * lbs))
echo "$line" | awk -v b="$bytes" '{
    for (i = 1; i < NF; i++) if ($(i + 1) == "/") { size = $(i + 2); unit = $(i + 3) }
    m = 1; if (unit == "kB") m = 1e3; if (unit == "MB") m = 1e6; if (unit == "GB") m = 1e9; if (unit == "TB") m = 1e12
    d = size * m - b; if (d < 0) d = -d
    exit !(size != "" && d <= b * 0.01)
}' || fail "nvme list size of $dev does not match $bytes bytes: $line"

nq=$(ls /sys/block/"$name"/mq | wc -l)
echo "SLUICE_MQ queues=$nq"
[ "$nq" -ge "${MIN_IOQ:-2}" ] || fail "$dev uses $nq blk-mq queue(s), expected at least ${MIN_IOQ:-2}"

grep "$ctrl" /proc/interrupts
if [ "${MSIX:-1}" = 1 ]; then
    nmsix=$(grep "${ctrl}q" /proc/interrupts | grep -c 'MSIX')
    echo "SLUICE_MSIX vectors=$nmsix"
    [ "$nmsix" -ge 2 ] || fail "$ctrl uses $nmsix MSI-X vectors (expected admin + I/O queues on MSI-X)"
fi
echo "SLUICE_DISCOVERY_OK"
