//! The public request and result types of the engine's operations, and the limits on
//! pages.

use rstmdb_core::{Error, Instance};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Most items one LIST_INSTANCES page returns.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Default and maximum WAL_READ page (decisions.md).
pub const DEFAULT_WAL_READ_LIMIT: usize = 100;

pub const MAX_WAL_READ_LIMIT: usize = 1000;

/// WAL_READ pages stop before this many payload bytes (decisions.md: 8 MiB).
pub const MAX_WAL_READ_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateInstance {
    /// Generated (UUID v7) when absent.
    pub instance_id: Option<String>,
    pub machine: String,
    pub version: u32,
    /// Absent or null = `{}`; anything but an object is `BAD_REQUEST`.
    pub initial_ctx: Option<Value>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyEvent {
    pub instance_id: String,
    pub event: String,
    pub payload: Option<Value>,
    pub expected_state: Option<String>,
    pub expected_wal_offset: Option<u64>,
    pub event_id: Option<String>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeleteInstance {
    pub instance_id: String,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutMachineOutcome {
    pub machine: String,
    pub version: u32,
    pub checksum: String,
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MachineInfo {
    pub machine: String,
    pub version: u32,
    pub definition: Value,
    pub checksum: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateOutcome {
    pub instance_id: String,
    pub state: String,
    pub wal_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    pub from_state: String,
    pub to_state: String,
    pub ctx: Map<String, Value>,
    pub wal_offset: u64,
    /// False when an idempotency key replayed an earlier result.
    pub applied: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteOutcome {
    pub instance_id: String,
    pub wal_offset: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    pub machine: Option<String>,
    pub state: Option<String>,
    /// Clamped to [`MAX_LIST_LIMIT`].
    pub limit: usize,
    pub offset: usize,
    /// Only ids strictly greater than this (cursor paging).
    pub after: Option<String>,
    pub include_deleted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstancePage {
    pub instances: Vec<Instance>,
    pub total: u64,
    pub has_more: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BatchOp {
    Create(CreateInstance),
    Apply(ApplyEvent),
    Delete(DeleteInstance),
    Get {
        instance_id: String,
    },
    /// FLUSH_ALL as a batch element: best effort runs it in its place like the op on its
    /// own; atomic, see [`Database::batch`](super::Database::batch).
    FlushAll,
}

impl BatchOp {
    pub fn name(&self) -> &'static str {
        match self {
            BatchOp::Create(_) => "CREATE_INSTANCE",
            BatchOp::Apply(_) => "APPLY_EVENT",
            BatchOp::Delete(_) => "DELETE_INSTANCE",
            BatchOp::Get { .. } => "GET_INSTANCE",
            BatchOp::FlushAll => "FLUSH_ALL",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum BatchOutput {
    Created(CreateOutcome),
    Applied(ApplyOutcome),
    Deleted(DeleteOutcome),
    Instance(Instance),
    Flushed(FlushOutcome),
}

/// A FLUSH_ALL's counts and the offset of the record that holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushOutcome {
    pub instances_removed: u64,
    pub machines_removed: u64,
    pub wal_offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchMode {
    /// Each op on its own; failures are reported per op.
    BestEffort,
    /// All ops validated first (later ops see earlier ops' effects), then written as one
    /// WAL record: all or nothing.
    Atomic,
}

/// A failed atomic batch: the failing op's own error, its index and op name.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchFailure {
    pub index: usize,
    pub op: &'static str,
    pub error: Error,
}

impl BatchFailure {
    /// A failure of the batch as a whole (its commit), not of one op in it.
    pub(super) fn whole(error: Error) -> BatchFailure {
        BatchFailure {
            index: 0,
            op: "BATCH",
            error,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WalReadRecord {
    pub offset: u64,
    pub entry: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WalPage {
    pub records: Vec<WalReadRecord>,
    /// Pass back as `from` for the next page; `None` when the page is empty.
    pub next_offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WalStatsOutcome {
    pub entry_count: u64,
    pub segment_count: u64,
    pub total_size_bytes: u64,
    pub latest_offset: u64,
    pub earliest_offset: Option<u64>,
    pub checkpoint_offset: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub writes: u64,
    pub reads: u64,
    pub fsyncs: u64,
    /// WAL segments a checkpoint could not copy to `wal_archive_dir` (kept, not deleted).
    pub archive_failures: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointOutcome {
    pub checkpoint_offset: u64,
    pub segments_deleted: u64,
    pub bytes_reclaimed: u64,
    pub tombstones_purged: u64,
    pub idempotency_purged: u64,
    pub wal_segments: u64,
}
