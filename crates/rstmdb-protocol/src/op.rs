//! The names of RCP operations.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ParseNameError;

/// An RCP operation, serialised as its exact upper-case wire name (`PUT_MACHINE`).
///
/// Names are case-sensitive on the wire: `put_machine` is an unknown op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Op {
    /// Handshake: protocol version, wire mode, features.
    Hello,
    /// Bearer-token authentication.
    Auth,
    /// Liveness check.
    Ping,
    /// Orderly close.
    Bye,
    /// Server name, version and limits.
    Info,
    /// Store a machine definition version.
    PutMachine,
    /// Read a machine definition version.
    GetMachine,
    /// List machines and their versions.
    ListMachines,
    /// Create an instance of a machine version.
    CreateInstance,
    /// Read an instance.
    GetInstance,
    /// List instances, filtered and paged.
    ListInstances,
    /// Soft-delete an instance.
    DeleteInstance,
    /// Fire an event on an instance.
    ApplyEvent,
    /// Several ops in one request.
    Batch,
    /// Snapshot one instance.
    SnapshotInstance,
    /// Read WAL records.
    WalRead,
    /// WAL counters.
    WalStats,
    /// Snapshot and drop old WAL segments.
    Compact,
    /// Subscribe to one instance's transitions.
    WatchInstance,
    /// Subscribe to all transitions, filtered.
    WatchAll,
    /// End a subscription.
    Unwatch,
    /// Remove every machine and instance (disabled unless configured).
    FlushAll,
    /// The node's replication role and progress (0.3.0).
    ReplicationStatus,
    /// 0.3.0's name for replication traffic; never valid as a request (replication has its
    /// own stream), always answered `BAD_REQUEST`.
    Replicate,
    /// As [`Op::Replicate`].
    ReplicateAck,
    BackupBegin,
    BackupRead,
    BackupEnd,
    RestoreInstance,
    /// The open connections: id, principal, address, since (admin).
    Sessions,
    /// Close one open connection by its id (admin).
    EndSession,
    /// The cluster as this node sees it: role, term, leader, indexes, members (admin).
    ClusterStatus,
    /// Add a node to the cluster, as a learner then (by default) a voter (admin, leader).
    ClusterAddNode,
    /// Remove a node from the cluster's membership (admin, leader).
    ClusterRemoveNode,
}

impl Op {
    /// Every op: 0.1.1's in its order, FLUSH_ALL, 0.3.0's additions, then our extensions.
    pub const ALL: [Op; 34] = [
        Op::Hello,
        Op::Auth,
        Op::Ping,
        Op::Bye,
        Op::Info,
        Op::PutMachine,
        Op::GetMachine,
        Op::ListMachines,
        Op::CreateInstance,
        Op::GetInstance,
        Op::ListInstances,
        Op::DeleteInstance,
        Op::ApplyEvent,
        Op::Batch,
        Op::SnapshotInstance,
        Op::WalRead,
        Op::WalStats,
        Op::Compact,
        Op::WatchInstance,
        Op::WatchAll,
        Op::Unwatch,
        Op::FlushAll,
        Op::ReplicationStatus,
        Op::Replicate,
        Op::ReplicateAck,
        Op::BackupBegin,
        Op::BackupRead,
        Op::BackupEnd,
        Op::RestoreInstance,
        Op::Sessions,
        Op::EndSession,
        Op::ClusterStatus,
        Op::ClusterAddNode,
        Op::ClusterRemoveNode,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Hello => "HELLO",
            Op::Auth => "AUTH",
            Op::Ping => "PING",
            Op::Bye => "BYE",
            Op::Info => "INFO",
            Op::PutMachine => "PUT_MACHINE",
            Op::GetMachine => "GET_MACHINE",
            Op::ListMachines => "LIST_MACHINES",
            Op::CreateInstance => "CREATE_INSTANCE",
            Op::GetInstance => "GET_INSTANCE",
            Op::ListInstances => "LIST_INSTANCES",
            Op::DeleteInstance => "DELETE_INSTANCE",
            Op::ApplyEvent => "APPLY_EVENT",
            Op::Batch => "BATCH",
            Op::SnapshotInstance => "SNAPSHOT_INSTANCE",
            Op::WalRead => "WAL_READ",
            Op::WalStats => "WAL_STATS",
            Op::Compact => "COMPACT",
            Op::WatchInstance => "WATCH_INSTANCE",
            Op::WatchAll => "WATCH_ALL",
            Op::Unwatch => "UNWATCH",
            Op::FlushAll => "FLUSH_ALL",
            Op::ReplicationStatus => "REPLICATION_STATUS",
            Op::Replicate => "REPLICATE",
            Op::ReplicateAck => "REPLICATE_ACK",
            Op::BackupBegin => "BACKUP_BEGIN",
            Op::BackupRead => "BACKUP_READ",
            Op::BackupEnd => "BACKUP_END",
            Op::RestoreInstance => "RESTORE_INSTANCE",
            Op::Sessions => "SESSIONS",
            Op::EndSession => "END_SESSION",
            Op::ClusterStatus => "CLUSTER_STATUS",
            Op::ClusterAddNode => "CLUSTER_ADD_NODE",
            Op::ClusterRemoveNode => "CLUSTER_REMOVE_NODE",
        }
    }

    /// Ops allowed inside a BATCH: the instance operations whose effects can be made atomic
    /// together (decisions.md), and FLUSH_ALL, which 0.3.0 ran there too (docs/protocol.md
    /// says what it does in each mode). Enforcing this is the server's job; decoding accepts
    /// any op.
    pub fn is_batchable(self) -> bool {
        matches!(
            self,
            Op::CreateInstance
                | Op::ApplyEvent
                | Op::DeleteInstance
                | Op::GetInstance
                | Op::FlushAll
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Op {
    type Err = ParseNameError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Op::ALL
            .into_iter()
            .find(|op| op.as_str() == name)
            .ok_or_else(|| ParseNameError::new("op", name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_str_and_serde() {
        for op in Op::ALL {
            assert_eq!(op.as_str().parse::<Op>().unwrap(), op);
            let json = serde_json::to_string(&op).unwrap();
            assert_eq!(json, format!("\"{}\"", op.as_str()));
            assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), op);
        }
    }

    #[test]
    fn batchable_ops_are_the_instance_ops_and_flush_all() {
        let batchable: Vec<&str> = Op::ALL
            .into_iter()
            .filter(|op| op.is_batchable())
            .map(Op::as_str)
            .collect();
        assert_eq!(
            batchable,
            [
                "CREATE_INSTANCE",
                "GET_INSTANCE",
                "DELETE_INSTANCE",
                "APPLY_EVENT",
                "FLUSH_ALL"
            ]
        );
    }

    #[test]
    fn names_are_case_sensitive() {
        assert!("ping".parse::<Op>().is_err());
        assert!("Ping".parse::<Op>().is_err());
    }
}
