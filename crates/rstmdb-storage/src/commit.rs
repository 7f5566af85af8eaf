//! The commit pipeline: the only writer of the WAL and of sled.
//!
//! Two stages, each owning one structure:
//!
//! - the **log stage** owns the WAL. Requests queue on a bounded channel (backpressure). When
//!   it wakes it takes every request waiting, writes their records with one `write`, makes
//!   them durable with one `fdatasync` (under `every_write`: group commit), and hands the
//!   group to the apply stage;
//! - the **apply stage** owns sled. It plans each record's state changes in sequence order,
//!   adds the group's writes (and the high-water offset) to the store atomically — the
//!   store's overlay, which reaches sled in large batches (`crate::store`) — publishes the
//!   new end of the log to readers, broadcasts watch events, and only then acknowledges.
//!
//! The log stage runs on its thread; the apply stage runs on a thread of its own for large
//! groups, so that while group N is applied group N+1 is already being synced and the fsync
//! wait and the apply work do not add up, and on the log stage's thread for small groups when
//! its own thread is idle, which saves a thread wake-up or two per group ([`ApplyHandoff`]).
//! Either way one message at a time, in the order the log stage made them. Guarantees:
//!
//! - a change is visible (reads, WAL_READ, watchers, the response) only once durable under
//!   the fsync policy, and sled never holds a change whose record is not in the WAL file;
//! - recovery never reuses an offset, even when a lost WAL tail (under `never`) is behind
//!   the state: the high-water mark is in every overlay flush;
//! - events leave in WAL order, which makes gap-free watch resume possible;
//! - a caller that goes away after submitting cannot leave a durable record unapplied: the
//!   threads finish the work regardless.

use crate::cache::InstanceCache;
use crate::config::FsyncPolicy;
use crate::entry::WalEntry;
use crate::state::{self, ChangeEvent, FlushCounts, View, keys};
use crate::stats::{GROUP_SIZES, Histogram, LATENCY_MICROS};
use crate::store::{Store, StoreError};
use crate::wal::{Wal, WalError, WalPublisher, WalStats};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Most records one group commit takes, so one slow group cannot starve acknowledgements.
pub(crate) const MAX_GROUP_RECORDS: usize = 4096;
/// How often the log stage repeats its request for a checkpoint while none has run.
const CHECKPOINT_ASK_EVERY: Duration = Duration::from_secs(1);
/// Groups the log stage may run ahead of the apply stage before it waits.
const APPLY_QUEUE_GROUPS: usize = 4;

pub(crate) struct CommitRequest {
    pub entry: WalEntry,
    pub bytes: Vec<u8>,
    /// See [`state::Hints`].
    pub hints: state::Hints,
    /// The submitter's instance locks: released when the request is dropped, i.e. after the
    /// change is applied and acknowledged (or failed), whether or not anyone still waits.
    pub _guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
    pub reply: oneshot::Sender<Result<CommitOutcome, CommitError>>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct CommitOutcome {
    pub seq: u64,
    pub flushed: Option<FlushCounts>,
}

#[derive(Debug, Clone)]
pub(crate) enum CommitError {
    /// The record is not in the log; the caller may retry.
    Wal(String),
    /// The record is durable but could not be applied; the store refuses writes until a
    /// restart replays it.
    Apply(String),
}

pub(crate) struct CheckpointMark {
    pub checkpoint_seq: u64,
    pub tombstones_purged: u64,
    pub idempotency_purged: u64,
}

// Commands are moved once through the queue; boxing the large variant would cost an
// allocation per write for no gain.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    Commit(CommitRequest),
    /// Sync the WAL, then (in the apply stage) purge tombstones and expired idempotency
    /// records at or below the durable end and record the checkpoint. sled is flushed by the
    /// caller.
    Checkpoint {
        now_ms: i64,
        reply: oneshot::Sender<Result<CheckpointMark, String>>,
    },
    /// Delete WAL segments wholly at or below `checkpoint_seq`, keeping the newest
    /// `retention_bytes` of them for WAL_READ and watch resume.
    TrimWal {
        checkpoint_seq: u64,
        retention_bytes: u64,
        reply: oneshot::Sender<Result<TrimOutcome, String>>,
    },
    Stats {
        reply: oneshot::Sender<WalStats>,
    },
    /// A timer tick for `every_ms`.
    Tick,
    /// Tests: inject WAL faults (e.g. a slow disk) into the log stage.
    SetFaults(crate::wal::FaultPlan),
    /// Commit what is queued, sync, stop.
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TrimOutcome {
    pub segments_deleted: u64,
    pub bytes_deleted: u64,
    pub segments_left: u64,
}

/// Counters shared with the rest of the engine and with the server's metrics.
#[derive(Debug)]
pub struct CommitStats {
    pub groups: AtomicU64,
    pub records: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_micros_total: AtomicU64,
    /// Records written since the last checkpoint.
    pub records_since_checkpoint: AtomicU64,
    pub bytes_since_checkpoint: AtomicU64,
    /// Records per group commit.
    pub group_size: Histogram,
    /// Duration of each WAL fdatasync, µs.
    pub fsync_micros: Histogram,
    /// Duration of each checkpoint, µs.
    pub checkpoint_micros: Histogram,
    /// How long the last open (recovery included) took, µs.
    pub recovery_micros: AtomicU64,
    /// WAL records replayed by the last open.
    pub recovery_records: AtomicU64,
}

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            groups: AtomicU64::new(0),
            records: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            fsync_micros_total: AtomicU64::new(0),
            records_since_checkpoint: AtomicU64::new(0),
            bytes_since_checkpoint: AtomicU64::new(0),
            group_size: Histogram::new(GROUP_SIZES),
            fsync_micros: Histogram::new(LATENCY_MICROS),
            checkpoint_micros: Histogram::new(LATENCY_MICROS),
            recovery_micros: AtomicU64::new(0),
            recovery_records: AtomicU64::new(0),
        }
    }
}

