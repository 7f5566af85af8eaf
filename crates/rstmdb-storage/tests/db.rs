//! Database behaviour over real files in temporary directories.

// Test helpers outside #[test] functions may panic: a panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rstmdb_core::ErrorCode;
use rstmdb_storage::{
    ApplyEvent, BatchMode, BatchOp, BatchOutput, CreateInstance, Database, DeleteInstance,
    FsyncPolicy, ListQuery, StorageConfig,
};
use serde_json::{Value, json};
use std::time::Duration;

fn order_def() -> Value {
    json!({
        "states": ["pending", "paid", "shipped", "cancelled"],
        "initial": "pending",
        "transitions": [
            {"from": "pending", "event": "PAY", "to": "paid", "guard": "payload.amount > 0"},
            {"from": "paid", "event": "SHIP", "to": "shipped"},
            {"from": ["pending", "paid"], "event": "CANCEL", "to": "cancelled"}
        ]
    })
}

fn config(dir: &std::path::Path) -> StorageConfig {
    StorageConfig::new(dir)
}

async fn open_with_order(dir: &std::path::Path) -> Database {
    let db = Database::open(config(dir)).unwrap();
    db.put_machine("order", 1, &order_def()).await.unwrap();
    db
}

fn create(id: &str) -> CreateInstance {
    CreateInstance {
        instance_id: Some(id.into()),
        machine: "order".into(),
        version: 1,
        initial_ctx: Some(json!({"customer": id})),
        idempotency_key: None,
    }
}

fn pay(id: &str, amount: i64) -> ApplyEvent {
    ApplyEvent {
        instance_id: id.into(),
        event: "PAY".into(),
        payload: Some(json!({"amount": amount})),
        ..Default::default()
    }
}

fn all_instances(db: &Database) -> Vec<rstmdb_core::Instance> {
    db.list_instances(&ListQuery {
        limit: 1000,
        include_deleted: true,
        ..Default::default()
    })
    .unwrap()
    .instances
}

#[tokio::test]
async fn offsets_start_at_one_and_increase_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(config(dir.path())).unwrap();
    assert_eq!(db.last_offset(), 0);
    db.put_machine("order", 1, &order_def()).await.unwrap();
    assert_eq!(db.last_offset(), 1);
    let c = db.create_instance(create("a")).await.unwrap();
    assert_eq!(c.wal_offset, 2);
    let a = db.apply_event(pay("a", 5)).await.unwrap();
    assert_eq!(a.wal_offset, 3);
    assert_eq!(db.get_instance("a").unwrap().last_wal_offset, 3);
}

#[tokio::test]
async fn machines_put_get_list_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    let again = db.put_machine("order", 1, &order_def()).await.unwrap();
    assert!(!again.created, "identical re-put is not a new version");
    let before = db.last_offset();
    assert_eq!(db.last_offset(), before, "identical re-put writes nothing");
    let mut other = order_def();
    other["states"] = json!(["pending", "paid", "shipped", "cancelled", "x"]);
    let e = db.put_machine("order", 1, &other).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::MachineVersionExists);
    db.put_machine("order", 2, &other).await.unwrap();
    db.put_machine("alpha", 3, &order_def()).await.unwrap();
    assert_eq!(
        db.list_machines().unwrap(),
        vec![
            ("alpha".to_string(), vec![3]),
            ("order".to_string(), vec![1, 2])
        ]
    );
    let info = db.get_machine("order", 2).unwrap();
    assert_eq!(info.definition["states"][4], "x");
    assert_eq!(
        db.get_machine("order", 9).unwrap_err().code(),
        ErrorCode::MachineNotFound
    );
    let bad = db
        .put_machine(
            "bad",
            1,
            &json!({"states": ["a"], "initial": "b", "transitions": []}),
        )
        .await;
    assert_eq!(bad.unwrap_err().code(), ErrorCode::BadRequest);
}

