#!/usr/bin/env bash
# Install promtool (and the prometheus server binary) from Debian's `prometheus` package, so the
# alert-rule tests run against the real tool. Idempotent: does nothing when promtool is on PATH.
# Non-interactive; uses sudo only when not root. --no-install-recommends keeps node-exporter out.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    echo "promtool present: $(promtool --version 2>&1 | head -n 1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "promtool missing and not root (no sudo): install Debian's 'prometheus' package" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
echo "promtool installed: $(promtool --version 2>&1 | head -n 1)"