/// Set once the apply stage fails: the state store no longer matches the log, so every
/// later write is refused until a restart replays the log.
#[derive(Debug, Default)]
pub(crate) struct Poison(Mutex<Option<String>>);

impl Poison {
    fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|g| g.clone())
    }

    fn set(&self, reason: String) {
        if let Ok(mut g) = self.0.lock() {
            g.get_or_insert(reason);
        }
    }
}

pub(crate) enum ApplyMsg {
    /// Records written to the log. `durable: false` means the sync is still running: the
    /// apply stage plans the group while it waits, and writes it once `Durable` arrives.
    Group {
        first_seq: u64,
        group: Vec<CommitRequest>,
        durable: bool,
    },
    /// Everything up to `up_to` is durable.
    Durable { up_to: u64 },
    /// The sync failed and the log dropped every record still waiting: fail them.
    Failed { error: String },
    Checkpoint {
        seq: u64,
        now_ms: i64,
        reply: oneshot::Sender<Result<CheckpointMark, String>>,
    },
}

/// FLUSH_ALL counts by sequence.
type GroupApplied = HashMap<u64, FlushCounts>;

fn is_flush(req: &CommitRequest) -> bool {
    matches!(req.entry, WalEntry::FlushAll { .. })
}

fn fail_all(group: Vec<CommitRequest>, err: CommitError) {
    for req in group {
        let _ = req.reply.send(Err(err.clone()));
    }
}

// ---- log stage ------------------------------------------------------------------------------

pub(crate) struct LogStage {
    wal: Wal,
    policy: FsyncPolicy,
    stats: Arc<CommitStats>,
    poison: Arc<Poison>,
    to_apply: ApplyHandoff,
    /// Highest sequence handed to the apply stage (it may be applied and acknowledged).
    handed_seq: u64,
    checkpoint_due: Box<dyn Fn() + Send>,
    checkpoint_events_threshold: u64,
    checkpoint_size_threshold_bytes: u64,
    /// When a checkpoint was last asked for, if none has run since. Asked again at most every
    /// [`CHECKPOINT_ASK_EVERY`], not after every group: the checkpointer may be waiting out
    /// `checkpoint_min_interval`, and each ask wakes its thread (that was ~10 % of the
    /// server's CPU under load once the threshold was passed).
    checkpoint_asked: Option<Instant>,
    unsynced_records: u64,
    last_sync: Instant,
}

/// Thresholds that make the log stage ask for a checkpoint.
pub(crate) struct CheckpointTrigger {
    pub due: Box<dyn Fn() + Send>,
    pub events_threshold: u64,
    pub size_threshold_bytes: u64,
}

/// Groups of at most this many records are applied on the log stage's thread when the apply
/// thread has nothing queued: for them the wake-up of a second thread (and, under
/// `every_write`, the wake-up for `Durable`) costs more than the overlap with the next sync
/// saves (measured: one connection's durable APPLY 273–304 → 223–227 µs of server CPU).
/// Larger groups go to the apply thread, which applies them while the log stage writes and
/// syncs the next (keeping the inline path for every group cost 20 % of the durable
/// throughput at 64 connections).
const INLINE_GROUP_RECORDS: usize = 8;