#[tokio::test]
async fn machine_version_limit_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_machine_versions = 2;
    let db = Database::open(cfg).unwrap();
    db.put_machine("m", 1, &order_def()).await.unwrap();
    db.put_machine("m", 2, &order_def()).await.unwrap();
    let e = db.put_machine("m", 3, &order_def()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::MachineVersionLimitExceeded);
    // Re-putting a stored version is still fine.
    assert!(!db.put_machine("m", 2, &order_def()).await.unwrap().created);
}

#[tokio::test]
async fn create_get_apply_delete_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    let c = db.create_instance(create("o-1")).await.unwrap();
    assert_eq!(c.state, "pending");
    assert_eq!(
        db.create_instance(create("o-1")).await.unwrap_err().code(),
        ErrorCode::InstanceExists
    );
    let g = db.apply_event(pay("o-1", 0)).await.unwrap_err();
    assert_eq!(g.code(), ErrorCode::GuardFailed);
    let a = db.apply_event(pay("o-1", 10)).await.unwrap();
    assert_eq!(
        (a.from_state.as_str(), a.to_state.as_str()),
        ("pending", "paid")
    );
    assert_eq!(a.ctx["amount"], 10);
    assert!(a.applied);
    let i = db.get_instance("o-1").unwrap();
    assert_eq!(i.state, "paid");
    assert_eq!(i.ctx["customer"], "o-1");

    let d = db
        .delete_instance(DeleteInstance {
            instance_id: "o-1".into(),
            idempotency_key: None,
        })
        .await
        .unwrap();
    let d2 = db
        .delete_instance(DeleteInstance {
            instance_id: "o-1".into(),
            idempotency_key: None,
        })
        .await
        .unwrap();
    assert_eq!(
        d.wal_offset, d2.wal_offset,
        "second delete reports the original offset"
    );
    assert_eq!(
        db.get_instance("o-1").unwrap_err().code(),
        ErrorCode::InstanceNotFound
    );
    assert_eq!(
        db.apply_event(pay("o-1", 1)).await.unwrap_err().code(),
        ErrorCode::InstanceNotFound
    );
    // A deleted id can be created again.
    let again = db.create_instance(create("o-1")).await.unwrap();
    assert_eq!(again.state, "pending");
}

#[tokio::test]
async fn create_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    let mut c = create("x");
    c.version = 7;
    assert_eq!(
        db.create_instance(c).await.unwrap_err().code(),
        ErrorCode::MachineNotFound
    );
    let mut c = create("x");
    c.initial_ctx = Some(json!([1]));
    assert_eq!(
        db.create_instance(c).await.unwrap_err().code(),
        ErrorCode::BadRequest
    );
    let c = create("bad\nid");
    assert_eq!(
        db.create_instance(c).await.unwrap_err().code(),
        ErrorCode::BadRequest
    );
}

#[tokio::test]
async fn generated_ids_are_uuid_v7_in_creation_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let mut c = create("unused");
        c.instance_id = None;
        ids.push(db.create_instance(c).await.unwrap().instance_id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for id in &ids {
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "7", "version nibble of {id}");
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
}

#[tokio::test]
async fn conflict_checks() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    let c = db.create_instance(create("o")).await.unwrap();
    let mut req = pay("o", 1);
    req.expected_state = Some("paid".into());
    assert_eq!(
        db.apply_event(req).await.unwrap_err().code(),
        ErrorCode::Conflict
    );
    let mut req = pay("o", 1);
    req.expected_wal_offset = Some(c.wal_offset + 100);
    assert_eq!(
        db.apply_event(req).await.unwrap_err().code(),
        ErrorCode::Conflict
    );
    let mut req = pay("o", 1);
    req.expected_wal_offset = Some(c.wal_offset);
    req.expected_state = Some("pending".into());
    assert!(db.apply_event(req).await.is_ok());
}

