//! Damage to the state store's files (sled under `data/state/`): bytes flipped anywhere in
//! them must never panic the engine nor let it serve an instance that differs from what was
//! acknowledged. Either it opens with exactly the acknowledged data, or it refuses to open
//! with an error.

// Test helpers outside #[test] functions may panic: a panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rstmdb_storage::{ApplyEvent, CreateInstance, Database, ListQuery, StorageConfig};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::metadata(&p).unwrap().len() > 0 {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// (state, ctx) of every live instance.
fn snapshot(db: &Database) -> BTreeMap<String, (String, serde_json::Value)> {
    db.list_instances(&ListQuery {
        limit: 1000,
        ..Default::default()
    })
    .unwrap()
    .instances
    .into_iter()
    .map(|i| {
        (
            i.id.clone(),
            (i.state.clone(), serde_json::Value::Object(i.ctx)),
        )
    })
    .collect()
}

async fn build(dir: &Path) -> BTreeMap<String, (String, serde_json::Value)> {
    let db = Database::open(StorageConfig::new(dir)).unwrap();
    let def = json!({"states": ["a", "b"], "initial": "a", "transitions": [
        {"from": "a", "event": "GO", "to": "b"}, {"from": "b", "event": "GO", "to": "a"}]});
    db.put_machine("m", 1, &def).await.unwrap();
    for i in 0..200 {
        db.create_instance(CreateInstance {
            instance_id: Some(format!("i-{i:03}")),
            machine: "m".into(),
            version: 1,
            initial_ctx: Some(json!({"marker": format!("value-{i}")})),
            idempotency_key: None,
        })
        .await
        .unwrap();
        if i % 3 == 0 {
            db.apply_event(ApplyEvent {
                instance_id: format!("i-{i:03}"),
                event: "GO".into(),
                payload: Some(json!({"n": i})),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    }
    // A checkpoint moves everything into the state store and trims the WAL below it, so the
    // state files are the only copy of most of the data.
    db.checkpoint().await.unwrap();
    let snap = snapshot(&db);
    db.close().await.unwrap();
    snap
}

/// Damaged copies made per state file.
const POSITIONS: u64 = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_state_files_never_serve_wrong_data() {
    let pristine = tempfile::tempdir().unwrap();
    let expected = build(pristine.path()).await;
    assert_eq!(expected.len(), 200);
    let state_files = files(&pristine.path().join("state"));
    assert!(!state_files.is_empty());

    let mut opened_exact = 0;
    let mut refused = 0;
    for file in &state_files {
        let len = std::fs::metadata(file).unwrap().len();
        // Evenly spread positions per file, plus the last byte.
        let positions: Vec<u64> = (0..POSITIONS)
            .map(|k| len * k / POSITIONS)
            .chain([len.saturating_sub(1)])
            .collect();
        for &at in &positions {
            let work = tempfile::tempdir().unwrap();
            copy_tree(pristine.path(), work.path());
            let rel = file.strip_prefix(pristine.path()).unwrap();
            let target = work.path().join(rel);
            let mut bytes = std::fs::read(&target).unwrap();
            bytes[at as usize] ^= 0x5a;
            std::fs::write(&target, &bytes).unwrap();
            // Open in a separate task so a panic would be caught and reported here.
            let dir = work.path().to_path_buf();
            let outcome =
                tokio::task::spawn_blocking(move || Database::open(StorageConfig::new(&dir)))
                    .await
                    .unwrap_or_else(|p| {
                        panic!(
                            "opening with {} flipped at {at} panicked: {p:?}",
                            rel.display()
                        )
                    });
            match outcome {
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    refused += 1;
                }
                Ok(db) => {
                    let got = match db.list_instances(&ListQuery {
                        limit: 1000,
                        ..Default::default()
                    }) {
                        Ok(_) => snapshot(&db),
                        Err(_) => {
                            // A read that reports the damage is fine: it served nothing wrong.
                            refused += 1;
                            let _ = db.close().await;
                            continue;
                        }
                    };
                    assert_eq!(
                        got,
                        expected,
                        "{} flipped at byte {at}: the engine opened and served different data",
                        rel.display()
                    );
                    opened_exact += 1;
                    let _ = db.close().await;
                }
            }
        }
    }
    println!(
        "state files: {} damaged copies, {opened_exact} opened with exactly the acknowledged data, {refused} refused",
        state_files.len() * (POSITIONS as usize + 1)
    );
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}
