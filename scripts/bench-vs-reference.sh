#!/usr/bin/env bash
# Our server against the reference rstmdb 0.3.0 on the same machine, in the same run:
# the same rstmdb-bench workloads against each, alternating, each run on a fresh data
# directory, then a table of ours/reference ratios. Every performance claim in
# docs/benchmarks.md comes from this script.
#
#   scripts/bench-vs-reference.sh [--seconds N] [--rounds N] [--rows LIST] [--long-seconds N]
#
#   --seconds N       length of each measured run (default 10)
#   --rounds N        how many times each row runs per server, alternating (default 2;
#                     the table shows the median ops/s of the rounds)
#   --rows LIST       comma-separated row names (default: all; see ROWS below)
#   --long-seconds N  the drift row: one connection creating fresh ids for N s (default
#                     120; 0 skips it)
#   --out DIR         where the raw JSON lines and the table go (default target/bench-vs-reference)
#
# The reference is installed from crates.io once (`cargo install rstmdb --version 0.3.0
# --locked`) into $RSTMDB_REFERENCE_ROOT (default ~/.cache/rstmdb-reference, outside the
# clone so fresh clones reuse it). Both servers get their settings from the same
# environment variables (RSTMDB_BIND, RSTMDB_DATA, RSTMDB_FSYNC_POLICY) and run with
# their defaults otherwise. The load shape is a realistic client's (rstmdb-bench's docs):
# a client runtime on 2 threads, TCP_NODELAY, one request in flight per connection,
# requests spread over 1,000 instances shared by every connection, creates with fresh
# explicit ids.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=10
rounds=2
rows=""
long_seconds=120
out=target/bench-vs-reference
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --rows) rows="$2"; shift 2 ;;
        --long-seconds) long_seconds="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "bench-vs-reference: unknown argument $1" >&2; exit 2 ;;
    esac
done

REF_VERSION=0.3.0
ref_root="${RSTMDB_REFERENCE_ROOT:-$HOME/.cache/rstmdb-reference}"
ref_bin="$ref_root/bin/rstmdb"
if ! [ -x "$ref_bin" ] || ! grep -q "rstmdb $REF_VERSION" "$ref_root/.crates.toml" 2>/dev/null; then
    echo "== installing the reference rstmdb $REF_VERSION into $ref_root (once)"
    CARGO_TARGET_DIR="${TMPDIR:-/tmp}/rstmdb-reference-build" \
        cargo install --locked --version "$REF_VERSION" --root "$ref_root" rstmdb
fi

echo "== building ours (release)"
cargo build --release --quiet --bin rstmdb --bin rstmdb-bench
ours_bin="$PWD/target/release/rstmdb"
bench="$PWD/target/release/rstmdb-bench"

mkdir -p "$out"
raw="$out/raw.jsonl"
table="$out/table.md"
: > "$raw"
work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill -KILL "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# name | workload | connections | fsync policy | seconds (empty: --seconds)
ROWS=(
    "get-64|get|64|every_write|"
    "apply-16-never|apply|16|never|"
    "apply-16-durable|apply|16|every_write|"
    "create-16-never|create|16|never|"
    "create-16-durable|create|16|every_write|"
    "apply-1-durable|apply|1|every_write|"
    "apply-64-durable|apply|64|every_write|"
    "create-64-durable|create|64|every_write|"
)
if [ "$long_seconds" -gt 0 ]; then
    ROWS+=("create-1-long|create|1|never|$long_seconds")
fi

port=$((20000 + RANDOM % 20000))

start_server() { # which fsync
    local which="$1" fsync="$2" bin
    [ "$which" = ours ] && bin="$ours_bin" || bin="$ref_bin"
    port=$((port + 1))
    local data="$work/$which-$port"
    mkdir -p "$data"
    # The reference reads RSTMDB_CONFIG only when set; ours takes the same variables.
    env -u RSTMDB_CONFIG RSTMDB_BIND="127.0.0.1:$port" RSTMDB_DATA="$data/data" \
        RSTMDB_FSYNC_POLICY="$fsync" RUST_LOG=warn \
        "$bin" > "$work/$which-$port.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            # Something answers: make sure it is ours, not another process on that port
            # (ours would then exit on the failed bind).
            sleep 0.2
            if kill -0 "$server_pid" 2>/dev/null; then return 0; fi
            break
        fi
        if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
        sleep 0.05
    done
    echo "bench-vs-reference: $which did not start on port $port:" >&2
    cat "$work/$which-$port.log" >&2
    exit 1
}