/// How the log stage hands what it wrote to the apply stage: on the apply stage's thread,
/// or, when that is idle and the work is small, on its own (see [`INLINE_GROUP_RECORDS`]).
/// Either way one message at a time under `stage`'s lock, in the order the log stage made
/// them: a message is handled inline only when none sent to the thread is still unhandled.
struct ApplyHandoff {
    stage: Arc<Mutex<ApplyStage>>,
    tx: std::sync::mpsc::SyncSender<ApplyMsg>,
    /// Messages sent to the apply thread and not yet handled by it.
    queued: Arc<AtomicU64>,
    poison: Arc<Poison>,
}

/// Handles `msg` holding the stage's lock. A panic in the apply code is caught, so that it
/// takes down neither the log stage (inline) nor the apply thread's draining of what follows:
/// the state may be half-written, so the stage is poisoned and every later write refused.
/// `false` when the stage cannot be used (its lock was poisoned by an earlier panic).
fn handle_guarded(stage: &Mutex<ApplyStage>, poison: &Poison, msg: ApplyMsg) -> bool {
    let Ok(mut stage) = stage.lock() else {
        poison.set("the apply stage failed earlier; refusing writes until restart".into());
        return false;
    };
    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.handle(msg)));
    if handled.is_err() {
        tracing::error!("the apply stage panicked; refusing writes until restart");
        poison.set("the apply stage panicked; refusing writes until restart".into());
    }
    true
}

impl ApplyHandoff {
    /// Hands `msg` over (inline if `small` and nothing is queued); gives it back if the apply
    /// stage is gone.
    fn hand(&mut self, msg: ApplyMsg, small: bool) -> Result<(), ApplyMsg> {
        if small && self.queued.load(Ordering::Acquire) == 0 {
            if self.stage.is_poisoned() {
                self.poison
                    .set("the apply stage failed earlier; refusing writes until restart".into());
                return Err(msg);
            }
            handle_guarded(&self.stage, &self.poison, msg);
            return Ok(());
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(msg).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            e.0
        })
    }
}

/// The apply stage's own thread: run it with [`ApplyThread::run`].
pub(crate) struct ApplyThread {
    stage: Arc<Mutex<ApplyStage>>,
    rx: std::sync::mpsc::Receiver<ApplyMsg>,
    queued: Arc<AtomicU64>,
    poison: Arc<Poison>,
}

impl ApplyThread {
    /// Handles what the log stage sends, in order, until the log stage stops.
    pub fn run(self) {
        for msg in self.rx {
            let usable = handle_guarded(&self.stage, &self.poison, msg);
            self.queued.fetch_sub(1, Ordering::AcqRel);
            if !usable {
                return;
            }
        }
        if let Ok(stage) = self.stage.lock() {
            tracing::debug!(high_water = stage.high_water, "apply stage stopped");
        }
    }
}

/// Builds both stages. Run the apply thread's `run` on one thread and the log stage's on
/// another.
pub(crate) fn pipeline(
    wal: Wal,
    apply: ApplyStage,
    policy: FsyncPolicy,
    trigger: CheckpointTrigger,
) -> (LogStage, ApplyThread) {
    let handed_seq = wal.last_seq().max(apply.high_water);
    let (stats, poison) = (apply.stats.clone(), apply.poison.clone());
    let (tx, rx) = std::sync::mpsc::sync_channel(APPLY_QUEUE_GROUPS);
    let stage = Arc::new(Mutex::new(apply));
    let queued = Arc::new(AtomicU64::new(0));
    let to_apply = ApplyHandoff {
        stage: stage.clone(),
        tx,
        queued: queued.clone(),
        poison: poison.clone(),
    };
    let thread = ApplyThread {
        stage,
        rx,
        queued,
        poison: poison.clone(),
    };
    let log = LogStage {
        wal,
        policy,
        stats,
        poison,
        to_apply,
        handed_seq,
        checkpoint_due: trigger.due,
        checkpoint_events_threshold: trigger.events_threshold,
        checkpoint_size_threshold_bytes: trigger.size_threshold_bytes,
        checkpoint_asked: None,
        unsynced_records: 0,
        last_sync: Instant::now(),
    };
    (log, thread)
}