#[tokio::test]
async fn concurrent_applies_with_expected_state_admit_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    db.create_instance(create("race")).await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..16 {
        let db = db.clone();
        handles.push(tokio::spawn(async move {
            let mut req = pay("race", 3);
            req.expected_state = Some("pending".into());
            db.apply_event(req).await
        }));
    }
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), ErrorCode::Conflict),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn concurrent_creates_of_one_id_admit_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    let mut handles = Vec::new();
    for _ in 0..16 {
        let db = db.clone();
        handles.push(tokio::spawn(async move {
            db.create_instance(create("same")).await
        }));
    }
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), ErrorCode::InstanceExists),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn idempotent_apply_replays_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    db.create_instance(create("o")).await.unwrap();
    let mut req = pay("o", 7);
    req.idempotency_key = Some("k1".into());
    let first = db.apply_event(req.clone()).await.unwrap();
    let end = db.last_offset();
    let again = db.apply_event(req.clone()).await.unwrap();
    assert!(!again.applied);
    assert_eq!(again.wal_offset, first.wal_offset);
    assert_eq!(again.ctx, first.ctx);
    assert_eq!(db.last_offset(), end, "a replay writes nothing");
    let mut different = req.clone();
    different.payload = Some(json!({"amount": 8}));
    let e = db.apply_event(different).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict);
    assert_eq!(e.details()["reason"], "idempotency_key_reused");
}

#[tokio::test]
async fn idempotent_create_and_delete_replay() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    let mut c = create("unused");
    c.instance_id = None;
    c.idempotency_key = Some("create-1".into());
    let first = db.create_instance(c.clone()).await.unwrap();
    let again = db.create_instance(c.clone()).await.unwrap();
    assert_eq!(first, again, "generated id and offset come back");
    c.initial_ctx = Some(json!({"other": true}));
    assert_eq!(
        db.create_instance(c).await.unwrap_err().code(),
        ErrorCode::Conflict
    );

    let del = DeleteInstance {
        instance_id: first.instance_id.clone(),
        idempotency_key: Some("del-1".into()),
    };
    let d1 = db.delete_instance(del.clone()).await.unwrap();
    let d2 = db.delete_instance(del).await.unwrap();
    assert_eq!(d1, d2);
}

#[tokio::test]
async fn idempotency_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = pay("o", 7);
    req.idempotency_key = Some("k1".into());
    let first = {
        let db = open_with_order(dir.path()).await;
        db.create_instance(create("o")).await.unwrap();
        let first = db.apply_event(req.clone()).await.unwrap();
        db.close().await.unwrap();
        first
    };
    let db = Database::open(config(dir.path())).unwrap();
    let again = db.apply_event(req).await.unwrap();
    assert!(!again.applied);
    assert_eq!(again.wal_offset, first.wal_offset);
}

#[tokio::test]
async fn expired_idempotency_keys_are_purged_at_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.idempotency_ttl = Duration::from_millis(1);
    let db = Database::open(cfg).unwrap();
    db.put_machine("order", 1, &order_def()).await.unwrap();
    db.create_instance(create("o")).await.unwrap();
    let mut req = ApplyEvent {
        instance_id: "o".into(),
        event: "CANCEL".into(),
        idempotency_key: Some("k".into()),
        ..Default::default()
    };
    db.apply_event(req.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cp = db.checkpoint().await.unwrap();
    assert_eq!(cp.idempotency_purged, 1);
    // The key is free again: the same request is a new apply (and fails: no transition).
    req.expected_state = None;
    assert_eq!(
        db.apply_event(req).await.unwrap_err().code(),
        ErrorCode::InvalidTransition
    );
}

