//! The embedded database: `Database::open(config)` and one method per engine operation.
//!
//! Write path: take the instance's lock → read it → ask `rstmdb-core` what the change is →
//! hand the WAL entry to the commit pipeline → wait until it is durable and applied → answer.
//! Read path: straight from sled (its page cache bounds memory).
//!
//! This file holds the [`Database`] handle, its shared state and the glue every operation
//! uses (submitting a commit, running a write to completion, shutdown). The operations are
//! in the submodules, one job each:
//!
//! - `api`: the public request and result types;
//! - `open`: opening a data directory and recovering it, step by step;
//! - `machines`: the machine registry (PUT_MACHINE, GET_MACHINE, LIST_MACHINES);
//! - `write`: staging, idempotency, validation of instance writes, the single-op writes;
//! - `batch`: BATCH, best effort and atomic;
//! - `flush`: FLUSH_ALL, alone and in an atomic batch;
//! - `read`: GET_INSTANCE, LIST_INSTANCES;
//! - `wal_read`: WAL_READ, WAL_STATS;
//! - `watch`: change streams;
//! - `checkpoint`: checkpoints and the checkpointer thread.

mod api;
mod batch;
mod checkpoint;
mod flush;
mod machines;
mod open;
mod read;
mod replicated;
mod snapshot;
mod wal_read;
mod watch;
mod write;

pub use api::{
    ApplyEvent, ApplyOutcome, BatchFailure, BatchMode, BatchOp, BatchOutput, CheckpointOutcome,
    CreateInstance, CreateOutcome, DEFAULT_WAL_READ_LIMIT, DeleteInstance, DeleteOutcome,
    FlushOutcome, InstancePage, ListQuery, MAX_LIST_LIMIT, MAX_WAL_READ_BYTES, MAX_WAL_READ_LIMIT,
    MachineInfo, PutMachineOutcome, WalPage, WalReadRecord, WalStatsOutcome,
};
pub use replicated::{RaftApply, RaftLog, ReplicatedOpen};
pub use snapshot::SnapshotExport;
pub use watch::{ChangeStream, WatchError};

use crate::cache::InstanceCache;
use crate::commit::{Command, CommitError, CommitOutcome, CommitRequest, CommitStats};
use crate::config::StorageConfig;
use crate::entry::WalEntry;
use crate::locks::LockTable;
use crate::state::{self, ChangeEvent};
use crate::store::Store;
use crate::wal::WalReader;
use rstmdb_core::{Error, Instance, InstanceLimits, Machine, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};

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
    /// Set when this database is a cluster replica: writes go to raft, not `commit_tx`.
    replica: Option<replicated::ReplicaState>,
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
        CommitError::Replication {
            reason,
            committed,
            detail,
        } => Error::ReplicationTimeout {
            reason: reason.into(),
            committed,
            detail,
        },
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
        if let Some(replica) = &self.inner.replica {
            self.propose(
                replica,
                crate::proposal::Proposal {
                    payload: bytes,
                    guards,
                    reply,
                },
            );
            return rx
                .await
                .map_err(|_| Error::WalIo {
                    detail: "the cluster stopped before the write was replicated".into(),
                })?
                .map_err(commit_err);
        }
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

fn spawn_named(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> std::result::Result<JoinHandle<()>, crate::error::OpenError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| crate::error::OpenError::Io {
            context: format!("starting thread {name}"),
            source,
        })
}
