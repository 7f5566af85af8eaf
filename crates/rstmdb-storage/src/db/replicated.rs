//! Opening the database as a raft replica (`crate::replicated` explains the split), and the
//! two handles the cluster drives: [`RaftLog`] (the WAL's writer) and [`RaftApply`] (the apply
//! stage).
//!
//! Differences from a single node:
//!
//! - recovery replays the log only up to the last record known to be committed (the larger
//!   of the cluster's saved commit point and what the state store already applied): records
//!   after it may still be cut by a new leader, so they stay unpublished until raft applies
//!   them;
//! - every append is made durable before it returns, whatever `fsync_policy` says (raft
//!   counts a node's acknowledgement as a promise that the record survives a crash);
//! - there is no log stage: writes go to the installed [`Proposer`], and a small control
//!   thread answers the engine's checkpoint and statistics requests;
//! - checkpoints purge nothing (expiry by each node's own clock would make replicas differ)
//!   and delete only segments raft has purged too (a lagging replica may still need the
//!   rest; [`RaftLog::set_purged`]).

use super::open::{OpenedFiles, open_files};
use super::{Database, Inner, spawn_named};
use crate::commit::{ApplyStage, Command, CommitStats, trim_wal};
use crate::config::StorageConfig;
use crate::entry::WalEntry;
use crate::error::OpenError;
use crate::locks::LockTable;
use crate::proposal::{Applied, ApplyRecord, Proposal, Proposer, request_for};
use crate::state::{self, keys};
use crate::wal::{Wal, WalError, WalReader, WalRecord};
use rstmdb_core::InstanceLimits;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often a replica asks for a checkpoint at most while one is due.
const CHECKPOINT_ASK_EVERY: Duration = Duration::from_secs(1);

/// What the cluster knows before the database opens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicatedOpen {
    /// The highest offset the cluster saved as committed (0 if none): recovery replays the
    /// log up to it (or further, when the state store already applied more).
    pub committed: u64,
}

/// The replica side of [`Inner`]: where writes go. Held weakly: the proposer (the cluster)
/// holds the database through its state machine, so a strong reference here would keep the
/// data directory open forever after the cluster stopped.
#[derive(Default)]
pub(crate) struct ReplicaState {
    proposer: OnceLock<std::sync::Weak<dyn Proposer>>,
}

impl ReplicaState {
    pub(crate) fn proposer(&self) -> Option<Arc<dyn Proposer>> {
        self.proposer.get().and_then(std::sync::Weak::upgrade)
    }
}

/// The WAL's writer, for the raft log store. Every method may block on disk I/O: call it
/// from a blocking thread.
#[derive(Clone)]
pub struct RaftLog {
    wal: Arc<Mutex<Wal>>,
    reader: WalReader,
    /// Raft's purge point: checkpoints delete segments only at or below it.
    purged: Arc<AtomicU64>,
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog").finish_non_exhaustive()
    }
}

fn lock_error() -> WalError {
    WalError::Poisoned {
        reason: "the WAL writer's lock was poisoned by a panic".into(),
    }
}

impl RaftLog {
    /// The offset the next appended record must have.
    pub fn next_seq(&self) -> Result<u64, WalError> {
        Ok(self.wal.lock().map_err(|_| lock_error())?.next_seq())
    }

    /// Appends `records` (`(offset, term, payload)`, consecutive offsets) and makes them
    /// durable before returning. The first offset may be past the end of the log (after a
    /// snapshot or a purge beyond it): the gap is skipped, never filled. Overwriting needs a
    /// [`RaftLog::truncate_from`] first.
    pub fn append(&self, records: &[(u64, u64, &[u8])]) -> Result<(), WalError> {
        let Some(&(first, _, _)) = records.first() else {
            return Ok(());
        };
        if records.windows(2).any(|w| w[1].0 != w[0].0 + 1) {
            return Err(WalError::InvalidArgument {
                reason: "raft log records to append are not consecutive".into(),
            });
        }
        let mut wal = self.wal.lock().map_err(|_| lock_error())?;
        if first > wal.next_seq() {
            wal.skip_to(first)?;
        }
        let with_terms: Vec<(u64, &[u8])> = records.iter().map(|&(_, t, p)| (t, p)).collect();
        wal.append_with_terms(first, &with_terms)?;
        wal.sync()
    }