#[tokio::test]
async fn atomic_batch_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    let before = db.last_offset();
    let failed = db
        .batch(
            BatchMode::Atomic,
            vec![
                BatchOp::Create(create("b1")),
                BatchOp::Apply(pay("b1", 5)),
                BatchOp::Apply(pay("missing", 5)),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(failed.index, 2);
    assert_eq!(failed.op, "APPLY_EVENT");
    assert_eq!(failed.error.code(), ErrorCode::InstanceNotFound);
    assert_eq!(db.last_offset(), before, "nothing written");
    assert_eq!(
        db.get_instance("b1").unwrap_err().code(),
        ErrorCode::InstanceNotFound
    );

    let out = db
        .batch(
            BatchMode::Atomic,
            vec![
                BatchOp::Create(create("b1")),
                BatchOp::Apply(pay("b1", 5)),
                BatchOp::Get {
                    instance_id: "b1".into(),
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        db.last_offset(),
        before + 1,
        "one WAL record for the whole batch"
    );
    let Ok(BatchOutput::Instance(i)) = &out[2] else {
        panic!("third result should be the instance: {out:?}")
    };
    assert_eq!(i.state, "paid", "later ops see earlier ops' effects");
    let Ok(BatchOutput::Applied(a)) = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(a.wal_offset, before + 1);
}

#[tokio::test]
async fn best_effort_batch_reports_each_op() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    let out = db
        .batch(
            BatchMode::BestEffort,
            vec![
                BatchOp::Create(create("e1")),
                BatchOp::Apply(pay("nope", 1)),
                BatchOp::Create(create("e2")),
            ],
        )
        .await
        .unwrap();
    assert!(out[0].is_ok());
    assert_eq!(
        out[1].as_ref().unwrap_err().code(),
        ErrorCode::InstanceNotFound
    );
    assert!(out[2].is_ok());
    assert!(db.get_instance("e2").is_ok());
}

#[tokio::test]
async fn batch_size_is_limited() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    let ops = (0..101)
        .map(|i| BatchOp::Create(create(&format!("x{i}"))))
        .collect();
    let e = db.batch(BatchMode::BestEffort, ops).await.unwrap_err();
    assert_eq!(e.error.code(), ErrorCode::BadRequest);
}

async fn populate_for_listing(db: &Database) {
    for i in [5, 3, 9, 1, 7, 2, 8, 4, 6, 0] {
        db.create_instance(create(&format!("id-{i}")))
            .await
            .unwrap();
    }
    for i in [1, 3, 5, 7, 9] {
        db.apply_event(pay(&format!("id-{i}"), 1)).await.unwrap();
    }
    db.delete_instance(DeleteInstance {
        instance_id: "id-0".into(),
        idempotency_key: None,
    })
    .await
    .unwrap();
}

fn ids(page: &rstmdb_storage::InstancePage) -> Vec<&str> {
    page.instances.iter().map(|i| i.id.as_str()).collect()
}

/// `tombstone`: whether the deleted `id-0` is still held (checkpoints purge tombstones).
async fn check_listing(db: &Database, tombstone: bool) {
    let all = db
        .list_instances(&ListQuery {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        ids(&all),
        [
            "id-1", "id-2", "id-3", "id-4", "id-5", "id-6", "id-7", "id-8", "id-9"
        ]
    );
    assert_eq!(all.total, 9);
    assert!(!all.has_more);

    let paid = db
        .list_instances(&ListQuery {
            machine: Some("order".into()),
            state: Some("paid".into()),
            limit: 2,
            offset: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids(&paid), ["id-3", "id-5"]);
    assert_eq!(paid.total, 5);
    assert!(paid.has_more);

    let by_machine = db
        .list_instances(&ListQuery {
            machine: Some("order".into()),
            limit: 3,
            after: Some("id-4".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        ids(&by_machine),
        ["id-5", "id-6", "id-7"],
        "merged across states in id order"
    );
    assert_eq!(by_machine.total, 9);

    let pending = db
        .list_instances(&ListQuery {
            state: Some("pending".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids(&pending), ["id-2", "id-4", "id-6", "id-8"]);

    let with_deleted = db
        .list_instances(&ListQuery {
            limit: 2,
            include_deleted: true,
            ..Default::default()
        })
        .unwrap();
    if tombstone {
        assert_eq!(ids(&with_deleted), ["id-0", "id-1"]);
        assert_eq!(with_deleted.total, 10);
    } else {
        assert_eq!(ids(&with_deleted), ["id-1", "id-2"]);
        assert_eq!(with_deleted.total, 9);
    }

    let none = db
        .list_instances(&ListQuery {
            machine: Some("nope".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((none.instances.len(), none.total), (0, 0));
    let zero = db
        .list_instances(&ListQuery {
            limit: 0,
            ..Default::default()
        })
        .unwrap();
    assert!(zero.instances.is_empty() && zero.has_more && zero.total == 9);
}

#[tokio::test]
async fn list_orders_by_id_with_exact_totals_and_paging() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    populate_for_listing(&db).await;
    check_listing(&db, true).await;
}

#[tokio::test]
async fn list_ordering_and_paging_survive_restart_and_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_with_order(dir.path()).await;
        populate_for_listing(&db).await;
        db.close().await.unwrap();
    }
    {
        let db = Database::open(config(dir.path())).unwrap();
        // close() checkpointed, which purged the tombstone.
        check_listing(&db, false).await;
        db.close().await.unwrap();
    }
    // Without the state store, everything comes back from the WAL alone (the delete record
    // is replayed, so the tombstone is back until the next checkpoint).
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let db = Database::open(config(dir.path())).unwrap();
    check_listing(&db, true).await;
}

#[tokio::test]
async fn replay_reproduces_the_state_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let mut cfg = config(dir.path());
        cfg.checkpoint_events_threshold = 0;
        cfg.checkpoint_size_threshold_mb = 0;
        let db = Database::open(cfg).unwrap();
        db.put_machine("order", 1, &order_def()).await.unwrap();
        populate_for_listing(&db).await;
        let mut req = pay("id-2", 4);
        req.idempotency_key = Some("idem".into());
        req.event_id = Some("evt-9".into());
        db.apply_event(req).await.unwrap();
        db.batch(
            BatchMode::Atomic,
            vec![BatchOp::Create(create("z")), BatchOp::Apply(pay("z", 2))],
        )
        .await
        .unwrap();
        let snapshot = (
            all_instances(&db),
            db.list_machines().unwrap(),
            db.last_offset(),
        );
        db.close().await.unwrap();
        snapshot
    };
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let db = Database::open(config(dir.path())).unwrap();
    let after = (
        all_instances(&db),
        db.list_machines().unwrap(),
        db.last_offset(),
    );
    assert_eq!(before, after);
    // Timestamps, event ids and idempotency come back too.
    let mut req = pay("id-2", 4);
    req.idempotency_key = Some("idem".into());
    assert!(!db.apply_event(req).await.unwrap().applied);
}

#[tokio::test]
async fn checkpoint_and_restart_keep_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.wal_segment_size_mb = 1;
    cfg.wal_retention_mb = 0;
    let before = {
        let db = Database::open(cfg.clone()).unwrap();
        db.put_machine("order", 1, &order_def()).await.unwrap();
        let big = "x".repeat(20_000);
        for i in 0..200 {
            let mut c = create(&format!("c{i:03}"));
            c.initial_ctx = Some(json!({"blob": big}));
            db.create_instance(c).await.unwrap();
        }
        db.delete_instance(DeleteInstance {
            instance_id: "c000".into(),
            idempotency_key: None,
        })
        .await
        .unwrap();
        let cp = db.checkpoint().await.unwrap();
        assert!(cp.segments_deleted >= 2, "old segments are deleted: {cp:?}");
        assert_eq!(cp.tombstones_purged, 1);
        let snap = all_instances(&db);
        db.close().await.unwrap();
        snap
    };
    let db = Database::open(cfg).unwrap();
    assert_eq!(all_instances(&db), before);
    assert_eq!(
        before.len(),
        199,
        "the tombstone is gone, everything else is there"
    );
    assert_eq!(
        db.get_machine("order", 1).unwrap().machine,
        "order",
        "machines survive compaction"
    );
    let stats = db.wal_stats().await.unwrap();
    assert!(stats.earliest_offset.unwrap_or(0) > 1);
    assert_eq!(stats.latest_offset, 202);
}

#[tokio::test]
async fn automatic_checkpoint_fires_on_the_event_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.checkpoint_events_threshold = 20;
    let db = Database::open(cfg).unwrap();
    db.put_machine("order", 1, &order_def()).await.unwrap();
    for i in 0..30 {
        db.create_instance(create(&format!("a{i}"))).await.unwrap();
    }
    let mut checkpoint = 0;
    for _ in 0..100 {
        checkpoint = db.wal_stats().await.unwrap().checkpoint_offset;
        if checkpoint > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(checkpoint >= 20, "checkpoint offset {checkpoint}");
}

#[tokio::test]
async fn automatic_checkpoint_fires_on_the_size_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.checkpoint_events_threshold = 0;
    cfg.checkpoint_size_threshold_mb = 1;
    let db = Database::open(cfg).unwrap();
    db.put_machine("order", 1, &order_def()).await.unwrap();
    for i in 0..60 {
        let mut c = create(&format!("s{i}"));
        c.initial_ctx = Some(json!({"pad": "q".repeat(20_000)}));
        db.create_instance(c).await.unwrap();
    }
    let mut checkpoint = 0;
    for _ in 0..100 {
        checkpoint = db.wal_stats().await.unwrap().checkpoint_offset;
        if checkpoint > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        checkpoint >= 50,
        "checkpoint offset {checkpoint} after ~1.2 MiB of WAL"
    );
}

#[tokio::test]
async fn wal_read_pages_with_next_offset() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    for i in 0..5 {
        db.create_instance(create(&format!("w{i}"))).await.unwrap();
    }
    let page = db.wal_read(1, Some(2)).unwrap();
    assert_eq!(page.records.len(), 2);
    assert_eq!(page.records[0].offset, 1);
    assert_eq!(page.records[0].entry["type"], "put_machine");
    assert_eq!(page.next_offset, Some(3));
    let page = db.wal_read(3, None).unwrap();
    assert_eq!(page.records.len(), 4);
    assert_eq!(page.records[0].entry["type"], "create_instance");
    assert_eq!(page.records[0].entry["instance_id"], "w1");
    let end = db.wal_read(7, None).unwrap();
    assert!(end.records.is_empty());
    assert_eq!(end.next_offset, None);
    assert!(db.wal_read(1, Some(0)).unwrap().records.is_empty());
}

#[tokio::test]
async fn watch_resumes_from_an_offset_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    db.create_instance(create("w1")).await.unwrap();
    db.create_instance(create("w2")).await.unwrap();
    let first = db.apply_event(pay("w1", 1)).await.unwrap();
    db.apply_event(pay("w2", 1)).await.unwrap();
    let mut stream = db.watch(Some(first.wal_offset)).unwrap();
    let mut live = db.watch(None).unwrap();
    db.batch(
        BatchMode::Atomic,
        vec![
            BatchOp::Apply(ApplyEvent {
                instance_id: "w1".into(),
                event: "SHIP".into(),
                ..Default::default()
            }),
            BatchOp::Apply(ApplyEvent {
                instance_id: "w2".into(),
                event: "SHIP".into(),
                ..Default::default()
            }),
        ],
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap();
        seen.push((ev.instance_id.clone(), ev.event.clone(), ev.wal_offset));
    }
    let base = first.wal_offset;
    assert_eq!(
        seen,
        [
            ("w1".to_string(), "PAY".to_string(), base),
            ("w2".to_string(), "PAY".to_string(), base + 1),
            ("w1".to_string(), "SHIP".to_string(), base + 2),
            ("w2".to_string(), "SHIP".to_string(), base + 2),
        ]
    );
    // The live-only stream sees just the batch.
    let ev = live.next().await.unwrap();
    assert_eq!((ev.event.as_str(), ev.wal_offset), ("SHIP", base + 2));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), stream.next())
            .await
            .is_err(),
        "no duplicates"
    );
}

