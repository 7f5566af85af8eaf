//! Cluster routing for data ops (`docs/cluster.md`): on a follower with
//! `cluster.forward_writes: true`, a write is sent to the leader over the peer link and the
//! leader's answer relayed, so a client may write through any node; on the leader, the
//! forwarded request runs as a local one ([`LeaderExecutor`]). The follower authenticates and
//! authorizes the caller first (every node has the same `auth` configuration); the leader
//! logs the caller's name with the request.

use crate::config::ReadConsistency;
use crate::handlers::{self, Answer, Payload};
use crate::shared::Shared;
use rstmdb_cluster::forward::{ForwardError, ForwardFuture, ForwardHandler, ForwardReply};
use rstmdb_protocol::{Command, ErrorCode, ErrorObject, Request};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Whether `command` changes the database (and so must run on the leader).
pub fn is_write(command: &Command) -> bool {
    matches!(
        command,
        Command::PutMachine(_)
            | Command::CreateInstance(_)
            | Command::DeleteInstance(_)
            | Command::ApplyEvent(_)
            | Command::Batch(_)
            | Command::FlushAll(_)
            | Command::RestoreInstance(_)
    )
}

fn ctx(shared: &Shared, backup_owner: u64) -> handlers::Ctx<'_> {
    handlers::Ctx {
        db: &shared.db,
        backups: &shared.backups,
        backup_owner,
        flush_epoch: &shared.flush_epoch,
        cluster: shared.cluster.as_deref(),
    }
}

/// Whether `command` reads the database (and so waits for `cluster.read_consistency`).
pub fn is_read(command: &Command) -> bool {
    matches!(
        command,
        Command::GetMachine(_)
            | Command::ListMachines
            | Command::GetInstance(_)
            | Command::ListInstances(_)
            | Command::SnapshotInstance(_)
            | Command::WalRead(_)
    )
}

/// Before a read on a cluster member: wait as `cluster.read_consistency` says.
async fn read_barrier(
    shared: &Shared,
    node: &rstmdb_cluster::ClusterNode,
) -> Result<(), ErrorObject> {
    let Some(cluster) = shared.config.cluster.as_ref() else {
        return Ok(());
    };
    let consistency = match cluster.read_consistency {
        ReadConsistency::Linearizable => rstmdb_cluster::ReadConsistency::Linearizable,
        ReadConsistency::Lease => rstmdb_cluster::ReadConsistency::Lease,
        ReadConsistency::Stale => return Ok(()),
    };
    node.read_barrier(consistency, cluster.write_timeout())
        .await
        .map_err(|e| {
            let reason = match e {
                ForwardError::NoLeader | ForwardError::Unreachable { .. } => "no_leader",
                _ => "read_timeout",
            };
            ErrorObject::new(
                ErrorCode::ReplicationTimeout,
                format!("a linearizable read could not be served: {e}; retry"),
            )
            .with_detail("reason", reason)
        })
}

/// Runs a data op here, or, for a write on a follower that forwards, on the leader. On a
/// cluster member a read first waits for `cluster.read_consistency`.
pub async fn execute(
    shared: &Arc<Shared>,
    principal: &str,
    command: Command,
    owner: u64,
) -> Answer {
    if let Some(node) = shared.cluster.as_ref()
        && is_read(&command)
    {
        read_barrier(shared, node).await?;
        return handlers::execute(ctx(shared, owner), command).await;
    }
    let forwarding = shared
        .config
        .cluster
        .as_ref()
        .is_some_and(|c| c.forward_writes);
    let Some(node) = shared.cluster.as_ref().filter(|_| forwarding) else {
        return handlers::execute(ctx(shared, owner), command).await;
    };
    if !is_write(&command) || node.is_leader() {
        return handlers::execute(ctx(shared, owner), command).await;
    }
    let request = Request {
        id: "forwarded".into(),
        command: command.clone(),
    };
    let json = serde_json::to_string(&request).map_err(|e| {
        ErrorObject::new(
            ErrorCode::InternalError,
            format!("encoding a forwarded request: {e}"),
        )
    })?;
    // The leader answers within its own write timeout; allow for the hop on top.
    let ttl = shared
        .config
        .cluster
        .as_ref()
        .map_or(Duration::from_secs(5), |c| c.write_timeout())
        + Duration::from_secs(2);
    match node.forward(principal.to_owned(), json, ttl).await {
        Ok(reply) => relay(reply),
        // It became the leader meanwhile: run it here.
        Err(ForwardError::IsLeader) => handlers::execute(ctx(shared, owner), command).await,
        Err(e @ (ForwardError::NoLeader | ForwardError::Unreachable { .. })) => Err(ErrorObject::new(
            ErrorCode::ReplicationTimeout,
            format!("{e}; nothing was written, retry"),
        )
        .with_detail("reason", "no_leader")
        .with_detail("committed", false)),
        Err(e @ ForwardError::NoAnswer { .. }) => Err(ErrorObject::new(
            ErrorCode::ReplicationTimeout,
            format!("{e}; the write may or may not have been applied: retry with the same idempotency key"),
        )
        .with_detail("reason", "commit_timeout")
        .with_detail("committed", "unknown")),
    }
}

/// The leader's answer as this node's.
fn relay(reply: ForwardReply) -> Answer {
    if let Some(e) = reply.error {
        return Err(
            serde_json::from_value::<ErrorObject>(e).unwrap_or_else(|e| {
                ErrorObject::new(
                    ErrorCode::InternalError,
                    format!("the leader's error could not be read: {e}"),
                )
            }),
        );
    }
    Ok((
        Payload::Value(reply.result.unwrap_or(serde_json::Value::Null)),
        reply.wal_offset,
    ))
}

/// Runs requests followers forward to this node (installed on every cluster member; a node
/// that is no longer the leader refuses the write through its write gate, and the follower
/// relays that).
#[derive(Debug)]
pub struct LeaderExecutor {
    /// Weak: `Shared` holds the cluster node, which holds this.
    pub shared: Weak<Shared>,
}

fn error_reply(e: ErrorObject) -> ForwardReply {
    ForwardReply {
        result: None,
        error: serde_json::to_value(&e).ok(),
        wal_offset: None,
    }
}

impl ForwardHandler for LeaderExecutor {
    fn handle(&self, principal: String, request: Vec<u8>) -> ForwardFuture {
        let shared = self.shared.upgrade();
        Box::pin(async move {
            let Some(shared) = shared else {
                return error_reply(ErrorObject::new(
                    ErrorCode::WalIoError,
                    "the leader is stopping; nothing was written",
                ));
            };
            let req = match rstmdb_protocol::decode_request(&request) {
                Ok(r) => r,
                Err(e) => {
                    return error_reply(ErrorObject::new(
                        ErrorCode::BadRequest,
                        format!("forwarded request: {e}"),
                    ));
                }
            };
            if !is_write(&req.command) {
                return error_reply(ErrorObject::new(
                    ErrorCode::BadRequest,
                    format!("{} is not forwarded", req.command.op().as_str()),
                ));
            }
            tracing::debug!(principal = %principal, op = req.command.op().as_str(), "running a forwarded request");
            match handlers::execute(ctx(&shared, 0), req.command).await {
                Ok((payload, wal_offset)) => ForwardReply {
                    result: Some(match payload {
                        Payload::Value(v) => v,
                        Payload::Raw(raw) => {
                            serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null)
                        }
                    }),
                    error: None,
                    wal_offset,
                },
                Err(e) => error_reply(e),
            }
        })
    }
}