    /// Removes every record at or after `seq` (durable when it returns). Refused for a
    /// record already applied (published).
    pub fn truncate_from(&self, seq: u64) -> Result<(), WalError> {
        self.wal
            .lock()
            .map_err(|_| lock_error())?
            .truncate_from(seq)
    }

    /// Makes the next record get offset `seq` (after a snapshot install or a purge past the
    /// end of the log).
    pub fn skip_to(&self, seq: u64) -> Result<(), WalError> {
        let mut wal = self.wal.lock().map_err(|_| lock_error())?;
        if seq > wal.next_seq() {
            wal.skip_to(seq)?;
        }
        Ok(())
    }

    /// Records with `from <= seq <= until`, applied or not, at most `max_records`.
    pub fn read(
        &self,
        from: u64,
        until: u64,
        max_records: usize,
    ) -> Result<Vec<WalRecord>, WalError> {
        self.reader.read_unpublished(from, until, max_records)
    }

    /// The term of the record at `seq`, `None` when the log does not hold it.
    pub fn term_of(&self, seq: u64) -> Result<Option<u64>, WalError> {
        self.reader.term_of(seq)
    }

    /// Raft no longer needs records at or below `seq` (a snapshot covers them): checkpoints
    /// may delete the segments that hold only such records (never above the checkpoint, and
    /// keeping `wal_retention_mb` for WAL_READ and watches).
    pub fn set_purged(&self, seq: u64) {
        self.purged.fetch_max(seq, Ordering::AcqRel);
    }

    /// The earliest record the log still holds.
    pub fn earliest_seq(&self) -> Option<u64> {
        self.reader.earliest_seq()
    }

    /// The highest offset applied and visible to readers.
    pub fn published_seq(&self) -> u64 {
        self.reader.published_seq()
    }
}

/// The apply stage, for the raft state machine.
#[derive(Clone)]
pub struct RaftApply {
    // Declared (so dropped) before `db`: the last handle's drop may drop the database, which
    // joins the checkpointer thread, which runs until every sender of its trigger is gone.
    checkpoint_due: Arc<dyn Fn() + Send + Sync>,
    checkpoint_asked: Arc<Mutex<Option<Instant>>>,
    stage: Arc<Mutex<ApplyStage>>,
    db: Database,
}

impl std::fmt::Debug for RaftApply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftApply").finish_non_exhaustive()
    }
}

impl RaftApply {
    /// Applies committed records (consecutive offsets, already in the local log) and returns
    /// one answer per record. A record that cannot be decoded or applied poisons the stage:
    /// its answer and every later one carry the error, and writes are refused until a
    /// restart replays the log.
    pub fn apply(&self, records: Vec<ApplyRecord>) -> Vec<Applied> {
        let mut out = Vec::with_capacity(records.len());
        let mut rest = records.into_iter().peekable();
        while let Some(first) = rest.next() {
            // One run of one term: the applied term is persisted with each store batch.
            let term = first.term;
            let mut run = vec![first];
            while let Some(r) = rest.next_if(|r| r.term == term) {
                run.push(r);
            }
            self.apply_run(term, run, &mut out);
        }
        self.maybe_ask_checkpoint();
        out
    }

