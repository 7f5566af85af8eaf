//! rstmdb-storage: the storage engine, usable in-process without the server.
//!
//! ```no_run
//! use rstmdb_storage::{Database, StorageConfig, CreateInstance, ApplyEvent};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let db = Database::open(StorageConfig::new("./data"))?;
//! db.put_machine("order", 1, &json!({
//!     "states": ["pending", "paid"], "initial": "pending",
//!     "transitions": [{"from": "pending", "event": "PAY", "to": "paid"}]
//! })).await?;
//! let created = db.create_instance(CreateInstance {
//!     instance_id: Some("o-1".into()), machine: "order".into(), version: 1,
//!     ..Default::default()
//! }).await?;
//! let applied = db.apply_event(ApplyEvent {
//!     instance_id: created.instance_id, event: "PAY".into(), ..Default::default()
//! }).await?;
//! assert_eq!(applied.to_state, "paid");
//! db.close().await?;
//! # Ok(()) }
//! ```
//!
//! Layers, bottom up:
//! - [`wal`]: segmented log files, record format, torn-tail handling, readers, repair.
//! - `state`: the sled key layout and the planner that turns a WAL entry into state writes
//!   (the same code for live commits and for replay).
//! - `commit`: the commit pipeline — a log stage (group commit, fsync policy) and an apply
//!   stage (sled, publish, watch events, acknowledge), overlapping.
//! - `store`: sled as the engine sees it, sealing the values that hold user data when
//!   encryption at rest is on (`crypto`: [`EncryptionKey`] and [`Cipher`], AES-256-GCM;
//!   [`rekey()`]: key rotation).
//! - `cache`: decoded live instances in front of the store, coherent with it by construction.
//! - [`Database`]: locks, validation through `rstmdb-core`, reads, lists, watches,
//!   checkpoints, recovery.
//!
//! See `docs/storage.md` for the durability contract and `docs/wal-format.md` for the file
//! format.

// The public API is re-exported below from private modules, so that files can move without
// changing a public path. Three modules stay public because each is a sub-API of its own,
// used apart from `Database`:
// - `wal`: the log itself (open, append, read, `repair`, the record format): the server's
//   `repair` command, the fuzz targets and the WAL tests use it without a database;
// - `backup`: offline `restore` of a backup file into a new data directory (the server
//   binary's `rstmdb restore`), and `materialize_instance` (an instance as a backup holds it);
// - `stats`: the histogram types `CommitStats` exposes, which the server's metrics read.
pub mod backup;
mod cache;
mod commit;
mod config;
mod crypto;
mod datadir;
mod db;
mod entry;
mod error;
mod locks;
mod proposal;
mod rekey;
mod state;
mod state_import;
pub mod stats;
mod store;
pub mod wal;

pub use backup::{BackupExport, RestoreOptions, RestoreReport, RestoreTarget};
pub use cache::InstanceCacheStats;
pub use commit::CommitStats;
pub use config::{FsyncPolicy, StorageConfig};
pub use crypto::{Cipher, EncryptionKey, KeyError, KeyId, OpenFailure, SEAL_OVERHEAD, SealError};
pub use db::{
    ApplyEvent, ApplyOutcome, BatchFailure, BatchMode, BatchOp, BatchOutput, ChangeStream,
    CheckpointOutcome, CreateInstance, CreateOutcome, DEFAULT_WAL_READ_LIMIT, Database,
    DeleteInstance, DeleteOutcome, FlushOutcome, InstancePage, ListQuery, MAX_LIST_LIMIT,
    MAX_WAL_READ_BYTES, MAX_WAL_READ_LIMIT, MachineInfo, PutMachineOutcome, WalPage, WalReadRecord,
    WalStatsOutcome, WatchError,
};
pub use entry::WalEntry;
pub use error::OpenError;
pub use rekey::{RekeyError, RekeyReport, rekey};
pub use state::{ChangeEvent, FlushCounts};

pub mod replicated {
    //! Hooks for running the database as one replica of a raft cluster (`rstmdb-cluster`), with
    //! no raft code here: the log is still our WAL, the state machine is still the apply stage.
    //!
    //! [`Database::open_replicated`](crate::Database::open_replicated) opens a data directory
    //! without the local commit pipeline and returns two handles besides the database:
    //!
    //! - [`RaftLog`]: the WAL's writer, for the raft log store: append records at given offsets
    //!   with their terms (each call durable when it returns), cut an uncommitted suffix, read
    //!   records that are written but not yet applied;
    //! - [`RaftApply`]: the apply stage, for the raft state machine: apply committed records,
    //!   which publishes them to WAL_READ, watches and reads exactly as a local group commit does.
    //!
    //! A write made on the database (`apply_event`, …) is validated as on a single node and
    //! then handed, encoded, to the [`Proposer`] the cluster installs: the cluster replicates it,
    //! and once raft has applied it the proposer finishes the [`Proposal`] with the [`Applied`]
    //! the state machine returned. The instance locks travel with the proposal, so they are held
    //! until the change is applied or has failed for good.

    pub use crate::db::{RaftApply, RaftLog, ReplicatedOpen, SnapshotExport};
    pub use crate::proposal::{
        Applied, ApplyRecord, HeldLocks, Proposal, Proposer, RecordKind, encode_membership,
        encode_noop, record_kind,
    };
}
