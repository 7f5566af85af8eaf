#!/usr/bin/env bash
# Backup benchmark: build a database of about MB MiB of instance context, take an online
# backup with `rstmdb-cli backup` while `rstmdb-bench` runs a durable APPLY load, verify the
# file, restore it offline with `rstmdb restore`, start a server on the restored directory
# and check it holds every filled instance. Prints wall-clock times and, for the server, the
# CPU time the backup cost (robust on a shared machine).
#
# Usage: scripts/backup-bench.sh [MB=1024] [CONNECTIONS=16] [--encrypt]
# Needs about 6 × MB of free disk in $TMPDIR (data + WAL, spool, backup file, restored copy).
set -euo pipefail
cd "$(dirname "$0")/.."

mb="${1:-1024}"
conns="${2:-16}"
encrypt="${3:-}"
target="${CARGO_TARGET_DIR:-target}/release"

cargo build --release -q -p rstmdb-server -p rstmdb-cli -p rstmdb-bench \
    -p rstmdb-storage --bin rstmdb-storage-bench
dir="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)

start_server() { # data_dir
    port=$((20000 + RANDOM % 20000))
    cat > "$dir/c.yaml" <<YAML
network: {bind_addr: "127.0.0.1:$port", max_connections: 1000, idle_timeout_secs: 3600}
storage: {data_dir: "$1"}
logging: {level: info}
YAML
    "$target/rstmdb" --config "$dir/c.yaml" > "$dir/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do grep -q "listening" "$dir/server.log" 2>/dev/null && return; sleep 0.1; done
    echo "server did not start"; cat "$dir/server.log"; exit 1
}
stop_server() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }

echo "== fill: about $mb MiB of instance context"
t0=$(now)
"$target/rstmdb-storage-bench" fill --dir "$dir/data" --megabytes "$mb" --ctx-bytes 4096
t1=$(now)
echo "fill: $(secs "$t0" "$t1") s; data dir $(du -sh "$dir/data" | cut -f1)"
instances=$(( (mb * 1024 * 1024 / (4096 * 100) + 1) * 100 ))

start_server "$dir/data"
echo "== online backup under a durable APPLY load ($conns connections)"
# 5-second slices until the backup is done, one result line each.
(while [ ! -e "$dir/stop" ]; do
    "$target/rstmdb-bench" --addr "127.0.0.1:$port" --connections "$conns" --workload apply \
        --seconds 5 --format text
done) > "$dir/load.txt" 2>&1 &
load=$!
sleep 3
key_args=()
if [ "$encrypt" = "--encrypt" ]; then
    head -c 32 /dev/urandom > "$dir/key"; chmod 600 "$dir/key"
    key_args=(--encrypt --key-file "$dir/key")
fi
c0=$(cpu_ticks "$pid"); t0=$(now)
"$target/rstmdb-cli" -s "127.0.0.1:$port" --json backup --out "$dir/backup.rbk" "${key_args[@]}" \
    > "$dir/backup.json"
t1=$(now); c1=$(cpu_ticks "$pid")
touch "$dir/stop"; wait "$load" || true
cat "$dir/backup.json"
echo "backup: $(secs "$t0" "$t1") s wall, server CPU $(awk -v a="$c0" -v b="$c1" -v t="$tck" 'BEGIN {printf "%.1f", (b - a) / t}') s (load included), file $(du -h "$dir/backup.rbk" | cut -f1)"
grep "backup exported" "$dir/server.log" | sed 's/^/server: /' || true
echo "load during the backup:"; cat "$dir/load.txt"
stop_server

vkey=()
[ "$encrypt" = "--encrypt" ] && vkey=(--key-file "$dir/key")
t0=$(now)
"$target/rstmdb-cli" backup verify "$dir/backup.rbk" "${vkey[@]}"
t1=$(now)
echo "verify: $(secs "$t0" "$t1") s"

rm -rf "$dir/data"   # room for the restored copy
t0=$(now)
"$target/rstmdb" restore --from "$dir/backup.rbk" --data-dir "$dir/restored" "${vkey[@]}"
t1=$(now)
echo "restore: $(secs "$t0" "$t1") s; restored dir $(du -sh "$dir/restored" | cut -f1)"

start_server "$dir/restored"
total=$("$target/rstmdb-cli" -s "127.0.0.1:$port" --json list-instances -m bench -l 1 \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
stop_server
echo "restored instances of machine bench: $total (filled: $instances, plus the load's)"
[ "$total" -ge "$instances" ] || { echo "MISSING INSTANCES"; exit 1; }
