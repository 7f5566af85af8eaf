//! The decoded-instance cache: it counts hits and misses, and never serves a version older
//! than the one sled holds — under concurrent writers, readers and constant eviction.

// Test helpers outside #[test] functions may panic: a panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rstmdb_core::ErrorCode;
use rstmdb_storage::{ApplyEvent, CreateInstance, Database, DeleteInstance, StorageConfig};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

fn toggle_def() -> serde_json::Value {
    json!({
        "states": ["a", "b"],
        "initial": "a",
        "transitions": [
            {"from": "a", "event": "T", "to": "b"},
            {"from": "b", "event": "T", "to": "a"}
        ]
    })
}

fn create(id: &str, ctx: serde_json::Value) -> CreateInstance {
    CreateInstance {
        instance_id: Some(id.into()),
        machine: "t".into(),
        version: 1,
        initial_ctx: Some(ctx),
        idempotency_key: None,
    }
}

fn tick(id: &str, n: u64) -> ApplyEvent {
    ApplyEvent {
        instance_id: id.into(),
        event: "T".into(),
        payload: Some(json!({"n": n})),
        ..Default::default()
    }
}

#[tokio::test]
async fn lookups_are_counted_and_deletes_and_flushes_leave_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StorageConfig::new(dir.path());
    cfg.allow_flush_all = true;
    let db = Database::open(cfg).unwrap();
    db.put_machine("t", 1, &toggle_def()).await.unwrap();
    db.create_instance(create("x", json!({}))).await.unwrap();
    let before = db.instance_cache_stats();
    assert_eq!(
        before.entries, 1,
        "the create put the instance in the cache"
    );

    // Served from the cache, and it is the committed version.
    let applied = db.apply_event(tick("x", 1)).await.unwrap();
    let got = db.get_instance("x").unwrap();
    assert_eq!(
        (got.state.as_str(), got.last_wal_offset),
        ("b", applied.wal_offset)
    );
    assert_eq!(got.ctx["n"], 1);
    let s = db.instance_cache_stats();
    assert_eq!(
        s.hits - before.hits,
        2,
        "the apply's check and the GET: {s:?}"
    );
    assert_eq!(s.misses, before.misses);

    // Unknown ids are misses.
    assert_eq!(
        db.get_instance("nope").unwrap_err().code(),
        ErrorCode::InstanceNotFound
    );
    assert_eq!(db.instance_cache_stats().misses, before.misses + 1);

    // A deleted instance leaves the cache and is not found.
    db.delete_instance(DeleteInstance {
        instance_id: "x".into(),
        idempotency_key: None,
    })
    .await
    .unwrap();
    assert_eq!(db.instance_cache_stats().entries, 0);
    assert_eq!(
        db.get_instance("x").unwrap_err().code(),
        ErrorCode::InstanceNotFound
    );
    // Re-created, the new version is what reads see.
    db.create_instance(create("x", json!({"again": true})))
        .await
        .unwrap();
    assert_eq!(db.get_instance("x").unwrap().ctx["again"], true);

    db.flush_all().await.unwrap();
    assert_eq!(db.instance_cache_stats().entries, 0);
    assert_eq!(
        db.get_instance("x").unwrap_err().code(),
        ErrorCode::InstanceNotFound
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_cold_read_fills_the_cache_and_a_zero_size_turns_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(StorageConfig::new(dir.path())).unwrap();
    db.put_machine("t", 1, &toggle_def()).await.unwrap();
    db.create_instance(create("x", json!({"k": 1})))
        .await
        .unwrap();
    db.checkpoint().await.unwrap(); // nothing left to replay: the cache starts empty
    db.close().await.unwrap();

    let db = Database::open(StorageConfig::new(dir.path())).unwrap();
    assert_eq!(db.instance_cache_stats().entries, 0);
    assert_eq!(db.get_instance("x").unwrap().ctx["k"], 1); // miss, fills
    assert_eq!(db.get_instance("x").unwrap().ctx["k"], 1); // hit
    let s = db.instance_cache_stats();
    assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));
    db.close().await.unwrap();

    let mut off = StorageConfig::new(dir.path());
    off.instance_cache_mb = 0;
    let db = Database::open(off).unwrap();
    assert_eq!(db.get_instance("x").unwrap().ctx["k"], 1);
    db.apply_event(tick("x", 2)).await.unwrap();
    assert_eq!(db.get_instance("x").unwrap().ctx["n"], 2);
    assert_eq!(db.instance_cache_stats(), Default::default());
    db.close().await.unwrap();
}

