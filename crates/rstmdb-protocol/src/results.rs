//! Typed `result` objects, one per op (protocol.md §4–§5, plus decisions.md additions).
//!
//! Field names and types are the wire contract with published clients. Fields we add beyond
//! the reference are `Option`s that deserialise as `None` when absent, so a client built on
//! these types can still read a reference server's responses.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::response::{ErrorObject, ResponseStatus};
use crate::wire::WireMode;

/// HELLO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResult {
    /// Always [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// The mode every later message of this connection is sent in.
    pub wire_mode: WireMode,
    /// Server name (`rstmdb`).
    pub server_name: String,
    /// Server version.
    pub server_version: String,
    /// The negotiated subset of the client's features.
    pub features: Vec<String>,
}

/// AUTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthResult {
    /// Always true (a failure is an error response).
    pub authenticated: bool,
}

/// PING.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResult {
    /// Always true.
    pub pong: bool,
}

/// BYE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByeResult {
    /// Always true; the server closes the connection after sending it.
    pub goodbye: bool,
}

/// INFO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoResult {
    /// Server name (`rstmdb`).
    pub server_name: String,
    /// Server version.
    pub server_version: String,
    /// Always [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// Every feature the server supports.
    pub features: Vec<String>,
    /// Largest payload accepted, in bytes.
    pub max_frame_bytes: u32,
    /// Most elements allowed in one BATCH.
    pub max_batch_ops: u32,
}

/// PUT_MACHINE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutMachineResult {
    /// Echo.
    pub machine: String,
    /// Echo.
    pub version: u32,
    /// Checksum of the stored (canonical) definition.
    pub stored_checksum: String,
    /// False when an identical definition was already stored.
    pub created: bool,
}

/// GET_MACHINE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetMachineResult {
    /// The stored definition, in canonical form.
    pub definition: Value,
    /// Same as PUT_MACHINE's `stored_checksum`.
    pub checksum: String,
}

/// One LIST_MACHINES item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSummary {
    /// Machine name.
    pub machine: String,
    /// Stored versions, ascending.
    pub versions: Vec<u32>,
}

/// LIST_MACHINES.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMachinesResult {
    /// One item per machine, sorted by name.
    pub items: Vec<MachineSummary>,
}

/// CREATE_INSTANCE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateInstanceResult {
    /// The (possibly generated) id.
    pub instance_id: String,
    /// The definition's initial state.
    pub state: String,
    /// Offset of the create record.
    pub wal_offset: u64,
}

/// GET_INSTANCE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetInstanceResult {
    /// Echo (addition; absent from reference responses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Machine name.
    pub machine: String,
    /// Machine version the instance is pinned to.
    pub version: u32,
    /// Current state.
    pub state: String,
    /// Current context.
    pub ctx: Value,
    /// `event_id` of the latest apply, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
    /// Offset of the last record that created or changed the instance.
    pub last_wal_offset: u64,
    /// Creation time, Unix milliseconds (addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
    /// Last change, Unix milliseconds (addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<i64>,
}

/// One LIST_INSTANCES item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSummary {
    /// Instance id.
    pub id: String,
    /// Machine name.
    pub machine: String,
    /// Machine version.
    pub version: u32,
    /// Current state.
    pub state: String,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Last change, Unix milliseconds.
    pub updated_at: i64,
    /// Offset of the last record that created or changed the instance.
    pub last_wal_offset: u64,
}

/// LIST_INSTANCES.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListInstancesResult {
    /// This page.
    pub instances: Vec<InstanceSummary>,
    /// Matches before paging.
    pub total: u64,
    /// More matches follow this page.
    pub has_more: bool,
    /// Cursor for the next page (`after` param), when there is one (addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// DELETE_INSTANCE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteInstanceResult {
    /// Echo.
    pub instance_id: String,
    /// Always true.
    pub deleted: bool,
    /// Offset of the delete record (the original one on a repeated delete).
    pub wal_offset: u64,
}

/// APPLY_EVENT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyEventResult {
    /// State before the transition.
    pub from_state: String,
    /// State after the transition.
    pub to_state: String,
    /// Context after the payload merge.
    pub ctx: Value,
    /// Offset of the apply record.
    pub wal_offset: u64,
    /// False when this was an idempotent replay.
    pub applied: bool,
    /// The request's `event_id`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// One BATCH element's outcome. All three keys are always sent, `null` where absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchItemResult {
    /// `ok` or `error`.
    pub status: ResponseStatus,
    /// The element's result when ok.
    pub result: Option<Value>,
    /// The element's error otherwise.
    pub error: Option<ErrorObject>,
}

impl BatchItemResult {
    /// A successful element.
    pub fn ok(result: Value) -> Self {
        Self {
            status: ResponseStatus::Ok,
            result: Some(result),
            error: None,
        }
    }

