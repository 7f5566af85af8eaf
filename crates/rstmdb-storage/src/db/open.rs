//! Opening a data directory: the state store and its encryption marker, the WAL, recovery
//! (replaying the log after the last checkpoint through the apply stage's planner), the
//! commit pipeline and the engine's threads. [`Database::open`] runs the steps in order.

use super::{Database, Inner, spawn_named};
use crate::cache::InstanceCache;
use crate::commit::{
    ApplyStage, ApplyThread, CheckpointTrigger, Command, CommitStats, LogStage, pipeline,
};
use crate::config::{FsyncPolicy, StorageConfig};
use crate::crypto::Cipher;
use crate::datadir::{self, open_state};
use crate::entry::WalEntry;
use crate::error::OpenError;
use crate::locks::LockTable;
use crate::state::{self, keys};
use crate::store::Store;
use crate::wal::{OpenReport, Wal, WalOptions, WalReader};
use rstmdb_core::InstanceLimits;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// The state store as `open` finds it, before the log is opened.
struct FoundState {
    db: sled::Db,
    /// The store has no encryption marker yet: it is new (see `datadir`).
    marker_missing: bool,
    /// The offset of the last checkpoint: the log is replayed from the record after it.
    checkpoint: u64,
    /// The highest offset the store has applied (it may be ahead of a log that lost its tail).
    high_water: u64,
}

impl Database {
    /// Opens (or creates) the database in `config.data_dir`: opens the state store, replays
    /// the WAL written after the last checkpoint, and starts the commit pipeline.
    pub fn open(config: StorageConfig) -> std::result::Result<Database, OpenError> {
        let started = Instant::now();
        let OpenedFiles { db, mut wal, found } = open_files(&config)?;

        let EngineParts {
            events,
            stats,
            checkpoint_tx,
            checkpoint_rx,
            cache,
            apply,
        } = engine_parts(&config, &db, &wal, found.high_water);
        let due_tx = checkpoint_tx.clone();
        let mut apply = apply.keep_tombstones(!config.allow_instance_recreate);

        let reader = wal.reader();
        let replayed = replay(&mut apply, &reader, found.checkpoint)?;
        continue_offsets(&mut wal, &mut apply, found.high_water, found.checkpoint)?;
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
            checkpoint_seq: std::sync::atomic::AtomicU64::new(found.checkpoint),
            threads: Mutex::new(Vec::new()),
            checkpoint_tx: Mutex::new(Some(checkpoint_tx)),
            backup_pins: Mutex::new(BTreeMap::new()),
            next_pin: std::sync::atomic::AtomicU64::new(0),
            replica: None,
        });
        let database = Database { inner };
        database.load_machines()?;
        database.start_threads(log, apply, commit_rx, checkpoint_rx)?;
        database.record_recovery(started, found.checkpoint, replayed);
        Ok(database)
    }

    /// Starts the engine's threads: the apply stage, the log stage, the `every_ms` fsync
    /// timer and the checkpointer. The database's drop (or `close`) joins them.
    fn start_threads(
        &self,
        log: LogStage,
        apply: ApplyThread,
        commit_rx: mpsc::Receiver<Command>,
        checkpoint_rx: std::sync::mpsc::Receiver<()>,
    ) -> std::result::Result<(), OpenError> {
        let mut threads = vec![
            spawn_named("rstmdb-apply", move || apply.run())?,
            spawn_named("rstmdb-log", move || log.run(commit_rx))?,
        ];
        if let FsyncPolicy::EveryMs(ms) = self.inner.config.fsync_policy {
            // A weak sender: the timer must not keep the log stage alive.
            let tx = self.inner.commit_tx.downgrade();
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
        threads.push(self.spawn_checkpointer(checkpoint_rx)?);
        if let Ok(mut t) = self.inner.threads.lock() {
            t.extend(threads);
        }
        Ok(())
    }

    /// Records how long the open took and how much it replayed, and says so in the log.
    pub(super) fn record_recovery(&self, started: Instant, checkpoint: u64, replayed: u64) {
        let open_micros = started.elapsed().as_micros() as u64;
        self.inner
            .stats
            .recovery_micros
            .store(open_micros, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .stats
            .recovery_records
            .store(replayed, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            checkpoint,
            replayed,
            last_offset = self.inner.reader.published_seq(),
            elapsed_ms = open_micros / 1000,
            "database open"
        );
    }
}

/// A data directory's state store and log, open and checked against the key.
pub(super) struct OpenedFiles {
    pub db: Store,
    pub wal: Wal,
    /// The offsets the state store recorded (its sled handle is in `db`).
    pub found: FoundOffsets,
}

/// The checkpoint and high-water offsets a state store recorded.
#[derive(Debug, Clone, Copy)]
pub(super) struct FoundOffsets {
    pub checkpoint: u64,
    pub high_water: u64,
}

/// The steps both opens share: the data directory, the state store and its encryption
/// marker, the log (a torn tail cut and reported).
pub(super) fn open_files(config: &StorageConfig) -> std::result::Result<OpenedFiles, OpenError> {
    prepare_data_dir(config)?;
    let cipher = config
        .encryption
        .as_ref()
        .map(|key| Arc::new(Cipher::new(key)));
    let found = find_state(config, cipher.as_deref())?;
    let (wal, report) = open_log(config, cipher.clone(), found.checkpoint)?;
    if found.marker_missing {
        // Only now that the log has accepted the key (or its absence).
        datadir::write_encryption_marker(&found.db, cipher.as_deref(), &config.state_dir())?;
    }
    if let Some(t) = &report.torn_tail {
        tracing::warn!(segment = %t.segment.display(), file_offset = t.file_offset, bytes_removed = t.bytes_removed, "truncated a torn record at the end of the WAL");
    }
    Ok(OpenedFiles {
        db: Store::new(found.db, cipher),
        wal,
        found: FoundOffsets {
            checkpoint: found.checkpoint,
            high_water: found.high_water,
        },
    })
}

/// Creates the data directory if needed and refuses one an interrupted rekey left behind.
fn prepare_data_dir(config: &StorageConfig) -> std::result::Result<(), OpenError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| OpenError::Io {
        context: format!("creating data directory {}", config.data_dir.display()),
        source,
    })?;
    datadir::refuse_interrupted(&config.data_dir)
}

