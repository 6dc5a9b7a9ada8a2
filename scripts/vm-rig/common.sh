# Shared settings of the VM rig scripts (sourced, not run).
# The rig lives in $SLUICE_VM_RIG (default /var/cache/sluice-vm-rig):
#   chroot/            Debian trixie chroot with QEMU 11 from trixie-backports
#   guest/vmlinuz      guest kernel (trixie linux-image-amd64)
#   guest/initramfs.cpio  uncompressed newc initramfs (busybox, fio, nvme-cli, mkfs.ext4, modules)
#   done/<step>        marker of each finished setup step

RIG_DIR=${SLUICE_VM_RIG:-/var/cache/sluice-vm-rig}
CHROOT=$RIG_DIR/chroot
GUEST_DIR=$RIG_DIR/guest
DONE_DIR=$RIG_DIR/done
# Bump when the guest image recipe changes, so setup.sh rebuilds it.
GUEST_RECIPE=3

rig_log() { printf '[vm-rig] %s\n' "$*" >&2; }
rig_die() { printf '[vm-rig] ERROR: %s\n' "$*" >&2; exit 1; }

# True if anything is mounted at or below $1 (in this mount namespace).
rig_has_mounts_under() {
    local dir
    dir=$(realpath -m "$1")
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { found = 1 } END { exit !found }' /proc/mounts
}

# Runs "$@" inside the chroot, in a private mount namespace that has proc, sys and dev mounted.
# Every mount vanishes with the namespace, so nothing is ever left mounted inside the chroot.
rig_chroot() {
    unshare --mount --propagation private -- /bin/sh -c '
        set -e
        c=$1; shift
        mount -t proc proc "$c/proc"
        mount --rbind /sys "$c/sys"; mount --make-rslave "$c/sys"
        mount --rbind /dev "$c/dev"; mount --make-rslave "$c/dev"
        exec chroot "$c" "$@"
    ' rig-chroot "$CHROOT" "$@"
}