    fn apply_run(&self, term: u64, run: Vec<ApplyRecord>, out: &mut Vec<Applied>) {
        let first_seq = run.first().map_or(0, |r| r.seq);
        let mut group = Vec::with_capacity(run.len());
        let mut waits = Vec::with_capacity(run.len());
        let mut machines = Vec::new();
        let mut bytes = 0u64;
        for rec in run {
            bytes += rec.payload.len() as u64;
            let entry = match WalEntry::from_bytes(&rec.payload) {
                Ok(e) => e,
                Err(e) => {
                    let reason = format!("undecodable committed record at {}: {e}", rec.seq);
                    tracing::error!(error = %reason, "replicated apply failed; refusing writes until restart");
                    if let Ok(stage) = self.stage.lock() {
                        stage.poison_with(reason.clone());
                    }
                    // Apply what came before, then answer the rest with the error.
                    self.run_group(first_seq, term, group, waits, out);
                    out.push(Applied {
                        seq: rec.seq,
                        flushed: None,
                        error: Some(reason),
                    });
                    return;
                }
            };
            match &entry {
                WalEntry::PutMachine {
                    machine,
                    version,
                    definition,
                    ..
                } => machines.push(MachineChange::Put(
                    machine.clone(),
                    *version,
                    definition.clone(),
                )),
                WalEntry::FlushAll { .. } => machines.push(MachineChange::Clear),
                _ => {}
            }
            let (req, rx) = request_for(entry, rec.payload);
            group.push(req);
            waits.push((rec.seq, rx));
        }
        self.run_group(first_seq, term, group, waits, out);
        // Followers learn machines here; the leader also does after its own commit.
        for change in machines {
            self.db.note_machine_change(change);
        }
        let stats = self.db.commit_stats();
        stats.records.fetch_add(out.len() as u64, Ordering::Relaxed);
        stats
            .records_since_checkpoint
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        stats
            .bytes_since_checkpoint
            .fetch_add(bytes, Ordering::Relaxed);
    }

    fn run_group(
        &self,
        first_seq: u64,
        term: u64,
        group: Vec<crate::commit::CommitRequest>,
        waits: Vec<(
            u64,
            tokio::sync::oneshot::Receiver<
                Result<crate::commit::CommitOutcome, crate::commit::CommitError>,
            >,
        )>,
        out: &mut Vec<Applied>,
    ) {
        if group.is_empty() {
            return;
        }
        match self.stage.lock() {
            Ok(mut stage) => stage.apply_committed(first_seq, term, group),
            Err(_) => {
                for (seq, _) in waits {
                    out.push(Applied {
                        seq,
                        flushed: None,
                        error: Some(
                            "the apply stage failed earlier; refusing writes until restart".into(),
                        ),
                    });
                }
                return;
            }
        }
        for (seq, mut rx) in waits {
            // `apply_committed` answers every request before it returns.
            out.push(match rx.try_recv() {
                Ok(Ok(o)) => Applied {
                    seq: o.seq,
                    flushed: o.flushed,
                    error: None,
                },
                Ok(Err(e)) => Applied {
                    seq,
                    flushed: None,
                    error: Some(match e {
                        crate::commit::CommitError::Wal(d)
                        | crate::commit::CommitError::Apply(d)
                        | crate::commit::CommitError::Replication { detail: d, .. } => d,
                    }),
                },
                Err(_) => Applied {
                    seq,
                    flushed: None,
                    error: Some("the apply stage gave no answer".into()),
                },
            });
        }
    }

    fn maybe_ask_checkpoint(&self) {
        let config = self.db.config();
        let stats = self.db.commit_stats();
        let records = stats.records_since_checkpoint.load(Ordering::Relaxed);
        let bytes = stats.bytes_since_checkpoint.load(Ordering::Relaxed);
        let due = (config.checkpoint_events_threshold > 0
            && records >= config.checkpoint_events_threshold)
            || (config.checkpoint_size_threshold_mb > 0
                && bytes
                    >= config
                        .checkpoint_size_threshold_mb
                        .saturating_mul(1024 * 1024));
        if !due {
            return;
        }
        if let Ok(mut asked) = self.checkpoint_asked.lock()
            && asked.is_none_or(|at| at.elapsed() >= CHECKPOINT_ASK_EVERY)
        {
            *asked = Some(Instant::now());
            (self.checkpoint_due)();
        }
    }

