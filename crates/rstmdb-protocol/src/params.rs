//! Typed `params` of each request op (protocol.md §4–§5, plus decisions.md extensions).
//!
//! Shared decoding rules: unknown keys are ignored (newer clients may send more), and `null`
//! for an optional field means the same as leaving it out (clients serialise `None` as
//! `null`). Defaults that the protocol fixes (`include_ctx` = true, empty filter lists) are
//! applied here; defaults that are server policy (page sizes) stay `None`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Deserialises `null` as the type's default, for optional fields with a non-`Option` type.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Deserialises `null` as `true` (for `include_ctx`).
fn null_as_true<'de, D>(deserializer: D) -> Result<bool, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<bool>::deserialize(deserializer)?.unwrap_or(true))
}

fn default_true() -> bool {
    true
}

/// HELLO: handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloParams {
    /// Must equal [`crate::PROTOCOL_VERSION`]; checked by the server, not here, because a
    /// mismatch has its own error code (`UNSUPPORTED_PROTOCOL`).
    pub protocol_version: u16,
    /// Free-form client name, informative only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// Wire modes the client accepts, in preference order (`binary_json`, `jsonl`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub wire_modes: Vec<String>,
    /// Features the client would like (`idempotency`, `batch`, `wal_read`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub features: Vec<String>,
}

/// AUTH: present a credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthParams {
    /// Only `bearer` is supported; checked by the server.
    pub method: String,
    /// The secret. Kept out of `Debug` output so it can never end up in a log.
    pub token: String,
}

impl fmt::Debug for AuthParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthParams")
            .field("method", &self.method)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// PUT_MACHINE: store a definition under (machine, version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutMachineParams {
    /// Machine name.
    pub machine: String,
    /// Definition version.
    pub version: u32,
    /// The definition as sent; its shape is validated by the engine, not the protocol.
    pub definition: Value,
    /// Accepted for compatibility and ignored: the server computes its own checksum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// GET_MACHINE: read one definition version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetMachineParams {
    /// Machine name.
    pub machine: String,
    /// Definition version.
    pub version: u32,
}

/// CREATE_INSTANCE: start an instance in the definition's initial state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateInstanceParams {
    /// The id to use; the server generates one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Machine name.
    pub machine: String,
    /// Definition version.
    pub version: u32,
    /// Initial context; absent and `null` both mean `{}` (the engine checks it is an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_ctx: Option<Value>,
    /// Makes a retried create return the original result instead of `INSTANCE_EXISTS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// GET_INSTANCE: read one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetInstanceParams {
    /// Instance id.
    pub instance_id: String,
}

/// LIST_INSTANCES: filtered, paged listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListInstancesParams {
    /// Exact machine-name filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// Exact current-state filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Page size; the server applies its default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Items skipped (offset paging, as the reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    /// Cursor paging (extension): only ids strictly after this one, in byte order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Also list soft-deleted instances (extension).
    #[serde(default, deserialize_with = "null_as_default")]
    pub include_deleted: bool,
}

/// DELETE_INSTANCE: soft delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteInstanceParams {
    /// Instance id.
    pub instance_id: String,
    /// Makes a retried delete return the original result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// APPLY_EVENT: fire an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyEventParams {
    /// Instance id.
    pub instance_id: String,
    /// Event name (exact, case-sensitive).
    pub event: String,
    /// Merged into the context; absent and `null` both mean `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// Optimistic check on the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_state: Option<String>,
    /// Optimistic check on the instance's `last_wal_offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_wal_offset: Option<u64>,
    /// Stored as `last_event_id` and echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Dedup key, scoped to the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// How a BATCH treats a failing element.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchMode {
    /// All elements take effect or none does.
    Atomic,
    /// Each element takes effect on its own; failures are reported per element.
    #[default]
    BestEffort,
}

/// END_SESSION: close one open connection (an id from SESSIONS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndSessionParams {
    pub session_id: u64,
}

