#!/usr/bin/env bash
# The whole test suite. Installs everything it needs first (idempotent), so it runs on a
# fresh machine as root with no standard input.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n==== %s ====\n' "$*"; }

step "install dependencies"
./scripts/install-deps.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unit and integration tests"
cargo test --workspace --locked

step "fuzz targets (build and short run)"
./scripts/fuzz.sh smoke

step "real Linux guest under QEMU (vfio-user-pci)"
./scripts/vm-rig/setup.sh
./scripts/vm-test.sh

echo "all test stages passed"
