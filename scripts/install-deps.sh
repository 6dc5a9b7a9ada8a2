#!/usr/bin/env bash
# Installs the host packages and tools the test suite needs. Idempotent and non-interactive:
# `apt-get update` runs once, and only when a package is missing.
#
# Audit (what needs what, on the host):
#   qemu-utils    qemu-nbd: crates/bdev/tests/nbd.rs, crates/sluice/tests/data_plane.rs
#   nbdkit        memory plugin, delay/fua filters: crates/bdev/tests/nbd.rs
#   g++           libfuzzer-sys compiles libFuzzer (C++) for scripts/fuzz.sh
#   debootstrap, util-linux (unshare), mount, coreutils (chroot, timeout), ca-certificates:
#                 scripts/vm-rig/setup.sh and qemu.sh (the rig's own steps install them too)
# fio, nvme-cli, busybox-static, kmod, cpio, xz-utils, zstd, e2fsprogs and QEMU 11 are needed
# only INSIDE the trixie chroot; scripts/vm-rig/setup.sh installs them there.
# Rust tools: rustfmt and clippy (rustup components), cargo-fuzz (crates.io).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PKGS=(qemu-utils nbdkit g++ debootstrap util-linux mount coreutils ca-certificates)

# retry N CMD...: the mirror and crates.io can fail transiently.
retry() {
    local n=$1 i
    shift
    for i in $(seq 1 "$n"); do
        "$@" && return 0
        if [ "$i" -lt "$n" ]; then
            echo "install-deps: attempt $i of $n failed: $*; retrying in 10 s" >&2
            sleep 10
        fi
    done
    return 1
}

missing=()
for p in "${PKGS[@]}"; do
    dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "install-deps: must run as root to install: ${missing[*]}" >&2; exit 1; }
    echo "install-deps: installing ${missing[*]}"
    retry 3 apt-get update -qq
    retry 3 apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi
for t in qemu-nbd nbdkit g++ debootstrap unshare chroot timeout; do
    command -v "$t" >/dev/null 2>&1 || { echo "install-deps: $t still missing" >&2; exit 1; }
done

for comp in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$comp"; then
        echo "install-deps: rustup component add $comp"
        retry 3 rustup component add "$comp"
    fi
done

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "install-deps: cargo install --locked cargo-fuzz"
    retry 2 cargo install --locked cargo-fuzz
fi
echo "install-deps: ok ($(cargo --version); $(cargo fuzz --version 2>/dev/null || echo 'cargo-fuzz ?'))"
