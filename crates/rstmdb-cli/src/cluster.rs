//! `cluster status|add-node|remove-node`: CLUSTER_STATUS, CLUSTER_ADD_NODE and
//! CLUSTER_REMOVE_NODE (docs/cli.md, docs/cluster.md).

use std::process::ExitCode;

use rstmdb_client::{Client, ClusterAddNodeParams, ClusterStatusResult};

use crate::CliError;
use crate::args::ClusterAction;
use crate::output::{line, print};

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The human `cluster status` layout.
fn status_lines(r: &ClusterStatusResult) -> Vec<String> {
    let leader = match &r.leader {
        Some(l) => format!("{} ({})", l.node_id, l.client),
        None => "unknown".to_owned(),
    };
    let mut out = vec![
        format!("Cluster {} (node {}, {})", r.cluster_id, r.node_id, r.role),
        format!("  Term: {}", r.term),
        format!("  Leader: {leader}"),
        format!(
            "  Log: last {} committed {} applied {}",
            r.last_log_index, r.committed_index, r.applied_index
        ),
        format!(
            "  Snapshot: {}  Purged: {}",
            opt(r.snapshot_index),
            opt(r.purged_index)
        ),
        format!(
            "{:<8} {:<8} {:<22} {:<22} {:<8} LAG",
            "NODE", "VOTER", "CLIENT", "RAFT", "MATCHED"
        ),
    ];
    for m in &r.members {
        out.push(format!(
            "{:<8} {:<8} {:<22} {:<22} {:<8} {}",
            m.node_id,
            if m.voter { "yes" } else { "learner" },
            m.client,
            m.raft,
            opt(m.matched_index),
            opt(m.lag)
        ));
    }
    out
}

pub async fn run(client: &Client, json_out: bool, a: &ClusterAction) -> Result<ExitCode, CliError> {
    match a {
        ClusterAction::Status => {
            let r = client.cluster_status().await?;
            print(json_out, &r, || {
                for l in status_lines(&r) {
                    line(l);
                }
            });
        }
        ClusterAction::AddNode {
            id,
            client: addr,
            raft,
            learner,
            timeout_ms,
        } => {
            let r = client
                .cluster_add_node(ClusterAddNodeParams {
                    node_id: *id,
                    client: addr.clone(),
                    raft: raft.clone(),
                    voter: !learner,
                    timeout_ms: *timeout_ms,
                })
                .await?;
            print(json_out, &r, || {
                line(format!(
                    "Added node {} as a {} (log index {})",
                    r.node_id,
                    if r.voter { "voter" } else { "learner" },
                    r.log_index
                ));
            });
        }
        ClusterAction::RemoveNode { id } => {
            let r = client.cluster_remove_node(*id).await?;
            print(json_out, &r, || {
                line(format!(
                    "Removed node {} (log index {})",
                    r.node_id, r.log_index
                ));
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