/// CLUSTER_ADD_NODE: a node to add (its id never used before in this cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterAddNodeParams {
    pub node_id: u64,
    /// `host:port` clients use to reach it.
    pub client: String,
    /// `host:port` peers dial (its `cluster.raft_listen`, as advertised).
    pub raft: String,
    /// False: it stays a learner (replicated to, never votes).
    #[serde(default = "default_true")]
    pub voter: bool,
    /// How long each step (add, catch up, promote) may take; absent: 60 000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// CLUSTER_REMOVE_NODE: a member to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRemoveNodeParams {
    pub node_id: u64,
}

/// SNAPSHOT_INSTANCE: write a snapshot of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInstanceParams {
    /// Instance id.
    pub instance_id: String,
}

/// WAL_READ: one page of WAL records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalReadParams {
    /// Inclusive lower bound.
    pub from_offset: u64,
    /// Page size; the server applies its default and maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// COMPACT: snapshot instances and drop WAL segments no longer needed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactParams {
    /// Also re-snapshot instances changed since their last snapshot.
    #[serde(default, deserialize_with = "null_as_default")]
    pub force_snapshot: bool,
}

/// WATCH_INSTANCE: subscribe to one instance's transitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchInstanceParams {
    /// Instance id.
    pub instance_id: String,
    /// Put `ctx` in events (default true).
    #[serde(default = "default_true", deserialize_with = "null_as_true")]
    pub include_ctx: bool,
    /// Replay events from this WAL offset (inclusive) before live ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_offset: Option<u64>,
}

/// WATCH_ALL: subscribe to every transition matching the filters.
///
/// An empty filter list matches everything; lists are ANDed, values within a list ORed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchAllParams {
    /// Put `ctx` in events (default true).
    #[serde(default = "default_true", deserialize_with = "null_as_true")]
    pub include_ctx: bool,
    /// Replay events from this WAL offset (inclusive) before live ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_offset: Option<u64>,
    /// Machine-name filter.
    #[serde(default, deserialize_with = "null_as_default")]
    pub machines: Vec<String>,
    /// Filter on the state before the transition.
    #[serde(default, deserialize_with = "null_as_default")]
    pub from_states: Vec<String>,
    /// Filter on the state after the transition.
    #[serde(default, deserialize_with = "null_as_default")]
    pub to_states: Vec<String>,
    /// Event-name filter.
    #[serde(default, deserialize_with = "null_as_default")]
    pub events: Vec<String>,
}

impl Default for WatchAllParams {
    fn default() -> Self {
        Self {
            include_ctx: true,
            from_offset: None,
            machines: Vec::new(),
            from_states: Vec::new(),
            to_states: Vec::new(),
            events: Vec::new(),
        }
    }
}

/// UNWATCH: end a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnwatchParams {
    /// The id returned by WATCH_INSTANCE or WATCH_ALL.
    pub subscription_id: String,
}

/// FLUSH_ALL: remove every machine and instance. Takes no parameters; the server refuses it
/// unless `storage.allow_flush_all` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushAllParams {}

/// BACKUP_BEGIN (extension, admin): the server exports a consistent online backup body to a
/// spool file and describes it; the client then reads it with BACKUP_READ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupBeginParams {}

/// BACKUP_READ (extension, admin): bytes of a spooled backup body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupReadParams {
    /// From BACKUP_BEGIN.
    pub backup_id: String,
    /// Byte offset into the body.
    pub offset: u64,
    /// At most this many bytes (the server caps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// BACKUP_END (extension, admin): delete a spooled backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEndParams {
    /// From BACKUP_BEGIN.
    pub backup_id: String,
}

/// RESTORE_INSTANCE (extension, admin): put one instance from a backup back. `instance` is the
/// backup's instance record (absent when the backup only has it in its WAL part) and `wal` the
/// backup's WAL records `{offset, entry}` that may touch it; the server replays them over the
/// record to get the instance at the backup's end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreInstanceParams {
    /// The instance id in the backup.
    pub instance_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub wal: Vec<serde_json::Value>,
    /// Restore under this id instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_id: Option<String>,
    /// Replace a live instance with the same id (otherwise INSTANCE_EXISTS).
    #[serde(default, deserialize_with = "null_as_default")]
    pub replace: bool,
}
