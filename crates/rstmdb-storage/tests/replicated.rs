//! The database as a raft replica (`Database::open_replicated`), driven without raft: a
//! proposer that appends each write to the log itself and applies it at once, as a
//! one-member cluster would. (`rstmdb-cluster` runs openraft's own storage suite on these
//! hooks; this file checks what storage promises on its side.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rstmdb_core::ErrorCode;
use rstmdb_storage::replicated::{
    ApplyRecord, Proposal, Proposer, RaftApply, RaftLog, ReplicatedOpen,
};
use rstmdb_storage::{ApplyEvent, CreateInstance, Database, StorageConfig};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

fn counter() -> Value {
    json!({"states": ["on"], "initial": "on", "transitions": [{"from": "on", "event": "inc", "to": "on"}]})
}

/// Appends each proposal at the next offset in `term`, then applies it.
struct Direct {
    log: RaftLog,
    apply: RaftApply,
    term: u64,
    gate: Mutex<Result<(), String>>,
}

impl Proposer for Direct {
    fn write_gate(&self) -> Result<(), String> {
        self.gate.lock().unwrap().clone()
    }

    fn propose(&self, p: Proposal) {
        let seq = self.log.next_seq().unwrap();
        self.log.append(&[(seq, self.term, p.payload())]).unwrap();
        let answers = self.apply.apply(vec![ApplyRecord {
            seq,
            term: self.term,
            payload: p.payload().to_vec(),
        }]);
        p.complete(answers.into_iter().next().unwrap());
    }
}

fn open(dir: &std::path::Path, committed: u64) -> (Database, RaftLog, RaftApply) {
    Database::open_replicated(StorageConfig::new(dir), ReplicatedOpen { committed }).unwrap()
}

fn create(id: &str) -> CreateInstance {
    CreateInstance {
        instance_id: Some(id.into()),
        machine: "c".into(),
        version: 1,
        initial_ctx: None,
        idempotency_key: None,
    }
}

