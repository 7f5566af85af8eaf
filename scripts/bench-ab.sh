#!/usr/bin/env bash
# A/B of two builds of our server with the same client, alternating which goes first:
#   scripts/bench-ab.sh BASE_RSTMDB_BINARY HEAD_RSTMDB_BINARY
# (e.g. a release build of an older commit in a worktree, and target/release/rstmdb).
# Prints one line per run: build, workload, connections, fsync, ops/s, server CPU µs/op.
set -u
cd "$(dirname "$0")/.."
base_bin=${1:?usage: scripts/bench-ab.sh BASE_BINARY HEAD_BINARY}
head_bin=${2:?usage: scripts/bench-ab.sh BASE_BINARY HEAD_BINARY}
cargo build --release --quiet --bin rstmdb-bench
bench=$PWD/target/release/rstmdb-bench
run() { # name bin workload conns fsync
  local name=$1 bin=$2 wl=$3 c=$4 fs=$5 port=7466
  local d; d=$(mktemp -d)
  env -u RSTMDB_CONFIG RSTMDB_BIND=127.0.0.1:$port RSTMDB_DATA=$d/data RSTMDB_FSYNC_POLICY=$fs RUST_LOG=warn $bin >/dev/null 2>&1 &
  local pid=$!
  for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  local out; out=$($bench --addr 127.0.0.1:$port --workload $wl --connections $c --seconds 4 --threads 2 --instances 1000 --server-pid $pid --format json 2>/dev/null | tail -1)
  kill $pid; wait $pid 2>/dev/null; rm -rf $d
  echo "$name $wl c=$c $fs $(echo "$out" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(round(d.get("ops_per_sec",0)), d.get("server_cpu_us_per_op"))')"
}
for r in 1 2; do
  for wl in "get 64 every_write" "apply 16 never" "create 16 never" "apply 64 every_write"; do
    set -- $wl
    if [ $r = 1 ]; then order="base head"; else order="head base"; fi
    for w in $order; do
      if [ $w = base ]; then bin=$base_bin; else bin=$head_bin; fi
      run $w $bin $1 $2 $3
    done
  done
done
