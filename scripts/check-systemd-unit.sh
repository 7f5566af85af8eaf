#!/usr/bin/env bash
# Checks deploy/rstmdb.service with systemd-analyze (installing systemd if missing and
# possible) and prints its security exposure. The unit's ExecStart names the installed path,
# so the check runs on a copy pointing at the binary built here.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v systemd-analyze >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq systemd >/dev/null || true
    fi
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-analyze not available: unit check skipped"
    exit 0
fi

bin="${1:-target/debug/rstmdb}"
[ -x "$bin" ] || cargo build -q -p rstmdb-server --bin rstmdb
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/local/bin/rstmdb#$(realpath "$bin")#" deploy/rstmdb.service > "$tmp/rstmdb.service"
systemd-analyze verify "$tmp/rstmdb.service"
echo "systemd-analyze verify: ok"
systemd-analyze security --offline=true "$tmp/rstmdb.service" | tail -n 1
