#!/usr/bin/env bash
# Install promtool and the Prometheus server from Debian's `prometheus` package: the alert-rule
# tests run the real promtool, and tests/integration/test_prometheus.py runs the real server
# against a worker. Idempotent: does nothing when both are on PATH. Non-interactive; uses sudo
# only when not root. --no-install-recommends keeps node-exporter out. On a systemd host the
# package also starts a prometheus service on :9090; the tests never use that one (own port).
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    echo "promtool present: $(promtool --version 2>&1 | head -n 1)"
    echo "prometheus present: $(prometheus --version 2>&1 | head -n 1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "promtool or prometheus missing and not root (no sudo): install Debian's 'prometheus' package" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
echo "promtool installed: $(promtool --version 2>&1 | head -n 1)"
echo "prometheus installed: $(prometheus --version 2>&1 | head -n 1)"
