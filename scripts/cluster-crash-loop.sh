#!/usr/bin/env bash
# Cluster failover checker, long form: runs tests/cluster.rs's
# killing_the_leader_loses_no_acknowledged_write for N cycles (default 100) of acknowledged
# writes on a three-node loopback cluster, SIGKILL of the leader, election of a new one and
# restart of the killed node, then prints the summary. Exit status is non-zero if an
# acknowledged write was lost or applied twice, or the logs did not converge (the test fails).
#
#   scripts/cluster-crash-loop.sh          # 100 cycles
#   scripts/cluster-crash-loop.sh 500      # 500 cycles
#
# Extra cargo arguments can be passed in CLUSTER_CARGO_ARGS (e.g. "--release").
set -euo pipefail
cd "$(dirname "$0")/.."

export CLUSTER_KILL_CYCLES="${1:-${CLUSTER_KILL_CYCLES:-100}}"
log="$(mktemp -t rstmdb-cluster-crash-loop.XXXXXX)"
trap 'rm -f "$log"' EXIT

echo "== cluster crash loop: $CLUSTER_KILL_CYCLES cycles"
status=0
# shellcheck disable=SC2086 # CLUSTER_CARGO_ARGS is a list of words
cargo test ${CLUSTER_CARGO_ARGS:-} -p rstmdb-server --test cluster \
    killing_the_leader_loses_no_acknowledged_write -- --nocapture 2>&1 \
    | tee "$log" || status=$?

summary="$(grep -o 'CLUSTER SUMMARY.*' "$log" | tail -n 1 || true)"
echo
echo "== summary"
if [[ -z "$summary" ]]; then
    echo "no summary: the test failed before finishing (see the output above)"
    exit 1
fi
echo "$summary"
exit "$status"