    pub(super) fn database(&self) -> &Database {
        &self.db
    }

    pub(super) fn stage(&self) -> &Mutex<ApplyStage> {
        &self.stage
    }

    /// Writes everything applied so far to the state store's disk files now (recovery
    /// otherwise rebuilds the unflushed part by replaying the WAL). For what the WAL does not
    /// hold: raft's entry at index 0, the first membership.
    pub fn flush_state(&self) -> Result<(), String> {
        self.db
            .state_db()
            .flush()
            .map_err(|e| format!("flushing the state store: {e}"))
    }

    /// The last applied record: `(offset, term)`, `(0, 0)` when nothing was applied.
    pub fn applied(&self) -> (u64, u64) {
        match self.stage.lock() {
            Ok(s) => (s.high_water, s.applied_term),
            Err(_) => (0, 0),
        }
    }

    /// The latest membership record applied, in the cluster crate's encoding.
    pub fn membership(&self) -> Result<Option<serde_json::Value>, String> {
        match self.db.state_db().get(keys::RAFT_MEMBERSHIP) {
            Ok(Some(v)) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| format!("corrupt membership record in the state store: {e}")),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading the membership: {e}")),
        }
    }
}

/// A change to the machine registry an applied record made.
pub(crate) enum MachineChange {
    Put(String, u32, serde_json::Value),
    Clear,
}

