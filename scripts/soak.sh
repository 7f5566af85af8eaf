#!/usr/bin/env bash
# Soak: mixed load at a fixed rate for N minutes against a fresh server that checkpoints and
# compacts often, sampling the server's RSS, open fds and latency every slice, and reporting
# the drift between the first and the last slices.
#
# Usage: scripts/soak.sh [MINUTES=10] [RATE=2000] [CONNECTIONS=16]
# Output: one line per slice, then a summary; exit 1 if the server died or a slice failed.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-10}"
rate="${2:-2000}"
conns="${3:-16}"
slice=30

cargo build --release -q -p rstmdb-server -p rstmdb-bench
dir="$(mktemp -d)"
port=$((20000 + RANDOM % 20000))
cat > "$dir/c.yaml" <<YAML
network: {bind_addr: "127.0.0.1:$port", max_connections: 1000}
storage: {data_dir: "$dir/data", wal_segment_size_mb: 8}
compaction: {enabled: true, events_threshold: 20000, size_threshold_mb: 16, min_interval_secs: 10}
logging: {level: warn}
YAML
./target/release/rstmdb --config "$dir/c.yaml" > "$dir/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do grep -q "listening" "$dir/server.log" 2>/dev/null && break; sleep 0.1; done

rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
fds() { ls "/proc/$pid/fd" | wc -l; }
slices=$(( minutes * 60 / slice ))
printf '%-6s %-10s %-8s %-8s %-10s %-10s %-10s\n' slice ops/s rss_kib fds p50_us p99_us p999_us
first="" last=""
for i in $(seq 1 "$slices"); do
    kill -0 "$pid" || { echo "server died"; tail -20 "$dir/server.log"; exit 1; }
    out=$(./target/release/rstmdb-bench --addr "127.0.0.1:$port" --connections "$conns" \
        --workload mixed --rate "$rate" --seconds "$slice")
    line=$(python3 -c 'import json,sys; o=json.loads(sys.argv[1]); print(o["ops_per_sec"], o["p50_us"], o["p99_us"], o["p999_us"])' "$out")
    read -r ops p50 p99 p999 <<<"$line"
    r=$(rss); f=$(fds)
    printf '%-6s %-10s %-8s %-8s %-10s %-10s %-10s\n' "$i" "$ops" "$r" "$f" "$p50" "$p99" "$p999"
    [ -z "$first" ] && first="$r $f $p50 $p99"
    last="$r $f $p50 $p99"
done
read -r r0 f0 p500 p990 <<<"$first"
read -r r1 f1 p501 p991 <<<"$last"
wal=$(du -sk "$dir/data/wal" | cut -f1)
echo "summary: ${minutes} min at ${rate}/s over ${conns} connections;" \
    "RSS ${r0} -> ${r1} KiB, fds ${f0} -> ${f1}, p50 ${p500} -> ${p501} µs," \
    "p99 ${p990} -> ${p991} µs, WAL on disk ${wal} KiB"
