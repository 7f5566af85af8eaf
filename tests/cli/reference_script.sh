#!/usr/bin/env bash
# An operator's script written for the reference rstmdb-cli (operations.md §6): it only uses
# the reference's subcommands, flags and output formats. tests/cli_script.rs runs it
# unchanged against our CLI and server, with `rstmdb-cli` first on PATH.
#
#   RSTMDB_ADDR=127.0.0.1:7401 tests/cli/reference_script.sh
set -euo pipefail

ADDR="${RSTMDB_ADDR:-127.0.0.1:7401}"
WORK="$(mktemp -d)"
trap 'kill "${WATCH_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }

rstmdb-cli -s "$ADDR" ping | grep -qx PONG || fail "ping"

cat > "$WORK/order.json" <<'JSON'
{
  "states": ["pending", "paid", "shipped"],
  "initial": "pending",
  "transitions": [
    {"from": "pending", "event": "PAY", "to": "paid"},
    {"from": "paid", "event": "SHIP", "to": "shipped", "guard": "ctx.amount > 0"}
  ]
}
JSON

out="$(rstmdb-cli -s "$ADDR" put-machine -n order -v 1 @"$WORK/order.json")"
case "$out" in
  "Created machine order v1 (checksum: "*) ;;
  *) fail "put-machine: $out" ;;
esac
rstmdb-cli -s "$ADDR" put-machine --name order --version 1 @"$WORK/order.json" \
  | grep -q '^Already exists machine order v1' || fail "put-machine again"

# Follow every payment into `paid` while the orders are processed.
rstmdb-cli -s "$ADDR" watch-all --machines order --to-states paid --events PAY \
  >"$WORK/events.jsonl" 2>"$WORK/watch.err" &
WATCH_PID=$!
for _ in $(seq 1 100); do
  grep -q 'Press Ctrl+C to stop' "$WORK/watch.err" 2>/dev/null && break
  sleep 0.1
done
grep -q '^Watching all events (sub_id: ' "$WORK/watch.err" || fail "watch-all did not start"

for n in 1 2 3; do
  id="order-00$n"
  rstmdb-cli -s "$ADDR" create-instance -m order -V 1 -i "$id" -c '{"customer": "alice"}' \
    | grep -qx "Created instance $id" || fail "create $id"
  rstmdb-cli -s "$ADDR" apply-event -i "$id" -e PAY -p "{\"amount\": $n}" --expected-state pending \
    | grep -qx '  pending → paid' || fail "pay $id"
done
rstmdb-cli -s "$ADDR" apply-event --instance order-001 --event SHIP | grep -q '^Applied event SHIP on order-001' \
  || fail "ship"

# An invalid transition is an error on stderr with exit status 1.
set +e
rstmdb-cli -s "$ADDR" apply-event -i order-001 -e PAY 2>"$WORK/err.txt"
status=$?
set -e
[ "$status" -eq 1 ] || fail "invalid transition exit status $status"
grep -q '^Error: server error: INVALID_TRANSITION - ' "$WORK/err.txt" || fail "error text: $(cat "$WORK/err.txt")"

state="$(rstmdb-cli -s "$ADDR" get-instance order-001 | awk -F': ' '/^  State:/ {print $2}')"
[ "$state" = "shipped" ] || fail "state of order-001 is '$state'"
rstmdb-cli -s "$ADDR" get-instance order-002 | grep -q '"amount": 2' || fail "ctx of order-002"

for _ in $(seq 1 100); do
  [ "$(wc -l <"$WORK/events.jsonl")" -ge 3 ] && break
  sleep 0.1
done
kill -INT "$WATCH_PID"
wait "$WATCH_PID" || fail "watch-all exit status $?"
WATCH_PID=
[ "$(wc -l <"$WORK/events.jsonl")" -eq 3 ] || fail "expected 3 events, got: $(cat "$WORK/events.jsonl")"
grep -q '"instance_id":"order-002"' "$WORK/events.jsonl" || fail "event of order-002"
if grep -q '"event":"SHIP"' "$WORK/events.jsonl"; then fail "SHIP passed the filters"; fi
grep -q 'Stopping watch...' "$WORK/watch.err" || fail "watch stop message"

[ "$(rstmdb-cli hash-token my-secret-token)" = \
  "ea5add57437cbf20af59034d7ed17968dcc56767b41965fcc5b376d45db8b4a3" ] || fail "hash-token"

echo "reference script: all checks passed"