/// Events are built only while someone subscribes; a watcher that arrives while writes are
/// in flight (the subscriber count going from 0 to 1) must still see every later event, in
/// order, exactly as a replay of the WAL shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_arriving_mid_stream_see_exactly_what_the_wal_holds() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    let mut writers = Vec::new();
    for w in 0..4 {
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..150 {
                let id = format!("t{w}-{i}");
                db.create_instance(create(&id)).await.unwrap();
                db.apply_event(pay(&id, 1)).await.unwrap();
                db.apply_event(ApplyEvent {
                    instance_id: id.clone(),
                    event: "SHIP".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        }));
    }
    let mut observed = Vec::new();
    while !writers.iter().all(|w| w.is_finished()) && observed.len() < 40 {
        let from = db.last_offset() + 1;
        let mut live = db.watch(Some(from)).unwrap();
        let mut got = Vec::new();
        while got.len() < 20 {
            match tokio::time::timeout(Duration::from_secs(2), live.next()).await {
                Ok(ev) => {
                    let ev = ev.unwrap();
                    got.push((ev.wal_offset, ev.instance_id.clone(), ev.event.clone()));
                }
                Err(_) => break, // the writers are done
            }
        }
        drop(live); // back to no subscribers
        observed.push((from, got));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        observed.iter().filter(|(_, got)| got.len() == 20).count() >= 3,
        "too few watchers saw events while the writers ran: {}",
        observed.len()
    );
    for (from, got) in observed {
        // The same range, now wholly in the past, comes from the WAL alone.
        let mut replay = db.watch(Some(from)).unwrap();
        let mut want = Vec::new();
        while want.len() < got.len() {
            let ev = tokio::time::timeout(Duration::from_secs(5), replay.next())
                .await
                .unwrap()
                .unwrap();
            want.push((ev.wal_offset, ev.instance_id.clone(), ev.event.clone()));
        }
        assert_eq!(got, want, "watcher from offset {from}");
    }
}

