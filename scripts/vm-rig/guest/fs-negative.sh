# Negative check of fs-check.sh (run by vm_00 after it passed): a checksum list with one
# changed file checksum must make it fail.
. /share/lib.sh
. "${PARAMS:-/share/params.sh}"
awk 'NR == 1 { $1 = "0123456789abcdef0123456789abcdef" } { print $1 "  " $2 }' /share/sums >/tmp/bad-sums
expect_fail changed-file fs-check.sh "SUMS=/tmp/bad-sums"
echo "SLUICE_NEGATIVES_DONE"
