#!/usr/bin/env bash
# Durable APPLY_EVENT with and without encryption at rest, alternating runs under the same
# conditions (docs/benchmarks.md, "Encryption at rest"). Prints one JSON line per run.
#   scripts/bench-encryption.sh [runs=3] [tasks=1,64] [ctx_bytes="0 1024"] [seconds=5]
set -euo pipefail
runs=${1:-3}
tasks=${2:-1,64}
ctxs=${3:-0 1024}
seconds=${4:-5}
bin=${CARGO_TARGET_DIR:-target}/release/rstmdb-storage-bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c 32 /dev/urandom > "$work/key"
chmod 600 "$work/key"
for ctx in $ctxs; do
  for run in $(seq 1 "$runs"); do
    "$bin" apply --dir "$work/plain" --policy every_write --tasks "$tasks" --seconds "$seconds" --ctx-bytes "$ctx"
    "$bin" apply --dir "$work/enc" --policy every_write --tasks "$tasks" --seconds "$seconds" --ctx-bytes "$ctx" --key-file "$work/key"
  done
done
