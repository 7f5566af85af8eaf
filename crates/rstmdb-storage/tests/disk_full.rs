//! The state store's disk fills up while writes go on (the WAL's disk does not): the write
//! whose overlay flush fails is applied and acknowledged, later writes are refused, every read
//! path agrees on what is visible, and a restart holds exactly the acknowledged writes. Found by review: the flush failure used to report a write as failed
//! that readers could already see, and left the instance cache behind the store.
//!
//! Needs root to mount a small tmpfs under `data/state` only; skipped (with a message) when
//! the mount is not permitted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rstmdb_storage::{ApplyEvent, CreateInstance, Database, ListQuery, StorageConfig};
use serde_json::json;
use std::path::{Path, PathBuf};

struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> Option<SmallFs> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs(dir.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else if e.file_name() != "filler" {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn seen(db: &Database) -> ((String, u64), (String, u64)) {
    let via_get = db.get_instance("x").unwrap();
    let via_scan = db
        .list_instances(&ListQuery {
            limit: 10,
            include_deleted: true, // reads the store, not the cache
            ..Default::default()
        })
        .unwrap()
        .instances
        .into_iter()
        .find(|i| i.id == "x")
        .unwrap();
    (
        (via_get.state, via_get.last_wal_offset),
        (via_scan.state, via_scan.last_wal_offset),
    )
}

#[tokio::test]
async fn a_full_state_disk_refuses_later_writes_and_loses_no_acknowledged_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("state")).unwrap();
    let Some(fs) = SmallFs::mount(&data.join("state"), "8m") else {
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
        return;
    };
    let db = Database::open(StorageConfig::new(&data)).unwrap();
    db.put_machine(
        "t",
        1,
        &json!({"states": ["a", "b"], "initial": "a",
                "transitions": [{"from": "a", "event": "T", "to": "b"},
                                {"from": "b", "event": "T", "to": "a"}]}),
    )
    .await
    .unwrap();
    db.create_instance(CreateInstance {
        instance_id: Some("x".into()),
        machine: "t".into(),
        version: 1,
        initial_ctx: Some(json!({})),
        idempotency_key: None,
    })
    .await
    .unwrap();
    db.checkpoint().await.unwrap();
    let filler = data.join("state").join("filler");
    fill(&filler);

    // ~400 KB contexts: the overlay passes its 16 MiB bound every ~40 applies.
    let pad = "p".repeat(400_000);
    let mut last_ok = None;
    let mut refused = false;
    for n in 0..400u64 {
        let r = db
            .apply_event(ApplyEvent {
                instance_id: "x".into(),
                event: "T".into(),
                payload: Some(json!({"n": n, "pad": pad})),
                ..Default::default()
            })
            .await;
        match r {
            Ok(a) => last_ok = Some((n, a.wal_offset)),
            Err(e) => {
                eprintln!("apply {n} refused: {e}");
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "the state store never failed");
    let (n_ok, off_ok) = last_ok.expect("some writes succeeded first");

    // Every read path shows the last acknowledged write, and only it.
    let (via_get, via_scan) = seen(&db);
    assert_eq!(via_get, via_scan, "the cache and the store disagree");
    assert_eq!(
        via_get.1, off_ok,
        "visible is not the last acknowledged write"
    );
    assert_eq!(db.get_instance("x").unwrap().ctx["n"], n_ok);

    // A restart holds exactly the acknowledged writes. sled cannot be closed once its disk
    // filled (its final flush never returns, even after space comes back), so the process is
    // "killed": the handle is leaked and a copy of the data directory, as it is on disk now,
    // is opened — a crash image.
    std::mem::forget(db);
    std::fs::remove_file(&filler).unwrap();
    let copy = tmp.path().join("copy");
    copy_tree(&data, &copy);
    let db = Database::open(StorageConfig::new(&copy)).unwrap();
    let inst = db.get_instance("x").unwrap();
    assert_eq!(
        (inst.last_wal_offset, inst.ctx["n"].as_u64()),
        (off_ok, Some(n_ok))
    );
    db.close().await.unwrap();
    drop(fs);
}