impl LogStage {
    /// Runs until every sender is gone or `Shutdown`, then syncs and returns (which ends the
    /// apply stage once it has drained).
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut group: Vec<CommitRequest> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            loop {
                match next.take() {
                    Some(Command::Commit(req)) => {
                        group.push(req);
                        if group.len() < MAX_GROUP_RECORDS {
                            next = rx.try_recv().ok();
                            if next.is_some() {
                                continue;
                            }
                        }
                        self.commit_group(std::mem::take(&mut group));
                        break;
                    }
                    Some(other) => {
                        // Keep order: what was queued before the command commits first.
                        if !group.is_empty() {
                            self.commit_group(std::mem::take(&mut group));
                        }
                        if matches!(other, Command::Shutdown) {
                            return self.stop();
                        }
                        self.control(other);
                        next = rx.try_recv().ok();
                        if next.is_none() {
                            break;
                        }
                    }
                    None => break,
                }
            }
        }
        self.stop();
    }

    fn stop(mut self) {
        if let Err(e) = self.wal.sync() {
            tracing::error!(error = %e, "final WAL sync at shutdown failed");
        }
        tracing::debug!(last_seq = self.wal.last_seq(), "log stage stopped");
    }

    fn control(&mut self, cmd: Command) {
        match cmd {
            Command::Commit(_) | Command::Shutdown => {}
            Command::SetFaults(plan) => self.wal.set_fault(plan),
            Command::Tick => {
                if let FsyncPolicy::EveryMs(ms) = self.policy
                    && self.unsynced_records > 0
                    && self.last_sync.elapsed() >= Duration::from_millis(ms)
                    && let Err(e) = self.sync()
                {
                    tracing::error!(error = %e, "timed WAL sync failed; unsynced records were dropped from the log");
                }
            }
            Command::Checkpoint { now_ms, reply } => {
                if let Err(e) = self.sync() {
                    let _ = reply.send(Err(e.to_string()));
                    return;
                }
                let seq = self.wal.last_seq();
                // Counted here, by the stage that counts them, at the moment S is fixed.
                self.stats
                    .records_since_checkpoint
                    .store(0, Ordering::Relaxed);
                self.stats
                    .bytes_since_checkpoint
                    .store(0, Ordering::Relaxed);
                self.checkpoint_asked = None;
                if let Err(ApplyMsg::Checkpoint { reply, .. }) = self
                    .to_apply
                    // Not inline: it scans tombstones and idempotency records, which would
                    // hold up the log stage's next groups.
                    .hand(ApplyMsg::Checkpoint { seq, now_ms, reply }, false)
                {
                    let _ = reply.send(Err("the apply stage stopped".into()));
                }
            }
            Command::TrimWal {
                checkpoint_seq,
                retention_bytes,
                reply,
            } => {
                let _ = reply.send(self.trim(checkpoint_seq, retention_bytes));
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.wal.stats());
            }
        }
    }

    fn trim(&mut self, checkpoint_seq: u64, retention_bytes: u64) -> Result<TrimOutcome, String> {
        let segments = self.wal.segments();
        // Newest first: keep whole segments below the checkpoint until the retention is used.
        let mut kept = 0u64;
        let mut below = 0u64;
        for seg in segments.iter().rev() {
            if seg.last_seq > checkpoint_seq || seg.last_seq == 0 {
                continue;
            }
            kept += seg.size_bytes;
            if kept > retention_bytes {
                below = seg.last_seq + 1;
                break;
            }
        }
        let (segments_deleted, bytes_deleted) = if below > 0 {
            self.wal
                .remove_segments_below(below)
                .map_err(|e| e.to_string())?
        } else {
            (0, 0)
        };
        Ok(TrimOutcome {
            segments_deleted,
            bytes_deleted,
            segments_left: self.wal.stats().segment_count,
        })
    }

    fn sync(&mut self) -> Result<(), WalError> {
        let started = Instant::now();
        let r = self.wal.sync();
        let micros = started.elapsed().as_micros() as u64;
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.stats
            .fsync_micros_total
            .fetch_add(micros, Ordering::Relaxed);
        self.stats.fsync_micros.observe(micros);
        self.last_sync = Instant::now();
        self.unsynced_records = 0;
        if let Err(e) = r {
            // The log dropped its unsynced tail. Offsets handed to the apply stage may already
            // be in the state store: never hand them out again.
            if self.wal.next_seq() <= self.handed_seq
                && let Err(skip) = self.wal.skip_to(self.handed_seq + 1)
            {
                self.poison
                    .set(format!("WAL unusable after a failed sync: {skip}"));
            }
            return Err(e);
        }
        Ok(())
    }

    fn commit_group(&mut self, group: Vec<CommitRequest>) {
        if let Some(reason) = self.poison.get() {
            return fail_all(group, CommitError::Apply(reason));
        }
        let payloads: Vec<&[u8]> = group.iter().map(|r| r.bytes.as_slice()).collect();
        let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
        let first_seq = match self.wal.append(&payloads) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, records = group.len(), "WAL append failed");
                return fail_all(group, CommitError::Wal(e.to_string()));
            }
        };
        let n = group.len() as u64;
        let last_seq = first_seq + n - 1;
        self.unsynced_records += n;
        let must_sync = match self.policy {
            FsyncPolicy::EveryWrite => true,
            FsyncPolicy::EveryN(every) => self.unsynced_records >= every.max(1),
            FsyncPolicy::EveryMs(ms) => self.last_sync.elapsed() >= Duration::from_millis(ms),
            FsyncPolicy::Never => false,
        };
        self.handed_seq = last_seq;
        // Hand the group over before syncing, so that it is planned while the disk works.
        // A FLUSH_ALL scans the whole store: never on the log stage's thread.
        let small = group.len() <= INLINE_GROUP_RECORDS && !group.iter().any(is_flush);
        if let Err(ApplyMsg::Group { group, .. }) = self.to_apply.hand(
            ApplyMsg::Group {
                first_seq,
                group,
                durable: !must_sync,
            },
            small,
        ) {
            fail_all(group, CommitError::Apply("the apply stage stopped".into()));
            return;
        }
        if must_sync {
            let msg = match self.sync() {
                Ok(()) => ApplyMsg::Durable { up_to: last_seq },
                Err(e) => {
                    tracing::error!(error = %e, records = n, "WAL sync failed");
                    ApplyMsg::Failed {
                        error: e.to_string(),
                    }
                }
            };
            let _ = self.to_apply.hand(msg, small);
        }

        self.stats.groups.fetch_add(1, Ordering::Relaxed);
        self.stats.records.fetch_add(n, Ordering::Relaxed);
        self.stats.group_size.observe(n);
        let since = self
            .stats
            .records_since_checkpoint
            .fetch_add(n, Ordering::Relaxed)
            + n;
        let since_bytes = self
            .stats
            .bytes_since_checkpoint
            .fetch_add(bytes, Ordering::Relaxed)
            + bytes;
        let due = (self.checkpoint_events_threshold > 0
            && since >= self.checkpoint_events_threshold)
            || (self.checkpoint_size_threshold_bytes > 0
                && since_bytes >= self.checkpoint_size_threshold_bytes);
        if due
            && self
                .checkpoint_asked
                .is_none_or(|at| at.elapsed() >= CHECKPOINT_ASK_EVERY)
        {
            self.checkpoint_asked = Some(Instant::now());
            (self.checkpoint_due)();
        }
    }
}