impl Database {
    /// Opens `config.data_dir` as one replica of a cluster: recovery stops at the committed
    /// point, and no local commit pipeline runs. Install a [`Proposer`] with
    /// [`Database::set_proposer`] before writing; until then writes fail as not written.
    pub fn open_replicated(
        config: StorageConfig,
        opts: ReplicatedOpen,
    ) -> std::result::Result<(Database, RaftLog, RaftApply), OpenError> {
        let started = Instant::now();
        let OpenedFiles { db, mut wal, found } = open_files(&config)?;
        let store_err = |e: crate::store::StoreError| match e {
            crate::store::StoreError::Sled(source) => OpenError::State {
                path: config.state_dir(),
                source,
            },
            other => OpenError::CorruptState(other.to_string()),
        };
        let applied_term = match db.get(keys::APPLIED_TERM).map_err(store_err)? {
            Some(v) => state::decode_u64(&v)
                .ok_or_else(|| OpenError::CorruptState("bad value under applied_term".into()))?,
            None => 0,
        };
        if db
            .get(super::snapshot::INSTALLING)
            .map_err(store_err)?
            .is_some()
        {
            return Err(OpenError::CorruptState(
                "a raft snapshot install was interrupted: the state store is half-written; \
                 wipe this node's data directory and rejoin it under a new node id"
                    .into(),
            ));
        }
        if found.high_water > wal.last_seq() {
            return Err(OpenError::CorruptState(format!(
                "the state store applied offset {} but the raft log ends at {}: the log lost \
                 committed records; restore this node from a backup or rejoin it under a new node id",
                found.high_water,
                wal.last_seq()
            )));
        }
        let super::open::EngineParts {
            events,
            stats,
            checkpoint_tx,
            checkpoint_rx,
            cache,
            apply,
        } = super::open::engine_parts(&config, &db, &wal, found.high_water);
        let due_tx = checkpoint_tx.clone();
        // Tombstones are purged by a replicated purge record, never by a replica's own clock.
        let mut apply = apply.keep_tombstones(true);
        apply.applied_term = applied_term;

        // Replay what is known committed: everything the store applied, and up to the
        // cluster's saved commit point.
        let end = opts.committed.max(found.high_water).min(wal.last_seq());
        // `Wal::open` publishes everything it finds; records after `end` may still be cut
        // by a new leader, so readers must not see them (and `truncate_from` must be able
        // to remove them).
        wal.lower_published(end);
        wal.publish(end);
        let reader = wal.reader();
        let mut replayed = 0u64;
        for rec in reader.iter_from(found.checkpoint + 1)? {
            let rec = rec?;
            let entry = WalEntry::from_bytes(&rec.payload).map_err(|e| OpenError::Replay {
                seq: rec.seq,
                reason: format!("undecodable entry: {e}"),
            })?;
            apply.applied_term = rec.term;
            apply
                .replay(&entry, rec.seq)
                .map_err(|reason| OpenError::Replay {
                    seq: rec.seq,
                    reason,
                })?;
            replayed += 1;
        }
        apply.high_water = apply.high_water.max(end);

        let wal = Arc::new(Mutex::new(wal));
        let stage = Arc::new(Mutex::new(apply));
        let (commit_tx, commit_rx) = mpsc::channel(config.commit_queue_depth.max(1));
        let config_max_ctx = config.max_ctx_bytes;
        let inner = Arc::new(Inner {
            machines: RwLock::new(HashMap::new()),
            config,
            db,
            cache,
            commit_tx,
            reader: reader.clone(),
            locks: LockTable::new(),
            machine_lock: tokio::sync::Mutex::new(()),
            events,
            stats,
            limits: InstanceLimits {
                max_ctx_bytes: config_max_ctx,
            },
            checkpoint_lock: Mutex::new(()),
            checkpoint_seq: std::sync::atomic::AtomicU64::new(found.checkpoint),
            threads: Mutex::new(Vec::new()),
            checkpoint_tx: Mutex::new(Some(checkpoint_tx)),
            backup_pins: Mutex::new(BTreeMap::new()),
            next_pin: std::sync::atomic::AtomicU64::new(0),
            replica: Some(ReplicaState::default()),
        });
        let database = Database { inner };
        database.load_machines()?;
        let purged = Arc::new(AtomicU64::new(0));
        let control = {
            let (wal, stage, stats) = (wal.clone(), stage.clone(), database.inner.stats.clone());
            let purged = purged.clone();
            spawn_named("rstmdb-replica-control", move || {
                control_loop(commit_rx, &wal, &stage, &stats, &purged)
            })?
        };
        let checkpointer = database.spawn_checkpointer(checkpoint_rx)?;
        if let Ok(mut t) = database.inner.threads.lock() {
            t.push(control);
            t.push(checkpointer);
        }
        database.record_recovery(started, found.checkpoint, replayed);
        let log = RaftLog {
            wal,
            reader,
            purged,
        };
        let sm = RaftApply {
            db: database.clone(),
            stage,
            checkpoint_due: Arc::new(move || {
                let _ = due_tx.try_send(());
            }),
            checkpoint_asked: Arc::new(Mutex::new(None)),
        };
        Ok((database, log, sm))
    }

    /// Installs where writes go (once; later calls are ignored and return `false`). The
    /// database keeps only a weak reference: the caller keeps the proposer alive, and once
    /// it is dropped writes are refused as not written.
    pub fn set_proposer(&self, proposer: &Arc<dyn Proposer>) -> bool {
        match &self.inner.replica {
            Some(r) => r.proposer.set(Arc::downgrade(proposer)).is_ok(),
            None => false,
        }
    }

    /// Whether this database is a cluster replica.
    pub fn is_replicated(&self) -> bool {
        self.inner.replica.is_some()
    }

    /// After a snapshot replaced the state: nothing cached from before may be served.
    pub(super) fn after_snapshot_install(&self, seq: u64) -> std::result::Result<(), OpenError> {
        self.inner.cache.clear();
        self.inner.checkpoint_seq.store(seq, Ordering::Relaxed);
        self.load_machines()
    }

