#!/usr/bin/env bash
# The reference's own rstmdb-cli 0.3.0 runs an operator's script (tests/cli/operator_0_3_0.sh)
# against the reference server 0.3.0 and against ours; the outputs must be the same once the
# values that legitimately differ are masked (WAL offsets and sequence numbers: the
# reference's are byte positions, ours record numbers; definition checksums: the reference's
# are CRC-32C, ours SHA-256). Our own CLI then runs the same script against our server and
# must print the same again.
#
# Both reference binaries are installed (once; CI caches ~/.cache) with
#   cargo install --locked --version 0.3.0 --root ~/.cache/rstmdb-reference rstmdb rstmdb-cli
# Usage: scripts/cross-check-reference-cli.sh [OUR_RSTMDB [OUR_RSTMDB_CLI]]
set -euo pipefail
cd "$(dirname "$0")/.."

REF_ROOT="${RSTMDB_REFERENCE_ROOT:-$HOME/.cache/rstmdb-reference}"
REF_SERVER="$REF_ROOT/bin/rstmdb"
REF_CLI="$REF_ROOT/bin/rstmdb-cli"
OUR_SERVER="${1:-target/debug/rstmdb}"
OUR_CLI="${2:-target/debug/rstmdb-cli}"
for bin in "$REF_SERVER" "$REF_CLI" "$OUR_SERVER" "$OUR_CLI"; do
    [ -x "$bin" ] || { echo "cross-check: $bin is missing" >&2; exit 1; }
done
"$REF_CLI" --version | grep -qx 'rstmdb-cli 0.3.0' \
    || { echo "cross-check: $REF_CLI is not rstmdb-cli 0.3.0" >&2; exit 1; }

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start NAME BINARY: starts a server configured only through 0.3.0's environment variables
# (the reference reads nothing else), waits until it answers PING, and sets ADDR to its
# address. Not to be called in $(...): its pid must reach PIDS in this shell, for cleanup.
start() {
    local name="$1" bin="$2" port
    port="$(free_port)"
    mkdir -p "$WORK/$name"
    env -i PATH="$PATH" HOME="$WORK/$name" \
        RSTMDB_BIND="127.0.0.1:$port" RSTMDB_DATA="$WORK/$name/data" \
        RSTMDB_ALLOW_FLUSH_ALL=true RSTMDB_METRICS_ENABLED=false \
        "$bin" >"$WORK/$name/log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do
        if "$REF_CLI" -s "127.0.0.1:$port" ping >/dev/null 2>&1; then
            ADDR="127.0.0.1:$port"
            return
        fi
        sleep 0.1
    done
    echo "cross-check: $name did not answer on 127.0.0.1:$port" >&2
    cat "$WORK/$name/log" >&2
    exit 1
}

# Masks what legitimately differs between the two servers, and nothing else:
# - WAL offsets and sequence numbers (opaque to clients; see docs/protocol.md);
# - subscription ids (random);
# - definition checksums (the reference's CRC-32C, our SHA-256);
# - the reference's "core error: " prefix on engine error messages (messages are for people);
# - an event's `payload` when APPLY_EVENT sent none: the reference sends null (the CLI then
#   omits the key), we send {} as the reference's docs say (docs/protocol.md, Events).
normalise() {
    sed -E \
        -e 's/(WAL offset: )[0-9]+/\1<offset>/g' \
        -e 's/"(wal_offset|current_wal_offset)":[0-9]+/"\1":<offset>/g' \
        -e 's/^\[ *[0-9]+\] +[0-9]+ \|/[<seq>] <offset> |/' \
        -e 's/(Next offset: )[0-9]+/\1<offset>/' \
        -e 's/"subscription_id":"sub-[0-9a-f-]+"/"subscription_id":"<sub>"/g' \
        -e 's/(checksum: )[0-9a-f]+/\1<checksum>/g' \
        -e 's/ - core error: / - /' \
        -e '/^\{"type":"event"/s/"payload":\{\},//'
}

run_script() {
    local cli="$1" addr="$2" out="$3"
    NO_COLOR=1 RSTMDB_CLI="$cli" RSTMDB_ADDR="$addr" tests/cli/operator_0_3_0.sh >"$out.raw" 2>&1 \
        || { echo "cross-check: the script failed ($cli against $addr):" >&2; cat "$out.raw" >&2; exit 1; }
    normalise <"$out.raw" >"$out"
}

start reference "$REF_SERVER"
ref_addr="$ADDR"
start ours "$OUR_SERVER"
ours_addr="$ADDR"
run_script "$REF_CLI" "$ref_addr" "$WORK/expected"
run_script "$REF_CLI" "$ours_addr" "$WORK/reference-cli"
start ours-again "$OUR_SERVER"
ours2_addr="$ADDR"
run_script "$OUR_CLI" "$ours2_addr" "$WORK/our-cli"

status=0
if ! diff -u "$WORK/expected" "$WORK/reference-cli"; then
    echo "cross-check: rstmdb-cli 0.3.0 prints differently against our server (above: - reference server, + ours)" >&2
    status=1
fi
if ! diff -u "$WORK/expected" "$WORK/our-cli"; then
    echo "cross-check: our rstmdb-cli prints differently from rstmdb-cli 0.3.0 (above: - reference, + ours)" >&2
    status=1
fi
[ "$status" = 0 ] && echo "cross-check: rstmdb-cli 0.3.0 and ours print the same against both servers ($(grep -c '' "$WORK/expected") lines)"
exit "$status"