fn inc(id: &str) -> ApplyEvent {
    ApplyEvent {
        instance_id: id.into(),
        event: "inc".into(),
        ..ApplyEvent::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_a_proposer_and_pass_its_gate() {
    let dir = tempfile::tempdir().unwrap();
    let (db, log, apply) = open(dir.path(), 0);
    assert!(db.is_replicated());
    let e = db.put_machine("c", 1, &counter()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::WalIoError, "{e}");
    assert!(e.to_string().contains("not ready for writes"), "{e}");

    let direct = Arc::new(Direct {
        log: log.clone(),
        apply: apply.clone(),
        term: 3,
        gate: Mutex::new(Err(
            "this node is not the leader (leader: 10.0.0.2:7401)".into()
        )),
    });
    let proposer: Arc<dyn Proposer> = direct.clone();
    assert!(db.set_proposer(&proposer));
    let e = db.put_machine("c", 1, &counter()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::WalIoError);
    assert!(e.to_string().contains("10.0.0.2:7401"), "{e}");
    assert_eq!(
        log.next_seq().unwrap(),
        1,
        "a refused write is not in the log"
    );

    *direct.gate.lock().unwrap() = Ok(());
    db.put_machine("c", 1, &counter()).await.unwrap();
    let created = db.create_instance(create("a")).await.unwrap();
    let applied = db.apply_event(inc("a")).await.unwrap();
    assert_eq!((created.wal_offset, applied.wal_offset), (2, 3));
    assert_eq!(apply.applied(), (3, 3), "applied offset and term");
    let page = db.wal_read(0, None).unwrap();
    let offsets: Vec<u64> = page.records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [1, 2, 3]);
    assert_eq!(db.last_offset(), 3);
    assert_eq!(log.term_of(2).unwrap(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_records_are_applied_but_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let (db, log, apply) = open(dir.path(), 0);
    let noop = rstmdb_storage::replicated::encode_noop();
    let member =
        rstmdb_storage::replicated::encode_membership(json!({"voters": [1, 2, 3]})).unwrap();
    log.append(&[(1, 1, noop.as_slice()), (2, 1, member.as_slice())])
        .unwrap();
    let answers = apply.apply(vec![
        ApplyRecord {
            seq: 1,
            term: 1,
            payload: noop.clone(),
        },
        ApplyRecord {
            seq: 2,
            term: 1,
            payload: member.clone(),
        },
    ]);
    assert!(answers.iter().all(|a| a.error.is_none()), "{answers:?}");
    assert_eq!(
        apply.membership().unwrap(),
        Some(json!({"voters": [1, 2, 3]}))
    );
    let page = db.wal_read(0, None).unwrap();
    assert!(page.records.is_empty(), "{page:?}");
    assert_eq!(
        page.next_offset,
        Some(3),
        "the reader still moves past them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_replays_what_was_applied_and_hides_what_was_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (db, log, apply) = open(dir.path(), 0);
        let direct: Arc<dyn Proposer> = Arc::new(Direct {
            log: log.clone(),
            apply: apply.clone(),
            term: 1,
            gate: Mutex::new(Ok(())),
        });
        db.set_proposer(&direct);
        db.put_machine("c", 1, &counter()).await.unwrap();
        db.create_instance(create("a")).await.unwrap();
        // Appended (a follower's log) but never committed here.
        let extra = serde_json::to_vec(
            &json!({"type": "delete_instance", "instance_id": "a", "updated_at": 1}),
        )
        .unwrap();
        log.append(&[(3, 2, extra.as_slice()), (4, 2, extra.as_slice())])
            .unwrap();
        assert_eq!(db.last_offset(), 2, "not applied, not visible");
        drop((db, log, apply, direct));
    }
    // The cluster saved 2 as committed (the state store, dropped without a close, may not
    // have flushed its own high-water mark).
    let (db, log, apply) = open(dir.path(), 2);
    assert_eq!(db.last_offset(), 2, "reopen shows only what was applied");
    assert_eq!(apply.applied(), (2, 1));
    assert!(db.get_instance("a").is_ok());
    let unapplied = log.read(3, 10, 10).unwrap();
    assert_eq!(
        unapplied
            .iter()
            .map(|r| (r.seq, r.term))
            .collect::<Vec<_>>(),
        [(3, 2), (4, 2)]
    );
    // A new leader may cut them; what was applied it may not.
    assert!(
        log.truncate_from(2).is_err(),
        "applied records cannot be cut"
    );
    log.truncate_from(3).unwrap();
    assert_eq!(log.next_seq().unwrap(), 3);
    assert!(log.read(3, 10, 10).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_replaces_the_state_and_the_log_continues_after_it() {
    let a_dir = tempfile::tempdir().unwrap();
    let (a, a_log, a_apply) = open(a_dir.path(), 0);
    let a_proposer: Arc<dyn Proposer> = Arc::new(Direct {
        log: a_log.clone(),
        apply: a_apply.clone(),
        term: 4,
        gate: Mutex::new(Ok(())),
    });
    a.set_proposer(&a_proposer);
    a.put_machine("c", 1, &counter()).await.unwrap();
    for id in ["x", "y", "z"] {
        a.create_instance(create(id)).await.unwrap();
    }
    a.apply_event(inc("y")).await.unwrap();
    a.delete_instance(rstmdb_storage::DeleteInstance {
        instance_id: "z".into(),
        idempotency_key: None,
    })
    .await
    .unwrap();
    let mut records = Vec::new();
    let export = a_apply
        .export_snapshot(&mut |r| {
            records.push(r.clone());
            Ok(())
        })
        .unwrap();
    assert_eq!((export.seq, export.term), (6, 4));

    let b_dir = tempfile::tempdir().unwrap();
    {
        let (b, b_log, b_apply) = open(b_dir.path(), 0);
        // Something of its own that the snapshot must replace, beyond what it applied.
        let stray = serde_json::to_vec(&json!({"type": "noop"})).unwrap();
        b_log.append(&[(1, 1, stray.as_slice())]).unwrap();
        let mut it = records.clone().into_iter().map(Ok);
        b_apply
            .install_snapshot(
                &mut it,
                export.seq,
                export.term,
                Some(json!({"m": 1})),
                &b_log,
            )
            .unwrap();
        assert_eq!(
            b_log.next_seq().unwrap(),
            7,
            "the log continues after the snapshot"
        );
        assert_eq!(b_apply.applied(), (6, 4));
        assert_eq!(b.get_instance("y").unwrap(), a.get_instance("y").unwrap());
        assert!(b.get_instance("x").is_ok());
        assert!(b.get_instance("z").is_err(), "deleted on the leader");
        assert_eq!(b.list_machines().unwrap(), a.list_machines().unwrap());
        drop((b, b_log, b_apply));
    }
    let (b, _b_log, b_apply) = open(b_dir.path(), 0);
    assert_eq!(b_apply.applied(), (6, 4), "the install is durable");
    assert_eq!(b_apply.membership().unwrap(), Some(json!({"m": 1})));
    assert_eq!(b.get_instance("y").unwrap(), a.get_instance("y").unwrap());
}
