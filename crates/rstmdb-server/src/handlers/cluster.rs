//! CLUSTER_STATUS, CLUSTER_ADD_NODE and CLUSTER_REMOVE_NODE over the node's
//! `rstmdb_cluster::admin` (docs/cluster.md "Operating a cluster").

use super::reply::{Answer, Ctx, to_value, value};
use crate::error::{bad_request, with_details};
use rstmdb_cluster::{AdminError, ClusterNode, Member, Status};
use rstmdb_protocol::{
    ClusterAddNodeParams, ClusterAddNodeResult, ClusterLeader, ClusterMember,
    ClusterRemoveNodeParams, ClusterRemoveNodeResult, ClusterStatusResult, ErrorCode, ErrorObject,
};
use serde_json::Value;
use std::time::Duration;

/// How long a membership change may take (each step of an add): a new learner must receive
/// the whole log first.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest `timeout_ms` CLUSTER_ADD_NODE accepts: one hour.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

fn node<'a>(ctx: &Ctx<'a>) -> Result<&'a ClusterNode, ErrorObject> {
    ctx.cluster
        .ok_or_else(|| bad_request("this server is not a cluster member (no cluster: section)"))
}

/// The refusal, with replication.md's routing `details` when this node is not the leader:
/// `reason` (`not_leader` / `no_leader`), `leader_id`, `leader_addr`, `term`.
fn admin_error(e: AdminError) -> ErrorObject {
    if let AdminError::NotLeader {
        leader,
        leader_id,
        term,
    } = &e
    {
        let known = leader_id.is_some();
        let details = [
            (
                "reason",
                Value::from(if known { "not_leader" } else { "no_leader" }),
            ),
            ("leader_id", leader_id.map_or(Value::Null, Value::from)),
            (
                "leader_addr",
                if known && leader != "unknown" {
                    Value::from(leader.as_str())
                } else {
                    Value::Null
                },
            ),
            ("term", Value::from(*term)),
        ];
        return with_details(
            ErrorObject::new(ErrorCode::WalIoError, e.to_string()),
            &details,
        );
    }
    let code = match &e {
        // Retryable, as a write refused by a follower (nothing changed).
        AdminError::NotLeader { .. } | AdminError::Retry(_) => ErrorCode::WalIoError,
        AdminError::Invalid(_) => ErrorCode::BadRequest,
        AdminError::IdUsed(_) => ErrorCode::Conflict,
        AdminError::NotMember(_) => ErrorCode::NotFound,
        AdminError::Timeout(_) => ErrorCode::ReplicationTimeout,
    };
    ErrorObject::new(code, e.to_string())
}

/// The protocol's shape of a status.
fn status_result(s: Status) -> ClusterStatusResult {
    ClusterStatusResult {
        cluster_id: s.cluster_id,
        node_id: s.node_id,
        role: s.role.as_str().into(),
        term: s.term,
        leader: s.leader.map(|(node_id, addrs)| {
            let addrs = addrs.unwrap_or_default();
            ClusterLeader {
                node_id,
                client: addrs.client,
                raft: addrs.raft,
            }
        }),
        last_log_index: s.last_log_index,
        committed_index: s.committed_index,
        applied_index: s.applied_index,
        snapshot_index: s.snapshot_index,
        purged_index: s.purged_index,
        members: s
            .members
            .into_iter()
            .map(|m| ClusterMember {
                node_id: m.node_id,
                client: m.addrs.client,
                raft: m.addrs.raft,
                voter: m.voter,
                matched_index: m.matched_index,
                lag: m.lag,
            })
            .collect(),
    }
}

pub(super) async fn cluster_status(ctx: Ctx<'_>) -> Answer {
    let status = node(&ctx)?.status().await;
    value(to_value(&status_result(status))?, None)
}

fn check_addr(field: &str, v: &str) -> Result<(), ErrorObject> {
    match v.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(bad_request(format!(
            "{field} must be host:port with a port from 1 to 65535, got {v:?}"
        ))),
    }
}

pub(super) async fn cluster_add_node(ctx: Ctx<'_>, p: ClusterAddNodeParams) -> Answer {
    let node = node(&ctx)?;
    check_addr("client", &p.client)?;
    check_addr("raft", &p.raft)?;
    let timeout = match p.timeout_ms {
        None => CHANGE_TIMEOUT,
        Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Duration::from_millis(ms),
        Some(ms) => {
            return Err(bad_request(format!(
                "timeout_ms must be from 1 to {MAX_TIMEOUT_MS}, got {ms}"
            )));
        }
    };
    let addrs = Member {
        client: p.client,
        raft: p.raft,
    };
    let log_index = node
        .add_node(p.node_id, addrs, p.voter, timeout)
        .await
        .map_err(admin_error)?;
    let result = ClusterAddNodeResult {
        node_id: p.node_id,
        voter: p.voter,
        log_index,
    };
    value(to_value(&result)?, None)
}

pub(super) async fn cluster_remove_node(ctx: Ctx<'_>, p: ClusterRemoveNodeParams) -> Answer {
    let log_index = node(&ctx)?
        .remove_node(p.node_id, CHANGE_TIMEOUT)
        .await
        .map_err(admin_error)?;
    let result = ClusterRemoveNodeResult {
        node_id: p.node_id,
        log_index,
    };
    value(to_value(&result)?, None)
}