// ---- apply stage ----------------------------------------------------------------------------

pub(crate) struct ApplyStage {
    db: Store,
    idempotency_ttl_ms: i64,
    events: broadcast::Sender<Arc<ChangeEvent>>,
    stats: Arc<CommitStats>,
    publisher: WalPublisher,
    poison: Arc<Poison>,
    /// Highest sequence applied to sled (persisted with each batch).
    pub high_water: u64,
    counts: HashMap<Vec<u8>, u64>,
    /// Groups written but not yet durable, planned ahead, oldest first.
    waiting: std::collections::VecDeque<Planned>,
    /// Updated right after each store batch, before acknowledging (see `cache`).
    cache: Arc<InstanceCache>,
    /// Set when writing the overlay to sled failed after a group was applied to the store:
    /// that group is visible, so it is acknowledged, and then the stage is poisoned.
    flush_failure: Option<String>,
    /// Checkpoints leave tombstones in place (`allow_instance_recreate: false` needs them to
    /// refuse a deleted id for good).
    keep_tombstones: bool,
}

/// A group planned while its sync runs. `batch` is `None` when it holds a FLUSH_ALL, which
/// can only be planned against the store as it is once everything before it is written.
struct Planned {
    first_seq: u64,
    group: Vec<CommitRequest>,
    batch: Result<Option<PlannedBatch>, String>,
}

struct PlannedBatch {
    writes: state::Writes,
    count_deltas: HashMap<Vec<u8>, i64>,
    /// Instance versions written, in order, for the instance cache.
    instances: Vec<(rstmdb_core::Instance, usize)>,
}

/// The state store as the planner reads it (pending writes are the planner's own).
struct StoreView<'a>(&'a Store);

impl View for StoreView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.0.get(key).map_err(|e| format!("reading state: {e}"))
    }
}

impl ApplyStage {
    pub fn new(
        db: Store,
        idempotency_ttl_ms: i64,
        events: broadcast::Sender<Arc<ChangeEvent>>,
        stats: Arc<CommitStats>,
        publisher: WalPublisher,
        high_water: u64,
        cache: Arc<InstanceCache>,
    ) -> Self {
        ApplyStage {
            db,
            idempotency_ttl_ms,
            events,
            stats,
            publisher,
            poison: Arc::new(Poison::default()),
            high_water,
            counts: HashMap::new(),
            waiting: std::collections::VecDeque::new(),
            cache,
            flush_failure: None,
            keep_tombstones: false,
        }
    }