    /// A failed element.
    pub fn error(error: ErrorObject) -> Self {
        Self {
            status: ResponseStatus::Error,
            result: None,
            error: Some(error),
        }
    }
}

/// BATCH.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    /// One entry per element, in order.
    pub results: Vec<BatchItemResult>,
}

/// SNAPSHOT_INSTANCE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInstanceResult {
    /// Echo.
    pub instance_id: String,
    /// Id of the new snapshot.
    pub snapshot_id: String,
    /// The instance's `last_wal_offset` captured by the snapshot.
    pub wal_offset: u64,
    /// Size of the snapshot.
    pub size_bytes: u64,
    /// Checksum of the snapshot.
    pub checksum: String,
}

/// One WAL_READ record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalRecord {
    /// Record sequence number.
    pub sequence: u64,
    /// Record offset (`from_offset` matches it inclusively).
    pub offset: u64,
    /// The record, tagged by `type`.
    pub entry: Value,
}

/// WAL_READ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalReadResult {
    /// Records in ascending offset order.
    pub records: Vec<WalRecord>,
    /// Pass back as `from_offset` for the next page; `null` when there is none.
    pub next_offset: Option<u64>,
}

/// WAL I/O counters since process start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoStats {
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Write calls.
    pub writes: u64,
    /// Read calls.
    pub reads: u64,
    /// fsync/fdatasync calls.
    pub fsyncs: u64,
}

/// WAL_STATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalStatsResult {
    /// Records ever appended.
    pub entry_count: u64,
    /// Segment files currently kept.
    pub segment_count: u64,
    /// Their total size.
    pub total_size_bytes: u64,
    /// Head offset; `null` when unknown.
    pub latest_offset: Option<u64>,
    /// I/O counters.
    pub io_stats: IoStats,
    /// Oldest offset still readable (addition; `null` when the WAL is empty).
    #[serde(default)]
    pub earliest_offset: Option<u64>,
    /// Offset covered by the last checkpoint (addition; `null` before the first one).
    #[serde(default)]
    pub checkpoint_offset: Option<u64>,
}

/// COMPACT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactResult {
    /// Snapshots made by this call.
    pub snapshots_created: u64,
    /// WAL segment files removed.
    pub segments_deleted: u64,
    /// Bytes freed.
    pub bytes_reclaimed: u64,
    /// Snapshots kept after the call.
    pub total_snapshots: u64,
    /// WAL segments remaining.
    pub wal_segments: u64,
}

/// WATCH_INSTANCE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchInstanceResult {
    /// Id carried by this subscription's events.
    pub subscription_id: String,
    /// Echo.
    pub instance_id: String,
    /// State at subscribe time.
    pub current_state: String,
    /// The instance's `last_wal_offset` at subscribe time.
    pub current_wal_offset: u64,
}

/// WATCH_ALL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchAllResult {
    /// Id carried by this subscription's events.
    pub subscription_id: String,
    /// Head offset at subscribe time.
    pub wal_offset: u64,
}

/// UNWATCH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnwatchResult {
    /// Echo.
    pub subscription_id: String,
    /// False when the id was not an active subscription of this connection.
    pub removed: bool,
}

/// FLUSH_ALL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushAllResult {
    /// Always true (refusal is an error response).
    pub flushed: bool,
    /// Instances removed.
    pub instances_removed: u64,
    /// Machines removed.
    pub machines_removed: u64,
}

/// One open connection, as SESSIONS lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The id END_SESSION takes; unique for the server's lifetime.
    pub session_id: u64,
    /// `ip:port` of the peer.
    pub client_addr: String,
    /// The principal's name (a token's name, a certificate's name, `anonymous`), or `null`
    /// before the connection has authenticated.
    pub principal: Option<String>,
    /// When the connection was accepted (RFC 3339, UTC).
    pub since: String,
    pub tls: bool,
}

/// SESSIONS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionsResult {
    /// Ordered by `session_id`.
    pub sessions: Vec<SessionInfo>,
}

/// END_SESSION.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndSessionResult {
    pub session_id: u64,
    /// Always true: an unknown id is `NOT_FOUND`.
    pub ended: bool,
}

/// A cluster member's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLeader {
    pub node_id: u64,
    pub client: String,
    pub raft: String,
}

/// One member, as CLUSTER_STATUS lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    pub node_id: u64,
    pub client: String,
    pub raft: String,
    /// False for a learner (replicated to, never votes).
    pub voter: bool,
    /// The last index known replicated to it; only the leader knows (`null` elsewhere, and
    /// for a member the leader has not heard from yet).
    pub matched_index: Option<u64>,
    /// `last_log_index - matched_index` on the leader; `null` where `matched_index` is.
    pub lag: Option<u64>,
}