#[tokio::test]
async fn watch_from_a_compacted_offset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.wal_segment_size_mb = 1;
    cfg.wal_retention_mb = 0;
    let db = Database::open(cfg).unwrap();
    db.put_machine("order", 1, &order_def()).await.unwrap();
    for i in 0..120 {
        let mut c = create(&format!("c{i}"));
        c.initial_ctx = Some(json!({"blob": "y".repeat(20_000)}));
        db.create_instance(c).await.unwrap();
    }
    db.checkpoint().await.unwrap();
    let e = db.watch(Some(1)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
}

#[tokio::test]
async fn flush_all_is_gated_and_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_order(dir.path()).await;
    db.create_instance(create("f")).await.unwrap();
    assert_eq!(
        db.flush_all().await.unwrap_err().code(),
        ErrorCode::BadRequest
    );
    db.close().await.unwrap();

    let mut cfg = config(dir.path());
    cfg.allow_flush_all = true;
    let db = Database::open(cfg.clone()).unwrap();
    let counts = db.flush_all().await.unwrap();
    assert_eq!((counts.instances_removed, counts.machines_removed), (1, 1));
    assert!(db.list_machines().unwrap().is_empty());
    assert_eq!(
        db.get_instance("f").unwrap_err().code(),
        ErrorCode::InstanceNotFound
    );
    db.put_machine("order", 1, &order_def()).await.unwrap();
    db.create_instance(create("after")).await.unwrap();
    db.close().await.unwrap();
    // After restart (and after a full replay) the flush still holds.
    for wipe_state in [false, true] {
        if wipe_state {
            std::fs::remove_dir_all(dir.path().join("state")).unwrap();
        }
        let db = Database::open(cfg.clone()).unwrap();
        assert_eq!(
            db.get_instance("f").unwrap_err().code(),
            ErrorCode::InstanceNotFound
        );
        assert!(db.get_instance("after").is_ok());
        assert_eq!(db.list_machines().unwrap().len(), 1);
        db.close().await.unwrap();
    }
}