    /// Checkpoints keep tombstones instead of purging them.
    pub fn keep_tombstones(mut self, keep: bool) -> Self {
        self.keep_tombstones = keep;
        self
    }

    /// One message from the log stage, on the apply thread or inline on the log stage's
    /// ([`ApplyHandoff`]), always in the order the log stage sent them.
    fn handle(&mut self, msg: ApplyMsg) {
        match msg {
            ApplyMsg::Group {
                first_seq,
                group,
                durable: true,
            } => {
                // Poisoned: nothing more reaches the store (or readers).
                if let Some(reason) = self.poison.get() {
                    fail_all(group, CommitError::Apply(reason));
                    return;
                }
                let r = self.apply_group(&group, first_seq);
                self.complete(first_seq, group, r);
            }
            ApplyMsg::Group {
                first_seq,
                group,
                durable: false,
            } => {
                let batch = self.plan_group(&group, first_seq);
                self.waiting.push_back(Planned {
                    first_seq,
                    group,
                    batch,
                });
            }
            ApplyMsg::Durable { up_to } => {
                while self
                    .waiting
                    .front()
                    .is_some_and(|p| p.first_seq + p.group.len() as u64 - 1 <= up_to)
                {
                    if let Some(p) = self.waiting.pop_front() {
                        self.finish_planned(p);
                    }
                }
            }
            ApplyMsg::Failed { error } => {
                for p in self.waiting.drain(..) {
                    fail_all(p.group, CommitError::Wal(error.clone()));
                }
            }
            ApplyMsg::Checkpoint { seq, now_ms, reply } => {
                let _ = reply.send(self.checkpoint(seq, now_ms));
            }
        }
    }

    fn finish_planned(&mut self, p: Planned) {
        if let Some(reason) = self.poison.get() {
            return fail_all(p.group, CommitError::Apply(reason));
        }
        let last_seq = p.first_seq + p.group.len() as u64 - 1;
        let result = match p.batch {
            Ok(Some(b)) => self.write_batch(b, last_seq).map(|()| HashMap::new()),
            Ok(None) => self.apply_group(&p.group, p.first_seq),
            Err(e) => Err(e),
        };
        self.complete(p.first_seq, p.group, result);
    }

    /// Publishes, notifies and acknowledges an applied group, or fails it and poisons.
    fn complete(
        &mut self,
        first_seq: u64,
        group: Vec<CommitRequest>,
        result: Result<GroupApplied, String>,
    ) {
        if let Some(reason) = self.poison.get() {
            return fail_all(group, CommitError::Apply(reason));
        }
        let last_seq = first_seq + group.len() as u64 - 1;
        match result {
            Ok(flushed) => {
                self.high_water = self.high_water.max(last_seq);
                self.publisher.publish(last_seq);
                // Events are built only for subscribers. One that subscribes after this
                // check read a published end at or past `last_seq`, so it replays this
                // group from the WAL instead (`Database::watch`).
                let mut events: Vec<Arc<ChangeEvent>> = Vec::new();
                if self.events.receiver_count() > 0 {
                    for (i, req) in group.iter().enumerate() {
                        state::events_of(&req.entry, first_seq + i as u64, &mut events);
                    }
                }
                // Acknowledge first: a client watching its own writes then gets the response
                // before the event.
                for (i, req) in group.into_iter().enumerate() {
                    let seq = first_seq + i as u64;
                    let _ = req.reply.send(Ok(CommitOutcome {
                        seq,
                        flushed: flushed.get(&seq).copied(),
                    }));
                }
                for ev in events {
                    // No receivers is fine.
                    let _ = self.events.send(ev);
                }
                if let Some(reason) = self.flush_failure.take() {
                    tracing::error!(error = %reason, last_seq, "writing the state store to disk failed; refusing writes until restart (the WAL holds every acknowledged change)");
                    self.poison.set(reason);
                }
            }
            Err(reason) => {
                tracing::error!(error = %reason, first_seq, "applying committed records to the state store failed; refusing writes until restart");
                self.poison.set(reason.clone());
                fail_all(group, CommitError::Apply(reason));
            }
        }
    }

    /// Plans a whole group without writing anything (see [`Planned`]).
    fn plan_group(
        &self,
        group: &[CommitRequest],
        first_seq: u64,
    ) -> Result<Option<PlannedBatch>, String> {
        if group.iter().any(is_flush) {
            return Ok(None);
        }
        self.plan_records(group, first_seq).map(Some)
    }