    pub(super) fn note_machine_change(&self, change: MachineChange) {
        match change {
            MachineChange::Put(name, version, definition) => {
                match rstmdb_core::Machine::new(&name, version, &definition) {
                    Ok(m) => {
                        if let Ok(mut machines) = self.inner.machines.write() {
                            machines
                                .entry(name)
                                .or_default()
                                .entry(version)
                                .or_insert_with(|| Arc::new(m));
                        }
                    }
                    Err(e) => {
                        tracing::error!(machine = %name, version, error = %e, "a replicated machine definition does not validate here");
                    }
                }
            }
            MachineChange::Clear => {
                if let Ok(mut machines) = self.inner.machines.write() {
                    machines.clear();
                }
            }
        }
    }

    /// On a replica, whether this node may validate a write now (see [`Proposer::write_gate`]);
    /// always yes on a single node. Called once the write's locks are held and before the
    /// state is read: checked before the locks, a write could wait on a lock while this node
    /// loses and regains the leadership, then validate against state that misses what the
    /// other leader committed.
    pub(crate) fn write_gate(&self) -> rstmdb_core::Result<()> {
        let Some(replica) = &self.inner.replica else {
            return Ok(());
        };
        let gate = match replica.proposer() {
            Some(p) => p.write_gate(),
            None => Err("this replica is not ready for writes (no cluster is running it)".into()),
        };
        gate.map_err(|detail| rstmdb_core::Error::WalIo { detail })
    }

    /// Hands `proposal` to the installed proposer, or fails it as not written.
    pub(super) fn propose(&self, replica: &ReplicaState, proposal: Proposal) {
        match replica.proposer() {
            Some(p) => p.propose(proposal),
            None => proposal.fail_not_written(
                "this replica is not ready for writes (no cluster is running it)",
            ),
        }
    }
}

/// Answers the engine's requests that a single node's log stage answers.
fn control_loop(
    mut rx: mpsc::Receiver<Command>,
    wal: &Mutex<Wal>,
    stage: &Mutex<ApplyStage>,
    stats: &CommitStats,
    purged: &AtomicU64,
) {
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Command::Commit(req) => {
                let _ = req.reply.send(Err(crate::commit::CommitError::Wal(
                    "a replica commits through raft, not its local log".into(),
                )));
            }
            Command::Checkpoint { reply, .. } => {
                stats.records_since_checkpoint.store(0, Ordering::Relaxed);
                stats.bytes_since_checkpoint.store(0, Ordering::Relaxed);
                let r = match stage.lock() {
                    // Everything applied is durable in the log (each append is synced).
                    // `i64::MIN`: no idempotency record counts as expired (see module doc).
                    Ok(mut s) => {
                        let seq = s.high_water;
                        s.checkpoint(seq, i64::MIN)
                    }
                    Err(_) => Err("the apply stage failed earlier".into()),
                };
                let _ = reply.send(r);
            }
            Command::TrimWal {
                checkpoint_seq,
                retention_bytes,
                reply,
            } => {
                // Only what raft has purged too: a lagging replica may still need the rest.
                let floor = checkpoint_seq.min(purged.load(Ordering::Acquire));
                let r = match wal.lock() {
                    Ok(mut w) => trim_wal(&mut w, floor, retention_bytes),
                    Err(_) => Err("the WAL writer's lock was poisoned".into()),
                };
                let _ = reply.send(r);
            }
            Command::Stats { reply } => {
                if let Ok(w) = wal.lock() {
                    let _ = reply.send(w.stats());
                }
            }
            Command::SetFaults(plan) => {
                if let Ok(mut w) = wal.lock() {
                    w.set_fault(plan);
                }
            }
            Command::Tick => {}
            Command::Shutdown => break,
        }
    }
    if let Ok(mut w) = wal.lock()
        && let Err(e) = w.sync()
    {
        tracing::error!(error = %e, "final WAL sync at shutdown failed");
    }
}
