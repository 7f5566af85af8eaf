#!/usr/bin/env bash
# Crash checker, long form: runs tests/crash_loop.rs for many cycles (default 100) of durable
# load from several connections, SIGKILL at a random moment, restart and ledger check, then
# prints a summary. Exit status is non-zero if any acknowledged write was lost or applied
# twice (the test fails).
#
#   scripts/crash-loop.sh            # 100 cycles
#   scripts/crash-loop.sh 500        # 500 cycles
#   CRASH_SEED=123 scripts/crash-loop.sh 100   # replay a run's kill timings
#
# Extra cargo arguments can be passed in CRASH_CARGO_ARGS (e.g. "--release").
set -euo pipefail
cd "$(dirname "$0")/.."

export CRASH_CYCLES="${1:-${CRASH_CYCLES:-100}}"
log="$(mktemp -t rstmdb-crash-loop.XXXXXX)"
trap 'rm -f "$log"' EXIT

echo "== crash loop: $CRASH_CYCLES cycles (log: test output below)"
status=0
# shellcheck disable=SC2086 # CRASH_CARGO_ARGS is a list of words
cargo test ${CRASH_CARGO_ARGS:-} -p rstmdb-server --test crash_loop -- --nocapture 2>&1 \
    | tee "$log" || status=$?

summary="$(grep -o 'CRASH SUMMARY.*' "$log" | tail -n 1 || true)"
echo
echo "== summary"
if [[ -z "$summary" ]]; then
    echo "no summary: the test failed before finishing (see the output above)"
    exit 1
fi
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$summary"; }
printf '%-28s %s\n' \
    "cycles" "$(field cycles)" \
    "writes acknowledged" "$(field writes_acknowledged) (creates $(field creates), applies $(field applies))" \
    "lost (must be 0)" "$(field lost)" \
    "duplicates (must be 0)" "$(field duplicates)" \
    "in-doubt requests" "$(field in_doubt)" \
    "  already durable" "$(field in_doubt_durable)" \
    "  applied on retry" "$(field in_doubt_applied_on_retry)" \
    "replays checked" "$(field replays_checked)" \
    "WAL records checked" "$(field wal_records_checked)" \
    "seconds" "$(field seconds)"
exit "$status"
