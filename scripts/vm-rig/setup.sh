#!/usr/bin/env bash
# Builds the real-Linux-guest rig from Debian packages and caches it (see common.sh for the
# layout). Every step is idempotent and leaves a marker; a second run takes seconds.
#
#   scripts/vm-rig/setup.sh            build what is missing
#   scripts/vm-rig/setup.sh --rebuild-guest   rebuild only the guest kernel + initramfs
#   scripts/vm-rig/setup.sh --clean    delete the whole rig (refused while anything is mounted in it)
#
# Needs root, a Debian 12 host and its Debian mirror. Runs without standard input.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

[ "$(id -u)" = 0 ] || rig_die "setup.sh must run as root (debootstrap, chroot, mounts)"

safe_remove() { # deletes a rig directory, never across a mount point
    local dir=$1
    [ -e "$dir" ] || return 0
    if rig_has_mounts_under "$dir"; then
        rig_die "refusing to delete $dir: something is mounted below it (see /proc/mounts)"
    fi
    rm -rf --one-file-system -- "$dir"
}

case "${1:-}" in
    --clean) safe_remove "$RIG_DIR"; rig_log "removed $RIG_DIR"; exit 0 ;;
    --rebuild-guest) rm -f "$DONE_DIR/guest" ;;
    "") ;;
    *) rig_die "unknown argument: $1" ;;
esac

mkdir -p "$DONE_DIR" "$GUEST_DIR"
# retry N CMD...: the mirror can fail transiently; a few attempts with a pause.
retry() {
    local n=$1 i
    shift
    for i in $(seq 1 "$n"); do
        "$@" && return 0
        [ "$i" -lt "$n" ] && { rig_log "attempt $i of $n failed: $*; retrying in 10 s"; sleep 10; }
    done
    return 1
}
done_mark() { date -u +%FT%TZ >"$DONE_DIR/$1"; }
is_done() { [ -f "$DONE_DIR/$1" ]; }

# The Debian mirror the host's apt uses (deb822 .sources first, then sources.list).
host_mirror() {
    local uri=""
    if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
        uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
            /etc/apt/sources.list.d/*.sources)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
            /etc/apt/sources.list)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# 1. host tools
if ! is_done host-tools; then
    need=()
    for p in debootstrap util-linux coreutils; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
    if [ "${#need[@]}" -gt 0 ]; then
        rig_log "installing host packages: ${need[*]}"
        retry 3 apt-get update -qq
        retry 3 apt-get install -y -qq --no-install-recommends "${need[@]}"
    fi
    done_mark host-tools
fi

MIRROR=$(host_mirror)

# 2. trixie chroot
if ! is_done debootstrap; then
    rig_log "debootstrap trixie into $CHROOT from $MIRROR (about a minute)"
    bootstrap() {
        safe_remove "$CHROOT"
        debootstrap --variant=minbase trixie "$CHROOT" "$MIRROR" >"$RIG_DIR/debootstrap.log" 2>&1
    }
    retry 2 bootstrap ||
        { tail -n 30 "$RIG_DIR/debootstrap.log" >&2; rig_die "debootstrap failed (log: $RIG_DIR/debootstrap.log)"; }
    done_mark debootstrap
fi

# 3. packages in the chroot: QEMU 11 from trixie-backports plus the guest userland sources
if ! is_done chroot-packages; then
    rig_log "installing QEMU (trixie-backports) and guest tools in the chroot"
    cat >"$CHROOT/etc/apt/sources.list" <<EOF
deb $MIRROR trixie main
deb $MIRROR trixie-backports main
EOF
    cp /etc/resolv.conf "$CHROOT/etc/resolv.conf" 2>/dev/null || true
    # No daemons may start inside the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$CHROOT/usr/sbin/policy-rc.d"
    chmod 0755 "$CHROOT/usr/sbin/policy-rc.d"
    retry 3 rig_chroot /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    retry 3 rig_chroot /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t trixie-backports qemu-system-x86 >"$RIG_DIR/apt-qemu.log" 2>&1 ||
        { tail -n 30 "$RIG_DIR/apt-qemu.log" >&2; rig_die "installing qemu-system-x86 in the chroot failed"; }
    retry 3 rig_chroot /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        busybox-static fio nvme-cli e2fsprogs kmod xz-utils zstd cpio >"$RIG_DIR/apt-tools.log" 2>&1 ||
        { tail -n 30 "$RIG_DIR/apt-tools.log" >&2; rig_die "installing guest tools in the chroot failed"; }
    rig_chroot /usr/bin/qemu-system-x86_64 -device help 2>/dev/null | grep -q '"vfio-user-pci"' ||
        rig_die "the chroot's QEMU has no vfio-user-pci device"
    rig_chroot /usr/bin/env apt-get clean
    done_mark chroot-packages
fi

# 4. guest kernel + initramfs (built inside the chroot so ldd sees trixie's libraries)
if ! is_done guest || [ "$(cat "$DONE_DIR/guest-recipe" 2>/dev/null)" != "$GUEST_RECIPE" ]; then
    rig_log "building the guest kernel and initramfs"
    work=$CHROOT/opt/sluice-rig
    safe_remove "$work"
    mkdir -p "$work"
    cp "$HERE/build-guest.sh" "$HERE/init" "$work/"
    retry 2 rig_chroot /bin/bash /opt/sluice-rig/build-guest.sh /opt/sluice-rig >"$RIG_DIR/build-guest.log" 2>&1 ||
        { tail -n 40 "$RIG_DIR/build-guest.log" >&2; rig_die "guest build failed (log: $RIG_DIR/build-guest.log)"; }
    install -m 0644 "$work/out/vmlinuz" "$GUEST_DIR/vmlinuz.new"
    install -m 0644 "$work/out/initramfs.cpio" "$GUEST_DIR/initramfs.cpio.new"
    mv -f "$GUEST_DIR/vmlinuz.new" "$GUEST_DIR/vmlinuz"
    mv -f "$GUEST_DIR/initramfs.cpio.new" "$GUEST_DIR/initramfs.cpio"
    cp "$work/out/kver" "$GUEST_DIR/kver"
    safe_remove "$work"
    echo "$GUEST_RECIPE" >"$DONE_DIR/guest-recipe"
    done_mark guest
fi

for f in "$GUEST_DIR/vmlinuz" "$GUEST_DIR/initramfs.cpio" "$CHROOT/usr/bin/qemu-system-x86_64"; do
    [ -s "$f" ] || rig_die "rig incomplete: $f is missing (run: $0 --clean; $0)"
done
rig_log "rig ready in $RIG_DIR (guest kernel $(cat "$GUEST_DIR/kver"), $(rig_chroot /usr/bin/qemu-system-x86_64 --version | head -n 1))"