/// Opens the state store, checks its encryption marker against the configured key and reads
/// the offsets it recorded.
fn find_state(
    config: &StorageConfig,
    cipher: Option<&Cipher>,
) -> std::result::Result<FoundState, OpenError> {
    let state_dir = config.state_dir();
    let db = open_state(&state_dir, config.cache_capacity_mb)?;
    let marker_missing = datadir::check_encryption_marker(&db, cipher, &config.data_dir)?;
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
    Ok(FoundState {
        db,
        marker_missing,
        checkpoint,
        high_water,
    })
}

/// Opens the WAL (cutting a torn tail), verifying it from the record after the checkpoint.
fn open_log(
    config: &StorageConfig,
    cipher: Option<Arc<Cipher>>,
    checkpoint: u64,
) -> std::result::Result<(Wal, OpenReport), OpenError> {
    let mut wal_opts = WalOptions::new(config.wal_dir());
    wal_opts.segment_size_bytes = config
        .wal_segment_size_mb
        .max(1)
        .saturating_mul(1024 * 1024);
    wal_opts.cipher = cipher;
    wal_opts.archive_dir = config.wal_archive_dir.clone();
    Ok(Wal::open(wal_opts, checkpoint + 1)?)
}

/// Replays every record after the checkpoint through the apply stage's planner; returns how
/// many it replayed.
fn replay(
    apply: &mut ApplyStage,
    reader: &WalReader,
    checkpoint: u64,
) -> std::result::Result<u64, OpenError> {
    let mut replayed = 0u64;
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
    Ok(replayed)
}

/// Makes the log continue after every offset the state store has seen (recovery never reuses
/// an offset), and publishes its end to readers.
fn continue_offsets(
    wal: &mut Wal,
    apply: &mut ApplyStage,
    high_water: u64,
    checkpoint: u64,
) -> std::result::Result<(), OpenError> {
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
    Ok(())
}

/// What both kinds of open build the same way around the apply stage.
pub(super) struct EngineParts {
    pub events: broadcast::Sender<Arc<crate::state::ChangeEvent>>,
    pub stats: Arc<CommitStats>,
    pub checkpoint_tx: std::sync::mpsc::SyncSender<()>,
    pub checkpoint_rx: std::sync::mpsc::Receiver<()>,
    pub cache: Arc<InstanceCache>,
    pub apply: ApplyStage,
}

/// The watch channel, counters, checkpoint trigger, instance cache and apply stage of a
/// database whose store applied up to `high_water`.
pub(super) fn engine_parts(
    config: &StorageConfig,
    db: &Store,
    wal: &Wal,
    high_water: u64,
) -> EngineParts {
    let (events, _) = broadcast::channel(config.subscriber_queue_depth.max(1));
    let stats = Arc::new(CommitStats::default());
    let (checkpoint_tx, checkpoint_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let cache = Arc::new(InstanceCache::new(config.instance_cache_mb));
    let apply = ApplyStage::new(
        db.clone(),
        i64::try_from(config.idempotency_ttl.as_millis()).unwrap_or(i64::MAX),
        events.clone(),
        stats.clone(),
        wal.publisher(),
        high_water,
        cache.clone(),
    );
    EngineParts {
        events,
        stats,
        checkpoint_tx,
        checkpoint_rx,
        cache,
        apply,
    }
}
