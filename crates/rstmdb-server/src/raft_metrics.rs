//! The `rstmdb_raft_*` families, rendered only when the server is a cluster member
//! (docs/metrics.md "Cluster"). They are read from the node's raft status at scrape time;
//! the leader-change count is kept by the node's metrics watch.

use rstmdb_cluster::{ClusterNode, Role};
use std::fmt::Write as _;

fn one(out: &mut String, name: &str, kind: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

/// The raft families in the text exposition format.
pub async fn render(node: &ClusterNode) -> String {
    let s = node.status().await;
    let mut out = String::with_capacity(2048);
    one(
        &mut out,
        "rstmdb_raft_term",
        "gauge",
        "Current raft term as this node knows it",
        s.term,
    );
    one(
        &mut out,
        "rstmdb_raft_is_leader",
        "gauge",
        "1 when this node is the raft leader, else 0",
        u64::from(s.role == Role::Leader),
    );
    one(
        &mut out,
        "rstmdb_raft_leader_changes_total",
        "counter",
        "Times a new leader became known to this node since it started",
        s.leader_changes,
    );
    one(
        &mut out,
        "rstmdb_raft_last_log_index",
        "gauge",
        "Index of the last entry in this node's raft log",
        s.last_log_index,
    );
    one(
        &mut out,
        "rstmdb_raft_committed_index",
        "gauge",
        "Highest raft log index this node knows to be committed",
        s.committed_index,
    );
    one(
        &mut out,
        "rstmdb_raft_applied_index",
        "gauge",
        "Highest raft log index this node has applied to its database",
        s.applied_index,
    );
    let _ = writeln!(
        out,
        "# HELP rstmdb_raft_peer_lag_entries Entries each other member is behind the leader's log (leader only)\n# TYPE rstmdb_raft_peer_lag_entries gauge"
    );
    for m in &s.members {
        if m.node_id == s.node_id {
            continue;
        }
        if let Some(lag) = m.lag {
            let _ = writeln!(
                out,
                "rstmdb_raft_peer_lag_entries{{peer=\"{}\"}} {lag}",
                m.node_id
            );
        }
    }
    out
}
