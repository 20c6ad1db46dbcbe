#!/usr/bin/env bash
# Make sure a single-node SLURM can be started by the test suite (tests/slurm/).
# Installs Debian's slurmctld, slurmd, slurm-client and munge with apt-get when any of
# their programs is missing. Does not start anything: the pytest fixture starts private
# daemons under a temporary folder and stops them again.
# Usage: tests/helpers/ensure_slurm.sh    (needs root or sudo for the install step)
set -euo pipefail

missing=()
for prog in munged slurmctld slurmd sbatch squeue scontrol scancel; do
    command -v "$prog" >/dev/null 2>&1 || missing+=("$prog")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "ensure_slurm: SLURM and munge already installed ($(slurmd -V))"
    exit 0
fi

echo "ensure_slurm: missing ${missing[*]}; installing slurmctld slurmd slurm-client munge with apt-get"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_slurm: error: apt-get not found; install SLURM (slurmctld, slurmd, client tools) and munge by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "ensure_slurm: error: not root and no sudo; ask an administrator to run: apt-get install slurmctld slurmd slurm-client munge" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge
echo "ensure_slurm: installed ($(slurmd -V))"
