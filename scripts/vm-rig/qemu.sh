#!/usr/bin/env bash
# Boots the Sluice test guest with the rig's QEMU 11 (run inside the trixie chroot) and prints
# the guest console on stdout. Exits with QEMU's status (124 when the timeout fired).
#
#   qemu.sh [options] [-- extra QEMU arguments]
#     --share DIR        9p share mounted at /share in the guest; /share/test.sh is run
#     --vfio-user SOCK   attach a vfio-user-pci device on socket SOCK (repeatable)
#     --nvme-img IMG     QEMU's own emulated NVMe on raw image IMG (repeatable; the baseline)
#     --bind DIR         extra host directory visible at the same path inside the chroot
#     --timeout SECS     hard limit for QEMU (default 300)
#     --mem MIB          guest memory (default 1024)      --smp N   vCPUs (default 2)
#     --append ARGS      extra kernel command line
#     --print-accel      print the accelerator that would be used and exit
#
# Every directory holding a socket, an image or the share is bind-mounted at the SAME path
# inside the chroot, in a private mount namespace: nothing stays mounted when QEMU exits.
# The process execs down to `timeout`, so its PID is the one to kill; a caller that must be
# sure starts it in its own process group and kills the group (kill -- -PGID).
# Accelerator: KVM only where it really works (vmx/svm in /proc/cpuinfo, /dev/kvm present and
# no kvm_pvm module); otherwise TCG. SLUICE_VM_ACCEL=kvm|tcg overrides the detection.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

timeout_s=300 mem=1024 smp=2 share="" append="" print_accel=0
binds=() devices=()
nvme_n=0 vfu_n=0
while [ $# -gt 0 ]; do
    case "$1" in
        --share) share=$(realpath "$2"); binds+=("$share"); shift 2 ;;
        --vfio-user)
            sock=$(realpath -m "$2")
            binds+=("$(dirname "$sock")")
            devices+=(-device "{\"driver\":\"vfio-user-pci\",\"id\":\"vfu$vfu_n\",\"socket\":{\"path\":\"$sock\",\"type\":\"unix\"}}")
            vfu_n=$((vfu_n + 1)); shift 2 ;;
        --nvme-img)
            img=$(realpath "$2")
            binds+=("$(dirname "$img")")
            devices+=(-drive "id=qd$nvme_n,file=$img,format=raw,if=none,cache=none,aio=native"
                -device "nvme,drive=qd$nvme_n,serial=qemu-nvme-$nvme_n")
            nvme_n=$((nvme_n + 1)); shift 2 ;;
        --bind) binds+=("$(realpath "$2")"); shift 2 ;;
        --timeout) timeout_s=$2; shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        --smp) smp=$2; shift 2 ;;
        --append) append="$append $2"; shift 2 ;;
        --print-accel) print_accel=1; shift ;;
        --) shift; break ;;
        *) rig_die "qemu.sh: unknown option $1" ;;
    esac
done

detect_accel() {
    case "${SLUICE_VM_ACCEL:-}" in kvm | tcg) echo "$SLUICE_VM_ACCEL"; return ;; esac
    if [ -c /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo && [ ! -d /sys/module/kvm_pvm ]; then
        echo kvm
    else
        echo tcg
    fi
}
accel=$(detect_accel)
if [ "$print_accel" = 1 ]; then echo "$accel"; exit 0; fi

for f in "$GUEST_DIR/vmlinuz" "$GUEST_DIR/initramfs.cpio" "$CHROOT/usr/bin/qemu-system-x86_64"; do
    [ -s "$f" ] || rig_die "the VM rig is not built ($f missing): run scripts/vm-rig/setup.sh"
done
[ "$(id -u)" = 0 ] || rig_die "qemu.sh must run as root (chroot and bind mounts)"

if [ "$accel" = kvm ]; then cpu=host; else cpu=max; fi
args=(-nodefaults -no-user-config -display none -monitor none -serial stdio -no-reboot
    -object "memory-backend-memfd,id=mem,size=${mem}M,share=on"
    -machine "q35,accel=$accel,memory-backend=mem" -cpu "$cpu" -m "${mem}M" -smp "$smp"
    -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initramfs.cpio"
    -append "console=ttyS0 panic=-1 loglevel=4 mitigations=off no_timer_check$append")
if [ -n "$share" ]; then
    args+=(-fsdev "local,id=fs0,path=$share,security_model=none"
        -device "virtio-9p-pci,fsdev=fs0,mount_tag=sluice")
fi
args+=("${devices[@]}" "$@")

# Unique bind list (the guest artefacts first); never "/" nor anything inside the chroot.
binds=("$GUEST_DIR" "${binds[@]}")
bind_list=""
for d in "${binds[@]}"; do
    [ "$d" = / ] && rig_die "refusing to bind-mount /"
    case "$d" in "$CHROOT" | "$CHROOT"/*) rig_die "refusing to bind-mount $d (inside the chroot)" ;; esac
    case "$d" in *[[:space:]]*) rig_die "directories with white space are not supported: $d" ;; esac
    case " $bind_list " in *" $d "*) continue ;; esac
    [ -d "$d" ] || rig_die "no such directory: $d"
    bind_list="$bind_list $d"
done

exec unshare --mount --propagation private -- /bin/bash -c '
    set -e
    c=$1 t=$2 binds=$3; shift 3
    mount -t proc proc "$c/proc"
    mount --rbind /sys "$c/sys"; mount --make-rslave "$c/sys"
    mount --rbind /dev "$c/dev"; mount --make-rslave "$c/dev"
    for d in $binds; do
        mkdir -p "$c$d"
        mount --bind "$d" "$c$d"
    done
    exec chroot "$c" timeout --kill-after=5 "$t" qemu-system-x86_64 "$@"
' sluice-qemu "$CHROOT" "$timeout_s" "$bind_list" "${args[@]}"