/// Writers tick instances while readers GET and LIST them; the cache is far too small for the
/// working set, so entries are evicted and refilled (by locked writers and by readers that
/// find the shard free) all the time. Every read must see at least the version the last
/// acknowledged write produced, reads of one instance never go backwards, and at the end the
/// cached database agrees with the store read with the cache off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_see_an_older_version_than_acknowledged() {
    const INSTANCES: usize = 20;
    const WRITERS: usize = 8;
    const TICKS_PER_WRITER: u64 = 150;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StorageConfig::new(dir.path());
    cfg.instance_cache_mb = 1; // 1 MiB against 20 × ~120 KiB: constant eviction
    let db = Arc::new(Database::open(cfg).unwrap());
    db.put_machine("t", 1, &toggle_def()).await.unwrap();
    let pad = "p".repeat(60_000);
    for i in 0..INSTANCES {
        db.create_instance(create(&format!("i{i:03}"), json!({"pad": pad})))
            .await
            .unwrap();
    }
    // Highest acknowledged offset per instance.
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..INSTANCES).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (db, acked) = (db.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for t in 0..TICKS_PER_WRITER {
                let i = (w * 7919 + t as usize * 31) % INSTANCES;
                let a = db.apply_event(tick(&format!("i{i:03}"), t)).await.unwrap();
                acked[i].fetch_max(a.wal_offset, Ordering::SeqCst);
                if t.is_multiple_of(16) {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..2 {
        let (db, acked, done) = (db.clone(), acked.clone(), done.clone());
        readers.push(tokio::task::spawn_blocking(move || {
            let mut last_seen = [0u64; INSTANCES];
            let mut reads = 0u64;
            let mut k = r;
            while !done.load(Ordering::SeqCst) || reads < 2000 {
                let i = (k * 13) % INSTANCES;
                k += 1;
                let floor = acked[i].load(Ordering::SeqCst);
                let got = db.get_instance(&format!("i{i:03}")).unwrap();
                assert!(
                    got.last_wal_offset >= floor,
                    "instance {i}: read offset {} after offset {floor} was acknowledged",
                    got.last_wal_offset
                );
                assert!(
                    got.last_wal_offset >= last_seen[i],
                    "instance {i} went back"
                );
                last_seen[i] = got.last_wal_offset;
                reads += 1;
                if reads.is_multiple_of(500) {
                    let page = db
                        .list_instances(&rstmdb_storage::ListQuery {
                            limit: 1000,
                            ..Default::default()
                        })
                        .unwrap();
                    assert_eq!(page.instances.len(), INSTANCES);
                }
            }
            reads
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    for r in readers {
        assert!(r.await.unwrap() >= 2000);
    }
    let s = db.instance_cache_stats();
    assert!(s.hits > 0 && s.misses > 0, "{s:?}");
    assert!(s.weight_bytes <= s.capacity_bytes, "{s:?}");

    let seen: HashMap<String, rstmdb_core::Instance> = (0..INSTANCES)
        .map(|i| {
            let id = format!("i{i:03}");
            let inst = db.get_instance(&id).unwrap();
            assert!(
                inst.last_wal_offset >= acked[i].load(Ordering::SeqCst),
                "{id}"
            );
            (id, inst)
        })
        .collect();
    Arc::try_unwrap(db).unwrap().close().await.unwrap();

    let mut off = StorageConfig::new(dir.path());
    off.instance_cache_mb = 0;
    let db = Database::open(off).unwrap();
    for (id, inst) in &seen {
        assert_eq!(&db.get_instance(id).unwrap(), inst, "{id}");
    }
    db.close().await.unwrap();
}
