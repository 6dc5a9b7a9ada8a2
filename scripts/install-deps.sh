#!/usr/bin/env bash
# Installs the packages and tools the test suite needs. Idempotent and non-interactive.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PKGS=(fio nbdkit qemu-utils valgrind debootstrap cpio xz-utils zstd busybox-static kmod)
missing=()
for p in "${PKGS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