stop_server() {
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

run_row() { # which spec round
    local which="$1" spec="$2" round="$3"
    IFS='|' read -r name workload conns fsync secs <<< "$spec"
    start_server "$which" "$fsync"
    local line
    line=$("$bench" --addr "127.0.0.1:$port" --workload "$workload" --connections "$conns" \
        --seconds "${secs:-$seconds}" --instances 1000 --threads 2 --server-pid "$server_pid" \
        --format json)
    stop_server
    echo "{\"row\":\"$name\",\"server\":\"$which\",\"round\":$round,\"fsync\":\"$fsync\",\"result\":$line}" >> "$raw"
    echo "  $name $which round $round: $(echo "$line" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["ops_per_sec"], "ops/s,", r["server_cpu_us_per_op"], "µs CPU/op")')"
}

echo "== rows: ${rows:-all}; $seconds s per run, $rounds rounds, alternating"
for spec in "${ROWS[@]}"; do
    name="${spec%%|*}"
    if [ -n "$rows" ] && ! [[ ",$rows," == *",$name,"* ]]; then continue; fi
    row_rounds="$rounds"
    # The drift row is long: once per server.
    [[ "$name" == *-long ]] && row_rounds=1
    for round in $(seq 1 "$row_rounds"); do
        # Alternate who goes first, so drift of the machine's speed hits both sides.
        if [ $((round % 2)) -eq 1 ]; then
            run_row ours "$spec" "$round"; run_row reference "$spec" "$round"
        else
            run_row reference "$spec" "$round"; run_row ours "$spec" "$round"
        fi
    done
done

python3 - "$raw" "$table" "$seconds" "$rounds" <<'EOF'
import json, statistics, sys
raw, table, seconds, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
runs = [json.loads(l) for l in open(raw) if l.strip()]
order, by = [], {}
for r in runs:
    key = r["row"]
    if key not in by:
        order.append(key)
        by[key] = {"ours": [], "reference": [], "fsync": r["fsync"], "res": r["result"]}
    by[key][r["server"]].append(r["result"])

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def fmt(x, nd=0):
    return "–" if x is None else (f"{x:,.{nd}f}")

lines = [
    f"| row | workload | conns | fsync | ours ops/s | reference ops/s | ours/ref | ours CPU µs/op | ref CPU µs/op | CPU ours/ref |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
drift_lines = []
for key in order:
    b = by[key]
    o_ops = med([r["ops_per_sec"] for r in b["ours"]])
    r_ops = med([r["ops_per_sec"] for r in b["reference"]])
    o_cpu = med([r["server_cpu_us_per_op"] for r in b["ours"]])
    r_cpu = med([r["server_cpu_us_per_op"] for r in b["reference"]])
    ratio = o_ops / r_ops if o_ops and r_ops else None
    cratio = o_cpu / r_cpu if o_cpu and r_cpu else None
    res = b["res"]
    lines.append(
        f"| {key} | {res['workload']} | {res['connections']} | {b['fsync']} | {fmt(o_ops)} | {fmt(r_ops)} | "
        f"{fmt(ratio, 2)}× | {fmt(o_cpu, 1)} | {fmt(r_cpu, 1)} | {fmt(cratio, 2)} |"
    )
    for who in ("ours", "reference"):
        for r in b[who]:
            d = r.get("drift")
            if d:
                drift_lines.append(
                    f"| {key} | {who} | {fmt(d['first_10s']['ops_per_sec'])} | {fmt(d['last_10s']['ops_per_sec'])} | "
                    f"{d['last_over_first_ops']} | {fmt(d['first_10s']['server_cpu_us_per_op'], 1)} | "
                    f"{fmt(d['last_10s']['server_cpu_us_per_op'], 1)} | {d['server_rss_kib_at_start']} → {d['last_10s']['server_rss_kib_at_end']} |"
                )
text = "\n".join(lines) + "\n"
if drift_lines:
    text += "\n| drift row | server | first 10 s ops/s | last 10 s ops/s | last/first | first CPU µs/op | last CPU µs/op | RSS KiB start → end |\n|---|---|---|---|---|---|---|---|\n"
    text += "\n".join(drift_lines) + "\n"
text += f"\n{seconds} s per run, median of {rounds} rounds; instances: 1,000 shared; client threads: 2.\n"
open(table, "w").write(text)
print(text)
EOF
echo "raw results: $raw; table: $table"