    /// Plans consecutive records (none of them a FLUSH_ALL) against sled plus their own
    /// earlier writes.
    fn plan_records(&self, reqs: &[CommitRequest], first_seq: u64) -> Result<PlannedBatch, String> {
        let mut batch = PlannedBatch {
            writes: state::Writes::new(),
            count_deltas: HashMap::new(),
            instances: Vec::new(),
        };
        for (i, req) in reqs.iter().enumerate() {
            let plan = state::plan(
                &req.entry,
                first_seq + i as u64,
                self.idempotency_ttl_ms,
                &StoreView(&self.db),
                &req.hints,
                &mut batch.writes,
            )?;
            for (k, d) in plan.counts {
                *batch.count_deltas.entry(k).or_insert(0) += d;
            }
            batch.instances.extend(plan.instances);
        }
        Ok(batch)
    }

    /// Applies one WAL record during recovery, through the same planner as live commits.
    pub fn replay(&mut self, entry: &WalEntry, seq: u64) -> Result<(), String> {
        let mut writes = state::Writes::new();
        let plan = state::plan(
            entry,
            seq,
            self.idempotency_ttl_ms,
            &StoreView(&self.db),
            &[],
            &mut writes,
        )?;
        if plan.flush {
            self.flush_all(seq)?;
        } else {
            let mut count_deltas: HashMap<Vec<u8>, i64> = HashMap::new();
            for (k, d) in plan.counts {
                *count_deltas.entry(k).or_insert(0) += d;
            }
            let batch = PlannedBatch {
                writes,
                count_deltas,
                instances: plan.instances,
            };
            self.write_batch(batch, seq)?;
            if let Some(reason) = self.flush_failure.take() {
                return Err(reason);
            }
        }
        self.high_water = self.high_water.max(seq);
        Ok(())
    }

    /// Plans and applies every record of the group with one sled batch, split only around
    /// a FLUSH_ALL. Returns the FLUSH_ALL counts by sequence.
    fn apply_group(
        &mut self,
        group: &[CommitRequest],
        first_seq: u64,
    ) -> Result<GroupApplied, String> {
        let mut flushed = HashMap::new();
        let mut start = 0;
        while start < group.len() {
            let end = group[start..]
                .iter()
                .position(is_flush)
                .map_or(group.len(), |p| start + p);
            if end > start {
                let b = self.plan_records(&group[start..end], first_seq + start as u64)?;
                self.write_batch(b, first_seq + end as u64 - 1)?;
            }
            if end < group.len() {
                let seq = first_seq + end as u64;
                flushed.insert(seq, self.flush_all(seq)?);
            }
            start = end + 1;
        }
        Ok(flushed)
    }

    fn count(&mut self, key: &[u8]) -> Result<u64, String> {
        if let Some(c) = self.counts.get(key) {
            return Ok(*c);
        }
        let c = self
            .db
            .get(key)
            .map_err(|e| format!("reading counter: {e}"))?
            .and_then(|v| state::decode_u64(&v))
            .unwrap_or(0);
        self.counts.insert(key.to_vec(), c);
        Ok(c)
    }

    /// Writes a planned batch to sled, then puts its instance versions in the cache.
    fn write_batch(&mut self, planned: PlannedBatch, high_water: u64) -> Result<(), String> {
        let PlannedBatch {
            writes,
            count_deltas,
            instances,
        } = planned;
        let mut batch = self.db.batch();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        let mut new_counts = Vec::with_capacity(count_deltas.len());
        for (k, d) in count_deltas {
            if d == 0 {
                continue;
            }
            let c = self.count(&k)?;
            let n = c.saturating_add_signed(d);
            if n == 0 {
                batch.remove(k.clone());
            } else {
                batch.insert(k.clone(), state::encode_u64(n));
            }
            new_counts.push((k, n));
        }
        batch.insert(
            keys::HIGH_WATER,
            state::encode_u64(high_water.max(self.high_water)),
        );
        self.db
            .apply_batch(batch)
            .map_err(|e| format!("writing state: {e}"))?;
        for (k, n) in new_counts {
            self.counts.insert(k, n);
        }
        for (inst, encoded) in instances {
            self.cache.put(Arc::new(inst), encoded);
        }
        // The batch is applied (readers see it): a failure to write the overlay to sled no
        // longer concerns this group; `complete` poisons the stage after acknowledging it.
        if let Err(e) = self.db.flush_if_full()
            && self.flush_failure.is_none()
        {
            self.flush_failure = Some(format!("writing state to disk: {e}"));
        }
        Ok(())
    }

