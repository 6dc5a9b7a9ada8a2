#!/bin/bash
# Runs INSIDE the trixie chroot (called by setup.sh): downloads trixie's kernel package and
# builds an uncompressed newc initramfs with busybox, fio, nvme-cli, mke2fs and the kernel
# modules the guest needs, loaded in dependency order by /init.
# Output: $1/out/{vmlinuz,initramfs.cpio,kver}
set -euo pipefail
W=${1:?work dir}
cd "$W"
rm -rf k root out
mkdir -p k root out

# --- kernel package ------------------------------------------------------------------------
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$pkg" ] || { echo "cannot resolve linux-image-amd64" >&2; exit 1; }
echo "kernel package: $pkg"
apt-get download "$pkg"
dpkg-deb -x ./"${pkg}"_*.deb k
rm -f ./*.deb
if [ -d k/usr/lib/modules ] && [ ! -e k/lib/modules ]; then
    mkdir -p k/lib
    ln -s ../usr/lib/modules k/lib/modules
fi
kver=$(ls k/lib/modules/ | head -n 1)
[ -n "$kver" ] || { echo "no modules in $pkg" >&2; exit 1; }
vmlinuz=$(ls k/boot/vmlinuz-* | head -n 1)
cp "$vmlinuz" out/vmlinuz
echo "$kver" >out/kver
depmod -b k "$kver"

# --- modules, in dependency order ----------------------------------------------------------
# nvme: the device under test; 9p + virtio: the test-script share; ext4 + crc32c: filesystem test.
WANT="virtio_pci nvme 9pnet_virtio 9p crc32c_generic crc32c_intel crc32c-x86 ext4"
mkdir -p root/lib/modules
: >root/etc.modules.order
for m in $WANT; do
    deps=$(modprobe -d k -S "$kver" --show-depends "$m" 2>/dev/null) || { echo "module $m: not available (skipped)"; continue; }
    while read -r kind path _; do
        [ "$kind" = insmod ] || continue
        rel=${path#*/lib/modules/"$kver"/}
        name=$(basename "$rel")
        name=${name%.xz}; name=${name%.zst}; name=${name%.gz}
        grep -qx "$name" root/etc.modules.order && continue
        case "$rel" in
            *.xz) xz -dc "k/lib/modules/$kver/$rel" >"root/lib/modules/$name" ;;
            *.zst) zstd -qdc "k/lib/modules/$kver/$rel" >"root/lib/modules/$name" ;;
            *.gz) gzip -dc "k/lib/modules/$kver/$rel" >"root/lib/modules/$name" ;;
            *) cp "k/lib/modules/$kver/$rel" "root/lib/modules/$name" ;;
        esac
        echo "$name" >>root/etc.modules.order
    done <<<"$deps"
done
grep -q '^nvme.ko$' root/etc.modules.order || { echo "nvme.ko missing from the module list" >&2; exit 1; }
echo "modules: $(tr '\n' ' ' <root/etc.modules.order)"

# --- userland --------------------------------------------------------------------------------
mkdir -p root/bin root/sbin root/usr/bin root/usr/sbin root/usr/lib root/usr/lib64 root/etc \
    root/proc root/sys root/dev root/tmp root/run root/share root/mnt root/var
mv root/lib/modules root/usr/lib/modules
rmdir root/lib
ln -s usr/lib root/lib
ln -s usr/lib64 root/lib64
mv root/etc.modules.order root/etc/modules.order
cp /bin/busybox root/bin/busybox

copy_with_libs() {
    local bin=$1 dst=$2 lib
    cp -L "$bin" "root$dst"
    for lib in $(ldd "$bin" | awk '/=> \// { print $3 } /^\t\// { print $1 }'); do
        [ -e "root$lib" ] && continue
        mkdir -p "root$(dirname "$lib")"
        cp -L "$lib" "root$lib"
    done
}
copy_with_libs /usr/bin/fio /usr/bin/fio
copy_with_libs /usr/sbin/nvme /usr/sbin/nvme
copy_with_libs /usr/sbin/mke2fs /usr/sbin/mke2fs
copy_with_libs /usr/sbin/e2fsck /usr/sbin/e2fsck
ln -s mke2fs root/usr/sbin/mkfs.ext4
cp /etc/mke2fs.conf root/etc/mke2fs.conf
printf '/usr/lib/x86_64-linux-gnu\n/usr/lib64\n' >root/etc/ld.so.conf
ldconfig -r root
printf 'root:x:0:0:root:/root:/bin/sh\n' >root/etc/passwd
printf 'root:x:0:\n' >root/etc/group
install -m 0755 "$W/init" root/init

(cd root && find . -print0 | cpio --null -o -H newc --quiet) >out/initramfs.cpio
echo "initramfs: $(du -h out/initramfs.cpio | cut -f1)"
