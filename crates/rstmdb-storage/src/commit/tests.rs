//! The pipeline's invariant checks fire when a stage is driven with what the other stage
//! never sends. (The end-to-end behaviour is tested through `Database` in `tests/`.)

use super::*;
use crate::cache::InstanceCache;
use crate::config::FsyncPolicy;
use crate::store::Store;
use crate::wal::{Wal, WalOptions};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

/// A log in `dir` and an apply stage over an empty store that has applied up to
/// `high_water`.
fn stages(dir: &std::path::Path, high_water: u64) -> (Wal, ApplyStage) {
    let (wal, _) = Wal::open(WalOptions::new(dir), 1).unwrap();
    let apply = apply_stage(&wal, high_water);
    (wal, apply)
}

/// An apply stage over an empty, temporary store, publishing through `wal`.
fn apply_stage(wal: &Wal, high_water: u64) -> ApplyStage {
    let db = Store::new(sled::Config::new().temporary(true).open().unwrap(), None);
    let (events, _) = broadcast::channel(16);
    ApplyStage::new(
        db,
        60_000,
        events,
        Arc::new(CommitStats::default()),
        wal.publisher(),
        high_water,
        Arc::new(InstanceCache::new(1)),
    )
}

/// A checkpoint trigger that never fires.
fn no_checkpoints() -> CheckpointTrigger {
    CheckpointTrigger {
        due: Box::new(|| {}),
        events_threshold: 0,
        size_threshold_bytes: 0,
    }
}

/// A record whose plan writes nothing (the instance does not exist); nobody waits for it.
fn request() -> CommitRequest {
    request_with_reply().0
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "while a group at or below it is not durable")]
fn publishing_past_a_group_still_waiting_for_its_sync_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (_wal, mut apply) = stages(dir.path(), 0);
    apply.handle(ApplyMsg::Group {
        first_seq: 1,
        group: vec![request()],
        durable: false,
    });
    // The log stage sends `Durable` (or `Failed`) for group 1 before it sends group 2.
    apply.handle(ApplyMsg::Group {
        first_seq: 2,
        group: vec![request()],
        durable: true,
    });
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "a group's offsets must continue the previous group's")]
fn a_group_reusing_handed_offsets_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    // The store has applied up to offset 10 but the log was not moved past it (what
    // `Database::open` does with `continue_offsets`): its next record would reuse offset 1.
    let (wal, apply) = stages(dir.path(), 10);
    let (log, _apply_thread) = pipeline(wal, apply, FsyncPolicy::EveryWrite, no_checkpoints());
    let (tx, rx) = mpsc::channel(1);
    tx.try_send(Command::Commit(request())).unwrap();
    drop(tx);
    log.run(rx);
}

/// A record whose plan writes nothing (the instance does not exist), with the receiver of
/// its answer.
fn request_with_reply() -> (
    CommitRequest,
    oneshot::Receiver<Result<CommitOutcome, CommitError>>,
) {
    let entry = WalEntry::DeleteInstance {
        instance_id: "absent".into(),
        idempotency_key: None,
        updated_at: 0,
    };
    let bytes = entry.to_bytes().unwrap();
    let (reply, rx) = oneshot::channel();
    let req = CommitRequest {
        entry,
        bytes,
        hints: Vec::new(),
        _guards: Vec::new(),
        reply,
    };
    (req, rx)
}

#[test]
fn a_failed_rotation_never_lets_the_next_group_reuse_handed_offsets() {
    // Under a relaxed policy a group is handed to the apply stage (and may reach the store)
    // before it is synced. When the next append rotates and the sync of the segment it leaves
    // fails, the log drops that unsynced group; the group after must still get a new offset.
    // (Before the fix the log handed offset 1 out again: the continuity assertion fired in
    // debug builds, and a release build would have reused it.)
    let dir = tempfile::tempdir().unwrap();
    let mut opts = WalOptions::new(dir.path());
    opts.segment_size_bytes = 1; // every append to a non-empty segment rotates first
    let (mut wal, _) = Wal::open(opts, 1).unwrap();
    wal.set_fault(crate::wal::FaultPlan {
        failing_syncs: 1,
        ..Default::default()
    });
    let apply = apply_stage(&wal, 0);
    let (log, _apply_thread) = pipeline(wal, apply, FsyncPolicy::Never, no_checkpoints());
    let (tx, rx) = mpsc::channel(1);
    let log_thread = std::thread::spawn(move || log.run(rx));
    let mut answers = Vec::new();
    for _ in 0..3 {
        // One at a time, so that each is its own group.
        let (req, answer) = request_with_reply();
        tx.blocking_send(Command::Commit(req)).unwrap();
        answers.push(answer.blocking_recv().unwrap().map(|o| o.seq));
    }
    drop(tx);
    log_thread.join().unwrap();
    assert_eq!(answers[0].as_ref().ok(), Some(&1));
    assert!(
        answers[1].is_err(),
        "the rotation's sync failed: {:?}",
        answers[1]
    );
    assert_eq!(
        answers[2].as_ref().ok(),
        Some(&2),
        "offset 1 was handed out already: {answers:?}"
    );
}
