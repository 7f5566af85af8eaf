//! The embedded database: `Database::open(config)` and one method per engine operation.
//!
//! Write path: take the instance's lock → read it → ask `rstmdb-core` what the change is →
//! hand the WAL entry to the commit pipeline → wait until it is durable and applied → answer.
//! Read path: straight from sled (its page cache bounds memory).

use crate::cache::{InstanceCache, InstanceCacheStats};
use crate::commit::{
    ApplyStage, CheckpointMark, CheckpointTrigger, Command, CommitError, CommitOutcome,
    CommitRequest, CommitStats, pipeline,
};
use crate::config::{FsyncPolicy, StorageConfig};
use crate::crypto::Cipher;
use crate::entry::WalEntry;
use crate::locks::LockTable;
use crate::state::{self, ChangeEvent, IdemRecord, StoredMachine, keys, scope};
use crate::store::{self, Store, StoreError};
use crate::wal::{Wal, WalOptions, WalReader};
use rstmdb_core::{ConflictKind, Error, EventRequest, Instance, InstanceLimits, Machine, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Most items one LIST_INSTANCES page returns.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Default and maximum WAL_READ page (decisions.md).
pub const DEFAULT_WAL_READ_LIMIT: usize = 100;
pub const MAX_WAL_READ_LIMIT: usize = 1000;
/// WAL_READ pages stop before this many payload bytes (decisions.md: 8 MiB).
pub const MAX_WAL_READ_BYTES: usize = 8 * 1024 * 1024;

/// Why the database could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("opening the state store at {path}: {source}")]
    State { path: PathBuf, source: sled::Error },
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    #[error("WAL record {seq} cannot be replayed: {reason}")]
    Replay { seq: u64, reason: String },
    #[error("state store is corrupt: {0}")]
    CorruptState(String),
    /// The data directory's encryption does not match the configured key (or an interrupted
    /// `rekey` must be finished first).
    #[error("encryption at rest: {0}")]
    Encryption(String),
}

// ---- request and result types -------------------------------------------------------------

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
    /// own; atomic, see [`Database::batch`].
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
    fn whole(error: Error) -> BatchFailure {
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

// ---- the database ---------------------------------------------------------------------------

/// An open rstmdb database. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("data_dir", &self.inner.config.data_dir)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: StorageConfig,
    db: Store,
    /// Decoded live instances; see `cache` for why it never serves a stale version.
    cache: Arc<InstanceCache>,
    commit_tx: mpsc::Sender<Command>,
    reader: WalReader,
    locks: LockTable,
    /// Serialises PUT_MACHINE (atomic check-and-insert; machines are few).
    machine_lock: tokio::sync::Mutex<()>,
    machines: RwLock<HashMap<String, BTreeMap<u32, Arc<Machine>>>>,
    events: broadcast::Sender<Arc<ChangeEvent>>,
    stats: Arc<CommitStats>,
    limits: InstanceLimits,
    checkpoint_lock: Mutex<()>,
    checkpoint_seq: std::sync::atomic::AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Wakes the checkpointer thread; dropped at close.
    checkpoint_tx: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    /// Running backups: pin id → first WAL offset the backup still needs. Checkpoints keep
    /// every segment holding an offset at or above the lowest pin.
    pub(crate) backup_pins: Mutex<BTreeMap<u64, u64>>,
    pub(crate) next_pin: std::sync::atomic::AtomicU64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn internal(detail: impl Into<String>) -> Error {
    Error::Internal {
        detail: detail.into(),
    }
}

fn sled_err(e: impl std::fmt::Display) -> Error {
    internal(format!("state store: {e}"))
}

fn commit_err(e: CommitError) -> Error {
    match e {
        CommitError::Wal(detail) => Error::WalIo { detail },
        CommitError::Apply(detail) => internal(detail),
    }
}

fn validate_idempotency_key(key: &Option<String>) -> Result<()> {
    if let Some(k) = key {
        rstmdb_core::names::validate_instance_id(k).map_err(|_| {
            Error::bad_request(
                "idempotency_key",
                "must be 1-256 bytes without control characters",
            )
        })?;
    }
    Ok(())
}

/// Where an operation reads instances from: the instance cache, then sled — or a batch's
/// staged changes over them.
struct Staged<'a> {
    db: &'a Store,
    cache: &'a InstanceCache,
    /// `None`: the caller holds the lock shard of every id it loads, so a miss may fill the
    /// cache. `Some`: it holds none; a miss fills the cache only if the shard is free.
    locks: Option<&'a LockTable>,
    overlay: HashMap<String, Option<Instance>>,
}

impl Staged<'_> {
    fn load(&self, id: &str) -> Result<Option<Instance>> {
        if let Some(v) = self.overlay.get(id) {
            return Ok(v.clone());
        }
        Ok(self.load_shared(id)?.map(Arc::unwrap_or_clone))
    }

    /// The committed version of `id` (deleted ones included), ignoring the overlay.
    fn load_shared(&self, id: &str) -> Result<Option<Arc<Instance>>> {
        if let Some(inst) = self.cache.get(id) {
            return Ok(Some(inst));
        }
        // Only under the shard may what sled returns go into the cache (see `cache`).
        let shard = self.locks.map(|locks| locks.try_lock(id));
        let fill = shard.as_ref().is_none_or(Option::is_some);
        let Some(bytes) = self.db.get(&keys::instance(id)).map_err(sled_err)? else {
            return Ok(None);
        };
        let inst = Arc::new(state::decode_instance(&bytes).map_err(internal)?);
        if fill {
            self.cache.put(inst.clone(), bytes.len());
        }
        Ok(Some(inst))
    }
}

/// The result of validating one write: the WAL entry to commit (if any) and the outcome,
/// whose `wal_offset` is filled in once the record has a sequence number.
// Short-lived and never stored in bulk.
#[allow(clippy::large_enum_variant)]
enum Prepared {
    Write {
        entry: WalEntry,
        outcome: BatchOutput,
        /// The instance after the change.
        staged: Instance,
        /// The instance before it (`None`: absent), as a hint for the apply stage.
        previous: (String, Option<Instance>),
    },
    Done(BatchOutput),
}

fn set_offset(out: &mut BatchOutput, seq: u64) {
    match out {
        BatchOutput::Created(c) => c.wal_offset = seq,
        BatchOutput::Applied(a) => a.wal_offset = seq,
        BatchOutput::Deleted(d) => d.wal_offset = seq,
        BatchOutput::Flushed(f) => f.wal_offset = seq,
        BatchOutput::Instance(_) => {}
    }
}

impl Database {
    pub(crate) fn machine_def(&self, name: &str, version: u32) -> Result<Arc<Machine>> {
        self.machine(name, version)
    }

