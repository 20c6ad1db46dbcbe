#!/usr/bin/env bash
# Install the Debian packages the test suite drives for real, when any is missing:
#   chromium                                  the report test opens the HTML report headless
#   slurmctld slurmd slurm-client munge       tests/slurm starts a private single-node SLURM
# Nothing is started here; the fixtures start (and stop) their own daemons.
# Needs root or sudo for the install step. Usage: bash tests/helpers/ensure_system_packages.sh
set -euo pipefail

packages=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || packages+=(chromium)
for prog in munged slurmctld slurmd sbatch squeue scontrol scancel; do
    if ! command -v "$prog" >/dev/null 2>&1; then
        packages+=(slurmctld slurmd slurm-client munge)
        break
    fi
done
if [ ${#packages[@]} -eq 0 ]; then
    echo "ensure_system_packages: chromium, SLURM and munge present"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_system_packages: error: apt-get not found; install ${packages[*]} by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
        echo "ensure_system_packages: error: not root and no sudo; ask an administrator to run: apt-get install ${packages[*]}" >&2
        exit 1
    }
    SUDO="sudo"
fi
echo "ensure_system_packages: installing ${packages[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${packages[@]}"
