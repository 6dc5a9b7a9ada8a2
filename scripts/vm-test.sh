#!/usr/bin/env bash
# The real-Linux-guest suite (issue 6): QEMU 11 vfio-user-pci guests on Sluice controllers.
# Needs the rig (scripts/vm-rig/setup.sh) and root. Extra arguments go to the test binary,
# e.g. `scripts/vm-test.sh vm_01` runs one case; consoles and daemon logs are kept in
# target/release/build/../tmp/vm-logs (path printed per VM).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
echo "vm-test: accelerator $(scripts/vm-rig/qemu.sh --print-accel), rig ${SLUICE_VM_RIG:-/var/cache/sluice-vm-rig}"
# --workspace: same feature set as the tests stage of scripts/test.sh, so its build is reused.
exec cargo test --workspace --release --locked --test vm_e2e -- --include-ignored --test-threads=1 "$@"