    pub(crate) async fn lock_instances(
        &self,
        ids: &[&str],
    ) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        self.inner.locks.lock_all(ids).await
    }

    /// Loads `id`; the caller holds its lock shard.
    pub(crate) fn load_instance(&self, id: &str) -> Result<Option<Instance>> {
        self.staged().load(id)
    }

    /// Commits one entry under the caller's instance locks; returns its offset.
    pub(crate) async fn commit_entry(
        &self,
        entry: WalEntry,
        hints: state::Hints,
        guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<u64> {
        Ok(self.commit(entry, hints, guards).await?.seq)
    }

    pub(crate) fn state_db(&self) -> &Store {
        &self.inner.db
    }

    pub(crate) fn wal_reader(&self) -> &WalReader {
        &self.inner.reader
    }

    /// Runs `f` holding the checkpoint lock (no checkpoint is between its steps).
    pub(crate) fn with_checkpoint_lock<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let _serial = self
            .inner
            .checkpoint_lock
            .lock()
            .map_err(|_| internal("checkpoint lock poisoned"))?;
        Ok(f())
    }

    pub(crate) fn inner_pins(&self) -> (&Mutex<BTreeMap<u64, u64>>, &std::sync::atomic::AtomicU64) {
        (&self.inner.backup_pins, &self.inner.next_pin)
    }

    /// Opens (or creates) the database in `config.data_dir`: opens the state store, replays
    /// the WAL written after the last checkpoint, and starts the commit pipeline.
    pub fn open(config: StorageConfig) -> std::result::Result<Database, OpenError> {
        let started = Instant::now();
        std::fs::create_dir_all(&config.data_dir).map_err(|source| OpenError::Io {
            context: format!("creating data directory {}", config.data_dir.display()),
            source,
        })?;
        crate::rekey::refuse_interrupted(&config.data_dir)?;
        let state_dir = config.state_dir();
        let db = open_state(&state_dir, config.cache_capacity_mb)?;
        let cipher = config
            .encryption
            .as_ref()
            .map(|key| Arc::new(Cipher::new(key)));
        let marker_missing = check_encryption_marker(&db, cipher.as_deref(), &config.data_dir)?;
        let read_u64 = |key: &[u8]| -> std::result::Result<u64, OpenError> {
            match db.get(key) {
                Ok(Some(v)) => state::decode_u64(&v)
                    .ok_or_else(|| OpenError::CorruptState(format!("bad value under {key:?}"))),
                Ok(None) => Ok(0),
                Err(source) => Err(OpenError::State {
                    path: state_dir.clone(),
                    source,
                }),
            }
        };
        let checkpoint = read_u64(keys::CHECKPOINT)?;
        let high_water = read_u64(keys::HIGH_WATER)?;

        let mut wal_opts = WalOptions::new(config.wal_dir());
        wal_opts.segment_size_bytes = config
            .wal_segment_size_mb
            .max(1)
            .saturating_mul(1024 * 1024);
        wal_opts.cipher = cipher.clone();
        wal_opts.archive_dir = config.wal_archive_dir.clone();
        let (wal, report) = Wal::open(wal_opts, checkpoint + 1)?;
        if marker_missing {
            // Only now that the log has accepted the key (or its absence): a new state store
            // next to an existing log must not record a setting the log contradicts.
            let state = |source| OpenError::State {
                path: state_dir.clone(),
                source,
            };
            db.insert(
                keys::ENCRYPTION,
                store::marker(cipher.as_deref()).as_bytes(),
            )
            .map_err(state)?;
            db.flush().map_err(state)?;
        }
        let db = Store::new(db, cipher);
        if let Some(t) = &report.torn_tail {
            tracing::warn!(segment = %t.segment.display(), file_offset = t.file_offset, bytes_removed = t.bytes_removed, "truncated a torn record at the end of the WAL");
        }

        let (events, _) = broadcast::channel(config.subscriber_queue_depth.max(1));
        let stats = Arc::new(CommitStats::default());
        let (checkpoint_tx, checkpoint_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let due_tx = checkpoint_tx.clone();
        let mut wal = wal;
        let cache = Arc::new(InstanceCache::new(config.instance_cache_mb));
        let mut apply = ApplyStage::new(
            db.clone(),
            i64::try_from(config.idempotency_ttl.as_millis()).unwrap_or(i64::MAX),
            events.clone(),
            stats.clone(),
            wal.publisher(),
            high_water,
            cache.clone(),
        )
        .keep_tombstones(!config.allow_instance_recreate);

        // Replay everything after the checkpoint, through the apply stage's planner.
        let mut replayed = 0u64;
        let reader = wal.reader();
        for rec in reader.iter_from(checkpoint + 1)? {
            let rec = rec?;
            let entry = WalEntry::from_bytes(&rec.payload).map_err(|e| OpenError::Replay {
                seq: rec.seq,
                reason: format!("undecodable entry: {e}"),
            })?;
            apply
                .replay(&entry, rec.seq)
                .map_err(|reason| OpenError::Replay {
                    seq: rec.seq,
                    reason,
                })?;
            replayed += 1;
        }
        let floor = high_water.max(checkpoint);
        if wal.next_seq() <= floor {
            tracing::warn!(
                wal_last = wal.last_seq(),
                state_high_water = floor,
                "state store is ahead of the WAL (tail lost under a relaxed fsync policy); skipping offsets"
            );
            wal.skip_to(floor + 1)?;
        }
        apply.high_water = apply.high_water.max(wal.last_seq());
        wal.publish(wal.last_seq());
        let trigger = CheckpointTrigger {
            due: Box::new(move || {
                let _ = due_tx.try_send(());
            }),
            events_threshold: config.checkpoint_events_threshold,
            size_threshold_bytes: config
                .checkpoint_size_threshold_mb
                .saturating_mul(1024 * 1024),
        };
        let (log, apply) = pipeline(wal, apply, config.fsync_policy, trigger);

        let limits = InstanceLimits {
            max_ctx_bytes: config.max_ctx_bytes,
        };
        let (commit_tx, commit_rx) = mpsc::channel(config.commit_queue_depth.max(1));
        let inner = Arc::new(Inner {
            machines: RwLock::new(HashMap::new()),
            config,
            db,
            cache,
            commit_tx,
            reader,
            locks: LockTable::new(),
            machine_lock: tokio::sync::Mutex::new(()),
            events,
            stats,
            limits,
            checkpoint_lock: Mutex::new(()),
            checkpoint_seq: std::sync::atomic::AtomicU64::new(checkpoint),
            threads: Mutex::new(Vec::new()),
            checkpoint_tx: Mutex::new(Some(checkpoint_tx)),
            backup_pins: Mutex::new(BTreeMap::new()),
            next_pin: std::sync::atomic::AtomicU64::new(0),
        });
        let database = Database { inner };
        database.load_machines()?;

        let mut threads = vec![
            spawn_named("rstmdb-apply", move || apply.run())?,
            spawn_named("rstmdb-log", move || log.run(commit_rx))?,
        ];
        if let FsyncPolicy::EveryMs(ms) = database.inner.config.fsync_policy {
            // A weak sender: the timer must not keep the log stage alive.
            let tx = database.inner.commit_tx.downgrade();
            let period = Duration::from_millis(ms.max(1));
            threads.push(spawn_named("rstmdb-fsync-timer", move || {
                loop {
                    std::thread::sleep(period);
                    let Some(tx) = tx.upgrade() else { return };
                    match tx.try_send(Command::Tick) {
                        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            })?);
        }
        let weak = Arc::downgrade(&database.inner);
        let min_interval = database.inner.config.checkpoint_min_interval;
        threads.push(spawn_named("rstmdb-checkpoint", move || {
            use std::sync::mpsc::RecvTimeoutError;
            // A trigger that comes too soon after the last checkpoint waits for the interval.
            let mut last = Instant::now();
            let mut pending = false;
            loop {
                let received = if pending {
                    checkpoint_rx.recv_timeout(min_interval.saturating_sub(last.elapsed()))
                } else {
                    checkpoint_rx
                        .recv()
                        .map_err(|_| RecvTimeoutError::Disconnected)
                };
                match received {
                    Ok(()) => pending = true,
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                if pending && last.elapsed() >= min_interval {
                    let Some(inner) = weak.upgrade() else { return };
                    if let Err(e) = (Database { inner }).checkpoint_blocking() {
                        tracing::error!(error = %e, "automatic checkpoint failed");
                    }
                    last = Instant::now();
                    pending = false;
                }
            }
        })?);
        if let Ok(mut t) = database.inner.threads.lock() {
            t.extend(threads);
        }
        let open_micros = started.elapsed().as_micros() as u64;
        database
            .inner
            .stats
            .recovery_micros
            .store(open_micros, std::sync::atomic::Ordering::Relaxed);
        database
            .inner
            .stats
            .recovery_records
            .store(replayed, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            checkpoint,
            replayed,
            last_offset = database.inner.reader.published_seq(),
            elapsed_ms = open_micros / 1000,
            "database open"
        );
        Ok(database)
    }

    fn load_machines(&self) -> std::result::Result<(), OpenError> {
        let mut map: HashMap<String, BTreeMap<u32, Arc<Machine>>> = HashMap::new();
        for item in self.inner.db.scan_prefix(keys::MACHINE) {
            let (_, v) = item.map_err(|e| match e {
                StoreError::Sled(source) => OpenError::State {
                    path: self.inner.config.state_dir(),
                    source,
                },
                other => OpenError::CorruptState(other.to_string()),
            })?;
            let stored: StoredMachine = serde_json::from_slice(&v)
                .map_err(|e| OpenError::CorruptState(format!("machine record: {e}")))?;
            let m =
                Machine::new(&stored.machine, stored.version, &stored.definition).map_err(|e| {
                    OpenError::CorruptState(format!(
                        "stored machine {} v{} no longer validates: {e}",
                        stored.machine, stored.version
                    ))
                })?;
            map.entry(stored.machine)
                .or_default()
                .insert(stored.version, Arc::new(m));
        }
        if let Ok(mut machines) = self.inner.machines.write() {
            *machines = map;
        }
        Ok(())
    }

    /// The configuration the database was opened with.
    pub fn config(&self) -> &StorageConfig {
        &self.inner.config
    }

    /// Fault injection for tests (a slow or failing disk under the running engine); takes
    /// effect for the writes queued after it.
    #[doc(hidden)]
    pub async fn inject_wal_faults(&self, plan: crate::wal::FaultPlan) -> Result<()> {
        self.inner
            .commit_tx
            .send(Command::SetFaults(plan))
            .await
            .map_err(|_| Error::WalIo {
                detail: "the database is closed".into(),
            })
    }

    /// Commit-pipeline counters (group commits, fsyncs, …).
    pub fn commit_stats(&self) -> &CommitStats {
        &self.inner.stats
    }

    async fn commit(
        &self,
        entry: WalEntry,
        hints: state::Hints,
        guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<CommitOutcome> {
        let bytes = entry
            .to_bytes()
            .map_err(|e| internal(format!("encoding WAL entry: {e}")))?;
        // Refuse here, alone: an oversized record would fail every write in its group.
        let max = crate::wal::WalOptions::new("").max_record_bytes as usize;
        if bytes.len() > max {
            return Err(Error::bad_request(
                "",
                format!(
                    "the change is {} bytes as a log record, over the limit of {max}; split the batch",
                    bytes.len()
                ),
            ));
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .commit_tx
            .send(Command::Commit(CommitRequest {
                entry,
                bytes,
                hints,
                _guards: guards,
                reply,
            }))
            .await
            .map_err(|_| Error::WalIo {
                detail: "the database is closed".into(),
            })?;
        rx.await
            .map_err(|_| Error::WalIo {
                detail: "the commit pipeline stopped".into(),
            })?
            .map_err(commit_err)
    }

    fn machine(&self, name: &str, version: u32) -> Result<Arc<Machine>> {
        self.inner
            .machines
            .read()
            .map_err(|_| internal("machine cache lock poisoned"))?
            .get(name)
            .and_then(|versions| versions.get(&version))
            .cloned()
            .ok_or_else(|| Error::MachineNotFound {
                machine: name.to_owned(),
                version,
            })
    }

    // ---- cancellation ----------------------------------------------------------------------
    //
    // A caller may stop waiting at any await (a timeout, a client that disconnects). Instance
    // writes hand their lock guards to the commit pipeline with the record, so a lock is never
    // released before its change is applied (a second writer would validate against stale
    // state). PUT_MACHINE and FLUSH_ALL also have bookkeeping after the commit (the machine
    // cache), so they run to completion in their own task.

    async fn detached<T, F>(&self, f: impl FnOnce(Database) -> F) -> std::result::Result<T, Error>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(f(self.clone()))
            .await
            .map_err(|e| internal(format!("write task failed: {e}")))
    }

    /// PUT_MACHINE: validates and stores a new version; an identical re-put is `created:
    /// false`, a different definition for a stored version is `MACHINE_VERSION_EXISTS`.
    pub async fn put_machine(
        &self,
        name: &str,
        version: u32,
        definition: &Value,
    ) -> Result<PutMachineOutcome> {
        let (name, definition) = (name.to_owned(), definition.clone());
        self.detached(
            move |db| async move { db.put_machine_now(&name, version, &definition).await },
        )
        .await?
    }

    /// FLUSH_ALL: removes every machine, instance and idempotency record (written to the
    /// WAL, so it survives restart). Refused unless `allow_flush_all` is set.
    pub async fn flush_all(&self) -> Result<FlushOutcome> {
        self.detached(move |db| async move { db.flush_all_now().await })
            .await?
    }

    // ---- machines ---------------------------------------------------------------------------

    /// PUT_MACHINE: validates and stores a new version; an identical re-put is `created:
    /// false`, a different definition for a stored version is `MACHINE_VERSION_EXISTS`.
    async fn put_machine_now(
        &self,
        name: &str,
        version: u32,
        definition: &Value,
    ) -> Result<PutMachineOutcome> {
        let _guard = self.inner.machine_lock.lock().await;
        let existing = self.machine(name, version).ok();
        let limit = self.inner.config.max_machine_versions as usize;
        if existing.is_none() && limit > 0 {
            let count = self
                .inner
                .machines
                .read()
                .map_err(|_| internal("machine cache lock poisoned"))?
                .get(name)
                .map_or(0, BTreeMap::len);
            if count >= limit {
                return Err(Error::MachineVersionLimitExceeded {
                    machine: name.to_owned(),
                    count,
                    limit,
                });
            }
        }
        let machine = Machine::new(name, version, definition)?;
        if let Some(stored) = existing {
            if stored.checksum() == machine.checksum() {
                return Ok(PutMachineOutcome {
                    machine: name.to_owned(),
                    version,
                    checksum: stored.checksum().to_owned(),
                    created: false,
                });
            }
            return Err(Error::MachineVersionExists {
                machine: name.to_owned(),
                version,
            });
        }
        self.commit(
            WalEntry::PutMachine {
                machine: name.to_owned(),
                version,
                definition_hash: machine.checksum().to_owned(),
                definition: machine.canonical_json(),
            },
            Vec::new(),
            Vec::new(),
        )
        .await?;
        let checksum = machine.checksum().to_owned();
        self.inner
            .machines
            .write()
            .map_err(|_| internal("machine cache lock poisoned"))?
            .entry(name.to_owned())
            .or_default()
            .insert(version, Arc::new(machine));
        Ok(PutMachineOutcome {
            machine: name.to_owned(),
            version,
            checksum,
            created: true,
        })
    }

    pub fn get_machine(&self, name: &str, version: u32) -> Result<MachineInfo> {
        let m = self.machine(name, version)?;
        Ok(MachineInfo {
            machine: name.to_owned(),
            version,
            definition: m.canonical_json(),
            checksum: m.checksum().to_owned(),
        })
    }

    /// Every machine name (byte order) with its versions (ascending).
    pub fn list_machines(&self) -> Result<Vec<(String, Vec<u32>)>> {
        let machines = self
            .inner
            .machines
            .read()
            .map_err(|_| internal("machine cache lock poisoned"))?;
        let mut out: Vec<(String, Vec<u32>)> = machines
            .iter()
            .map(|(name, versions)| (name.clone(), versions.keys().copied().collect()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    // ---- idempotency --------------------------------------------------------------------------

    fn idem_lookup(&self, scope: &str) -> Result<Option<IdemRecord>> {
        let Some(bytes) = self.inner.db.get(&keys::idem(scope)).map_err(sled_err)? else {
            return Ok(None);
        };
        let rec: IdemRecord = serde_json::from_slice(&bytes)
            .map_err(|e| internal(format!("corrupt idempotency record: {e}")))?;
        if rec.expires_at <= now_ms() {
            return Ok(None);
        }
        Ok(Some(rec))
    }

    fn idem_replay<T: for<'de> Deserialize<'de>>(
        rec: IdemRecord,
        fingerprint: &str,
        key: &str,
    ) -> Result<T> {
        if rec.fingerprint != fingerprint {
            return Err(Error::Conflict(ConflictKind::IdempotencyKeyReused {
                key: key.to_owned(),
            }));
        }
        serde_json::from_value(rec.result)
            .map_err(|e| internal(format!("corrupt idempotency result: {e}")))
    }

    // ---- instance writes: validation shared by single ops and batches -------------------------

    fn prepare_create(
        &self,
        req: &CreateInstance,
        id: &str,
        staged: &Staged<'_>,
        now: i64,
    ) -> Result<Prepared> {
        validate_idempotency_key(&req.idempotency_key)?;
        let initial_ctx = rstmdb_core::object_param("initial_ctx", req.initial_ctx.clone())?;
        if let Some(key) = &req.idempotency_key
            && let Some(rec) = self.idem_lookup(&scope::create(key))?
        {
            let fp = state::create_fingerprint(&req.machine, req.version, &initial_ctx);
            let out: CreateOutcome = Self::idem_replay(rec, &fp, key)?;
            if req
                .instance_id
                .as_deref()
                .is_some_and(|given| given != out.instance_id)
            {
                return Err(Error::Conflict(ConflictKind::IdempotencyKeyReused {
                    key: key.clone(),
                }));
            }
            return Ok(Prepared::Done(BatchOutput::Created(out)));
        }
        rstmdb_core::names::validate_instance_id(id)?;
        let existing = staged.load(id)?;
        match &existing {
            Some(e) if !e.deleted => {
                return Err(Error::InstanceExists {
                    instance_id: id.to_owned(),
                });
            }
            Some(_) if !self.inner.config.allow_instance_recreate => {
                return Err(Error::InstanceDeleted {
                    instance_id: id.to_owned(),
                });
            }
            _ => {}
        }
        let machine = self.machine(&req.machine, req.version)?;
        let instance = Instance::create(id, &machine, initial_ctx, now, &self.inner.limits)?;
        Ok(Prepared::Write {
            entry: WalEntry::CreateInstance {
                instance_id: id.to_owned(),
                machine: instance.machine.clone(),
                version: instance.version,
                initial_state: instance.state.clone(),
                initial_ctx: instance.ctx.clone(),
                idempotency_key: req.idempotency_key.clone(),
                created_at: now,
            },
            outcome: BatchOutput::Created(CreateOutcome {
                instance_id: id.to_owned(),
                state: instance.state.clone(),
                wal_offset: 0,
            }),
            staged: instance,
            previous: (id.to_owned(), existing),
        })
    }

    fn prepare_apply(&self, req: &ApplyEvent, staged: &Staged<'_>, now: i64) -> Result<Prepared> {
        validate_idempotency_key(&req.idempotency_key)?;
        let payload = rstmdb_core::object_param("payload", req.payload.clone())?;
        let not_found = || Error::InstanceNotFound {
            instance_id: req.instance_id.clone(),
        };
        let instance = staged.load(&req.instance_id)?.ok_or_else(not_found)?;
        if instance.deleted {
            return Err(not_found());
        }
        if let Some(key) = &req.idempotency_key
            && let Some(rec) = self.idem_lookup(&scope::apply(&req.instance_id, key))?
            && rec.belongs_to(&instance)
        {
            let fp = state::apply_fingerprint(&req.event, &payload);
            let mut out: ApplyOutcome = Self::idem_replay(rec, &fp, key)?;
            out.applied = false;
            return Ok(Prepared::Done(BatchOutput::Applied(out)));
        }
        let machine = self.machine(&instance.machine, instance.version)?;
        let ev = EventRequest {
            event: &req.event,
            payload: &payload,
            expected_state: req.expected_state.as_deref(),
            expected_wal_offset: req.expected_wal_offset,
            event_id: req.event_id.as_deref(),
        };
        let applied = rstmdb_core::apply_event(&instance, &machine, &ev, now, &self.inner.limits)?;
        Ok(Prepared::Write {
            entry: WalEntry::ApplyEvent {
                instance_id: req.instance_id.clone(),
                machine: instance.machine.clone(),
                version: instance.version,
                event: req.event.clone(),
                from_state: applied.from_state.clone(),
                to_state: applied.to_state.clone(),
                payload,
                ctx: applied.instance.ctx.clone(),
                event_id: req.event_id.clone(),
                idempotency_key: req.idempotency_key.clone(),
                updated_at: now,
            },
            outcome: BatchOutput::Applied(ApplyOutcome {
                from_state: applied.from_state,
                to_state: applied.to_state,
                ctx: applied.instance.ctx.clone(),
                wal_offset: 0,
                applied: true,
                event_id: req.event_id.clone(),
            }),
            staged: applied.instance,
            previous: (req.instance_id.clone(), Some(instance)),
        })
    }

    fn prepare_delete(
        &self,
        req: &DeleteInstance,
        staged: &Staged<'_>,
        now: i64,
    ) -> Result<Prepared> {
        validate_idempotency_key(&req.idempotency_key)?;
        let instance = staged
            .load(&req.instance_id)?
            .ok_or_else(|| Error::InstanceNotFound {
                instance_id: req.instance_id.clone(),
            })?;
        if let Some(key) = &req.idempotency_key
            && let Some(rec) = self.idem_lookup(&scope::delete(&req.instance_id, key))?
            && rec.belongs_to(&instance)
        {
            let out: DeleteOutcome = Self::idem_replay(rec, &state::delete_fingerprint(), key)?;
            return Ok(Prepared::Done(BatchOutput::Deleted(out)));
        }
        match rstmdb_core::delete_instance(&instance, now) {
            rstmdb_core::Deletion::AlreadyDeleted { wal_offset } => {
                Ok(Prepared::Done(BatchOutput::Deleted(DeleteOutcome {
                    instance_id: req.instance_id.clone(),
                    wal_offset,
                })))
            }
            rstmdb_core::Deletion::Deleted(next) => Ok(Prepared::Write {
                entry: WalEntry::DeleteInstance {
                    instance_id: req.instance_id.clone(),
                    idempotency_key: req.idempotency_key.clone(),
                    updated_at: now,
                },
                outcome: BatchOutput::Deleted(DeleteOutcome {
                    instance_id: req.instance_id.clone(),
                    wal_offset: 0,
                }),
                staged: next,
                previous: (req.instance_id.clone(), Some(instance)),
            }),
        }
    }

    /// Commits a prepared single write and returns its outcome.
    async fn finish(
        &self,
        prepared: Prepared,
        guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<BatchOutput> {
        match prepared {
            Prepared::Done(out) => Ok(out),
            Prepared::Write {
                entry,
                mut outcome,
                previous,
                ..
            } => {
                let c = self.commit(entry, vec![previous], guards).await?;
                set_offset(&mut outcome, c.seq);
                Ok(outcome)
            }
        }
    }

    /// Reads for a caller holding the lock shards of the ids it loads.
    fn staged(&self) -> Staged<'_> {
        Staged {
            db: &self.inner.db,
            cache: &self.inner.cache,
            locks: None,
            overlay: HashMap::new(),
        }
    }

    /// Reads for a caller holding no lock.
    fn unlocked(&self) -> Staged<'_> {
        Staged {
            locks: Some(&self.inner.locks),
            ..self.staged()
        }
    }

    fn generated_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// CREATE_INSTANCE.
    pub async fn create_instance(&self, req: CreateInstance) -> Result<CreateOutcome> {
        let id = req.instance_id.clone().unwrap_or_else(Self::generated_id);
        let idem_lock = req.idempotency_key.as_ref().map(|k| format!("idem\0{k}"));
        let mut lock_keys = vec![id.as_str()];
        lock_keys.extend(idem_lock.as_deref());
        let guards = self.inner.locks.lock_all(&lock_keys).await;
        let prepared = self.prepare_create(&req, &id, &self.staged(), now_ms())?;
        match self.finish(prepared, guards).await? {
            BatchOutput::Created(c) => Ok(c),
            _ => Err(internal("create produced another outcome")),
        }
    }

    /// GET_INSTANCE: deleted instances are not found.
    pub fn get_instance(&self, id: &str) -> Result<Instance> {
        self.get_instance_shared(id).map(Arc::unwrap_or_clone)
    }

    /// GET_INSTANCE without copying the instance out of the cache.
    pub fn get_instance_shared(&self, id: &str) -> Result<Arc<Instance>> {
        match self.unlocked().load_shared(id)? {
            Some(i) if !i.deleted => Ok(i),
            _ => Err(Error::InstanceNotFound {
                instance_id: id.to_owned(),
            }),
        }
    }

    /// Hits, misses and size of the decoded-instance cache (`StorageConfig::instance_cache_mb`).
    pub fn instance_cache_stats(&self) -> InstanceCacheStats {
        self.inner.cache.stats()
    }

    /// APPLY_EVENT.
    pub async fn apply_event(&self, req: ApplyEvent) -> Result<ApplyOutcome> {
        let guards = self.inner.locks.lock_all(&[req.instance_id.as_str()]).await;
        let prepared = self.prepare_apply(&req, &self.staged(), now_ms())?;
        match self.finish(prepared, guards).await? {
            BatchOutput::Applied(a) => Ok(a),
            _ => Err(internal("apply produced another outcome")),
        }
    }

    /// DELETE_INSTANCE (soft delete; deleting again returns the original offset).
    pub async fn delete_instance(&self, req: DeleteInstance) -> Result<DeleteOutcome> {
        let guards = self.inner.locks.lock_all(&[req.instance_id.as_str()]).await;
        let prepared = self.prepare_delete(&req, &self.staged(), now_ms())?;
        match self.finish(prepared, guards).await? {
            BatchOutput::Deleted(d) => Ok(d),
            _ => Err(internal("delete produced another outcome")),
        }
    }

    /// BATCH. Best effort: every op runs on its own and reports its own result. Atomic: all
    /// ops are validated in order against the effects of the ones before, then written as one
    /// WAL record; on the first failure nothing is written. An atomic batch holding a
    /// FLUSH_ALL follows the rules of [`Database::atomic_flush_batch`].
    pub async fn batch(
        &self,
        mode: BatchMode,
        ops: Vec<BatchOp>,
    ) -> std::result::Result<Vec<Result<BatchOutput>>, BatchFailure> {
        if ops.len() > self.inner.config.max_batch_ops {
            return Err(BatchFailure {
                index: self.inner.config.max_batch_ops,
                op: "BATCH",
                error: Error::bad_request(
                    "ops",
                    format!(
                        "batch size {} exceeds limit {}",
                        ops.len(),
                        self.inner.config.max_batch_ops
                    ),
                ),
            });
        }
        match mode {
            BatchMode::BestEffort => {
                let mut results = Vec::with_capacity(ops.len());
                for op in ops {
                    results.push(self.run_one(op).await);
                }
                Ok(results)
            }
            BatchMode::Atomic => self
                .atomic_batch(ops)
                .await
                .map(|outs| outs.into_iter().map(Ok).collect()),
        }
    }

    async fn run_one(&self, op: BatchOp) -> Result<BatchOutput> {
        match op {
            BatchOp::Create(c) => self.create_instance(c).await.map(BatchOutput::Created),
            BatchOp::Apply(a) => self.apply_event(a).await.map(BatchOutput::Applied),
            BatchOp::Delete(d) => self.delete_instance(d).await.map(BatchOutput::Deleted),
            BatchOp::Get { instance_id } => {
                self.get_instance(&instance_id).map(BatchOutput::Instance)
            }
            BatchOp::FlushAll => self.flush_all().await.map(BatchOutput::Flushed),
        }
    }

    async fn atomic_batch(
        &self,
        ops: Vec<BatchOp>,
    ) -> std::result::Result<Vec<BatchOutput>, BatchFailure> {
        if ops.iter().any(|op| matches!(op, BatchOp::FlushAll)) {
            // Like FLUSH_ALL on its own, it runs to completion in its own task: the machine
            // cache is cleared after the commit.
            return self
                .detached(move |db| async move { db.atomic_flush_batch(ops).await })
                .await
                .map_err(BatchFailure::whole)?;
        }
        // Fix generated ids first so their locks can be taken up front.
        let ids: Vec<String> = ops
            .iter()
            .map(|op| match op {
                BatchOp::Create(c) => c.instance_id.clone().unwrap_or_else(Self::generated_id),
                BatchOp::Apply(a) => a.instance_id.clone(),
                BatchOp::Delete(d) => d.instance_id.clone(),
                BatchOp::Get { instance_id } => instance_id.clone(),
                // Not here (see above); no lock to take.
                BatchOp::FlushAll => String::new(),
            })
            .collect();
        let idem_locks: Vec<String> = ops
            .iter()
            .filter_map(|op| match op {
                BatchOp::Create(c) => c.idempotency_key.as_ref().map(|k| format!("idem\0{k}")),
                _ => None,
            })
            .collect();
        let mut lock_keys: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| !id.is_empty())
            .collect();
        lock_keys.extend(idem_locks.iter().map(String::as_str));
        let guards = self.inner.locks.lock_all(&lock_keys).await;

        let now = now_ms();
        let mut staged = self.staged();
        let mut entries = Vec::new();
        let mut hints: state::Hints = Vec::new();
        let mut outcomes = Vec::with_capacity(ops.len());
        // Idempotency records of this batch are not in the store until it commits: a key used
        // twice in one batch could not be told apart, so it is refused.
        let mut scopes = std::collections::HashSet::new();
        for (index, (op, id)) in ops.iter().zip(&ids).enumerate() {
            let fail = |error: Error| BatchFailure {
                index,
                op: op.name(),
                error,
            };
            let scope = match op {
                BatchOp::Create(c) => c.idempotency_key.as_deref().map(scope::create),
                BatchOp::Apply(a) => a.idempotency_key.as_deref().map(|k| scope::apply(id, k)),
                BatchOp::Delete(d) => d.idempotency_key.as_deref().map(|k| scope::delete(id, k)),
                BatchOp::Get { .. } | BatchOp::FlushAll => None,
            };
            if let Some(scope) = scope
                && !scopes.insert(scope)
            {
                return Err(fail(Error::bad_request(
                    "idempotency_key",
                    "the same idempotency key is used twice in one atomic batch",
                )));
            }
            let prepared = match op {
                BatchOp::Create(c) => self.prepare_create(c, id, &staged, now),
                BatchOp::Apply(a) => self.prepare_apply(a, &staged, now),
                BatchOp::Delete(d) => self.prepare_delete(d, &staged, now),
                BatchOp::Get { instance_id } => match staged.load(instance_id) {
                    Ok(Some(i)) if !i.deleted => Ok(Prepared::Done(BatchOutput::Instance(i))),
                    Ok(_) => Err(Error::InstanceNotFound {
                        instance_id: instance_id.clone(),
                    }),
                    Err(e) => Err(e),
                },
                BatchOp::FlushAll => Err(internal("FLUSH_ALL reached the plain atomic batch")),
            }
            .map_err(fail)?;
            match prepared {
                Prepared::Done(out) => outcomes.push((out, false)),
                Prepared::Write {
                    entry,
                    outcome,
                    staged: next,
                    previous,
                } => {
                    // The state before the batch is what the apply stage starts from.
                    if !hints.iter().any(|(h, _)| *h == previous.0) {
                        hints.push(previous);
                    }
                    staged.overlay.insert(id.clone(), Some(next));
                    entries.push(entry);
                    outcomes.push((outcome, true));
                }
            }
        }
        if entries.is_empty() {
            return Ok(outcomes.into_iter().map(|(o, _)| o).collect());
        }
        let commit = self
            .commit(WalEntry::Batch { entries }, hints, guards)
            .await
            .map_err(BatchFailure::whole)?;
        Ok(outcomes
            .into_iter()
            .map(|(mut o, written)| {
                if written {
                    set_offset(&mut o, commit.seq);
                }
                o
            })
            .collect())
    }

    /// FLUSH_ALL: removes every machine, instance and idempotency record (written to the
    /// WAL, so it survives restart). Refused unless `allow_flush_all` is set.
    async fn flush_all_now(&self) -> Result<FlushOutcome> {
        self.flush_allowed()?;
        let _machines = self.inner.machine_lock.lock().await;
        // Every instance lock: no write may be between reading an instance and committing
        // while everything disappears (its hint would resurrect a flushed instance).
        let instances = self.inner.locks.lock_every_shard().await;
        self.commit_flush(instances).await
    }

    fn flush_allowed(&self) -> Result<()> {
        if self.inner.config.allow_flush_all {
            Ok(())
        } else {
            Err(Error::bad_request(
                "",
                "FLUSH_ALL is disabled; set storage.allow_flush_all: true to enable it",
            ))
        }
    }

    /// Writes a FLUSH_ALL record and forgets every machine. The caller holds the machine
    /// lock and hands over every instance lock shard.
    async fn commit_flush(
        &self,
        instances: Vec<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<FlushOutcome> {
        let c = self
            .commit(
                WalEntry::FlushAll {
                    timestamp: now_ms(),
                },
                Vec::new(),
                instances,
            )
            .await?;
        self.inner
            .machines
            .write()
            .map_err(|_| internal("machine cache lock poisoned"))?
            .clear();
        let counts = c.flushed.unwrap_or_default();
        Ok(FlushOutcome {
            instances_removed: counts.instances_removed,
            machines_removed: counts.machines_removed,
            wal_offset: c.seq,
        })
    }

    /// An atomic batch holding FLUSH_ALL, validated in order like any atomic batch, all or
    /// nothing. A write before the (first) flush would be removed by it in the same instant,
    /// so it is refused rather than acknowledged for something nobody could ever read. After
    /// the flush there is no machine, instance or idempotency record, and a batch cannot put
    /// a machine back, so every op after it fails as on an empty database
    /// (`MACHINE_NOT_FOUND` for a create, `INSTANCE_NOT_FOUND` for the others); a further
    /// FLUSH_ALL finds nothing. What can succeed is GET_INSTANCEs before the flush (read,
    /// then wiped, with no write in between) and the flush itself, written as one FLUSH_ALL
    /// record under the locks the op on its own takes.
    async fn atomic_flush_batch(
        &self,
        ops: Vec<BatchOp>,
    ) -> std::result::Result<Vec<BatchOutput>, BatchFailure> {
        enum Planned {
            Read(Instance),
            Flush,
        }
        let first = ops
            .iter()
            .position(|op| matches!(op, BatchOp::FlushAll))
            .unwrap_or(ops.len());
        let _machines = self.inner.machine_lock.lock().await;
        let instances = self.inner.locks.lock_every_shard().await;
        let staged = self.staged();
        let mut planned = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            let fail = |error: Error| BatchFailure {
                index,
                op: op.name(),
                error,
            };
            let instance_gone = |id: &str| {
                fail(Error::InstanceNotFound {
                    instance_id: id.to_owned(),
                })
            };
            planned.push(match op {
                BatchOp::FlushAll => {
                    self.flush_allowed().map_err(fail)?;
                    Planned::Flush
                }
                BatchOp::Get { instance_id } if index < first => {
                    match staged.load(instance_id).map_err(fail)? {
                        Some(i) if !i.deleted => Planned::Read(i),
                        _ => return Err(instance_gone(instance_id)),
                    }
                }
                _ if index < first => {
                    return Err(fail(Error::bad_request(
                        "",
                        format!(
                            "{} before the FLUSH_ALL at ops[{first}] of an atomic batch would be removed by it; \
                             send it after the batch, or use mode best_effort",
                            op.name()
                        ),
                    )));
                }
                BatchOp::Create(c) => {
                    return Err(fail(Error::MachineNotFound {
                        machine: c.machine.clone(),
                        version: c.version,
                    }));
                }
                BatchOp::Apply(a) => return Err(instance_gone(&a.instance_id)),
                BatchOp::Delete(d) => return Err(instance_gone(&d.instance_id)),
                BatchOp::Get { instance_id } => return Err(instance_gone(instance_id)),
            });
        }
        let flushed = self
            .commit_flush(instances)
            .await
            .map_err(|error| BatchFailure {
                index: first,
                op: "FLUSH_ALL",
                error,
            })?;
        Ok(planned
            .into_iter()
            .enumerate()
            .map(|(index, p)| match p {
                Planned::Read(i) => BatchOutput::Instance(i),
                Planned::Flush if index == first => BatchOutput::Flushed(flushed),
                // A second flush in the same record finds nothing left.
                Planned::Flush => BatchOutput::Flushed(FlushOutcome {
                    wal_offset: flushed.wal_offset,
                    ..FlushOutcome::default()
                }),
            })
            .collect())
    }

    // ---- lists ------------------------------------------------------------------------------

    /// LIST_INSTANCES, ordered by instance id (byte order), with exact `total`.
    pub fn list_instances(&self, q: &ListQuery) -> Result<InstancePage> {
        let limit = q.limit.min(MAX_LIST_LIMIT);
        let db = &self.inner.db;
        let after = q.after.as_deref();
        let matches = |i: &Instance| {
            (q.include_deleted || !i.deleted)
                && q.machine.as_deref().is_none_or(|m| m == i.machine)
                && q.state.as_deref().is_none_or(|s| s == i.state)
        };
        if q.include_deleted {
            // Tombstones are not indexed: scan everything (rare; tombstones are purged at
            // checkpoints).
            let mut total = 0u64;
            let mut page = Vec::new();
            let mut skipped = 0usize;
            let mut has_more = false;
            for item in db.scan_prefix(keys::INSTANCE) {
                let (_, v) = item.map_err(sled_err)?;
                let inst = state::decode_instance(&v).map_err(internal)?;
                if !matches(&inst) {
                    continue;
                }
                total += 1;
                if after.is_some_and(|a| inst.id.as_str() <= a) {
                    continue;
                }
                if skipped < q.offset {
                    skipped += 1;
                } else if page.len() < limit {
                    page.push(inst);
                } else {
                    has_more = true;
                }
            }
            return Ok(InstancePage {
                instances: page,
                total,
                has_more,
            });
        }

        // Live instances: totals from the counters, ids from the (machine, state) index.
        let mut groups: Vec<(String, String, u64)> = Vec::new();
        for item in db.scan_prefix(keys::COUNT) {
            let (k, v) = item.map_err(sled_err)?;
            let Some((m, s)) = keys::split_count(&k) else {
                continue;
            };
            if q.machine.as_deref().is_some_and(|x| x != m)
                || q.state.as_deref().is_some_and(|x| x != s)
            {
                continue;
            }
            groups.push((m, s, state::decode_u64(&v).unwrap_or(0)));
        }
        let total: u64 = groups.iter().map(|g| g.2).sum();
        let mut ids: Box<dyn Iterator<Item = Result<String>>> =
            if q.machine.is_none() && q.state.is_none() {
                Box::new(
                    db.scan_prefix(keys::INSTANCE)
                        .filter_map(|item| match item {
                            Ok((k, v)) => match state::decode_instance(&v) {
                                Ok(i) if !i.deleted => {
                                    Some(Ok(String::from_utf8_lossy(&k[keys::INSTANCE.len()..])
                                        .into_owned()))
                                }
                                Ok(_) => None,
                                Err(e) => Some(Err(internal(e))),
                            },
                            Err(e) => Some(Err(sled_err(e))),
                        }),
                )
            } else {
                let streams: Vec<_> = groups
                    .iter()
                    .map(|(m, s, _)| {
                        let prefix = keys::by_state_prefix(m, s);
                        let plen = prefix.len();
                        db.scan_prefix(&prefix).map(move |item| {
                            item.map(|(k, _)| String::from_utf8_lossy(&k[plen..]).into_owned())
                                .map_err(sled_err)
                        })
                    })
                    .collect();
                Box::new(MergeById::new(streams))
            };
        let mut page = Vec::new();
        let mut skipped = 0usize;
        let mut has_more = false;
        for id in ids.by_ref() {
            let id = id?;
            if after.is_some_and(|a| id.as_str() <= a) {
                continue;
            }
            if skipped < q.offset {
                skipped += 1;
                continue;
            }
            if page.len() == limit {
                has_more = true;
                break;
            }
            // Lists are not snapshots: an instance deleted or moved since the index was read
            // is left out rather than reported in a state it no longer has.
            match self.unlocked().load(&id)? {
                Some(i) if matches(&i) => page.push(i),
                _ => {}
            }
        }
        Ok(InstancePage {
            instances: page,
            total,
            has_more,
        })
    }

    // ---- the log ----------------------------------------------------------------------------

    /// WAL_READ: records with offset ≥ `from`, at most `limit` (default 100, max 1000), stopping
    /// before 8 MiB.
    pub fn wal_read(&self, from: u64, limit: Option<usize>) -> Result<WalPage> {
        let limit = limit
            .unwrap_or(DEFAULT_WAL_READ_LIMIT)
            .min(MAX_WAL_READ_LIMIT);
        if limit == 0 {
            return Ok(WalPage {
                records: Vec::new(),
                next_offset: None,
            });
        }
        let recs = self
            .inner
            .reader
            .read(from, limit, MAX_WAL_READ_BYTES)
            .map_err(|e| Error::WalIo {
                detail: e.to_string(),
            })?;
        let mut records = Vec::with_capacity(recs.len());
        for r in recs {
            let entry: Value = serde_json::from_slice(&r.payload).map_err(|e| Error::WalIo {
                detail: format!("record {} is not valid JSON: {e}", r.seq),
            })?;
            records.push(WalReadRecord {
                offset: r.seq,
                entry,
            });
        }
        let next_offset = records.last().map(|r| r.offset + 1);
        Ok(WalPage {
            records,
            next_offset,
        })
    }

    /// The offset of the last committed record (0 when empty).
    pub fn last_offset(&self) -> u64 {
        self.inner.reader.published_seq()
    }

    /// WAL_STATS.
    pub async fn wal_stats(&self) -> Result<WalStatsOutcome> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .commit_tx
            .send(Command::Stats { reply })
            .await
            .map_err(|_| Error::WalIo {
                detail: "the database is closed".into(),
            })?;
        let s = rx.await.map_err(|_| Error::WalIo {
            detail: "the commit pipeline stopped".into(),
        })?;
        Ok(WalStatsOutcome {
            entry_count: s.last_seq,
            segment_count: s.segment_count,
            total_size_bytes: s.total_size_bytes,
            latest_offset: s.last_seq,
            earliest_offset: s.earliest_seq,
            checkpoint_offset: self.inner.checkpoint_seq.load(Ordering::Relaxed),
            bytes_written: s.bytes_written,
            bytes_read: s.bytes_read,
            writes: s.writes,
            reads: s.reads,
            fsyncs: s.fsyncs,
            archive_failures: s.archive_failures,
        })
    }

    // ---- watching ---------------------------------------------------------------------------

    /// Committed APPLY_EVENTs, in WAL order: first those at and after `from` still in the WAL,
    /// then live ones, with no gap and no duplicate. `None` = live only.
    pub fn watch(&self, from: Option<u64>) -> Result<ChangeStream> {
        // Subscribe before reading the published end: every event after that end is
        // broadcast after this point, so it reaches the receiver.
        let rx = self.inner.events.subscribe();
        let until = self.inner.reader.published_seq();
        let earliest = self.inner.reader.earliest_seq().unwrap_or(until + 1);
        let replay_from = match from {
            None => until + 1,
            // 0: from the oldest record still in the log (as WAL_READ).
            Some(0) => earliest,
            Some(f) => {
                if f < earliest && f <= until {
                    return Err(Error::bad_request(
                        "from_offset",
                        format!(
                            "offset {f} is older than the earliest retained WAL offset {earliest}"
                        ),
                    ));
                }
                f.max(1)
            }
        };
        Ok(ChangeStream {
            reader: self.inner.reader.clone(),
            rx,
            backlog: VecDeque::new(),
            next_from: replay_from,
            replay_until: until,
            min_offset: replay_from,
        })
    }

    // ---- checkpoints ----------------------------------------------------------------------

    /// Checkpoint now: sync the WAL, flush the state store, record the checkpoint offset,
    /// purge tombstones and expired idempotency records, and delete WAL segments below the
    /// checkpoint beyond the retention.
    pub async fn checkpoint(&self) -> Result<CheckpointOutcome> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.checkpoint_blocking())
            .await
            .map_err(|e| internal(format!("checkpoint task: {e}")))?
    }

    fn checkpoint_blocking(&self) -> Result<CheckpointOutcome> {
        let _serial = self
            .inner
            .checkpoint_lock
            .lock()
            .map_err(|_| internal("checkpoint lock poisoned"))?;
        let started = Instant::now();
        let (reply, rx) = oneshot::channel();
        self.inner
            .commit_tx
            .blocking_send(Command::Checkpoint {
                now_ms: now_ms(),
                reply,
            })
            .map_err(|_| Error::WalIo {
                detail: "the database is closed".into(),
            })?;
        let mark: CheckpointMark = rx
            .blocking_recv()
            .map_err(|_| internal("the commit pipeline stopped"))?
            .map_err(|detail| Error::WalIo { detail })?;
        // Everything at or below the mark is in sled; make it durable there.
        self.inner.db.flush().map_err(sled_err)?;
        self.inner
            .checkpoint_seq
            .store(mark.checkpoint_seq, Ordering::Relaxed);
        // A running backup still has to read the records after its pin.
        let trim_seq = match self.inner.backup_pins.lock() {
            Ok(pins) => pins.values().min().map_or(mark.checkpoint_seq, |&p| {
                mark.checkpoint_seq.min(p.saturating_sub(1))
            }),
            Err(_) => return Err(internal("backup pin lock poisoned")),
        };
        let (reply, rx) = oneshot::channel();
        self.inner
            .commit_tx
            .blocking_send(Command::TrimWal {
                checkpoint_seq: trim_seq,
                retention_bytes: self
                    .inner
                    .config
                    .wal_retention_mb
                    .saturating_mul(1024 * 1024),
                reply,
            })
            .map_err(|_| Error::WalIo {
                detail: "the database is closed".into(),
            })?;
        let trim = rx
            .blocking_recv()
            .map_err(|_| internal("the commit pipeline stopped"))?
            .map_err(|detail| Error::WalIo { detail })?;
        tracing::info!(
            checkpoint_offset = mark.checkpoint_seq,
            segments_deleted = trim.segments_deleted,
            tombstones_purged = mark.tombstones_purged,
            idempotency_purged = mark.idempotency_purged,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "checkpoint"
        );
        self.inner
            .stats
            .checkpoint_micros
            .observe(started.elapsed().as_micros() as u64);
        Ok(CheckpointOutcome {
            checkpoint_offset: mark.checkpoint_seq,
            segments_deleted: trim.segments_deleted,
            bytes_reclaimed: trim.bytes_deleted,
            tombstones_purged: mark.tombstones_purged,
            idempotency_purged: mark.idempotency_purged,
            wal_segments: trim.segments_left,
        })
    }

    /// Clean shutdown: checkpoint, stop the commit pipeline (which syncs the WAL) and wait
    /// for it. Other clones of this handle stop working; the data directory is released when
    /// the last of them is dropped.
    pub async fn close(self) -> Result<()> {
        self.checkpoint().await?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.shutdown())
            .await
            .map_err(|e| internal(format!("shutdown task: {e}")))?;
        Ok(())
    }
}

/// Compares the state store's encryption marker with the configured key. A store without a
/// marker that holds data predates the marker and is plaintext; an empty one is new, and
/// `true` says its marker is still to be written.
fn check_encryption_marker(
    db: &sled::Db,
    cipher: Option<&Cipher>,
    data_dir: &std::path::Path,
) -> std::result::Result<bool, OpenError> {
    let state = |source| OpenError::State {
        path: data_dir.join("state"),
        source,
    };
    let want = cipher.map(|c| c.key_id().to_string());
    let found = match db.get(keys::ENCRYPTION).map_err(state)? {
        Some(v) => store::parse_marker(&v).map_err(OpenError::CorruptState)?,
        None if db.iter().next().is_some() => None,
        None => return Ok(true),
    };
    let dir = data_dir.display();
    match (found, want) {
        (found, want) if found == want => Ok(false),
        (None, Some(want)) => Err(OpenError::Encryption(format!(
            "data directory {dir} is not encrypted but an encryption key is configured (key id \
             {want}); encrypt it with `rstmdb rekey --data-dir {dir} --new-key-file <key>` \
             (offline), or remove storage.encryption.key_file"
        ))),
        (Some(found), None) => Err(OpenError::Encryption(format!(
            "data directory {dir} is encrypted (key id {found}) but no encryption key is \
             configured: set storage.encryption.key_file"
        ))),
        (Some(found), Some(want)) => Err(OpenError::Encryption(format!(
            "data directory {dir} is encrypted with a different key (key id {found}; the \
             configured key file holds key id {want})"
        ))),
        (None, None) => Ok(false),
    }
}

/// How long `open` waits for another holder of the state store's lock to let go: sled's
/// I/O threads release it a moment after the last handle of a closed database (or a killed
/// process) is gone. A directory really in use elsewhere still fails after this.
const STATE_LOCK_WAIT: Duration = Duration::from_secs(3);

pub(crate) fn open_state(
    dir: &std::path::Path,
    cache_capacity_mb: u64,
) -> std::result::Result<sled::Db, OpenError> {
    let deadline = Instant::now() + STATE_LOCK_WAIT;
    loop {
        let result = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity_mb.saturating_mul(1024 * 1024))
            // Flushed only at checkpoints: the WAL is what makes a write durable.
            .flush_every_ms(None)
            .open();
        match result {
            Ok(db) => return Ok(db),
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(OpenError::State {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

fn spawn_named(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> std::result::Result<JoinHandle<()>, OpenError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| OpenError::Io {
            context: format!("starting thread {name}"),
            source,
        })
}

impl Drop for Inner {
    /// The last handle is gone without `close()`: stop the threads synchronously, so that
    /// the WAL is synced and the data directory's locks are released when drop returns (a
    /// process reopening the directory right away must not find it busy).
    fn drop(&mut self) {
        if let Ok(mut tx) = self.checkpoint_tx.lock() {
            tx.take();
        }
        // Dropping the only strong sender ends the log stage after it drains the queue.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.commit_tx, closed));
        let me = std::thread::current().id();
        let threads: Vec<JoinHandle<()>> = match self.threads.lock() {
            Ok(mut t) => t.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for t in threads {
            // The checkpointer may hold the last reference; it cannot wait for itself.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

impl Inner {
    fn shutdown(&self) {
        if let Ok(mut tx) = self.checkpoint_tx.lock() {
            tx.take();
        }
        let threads: Vec<JoinHandle<()>> = match self.threads.lock() {
            Ok(mut t) => t.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        // The log stage commits what is queued, syncs the WAL and stops; the timer and
        // checkpointer threads stop once it is gone.
        let _ = self.commit_tx.blocking_send(Command::Shutdown);
        for t in threads {
            let _ = t.join();
        }
        if let Err(e) = self.db.flush() {
            tracing::error!(error = %e, "final state store flush failed; the WAL still holds every change");
        }
    }
}

/// A stream of committed changes; see [`Database::watch`].
pub struct ChangeStream {
    reader: WalReader,
    rx: broadcast::Receiver<Arc<ChangeEvent>>,
    backlog: VecDeque<Arc<ChangeEvent>>,
    /// Next WAL offset to replay; replay is over once it passes `replay_until`.
    next_from: u64,
    replay_until: u64,
    /// Nothing before this offset is delivered (a `from` past the end of the log).
    min_offset: u64,
}

impl std::fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeStream")
            .field("next_from", &self.next_from)
            .field("replay_until", &self.replay_until)
            .finish_non_exhaustive()
    }
}

/// Why a change stream ended.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WatchError {
    /// The subscriber fell more than the queue depth behind; events were dropped.
    #[error("subscriber fell behind by {0} events")]
    Lagged(u64),
    /// The database closed.
    #[error("database closed")]
    Closed,
    #[error("reading the WAL for replay: {0}")]
    Wal(String),
    /// Records the stream still had to replay were removed by a checkpoint.
    #[error("events from offset {from} on were compacted away (earliest retained: {earliest})")]
    Compacted { from: u64, earliest: u64 },
}

impl ChangeStream {
    /// The end of the log as published now: an event's distance from it is how far this
    /// subscriber lags.
    pub fn head(&self) -> u64 {
        self.reader.published_seq()
    }

    /// The next committed change.
    pub async fn next(&mut self) -> std::result::Result<Arc<ChangeEvent>, WatchError> {
        loop {
            if let Some(ev) = self.backlog.pop_front() {
                return Ok(ev);
            }
            if self.next_from <= self.replay_until {
                let recs = self
                    .reader
                    .read(self.next_from, 256, 4 * 1024 * 1024)
                    .map_err(|e| WatchError::Wal(e.to_string()))?;
                // A checkpoint may have removed what we were about to replay: say so rather
                // than skip it (a gap left by the log itself starts a segment and is fine).
                if recs.first().is_some_and(|r| r.seq > self.next_from)
                    && let Some(earliest) = self.reader.earliest_seq()
                    && earliest > self.next_from
                {
                    return Err(WatchError::Compacted {
                        from: self.next_from,
                        earliest,
                    });
                }
                let mut progressed = false;
                for r in recs {
                    if r.seq > self.replay_until {
                        break;
                    }
                    progressed = true;
                    self.next_from = r.seq + 1;
                    if let Ok(entry) = WalEntry::from_bytes(&r.payload) {
                        state::events_of(&entry, r.seq, &mut self.backlog);
                    }
                }
                if !progressed {
                    self.next_from = self.replay_until + 1;
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(ev) if ev.wal_offset > self.replay_until && ev.wal_offset >= self.min_offset => {
                    return Ok(ev);
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(WatchError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(WatchError::Closed),
            }
        }
    }
}

/// Merges id streams that are each sorted by id into one sorted stream.
struct MergeById<I: Iterator<Item = Result<String>>> {
    streams: Vec<std::iter::Peekable<I>>,
}

impl<I: Iterator<Item = Result<String>>> MergeById<I> {
    fn new(streams: Vec<I>) -> Self {
        MergeById {
            streams: streams.into_iter().map(Iterator::peekable).collect(),
        }
    }
}

impl<I: Iterator<Item = Result<String>>> Iterator for MergeById<I> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        let mut best: Option<(usize, String)> = None;
        for i in 0..self.streams.len() {
            match self.streams[i].peek() {
                None => {}
                // Surface errors first.
                Some(Err(_)) => return self.streams[i].next(),
                Some(Ok(id)) if best.as_ref().is_none_or(|(_, b)| id < b) => {
                    best = Some((i, id.clone()));
                }
                Some(Ok(_)) => {}
            }
        }
        best.and_then(|(i, _)| self.streams[i].next())
    }
}
