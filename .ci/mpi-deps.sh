#!/usr/bin/env bash
# mpi-deps.sh -- installs what `cargo test --features mpi` needs when it is missing: Open MPI
# (mpirun, mpicc and headers: Debian `openmpi-bin libopenmpi-dev`) and libclang (`libclang-dev`,
# for the bindgen run of the `mpi` crate's build). Does nothing when all three are present, so it
# is cheap to run before every test. Needs root (CI runs as root) or sudo, and Debian's apt.
set -euo pipefail

have_libclang() {
    compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null || compgen -G "/usr/lib/x86_64-linux-gnu/libclang*.so*" >/dev/null
}

if command -v mpirun >/dev/null && command -v mpicc >/dev/null && have_libclang; then
    exit 0
fi
echo "mpi-deps.sh: installing openmpi-bin libopenmpi-dev libclang-dev" >&2
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq openmpi-bin libopenmpi-dev libclang-dev >/dev/null
command -v mpirun >/dev/null
