//! Storage configuration. The server maps its YAML `storage.*`, `compaction.*` and
//! `idempotency.*` keys onto this; embedded users build it directly.

use crate::crypto::EncryptionKey;
use std::path::PathBuf;
use std::time::Duration;

/// When the WAL is made durable (fdatasync) relative to acknowledging a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Acknowledge only after the record is synced. Group commit: every record waiting when
    /// the writer wakes shares one write and one sync.
    EveryWrite,
    /// Sync after every `n` records; up to `n - 1` acknowledged records can be lost on power
    /// failure.
    EveryN(u64),
    /// Sync at least every `ms` milliseconds (a real timer); acknowledged records from the last
    /// interval can be lost on power failure.
    EveryMs(u64),
    /// Never sync except at checkpoints and shutdown.
    Never,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// `<data_dir>/wal` holds the log, `<data_dir>/state` the sled store.
    pub data_dir: PathBuf,
    pub wal_segment_size_mb: u64,
    pub fsync_policy: FsyncPolicy,
    /// sled page cache; bounds memory independently of the number of instances.
    pub cache_capacity_mb: u64,
    /// Decoded live instances kept in memory for reads and write checks (estimated size);
    /// 0 = off. Counted by `Database::instance_cache_stats`.
    pub instance_cache_mb: u64,
    /// WAL kept below the checkpoint for WAL_READ and watch resume.
    pub wal_retention_mb: u64,
    /// 0 = unlimited.
    pub max_machine_versions: u32,
    pub max_ctx_bytes: usize,
    pub max_batch_ops: usize,
    /// Idempotency records are kept this long, then purged at a checkpoint.
    pub idempotency_ttl: Duration,
    /// Records the commit queue holds before writers wait (backpressure).
    pub commit_queue_depth: usize,
    /// Checkpoint after this many WAL records (0 = off).
    pub checkpoint_events_threshold: u64,
    /// Checkpoint after this many MiB of WAL (0 = off).
    pub checkpoint_size_threshold_mb: u64,
    /// Automatic checkpoints are at least this far apart (manual ones are not limited).
    pub checkpoint_min_interval: Duration,
    /// Committed-change subscribers lagging by more than this many events are cut off.
    pub subscriber_queue_depth: usize,
    /// FLUSH_ALL is refused unless this is set.
    pub allow_flush_all: bool,
    /// CREATE_INSTANCE with the id of a deleted instance creates a fresh instance; when
    /// false it is `INSTANCE_EXISTS`, and checkpoints keep tombstones so that the refusal
    /// still holds after them.
    pub allow_instance_recreate: bool,
    /// Encryption at rest (AES-256-GCM of WAL payloads and of the state store values that
    /// hold user data). `None`: plaintext. A data directory is either encrypted with one key
    /// or plaintext; opening it with another setting is an error (`rstmdb rekey` converts).
    pub encryption: Option<EncryptionKey>,
    /// WAL segments are copied here before a checkpoint deletes them (point-in-time
    /// recovery); `None` = deleted without a copy.
    pub wal_archive_dir: Option<PathBuf>,
}

impl StorageConfig {
    /// Defaults, with data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StorageConfig {
            data_dir: data_dir.into(),
            wal_segment_size_mb: 64,
            fsync_policy: FsyncPolicy::EveryWrite,
            cache_capacity_mb: 128,
            instance_cache_mb: 64,
            wal_retention_mb: 256,
            max_machine_versions: 0,
            max_ctx_bytes: rstmdb_core::limits::DEFAULT_MAX_CTX_BYTES,
            max_batch_ops: 100,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            commit_queue_depth: 16 * 1024,
            checkpoint_events_threshold: 10_000,
            checkpoint_size_threshold_mb: 100,
            checkpoint_min_interval: Duration::ZERO,
            subscriber_queue_depth: 4096,
            allow_flush_all: false,
            allow_instance_recreate: true,
            encryption: None,
            wal_archive_dir: None,
        }
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("wal")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join("state")
    }
}
