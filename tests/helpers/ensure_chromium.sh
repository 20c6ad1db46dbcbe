#!/usr/bin/env bash
# Install Debian's chromium (headless browser for the report test) when it is missing.
# Needs root (or sudo). Usage: bash tests/helpers/ensure_chromium.sh
set -euo pipefail
for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then
        echo "chromium present: $(command -v "$b")"
        exit 0
    fi
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: chromium missing and not root; install the Debian package 'chromium'" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium
command -v chromium
