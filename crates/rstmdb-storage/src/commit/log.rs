//! The log stage: takes every request waiting, appends their records with one write, syncs
//! them as the fsync policy says, hands each group to the apply stage, and asks for a
//! checkpoint when enough has been written.

use super::handoff::{ApplyHandoff, INLINE_GROUP_RECORDS};
use super::{
    ApplyMsg, Command, CommitError, CommitRequest, CommitStats, MAX_GROUP_RECORDS, Poison,
    TrimOutcome, fail_all, is_flush,
};
use crate::config::FsyncPolicy;
use crate::wal::{Wal, WalError};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often the log stage repeats its request for a checkpoint while none has run.
const CHECKPOINT_ASK_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct LogStage {
    pub(super) wal: Wal,
    pub(super) policy: FsyncPolicy,
    pub(super) stats: Arc<CommitStats>,
    pub(super) poison: Arc<Poison>,
    pub(super) to_apply: ApplyHandoff,
    /// Highest sequence handed to the apply stage (it may be applied and acknowledged).
    pub(super) handed_seq: u64,
    pub(super) checkpoint_due: Box<dyn Fn() + Send>,
    pub(super) checkpoint_events_threshold: u64,
    pub(super) checkpoint_size_threshold_bytes: u64,
    /// When a checkpoint was last asked for, if none has run since. Asked again at most every
    /// [`CHECKPOINT_ASK_EVERY`], not after every group: the checkpointer may be waiting out
    /// `checkpoint_min_interval`, and each ask wakes its thread (that was ~10 % of the
    /// server's CPU under load once the threshold was passed).
    pub(super) checkpoint_asked: Option<Instant>,
    pub(super) unsynced_records: u64,
    pub(super) last_sync: Instant,
}

/// Thresholds that make the log stage ask for a checkpoint.
pub(crate) struct CheckpointTrigger {
    pub due: Box<dyn Fn() + Send>,
    pub events_threshold: u64,
    pub size_threshold_bytes: u64,
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
        trim_wal(&mut self.wal, checkpoint_seq, retention_bytes)
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
            self.skip_lost_offsets();
            return Err(e);
        }
        Ok(())
    }

    /// After the log dropped its unsynced tail (a failed sync, or a failed append whose
    /// rotation had to sync the segment it left): offsets handed to the apply stage may
    /// already be in the state store, so the log moves past them and never hands them out
    /// again. If it cannot, the pipeline is poisoned.
    fn skip_lost_offsets(&mut self) {
        if self.wal.next_seq() <= self.handed_seq
            && let Err(skip) = self.wal.skip_to(self.handed_seq + 1)
        {
            self.poison.set(format!(
                "WAL unusable after it lost unsynced records: {skip}"
            ));
        }
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
                // A rotation inside the append syncs the segment it leaves; if that failed,
                // records of earlier groups (not yet synced under a relaxed policy) are gone.
                self.skip_lost_offsets();
                return fail_all(group, CommitError::Wal(e.to_string()));
            }
        };
        // The group continues the offsets handed to the apply stage: a sync that dropped
        // records moved the log past them (`sync`), so no offset the apply stage may have
        // written to the store is handed out again.
        debug_assert_eq!(
            first_seq,
            self.handed_seq + 1,
            "a group's offsets must continue the previous group's"
        );
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

/// Deletes WAL segments wholly at or below `checkpoint_seq`, keeping the newest
/// `retention_bytes` of them (for WAL_READ and watch resume).
pub(crate) fn trim_wal(
    wal: &mut Wal,
    checkpoint_seq: u64,
    retention_bytes: u64,
) -> Result<TrimOutcome, String> {
    let segments = wal.segments();
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
        wal.remove_segments_below(below)
            .map_err(|e| e.to_string())?
    } else {
        (0, 0)
    };
    Ok(TrimOutcome {
        segments_deleted,
        bytes_deleted,
        segments_left: wal.stats().segment_count,
    })
}
