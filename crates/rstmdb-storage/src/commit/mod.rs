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
//! its own thread is idle, which saves a thread wake-up or two per group ([`ApplyHandoff`](handoff::ApplyHandoff)).
//! Either way one message at a time, in the order the log stage made them. Guarantees:
//!
//! - a change is visible (reads, WAL_READ, watchers, the response) only once durable under
//!   the fsync policy, and sled never holds a change whose record is not in the WAL file;
//! - recovery never reuses an offset, even when a lost WAL tail (under `never`) is behind
//!   the state: the high-water mark is in every overlay flush;
//! - events leave in WAL order, which makes gap-free watch resume possible;
//! - a caller that goes away after submitting cannot leave a durable record unapplied: the
//!   threads finish the work regardless.
//!
//! Files, one job each: `log` (the log stage: grouping, appending, the fsync policy, asking
//! for checkpoints), `handoff` (how a group reaches the apply stage, inline or on the apply
//! thread, and the apply thread), `apply` (the apply stage: planning, writing the store,
//! publishing, acknowledging, checkpoints and FLUSH_ALL in the store); this file holds the
//! messages between them, the counters they keep, and [`pipeline`], which builds them.

mod apply;
mod handoff;
mod log;
#[cfg(test)]
mod tests;

pub(crate) use apply::ApplyStage;
pub(crate) use handoff::ApplyThread;
pub(crate) use log::{CheckpointTrigger, LogStage, trim_wal};

use crate::config::FsyncPolicy;
use crate::entry::WalEntry;
use crate::state::{self, FlushCounts};
use crate::stats::{GROUP_SIZES, Histogram, LATENCY_MICROS};
use crate::wal::{Wal, WalStats};
use handoff::ApplyHandoff;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

/// Most records one group commit takes, so one slow group cannot starve acknowledgements.
pub(crate) const MAX_GROUP_RECORDS: usize = 4096;

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
    /// Cluster only: the write could not be committed in time (`reason` `no_leader` or
    /// `commit_timeout`; `committed` `None` = unknown).
    Replication {
        reason: &'static str,
        committed: Option<bool>,
        detail: String,
    },
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