/// CLUSTER_STATUS: the cluster as the node answering sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatusResult {
    pub cluster_id: String,
    pub node_id: u64,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    pub term: u64,
    /// `null` while no leader is known.
    pub leader: Option<ClusterLeader>,
    /// 0 while the log is empty.
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Ordered by `node_id`.
    pub members: Vec<ClusterMember>,
}

/// CLUSTER_ADD_NODE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterAddNodeResult {
    pub node_id: u64,
    pub voter: bool,
    /// The log index of the membership change that made it a member.
    pub log_index: u64,
}

/// CLUSTER_REMOVE_NODE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRemoveNodeResult {
    pub node_id: u64,
    /// The log index of the membership change that removed it.
    pub log_index: u64,
}

/// REPLICATION_STATUS. The shape depends on the node's role (0.3.0's three shapes): a
/// standalone node sends only `role`; the other fields belong to primaries or replicas and
/// are `None` when absent. Fields neither shape names are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReplicationStatusResult {
    /// `standalone`, `primary` or `replica`.
    pub role: String,
    /// Primary: `async` or `sync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Primary and replica: the primary's last written sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_sequence: Option<u64>,
    /// Primary: replicas past catch-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_replicas: Option<u64>,
    /// Primary: one entry per replica past catch-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<ReplicaStatus>>,
    /// Replica: the primary's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Replica: the last sequence applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_sequence: Option<u64>,
    /// Replica: entries behind the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_entries: Option<u64>,
    /// Replica: seconds behind the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// Any other field (our additions to 0.3.0's shapes).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// One replica in a primary's REPLICATION_STATUS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The primary's name for the replica's connection.
    pub replica_id: String,
    /// The last sequence the replica acknowledged.
    pub last_acked_sequence: u64,
    /// `primary_sequence - last_acked_sequence`, saturating.
    pub lag_entries: u64,
    /// Any other field (our additions).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// BACKUP_BEGIN (extension): the spooled backup's manifest fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupBeginResult {
    /// Pass to BACKUP_READ and BACKUP_END.
    pub backup_id: String,
    /// The backup container's format version.
    pub format_version: u32,
    /// Version of the server that exported it.
    pub server_version: String,
    /// Export time, Unix milliseconds.
    pub created_at: i64,
    /// WAL offset the exported state is consistent from.
    pub base_offset: u64,
    /// Last WAL offset included.
    pub wal_end: u64,
    /// What the body holds (machines, instances, idempotency records, WAL records).
    pub counts: Value,
    /// Size of the body, in bytes.
    pub body_bytes: u64,
    /// SHA-256 of the body, hex.
    pub body_sha256: String,
}

/// BACKUP_READ (extension): one chunk of a spooled backup body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupReadResult {
    /// The bytes, standard base64.
    pub data: String,
    /// Where they start in the body.
    pub offset: u64,
    /// Pass back as `offset` for the next chunk.
    pub next_offset: u64,
    /// The chunk ends the body.
    pub eof: bool,
}

/// BACKUP_END (extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEndResult {
    /// False when no such backup was spooled (ended before, or expired).
    pub removed: bool,
}

/// RESTORE_INSTANCE (extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreInstanceResult {
    /// The id the instance was restored under.
    pub instance_id: String,
    /// Machine name.
    pub machine: String,
    /// Machine version.
    pub version: u32,
    /// State after the restore.
    pub state: String,
    /// Offset of the restore record.
    pub wal_offset: u64,
    /// A live instance with that id was replaced.
    pub replaced: bool,
}

// ---- borrowed views of the hot results ------------------------------------------------------
//
// The server answers GET_INSTANCE, APPLY_EVENT and CREATE_INSTANCE from data it already holds:
// these views borrow it, so nothing is cloned to write an answer. Their fields are in key
// order, as a `Value` object (and so [`GetInstanceResult`] & co. through `to_value`) writes
// them: the view and the owned result serialize to the same bytes (tested).

/// GET_INSTANCE's result, borrowed ([`GetInstanceResult`] on the wire).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct InstanceView<'a> {
    pub created_at: i64,
    pub ctx: &'a serde_json::Map<String, Value>,
    pub instance_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<&'a str>,
    pub last_wal_offset: u64,
    pub machine: &'a str,
    pub state: &'a str,
    pub updated_at: i64,
    pub version: u32,
}

/// APPLY_EVENT's result, borrowed ([`ApplyEventResult`] on the wire).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AppliedView<'a> {
    pub applied: bool,
    pub ctx: &'a serde_json::Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<&'a str>,
    pub from_state: &'a str,
    pub to_state: &'a str,
    pub wal_offset: u64,
}

/// CREATE_INSTANCE's result, borrowed ([`CreateInstanceResult`] on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CreatedView<'a> {
    pub instance_id: &'a str,
    pub state: &'a str,
    pub wal_offset: u64,
}

#[cfg(test)]
#[path = "results_tests.rs"]
mod tests;
