#!/usr/bin/env bash
# An operator's script written for rstmdb 0.3.0's own rstmdb-cli: put a machine, create,
# apply, get, list, read the WAL, watch, replication-status, flush-all. It prints what the
# CLI prints and checks nothing itself: scripts/cross-check-reference-cli.sh runs it against
# the reference server 0.3.0 and against ours, with the same CLI, and compares the outputs.
#
#   RSTMDB_CLI=~/.cache/rstmdb-reference/bin/rstmdb-cli RSTMDB_ADDR=127.0.0.1:7401 \
#     tests/cli/operator_0_3_0.sh
set -euo pipefail

CLI="${RSTMDB_CLI:-rstmdb-cli}"
ADDR="${RSTMDB_ADDR:-127.0.0.1:7401}"
WORK="$(mktemp -d)"
trap 'kill "${WATCH_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
cli() { "$CLI" -s "$ADDR" "$@"; }
step() { echo "## $*"; }

cat > "$WORK/order.json" <<'JSON'
{
  "states": ["pending", "paid", "shipped", "cancelled"],
  "initial": "pending",
  "transitions": [
    {"from": "pending", "event": "PAY", "to": "paid"},
    {"from": "paid", "event": "SHIP", "to": "shipped", "guard": "ctx.amount > 0"},
    {"from": ["pending", "paid"], "event": "CANCEL", "to": "cancelled"}
  ]
}
JSON

step ping
cli ping
step put-machine
cli put-machine -n order -v 1 @"$WORK/order.json"
cli put-machine -n order -v 1 @"$WORK/order.json"
step get-machine
cli get-machine -n order -v 1
step list-machines
cli list-machines

step watch-all
# The binary itself in the background (not the `cli` function, whose subshell would be what
# $! names, leaving the CLI running after the kill below).
"$CLI" -s "$ADDR" watch-all --machines order >"$WORK/events.jsonl" 2>/dev/null &
WATCH_PID=$!
sleep 1

step create-instance
cli create-instance -m order -V 1 -i order-1 -c '{"customer":"alice","amount":10}'
cli create-instance -m order -V 1 -i order-2 -c '{"customer":"bob","amount":0}'
step apply-event
cli apply-event -i order-1 -e PAY -p '{"paid_at":"2026-01-01"}'
cli apply-event -i order-1 -e SHIP
cli apply-event -i order-2 -e CANCEL --expected-state pending
step get-instance
cli get-instance order-1
cli get-instance order-2
step wal-read
cli wal-read
# Offsets are opaque: page on from the one the server printed, never from a literal.
page="$(cli wal-read --limit 2)"
echo "$page"
next="$(echo "$page" | sed -n 's/^Next offset: //p')"
cli wal-read --from "$next" --limit 2

sleep 1
kill "$WATCH_PID" 2>/dev/null || true
wait "$WATCH_PID" 2>/dev/null || true
WATCH_PID=
step watch-all events
cat "$WORK/events.jsonl"

step replication-status
cli replication-status
step flush-all
cli flush-all
step list-machines after flush
cli list-machines
step errors
cli get-instance order-1 2>&1 || echo "exit $?"
cli apply-event -i nope -e PAY 2>&1 || echo "exit $?"