    /// FLUSH_ALL at `seq`: removes everything written before it. Items the store holds from
    /// after `seq` (only possible when replaying over a store that got ahead) survive.
    fn flush_all(&mut self, seq: u64) -> Result<FlushCounts, String> {
        let mut counts = FlushCounts::default();
        let mut batch = self.db.batch();
        let mut survivors: HashMap<Vec<u8>, u64> = HashMap::new();
        let err = |e: StoreError| format!("flushing state: {e}");
        for item in self.db.scan_prefix(keys::INSTANCE) {
            let (k, v) = item.map_err(err)?;
            let inst = state::decode_instance(&v)?;
            if inst.last_wal_offset < seq {
                batch.remove(k);
                batch.remove(keys::tombstone(&inst.id));
                if !inst.deleted {
                    batch.remove(keys::by_state(&inst.machine, &inst.state, &inst.id));
                    counts.instances_removed += 1;
                }
            } else if !inst.deleted {
                *survivors
                    .entry(keys::count(&inst.machine, &inst.state))
                    .or_insert(0) += 1;
            }
        }
        for item in self.db.scan_prefix(keys::MACHINE) {
            let (k, v) = item.map_err(err)?;
            let m: state::StoredMachine =
                serde_json::from_slice(&v).map_err(|e| format!("corrupt machine record: {e}"))?;
            if m.wal_offset < seq {
                batch.remove(k);
                counts.machines_removed += 1;
            }
        }
        for item in self.db.scan_prefix(keys::IDEM) {
            let (k, v) = item.map_err(err)?;
            let rec: state::IdemRecord = serde_json::from_slice(&v)
                .map_err(|e| format!("corrupt idempotency record: {e}"))?;
            if rec.wal_offset < seq {
                let scope = &k[keys::IDEM.len()..];
                batch.remove(keys::idem_expiry(
                    rec.expires_at,
                    &String::from_utf8_lossy(scope),
                ));
                batch.remove(k);
            }
        }
        for item in self.db.scan_prefix(keys::COUNT) {
            let (k, _) = item.map_err(err)?;
            batch.remove(k);
        }
        self.counts.clear();
        for (k, n) in survivors {
            batch.insert(k.clone(), state::encode_u64(n));
            self.counts.insert(k, n);
        }
        batch.insert(
            keys::HIGH_WATER,
            state::encode_u64(seq.max(self.high_water)),
        );
        self.db.apply_batch(batch).map_err(err)?;
        // Every lock shard is held (live) or nothing else runs (replay): see `cache`.
        self.cache.clear();
        Ok(counts)
    }

    /// Runs after every record up to `checkpoint_seq` (synced by the log stage) is applied.
    fn checkpoint(&mut self, checkpoint_seq: u64, now_ms: i64) -> Result<CheckpointMark, String> {
        if let Some(reason) = self.poison.get() {
            return Err(reason);
        }
        let err = |e: StoreError| format!("checkpoint: {e}");
        let mut batch = self.db.batch();
        let mut tombstones_purged = 0;
        let tombstones = if self.keep_tombstones {
            None
        } else {
            Some(self.db.scan_prefix(keys::TOMBSTONE))
        };
        for item in tombstones.into_iter().flatten() {
            let (k, v) = item.map_err(err)?;
            let off = state::decode_u64(&v).unwrap_or(u64::MAX);
            if off > checkpoint_seq {
                continue;
            }
            let id = &k[keys::TOMBSTONE.len()..];
            let mut ikey = keys::INSTANCE.to_vec();
            ikey.extend_from_slice(id);
            if let Some(v) = self.db.get(&ikey).map_err(err)? {
                let inst = state::decode_instance(&v)?;
                if inst.deleted && inst.last_wal_offset == off {
                    batch.remove(ikey);
                    tombstones_purged += 1;
                }
            }
            batch.remove(k);
        }
        let mut idempotency_purged = 0;
        for item in self.db.scan_prefix(keys::IDEM_EXPIRY) {
            let (k, _) = item.map_err(err)?;
            match keys::idem_expiry_time(&k) {
                Some(t) if t <= now_ms => {}
                _ => break, // ordered by expiry: nothing later has expired
            }
            if let Some(scope) = keys::idem_expiry_scope(&k) {
                let mut ikey = keys::IDEM.to_vec();
                ikey.extend_from_slice(scope);
                batch.remove(ikey);
                idempotency_purged += 1;
            }
            batch.remove(k);
        }
        batch.insert(keys::CHECKPOINT, state::encode_u64(checkpoint_seq));
        self.db.apply_batch(batch).map_err(err)?;
        Ok(CheckpointMark {
            checkpoint_seq,
            tombstones_purged,
            idempotency_purged,
        })
    }
}