#[tokio::test]
async fn flush_all_as_a_batch_element_in_either_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.allow_flush_all = true;
    let db = Database::open(cfg).unwrap();
    db.put_machine("order", 1, &order_def()).await.unwrap();
    db.create_instance(create("a")).await.unwrap();
    let get = |id: &str| BatchOp::Get {
        instance_id: id.into(),
    };

    // Atomic: a write before the flush is refused, an op after it fails as on an empty
    // database; nothing is written either way.
    let last = db.last_offset();
    let f = db
        .batch(
            BatchMode::Atomic,
            vec![BatchOp::Create(create("b")), BatchOp::FlushAll],
        )
        .await
        .unwrap_err();
    assert_eq!(
        (f.index, f.op, f.error.code()),
        (0, "CREATE_INSTANCE", ErrorCode::BadRequest)
    );
    let f = db
        .batch(BatchMode::Atomic, vec![BatchOp::FlushAll, get("a")])
        .await
        .unwrap_err();
    assert_eq!((f.index, f.error.code()), (1, ErrorCode::InstanceNotFound));
    assert_eq!(db.last_offset(), last);
    assert!(db.get_instance("a").is_ok());

    // Atomic: read, then flush, as one record.
    let out = db
        .batch(BatchMode::Atomic, vec![get("a"), BatchOp::FlushAll])
        .await
        .unwrap();
    assert!(matches!(&out[0], Ok(BatchOutput::Instance(i)) if i.id == "a"));
    let Ok(BatchOutput::Flushed(f)) = &out[1] else {
        panic!("{out:?}");
    };
    assert_eq!(
        (f.instances_removed, f.machines_removed, f.wal_offset),
        (1, 1, last + 1)
    );
    assert_eq!(db.last_offset(), last + 1);
    assert!(db.list_machines().unwrap().is_empty());

    // Best effort: in its place, its own record; the ops after it see the empty database.
    db.put_machine("order", 1, &order_def()).await.unwrap();
    let out = db
        .batch(
            BatchMode::BestEffort,
            vec![BatchOp::Create(create("c")), BatchOp::FlushAll, get("c")],
        )
        .await
        .unwrap();
    assert!(matches!(&out[0], Ok(BatchOutput::Created(_))));
    let Ok(BatchOutput::Flushed(f)) = &out[1] else {
        panic!("{out:?}");
    };
    assert_eq!((f.instances_removed, f.machines_removed), (1, 1));
    assert_eq!(f.wal_offset, db.last_offset());
    assert_eq!(
        out[2].as_ref().unwrap_err().code(),
        ErrorCode::InstanceNotFound
    );
}

#[tokio::test]
async fn ctx_limit_applies_after_merge() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_ctx_bytes = 100;
    let db = Database::open(cfg).unwrap();
    db.put_machine("order", 1, &order_def()).await.unwrap();
    db.create_instance(create("c")).await.unwrap();
    let mut req = pay("c", 1);
    req.payload = Some(json!({"amount": 1, "pad": "p".repeat(200)}));
    assert_eq!(
        db.apply_event(req).await.unwrap_err().code(),
        ErrorCode::BadRequest
    );
}

#[tokio::test]
async fn every_fsync_policy_commits_and_survives_clean_restart() {
    for policy in [
        FsyncPolicy::EveryWrite,
        FsyncPolicy::EveryN(3),
        FsyncPolicy::EveryMs(5),
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.fsync_policy = policy;
        {
            let db = Database::open(cfg.clone()).unwrap();
            db.put_machine("order", 1, &order_def()).await.unwrap();
            for i in 0..10 {
                db.create_instance(create(&format!("p{i}"))).await.unwrap();
            }
            db.close().await.unwrap();
        }
        let db = Database::open(cfg).unwrap();
        assert_eq!(all_instances(&db).len(), 10, "{policy:?}");
    }
}
