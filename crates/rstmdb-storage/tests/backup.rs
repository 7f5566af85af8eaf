//! Online backup under concurrent writes, checkpoints racing the backup, offline restore and
//! point-in-time recovery through archived WAL segments, in process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rstmdb_backup::Record;
use rstmdb_storage::backup::restore;
use rstmdb_storage::{
    ApplyEvent, CreateInstance, Database, DeleteInstance, ListQuery, RestoreOptions, RestoreTarget,
    StorageConfig,
};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Per instance: (offset, Some((state, ctx))) after each acknowledged write, None = deleted.
type History = BTreeMap<String, Vec<(u64, Option<(String, Map<String, Value>)>)>>;

fn config(dir: &Path, archive: Option<&Path>) -> StorageConfig {
    StorageConfig {
        wal_segment_size_mb: 1,
        wal_retention_mb: 0,
        checkpoint_events_threshold: 0,
        checkpoint_size_threshold_mb: 0,
        wal_archive_dir: archive.map(Path::to_path_buf),
        ..StorageConfig::new(dir)
    }
}

async fn put_flip(db: &Database) {
    db.put_machine(
        "flip",
        1,
        &json!({"states": ["a", "b"], "initial": "a", "transitions": [
            {"from": "a", "event": "T", "to": "b"}, {"from": "b", "event": "T", "to": "a"}]}),
    )
    .await
    .unwrap();
}

async fn open(dir: &Path, archive: Option<&Path>) -> Database {
    let db = Database::open(config(dir, archive)).unwrap();
    put_flip(&db).await;
    db
}

static KEYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writer `w`: creates its instances, applies events, deletes every fifth instance and
/// recreates it, recording every acknowledged result.
async fn writer(db: Database, w: usize, rounds: usize, hist: Arc<Mutex<History>>) {
    let pad = "x".repeat(1000);
    for r in 0..rounds {
        let id = format!("w{w}-i{}", r % 7);
        let exists = db.get_instance(&id).is_ok();
        let (off, val) = if !exists {
            let c = db
                .create_instance(CreateInstance {
                    instance_id: Some(id.clone()),
                    machine: "flip".into(),
                    version: 1,
                    initial_ctx: Some(json!({"w": w, "r": r, "pad": pad})),
                    idempotency_key: Some(format!(
                        "k-{}",
                        KEYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    )),
                })
                .await
                .unwrap();
            let i = db.get_instance(&id).unwrap();
            (c.wal_offset, Some((i.state, i.ctx)))
        } else if r % 5 == 4 {
            let d = db
                .delete_instance(DeleteInstance {
                    instance_id: id.clone(),
                    idempotency_key: None,
                })
                .await
                .unwrap();
            (d.wal_offset, None)
        } else {
            let a = db
                .apply_event(ApplyEvent {
                    instance_id: id.clone(),
                    event: "T".into(),
                    payload: Some(json!({"r": r})),
                    ..Default::default()
                })
                .await
                .unwrap();
            (a.wal_offset, Some((a.to_state, a.ctx)))
        };
        hist.lock().unwrap().entry(id).or_default().push((off, val));
    }
}

/// Live instances at offset `n` according to the acknowledged history.
fn expected_at(hist: &History, n: u64) -> BTreeMap<String, (String, Map<String, Value>)> {
    let mut out = BTreeMap::new();
    for (id, h) in hist {
        if let Some((_, Some(v))) = h.iter().filter(|(o, _)| *o <= n).max_by_key(|(o, _)| *o) {
            out.insert(id.clone(), v.clone());
        }
    }
    out
}

fn live(db: &Database) -> BTreeMap<String, (String, Map<String, Value>)> {
    db.list_instances(&ListQuery {
        limit: 1000,
        ..Default::default()
    })
    .unwrap()
    .instances
    .into_iter()
    .map(|i| {
        let full = db.get_instance(&i.id).unwrap();
        (i.id, (full.state, full.ctx))
    })
    .collect()
}

async fn export(db: &Database) -> (Vec<Record>, rstmdb_storage::BackupExport) {
    let db2 = db.clone();
    tokio::task::spawn_blocking(move || {
        let mut recs = Vec::new();
        let ex = db2
            .backup_export(&mut |r| {
                // A slow destination: the writers get ahead while the export runs.
                std::thread::sleep(std::time::Duration::from_micros(300));
                recs.push(r.clone());
                Ok(())
            })
            .unwrap();
        (recs, ex)
    })
    .await
    .unwrap()
}

fn restore_to(
    recs: &[Record],
    ex: &rstmdb_storage::BackupExport,
    dir: &Path,
    target: RestoreTarget,
    archive: Option<&Path>,
) -> Result<rstmdb_storage::RestoreReport, String> {
    restore_with_key(recs, ex, dir, target, archive, None)
}

fn restore_with_key(
    recs: &[Record],
    ex: &rstmdb_storage::BackupExport,
    dir: &Path,
    target: RestoreTarget,
    archive: Option<&Path>,
    wal_archive_key: Option<rstmdb_storage::EncryptionKey>,
) -> Result<rstmdb_storage::RestoreReport, String> {
    // `restore` runs its own runtime: not on an async worker.
    let (recs, base, end) = (recs.to_vec(), ex.base_offset, ex.wal_end);
    let opts = RestoreOptions {
        data_dir: dir.to_path_buf(),
        target,
        wal_archive: archive.map(Path::to_path_buf),
        wal_archive_key,
        wal_segment_size_mb: 1,
    };
    std::thread::spawn(move || restore(recs.into_iter().map(Ok), base, end, &opts))
        .join()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_under_writes_and_checkpoints_restores_the_state_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), None).await;
    let hist = Arc::new(Mutex::new(History::new()));
    let keyed = CreateInstance {
        instance_id: Some("keyed".into()),
        machine: "flip".into(),
        version: 1,
        initial_ctx: Some(json!({"k": 1})),
        idempotency_key: Some("one-key".into()),
    };
    let first = db.create_instance(keyed.clone()).await.unwrap();
    hist.lock().unwrap().insert(
        "keyed".into(),
        vec![(
            first.wal_offset,
            Some(("a".into(), json!({"k": 1}).as_object().unwrap().clone())),
        )],
    );
    // Some state before the backup starts.
    for w in 0..4 {
        writer(db.clone(), w, 30, hist.clone()).await;
    }
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(writer(db.clone(), w, 400, hist.clone())))
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cp = {
        let (db, stop) = (db.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                db.checkpoint().await.unwrap();
                n += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            n
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (recs, ex) = export(&db).await;
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(cp.await.unwrap() > 0);
    assert!(
        ex.wal_end > ex.base_offset,
        "writes ran during the backup: {ex:?}"
    );
    assert!(
        ex.wal_end < db.last_offset(),
        "writes went on after it: {ex:?}"
    );

    let out = tempfile::tempdir().unwrap();
    let rep = restore_to(&recs, &ex, out.path(), RestoreTarget::End, None).unwrap();
    assert_eq!(rep.restored_to, ex.wal_end);
    let restored = Database::open(config(out.path(), None)).unwrap();
    let h = hist.lock().unwrap().clone();
    assert_eq!(live(&restored), expected_at(&h, ex.wal_end));
    assert_eq!(restored.last_offset(), ex.wal_end);
    // The restored database keeps numbering after the backup's end.
    let c = restored
        .create_instance(CreateInstance {
            instance_id: Some("after".into()),
            machine: "flip".into(),
            version: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(c.wal_offset, ex.wal_end + 1);
    // An idempotency key from before the backup still replays.
    let again = restored.create_instance(keyed).await.unwrap();
    assert_eq!(
        again.wal_offset, first.wal_offset,
        "replayed, not created again"
    );
    restored.close().await.unwrap();

    // Errors: a non-empty directory, an offset before the backup's end.
    assert!(restore_to(&recs, &ex, out.path(), RestoreTarget::End, None).is_err());
    let o2 = tempfile::tempdir().unwrap();
    let err = restore_to(
        &recs,
        &ex,
        o2.path(),
        RestoreTarget::Offset(ex.wal_end - 1),
        None,
    )
    .unwrap_err();
    assert!(err.contains("before the backup's end"), "{err}");
    // A time before records inside the backup's WAL part: no exact state either.
    let err = restore_to(&recs, &ex, o2.path(), RestoreTarget::Time(0), None).unwrap_err();
    assert!(err.contains("before the backup's end"), "{err}");
    assert_eq!(
        std::fs::read_dir(o2.path()).unwrap().count(),
        0,
        "left files behind"
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pitr_through_the_archive_reproduces_the_state_at_each_offset() {
    let dir = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let db = open(dir.path(), Some(archive.path())).await;
    let hist = Arc::new(Mutex::new(History::new()));
    writer(db.clone(), 0, 50, hist.clone()).await;
    let (recs, ex) = export(&db).await;
    // Many more writes, checkpointed so that segments move to the archive.
    for round in 0..4 {
        let ws: Vec<_> = (0..3)
            .map(|w| tokio::spawn(writer(db.clone(), w, 600, hist.clone())))
            .collect();
        for w in ws {
            w.await.unwrap();
        }
        let cp = db.checkpoint().await.unwrap();
        assert!(round < 3 || cp.segments_deleted > 0 || cp.wal_segments > 0);
    }
    let last = db.last_offset();
    let archived = std::fs::read_dir(archive.path()).unwrap().count();
    assert!(
        archived >= 2,
        "segments reached the archive before deletion: {archived}"
    );
    let earliest = db.wal_stats().await.unwrap().earliest_offset.unwrap();
    assert!(
        earliest > ex.wal_end,
        "the live WAL no longer holds the backup's tail"
    );
    // The archive plus the live WAL's segments cover everything after the backup: copy the
    // live ones in too (as an operator would after losing the data dir but not the archive
    // ... here the archive alone must reach `earliest - 1`).
    let h = hist.lock().unwrap().clone();
    for n in [
        ex.wal_end,
        ex.wal_end + 1,
        (ex.wal_end + earliest) / 2,
        earliest - 1,
    ] {
        let out = tempfile::tempdir().unwrap();
        let rep = restore_to(
            &recs,
            &ex,
            out.path(),
            RestoreTarget::Offset(n),
            Some(archive.path()),
        )
        .unwrap();
        assert_eq!(rep.restored_to, n);
        let r = Database::open(config(out.path(), None)).unwrap();
        assert_eq!(live(&r), expected_at(&h, n), "state at offset {n}");
        r.close().await.unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let err = restore_to(
        &recs,
        &ex,
        out.path(),
        RestoreTarget::Offset(last + 10),
        Some(archive.path()),
    )
    .unwrap_err();
    assert!(err.contains("beyond"), "{err}");

    // The archive plus the live segments (overlapping, the newest torn by 3 bytes): up to the
    // last whole record.
    let full = tempfile::tempdir().unwrap();
    for d in [archive.path().to_path_buf(), dir.path().join("wal")] {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "wal") {
                std::fs::copy(&p, full.path().join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    let mut names: Vec<_> = std::fs::read_dir(full.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let newest = names.last().unwrap();
    let len = std::fs::metadata(newest).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(newest)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let rep = restore_to(
        &recs,
        &ex,
        out.path(),
        RestoreTarget::End,
        Some(full.path()),
    )
    .unwrap();
    assert_eq!(rep.restored_to, last - 1);
    let r = Database::open(config(out.path(), None)).unwrap();
    assert_eq!(live(&r), expected_at(&h, last - 1));
    r.close().await.unwrap();
    db.close().await.unwrap();
}

/// Checkpoints that run while a backup exports must keep the WAL segments the backup still
/// has to copy (retention 0 would delete them otherwise); once it is done they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_backup_pins_the_wal_it_still_needs() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), None).await;
    let hist = Arc::new(Mutex::new(History::new()));
    writer(db.clone(), 0, 20, hist.clone()).await;
    let db2 = db.clone();
    let h2 = hist.clone();
    let handle = tokio::runtime::Handle::current();
    let (recs, ex, during) = tokio::task::spawn_blocking(move || {
        let mut recs = Vec::new();
        let mut during = None;
        let ex = db2
            .backup_export(&mut |r| {
                if during.is_none() && matches!(r, Record::Instance { .. }) {
                    // Mid-export: about 3 MB of writes (several 1 MB segments), then a
                    // checkpoint with no retention.
                    during = Some(handle.block_on(async {
                        for w in 1..4 {
                            writer(db2.clone(), w, 700, h2.clone()).await;
                        }
                        db2.checkpoint().await.unwrap()
                    }));
                }
                recs.push(r.clone());
                Ok(())
            })
            .unwrap();
        (recs, ex, during.unwrap())
    })
    .await
    .unwrap();
    // Every segment holds a record after the backup's pin, so none may go.
    assert!(
        during.wal_segments >= 3,
        "the writes filled several segments: {during:?}"
    );
    assert_eq!(during.segments_deleted, 0, "{during:?}");
    assert!(ex.counts.wal_records >= 2100, "{ex:?}");
    let after = db.checkpoint().await.unwrap();
    assert!(
        after.segments_deleted >= 2,
        "released after the backup: {after:?}"
    );

    let out = tempfile::tempdir().unwrap();
    restore_to(&recs, &ex, out.path(), RestoreTarget::End, None).unwrap();
    let r = Database::open(config(out.path(), None)).unwrap();
    assert_eq!(live(&r), expected_at(&hist.lock().unwrap(), ex.wal_end));
    r.close().await.unwrap();
    db.close().await.unwrap();
}

/// A segment that cannot be archived is not deleted: the checkpoint keeps it, counts the
/// failure, and deletes it once archiving works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_that_cannot_be_archived_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    // A regular file where the archive directory should be: every copy fails.
    let archive = scratch.path().join("archive");
    std::fs::write(&archive, b"not a directory").unwrap();
    let db = open(dir.path(), Some(&archive)).await;
    let hist = Arc::new(Mutex::new(History::new()));
    writer(db.clone(), 0, 2500, hist.clone()).await;
    let cp = db.checkpoint().await.unwrap();
    assert!(cp.wal_segments >= 3, "{cp:?}");
    assert_eq!(
        cp.segments_deleted, 0,
        "deleted without an archive copy: {cp:?}"
    );
    let stats = db.wal_stats().await.unwrap();
    assert_eq!(
        stats.earliest_offset,
        Some(1),
        "the oldest record is still there"
    );
    assert!(stats.archive_failures >= 1, "{stats:?}");
    db.close().await.unwrap();

    // Archiving works again: the next checkpoint copies, then deletes.
    std::fs::remove_file(&archive).unwrap();
    let db = open(dir.path(), Some(&archive)).await;
    let cp = db.checkpoint().await.unwrap();
    assert!(cp.segments_deleted >= 2, "{cp:?}");
    let archived = std::fs::read_dir(&archive).unwrap().count() as u64;
    assert_eq!(archived, cp.segments_deleted);
    db.close().await.unwrap();
}

/// RESTORE_INSTANCE's view of a backup: the exported record with the backup's WAL replayed
/// over it, skipping what the record already reflects.
#[test]
fn materialize_replays_only_what_the_export_lacks() {
    use rstmdb_storage::backup::materialize_instance;
    let inst = json!({"id": "i", "machine": "flip", "version": 1, "state": "b",
        "ctx": {"n": 5}, "last_wal_offset": 5, "created_at": 1, "updated_at": 5});
    let apply = |n: i64, to: &str| {
        json!({"type": "apply_event", "instance_id": "i", "machine": "flip", "version": 1,
            "event": "T", "from_state": "x", "to_state": to, "payload": {}, "ctx": {"n": n},
            "updated_at": n})
    };
    // Records at or below 5 are already in the export: an apply at 4 must not win.
    let wal = vec![(4, apply(4, "a")), (6, apply(6, "a"))];
    let got = materialize_instance("i", Some(inst.clone()), &wal)
        .unwrap()
        .unwrap();
    assert_eq!((got.state.as_str(), got.ctx["n"].as_i64()), ("a", Some(6)));
    assert_eq!(got.last_wal_offset, 6);
    // Deleted at the end: nothing to restore.
    let del = json!({"type": "delete_instance", "instance_id": "i", "updated_at": 7});
    let wal = vec![(6, apply(6, "a")), (7, del.clone())];
    assert!(
        materialize_instance("i", Some(inst.clone()), &wal)
            .unwrap()
            .is_none()
    );
    // Deleted, then created again (only in the WAL part), then changed.
    let create = json!({"type": "create_instance", "instance_id": "i", "machine": "flip",
        "version": 1, "initial_state": "a", "initial_ctx": {"n": 0}, "created_at": 8});
    let wal = vec![(7, del), (8, create.clone()), (9, apply(9, "b"))];
    let got = materialize_instance("i", Some(inst.clone()), &wal)
        .unwrap()
        .unwrap();
    assert_eq!((got.state.as_str(), got.ctx["n"].as_i64()), ("b", Some(9)));
    let got = materialize_instance("i", None, &[(8, create)])
        .unwrap()
        .unwrap();
    assert_eq!(got.state, "a");
    // FLUSH_ALL removes it; a record for another instance does not matter.
    let wal = vec![(6, json!({"type": "flush_all", "timestamp": 6}))];
    assert!(
        materialize_instance("i", Some(inst.clone()), &wal)
            .unwrap()
            .is_none()
    );
    // Garbage is refused, not guessed at.
    assert!(materialize_instance("i", Some(json!({"id": 5})), &[]).is_err());
    assert!(materialize_instance("other", Some(inst), &[]).is_err());
    assert!(materialize_instance("i", None, &[(1, json!({"type": "nope"}))]).is_err());
    assert!(materialize_instance("i", None, &[]).unwrap().is_none());
}

/// A backup of an encrypted data directory reads through the decryption layer: the restored
/// (plaintext) directory holds every instance with its context, and the encrypted source is
/// untouched and still opens with its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_database_backs_up_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let key = rstmdb_storage::EncryptionKey::from_bytes([7; 32]);
    let cfg = StorageConfig {
        encryption: Some(key.clone()),
        ..config(dir.path(), None)
    };
    let db = Database::open(cfg.clone()).unwrap();
    put_flip(&db).await;
    for i in 0..20 {
        let id = format!("enc-{i}");
        db.create_instance(CreateInstance {
            instance_id: Some(id.clone()),
            machine: "flip".into(),
            version: 1,
            initial_ctx: Some(json!({"secret": format!("marker-{i}")})),
            idempotency_key: None,
        })
        .await
        .unwrap();
        if i % 2 == 0 {
            db.apply_event(ApplyEvent {
                instance_id: id,
                event: "T".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    }
    let want = live(&db);
    let (recs, ex) = export(&db).await;
    db.close().await.unwrap();

    let target = tempfile::tempdir().unwrap();
    let restored_dir = target.path().join("restored");
    restore_to(&recs, &ex, &restored_dir, RestoreTarget::End, None).unwrap();
    let restored = Database::open(config(&restored_dir, None)).unwrap();
    assert_eq!(live(&restored), want);
    assert_eq!(want.len(), 20);
    restored.close().await.unwrap();

    let again = Database::open(cfg).unwrap();
    assert_eq!(live(&again), want);
    again.close().await.unwrap();
}

/// Replaying an encrypted WAL archive needs the data key of the server that wrote it:
/// without it (or with another key) offline restore refuses, naming the segment, rather than
/// write sealed bytes as records; with it, the restored state is the source's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_archive_replays_only_with_its_data_key() {
    let dir = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let key = rstmdb_storage::EncryptionKey::from_bytes([9; 32]);
    let cfg = StorageConfig {
        encryption: Some(key.clone()),
        ..config(dir.path(), Some(archive.path()))
    };
    let db = Database::open(cfg.clone()).unwrap();
    put_flip(&db).await;
    let (recs, ex) = export(&db).await;
    let pad = "x".repeat(20_000);
    for i in 0..120 {
        db.create_instance(CreateInstance {
            instance_id: Some(format!("a-{i}")),
            machine: "flip".into(),
            version: 1,
            initial_ctx: Some(json!({"pad": pad, "n": i})),
            idempotency_key: None,
        })
        .await
        .unwrap();
    }
    db.checkpoint().await.unwrap();
    let want = live(&db);
    db.close().await.unwrap();
    // Everything after the backup is only in the archive and the live WAL; copy the live
    // segments into the archive too, as an operator recovering a lost disk would.
    for entry in std::fs::read_dir(dir.path().join("wal")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "wal") {
            std::fs::copy(&p, archive.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let target = tempfile::tempdir().unwrap();
    let restore = |name: &str, key: Option<rstmdb_storage::EncryptionKey>| {
        restore_with_key(
            &recs,
            &ex,
            &target.path().join(name),
            RestoreTarget::End,
            Some(archive.path()),
            key,
        )
    };
    let err = restore("no-key", None).unwrap_err();
    assert!(err.contains("archived segment"), "{err}");
    let err = restore(
        "wrong-key",
        Some(rstmdb_storage::EncryptionKey::from_bytes([1; 32])),
    )
    .unwrap_err();
    assert!(err.contains("archived segment"), "{err}");
    let report = restore("right-key", Some(key)).unwrap();
    assert!(report.wal_records_from_archive >= 120, "{report:?}");
    let restored = Database::open(config(&target.path().join("right-key"), None)).unwrap();
    assert_eq!(live(&restored), want);
    assert_eq!(want.len(), 120);
    restored.close().await.unwrap();
}
