//! Encryption at rest with the real binary: `storage.encryption.key_file`, no plaintext
//! context anywhere under the data directory, restart after SIGTERM and SIGKILL, startup errors
//! for a wrong, missing or exposed key, a moved WAL record, `rstmdb repair` and `rstmdb rekey`
//! (SECURITY.md "Encryption at rest").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

const MARKER: &str = "MARKER-5d1b62e0-secret";

fn write_key(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, [byte; 32]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn with_key(key: Option<&Path>) -> Value {
    match key {
        Some(k) => json!({"storage": {"encryption": {"key_file": k.to_string_lossy()}}}),
        None => json!({}),
    }
}

/// Rewrites the server's config file so the next (re)start uses `key`.
fn set_key(s: &Server, key: Option<&Path>) {
    let mut cfg = base_config(&s.data_dir());
    merge(&mut cfg, &with_key(key));
    std::fs::write(s.config_path(), to_yaml(&cfg)).unwrap();
}

/// Every file under `dir`, recursively, whose raw bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path.clone());
                let bytes = std::fs::read(&path).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path);
                }
            }
        }
    }
    assert!(
        files
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "wal"))
            && files.iter().any(|p| p.ends_with("state/db")),
        "expected the WAL and sled files under {}: {files:?}",
        dir.display()
    );
    hits
}

/// Machines, 10 checkpointed instances (a*) and 10 left in the WAL tail (b*), each created
/// with the marker in its context and paid; a counter `k` with 6 increments in the tail.
/// Returns every acknowledged instance with its GET_INSTANCE answer.
fn fill(c: &mut Client) -> Vec<(String, Value)> {
    put_order(c, "order");
    put_counter(c, "ctr");
    let mut ids = Vec::new();
    for prefix in ["a", "b"] {
        for i in 0..10 {
            let id = format!("{prefix}{i}");
            create(c, "order", &id, json!({"secret": format!("{MARKER}-{id}")}));
            apply(c, &id, "PAY", json!({"note": MARKER}));
            ids.push(id);
        }
        if prefix == "a" {
            let r = c.ok("COMPACT", json!({}));
            assert!(r.is_object(), "{r}");
        }
    }
    create(c, "ctr", "k", json!({"n": 0}));
    for n in 1..=6 {
        apply(c, "k", "inc", json!({"n": n}));
    }
    ids.push("k".into());
    ids.into_iter()
        .map(|id| {
            let v = c.ok("GET_INSTANCE", json!({"instance_id": id}));
            (id, v)
        })
        .collect()
}

fn assert_all_there(c: &mut Client, acked: &[(String, Value)]) {
    for (id, before) in acked {
        let now = c.ok("GET_INSTANCE", json!({"instance_id": id}));
        assert_eq!(&now, before, "instance {id} after restart");
    }
}

#[test]
fn an_encrypted_server_writes_no_plaintext_context_and_survives_sigterm_and_sigkill() {
    let keys = tempdir();
    let key = write_key(keys.path(), "data.key", 0xc2);
    let mut s = Server::with_config(with_key(Some(&key)));
    let mut c = s.connect();
    let acked = fill(&mut c);
    // Readers see plaintext: WAL_READ and a watch resumed from an offset.
    let wal = c.ok("WAL_READ", json!({"from_offset": 0, "limit": 1000}));
    assert!(wal.to_string().contains(MARKER), "WAL_READ decrypts");
    let mut w = s.connect();
    w.ok("WATCH_ALL", json!({"from_offset": 1}));
    let e = w.next_event(Duration::from_secs(10));
    assert_eq!(e["ctx"]["secret"], json!(format!("{MARKER}-a0")));
    drop((c, w));

    s.kill_9();
    assert_eq!(
        files_containing(&s.data_dir(), MARKER.as_bytes()),
        Vec::<PathBuf>::new()
    );
    s.restart();
    let mut c = s.connect();
    assert_all_there(&mut c, &acked);
    create(&mut c, "order", "after-kill", json!({"secret": MARKER}));
    drop(c);
    assert!(s.terminate().success(), "{}", s.all_logs());
    assert_eq!(
        files_containing(&s.data_dir(), MARKER.as_bytes()),
        Vec::<PathBuf>::new()
    );
    s.restart();
    let mut c = s.connect();
    assert_all_there(&mut c, &acked);
    c.ok("GET_INSTANCE", json!({"instance_id": "after-kill"}));
    assert!(
        !s.all_logs().contains(&format!("{:?}", [0xc2u8; 32])),
        "the key never reaches the logs"
    );
}

#[test]
fn control_without_a_key_the_marker_is_found_on_disk() {
    let mut s = Server::start();
    let mut c = s.connect();
    fill(&mut c);
    drop(c);
    s.kill_9();
    let hits = files_containing(&s.data_dir(), MARKER.as_bytes());
    assert!(
        hits.iter()
            .any(|p| p.extension().is_some_and(|e| e == "wal")),
        "{hits:?}"
    );
}

fn assert_refuses(s: &mut Server, needles: &[&str]) {
    match s.try_restart() {
        Ok(()) => panic!("server started; expected a refusal mentioning {needles:?}"),
        Err(f) => {
            assert_eq!(f.status.and_then(|st| st.code()), Some(1), "{f:?}");
            for n in needles {
                assert!(f.stderr.contains(n), "stderr lacks {n:?}:\n{}", f.stderr);
            }
        }
    }
}

#[test]
fn a_wrong_missing_or_exposed_key_stops_startup_with_exit_1() {
    let keys = tempdir();
    let key = write_key(keys.path(), "data.key", 1);
    let other = write_key(keys.path(), "other.key", 2);
    let mut s = Server::with_config(with_key(Some(&key)));
    let mut c = s.connect();
    let acked = fill(&mut c);
    drop(c);
    assert!(s.terminate().success());

    set_key(&s, Some(&other));
    assert_refuses(&mut s, &["different key"]);
    set_key(&s, None);
    assert_refuses(&mut s, &["no encryption key is configured"]);

    let exposed = keys.path().join("exposed.key");
    std::fs::copy(&key, &exposed).unwrap();
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
    set_key(&s, Some(&exposed));
    assert_refuses(
        &mut s,
        &["accessible by group or others", &exposed.to_string_lossy()],
    );
    let missing = keys.path().join("missing.key");
    set_key(&s, Some(&missing));
    assert_refuses(&mut s, &[&missing.to_string_lossy()]);
    let short = keys.path().join("short.key");
    std::fs::write(&short, [1u8; 16]).unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    set_key(&s, Some(&short));
    assert_refuses(&mut s, &["16 bytes", &short.to_string_lossy()]);

    // None of that changed the data.
    set_key(&s, Some(&key));
    s.restart();
    let mut c = s.connect();
    assert_all_there(&mut c, &acked);
}

#[test]
fn a_plaintext_data_dir_is_refused_with_a_key_until_rekeyed() {
    let keys = tempdir();
    let key = write_key(keys.path(), "data.key", 3);
    let mut s = Server::start();
    let mut c = s.connect();
    let acked = fill(&mut c);
    drop(c);
    s.kill_9();
    set_key(&s, Some(&key));
    assert_refuses(&mut s, &["not encrypted", "rstmdb rekey"]);

    let data = s.data_dir();
    let (st, out, err) = run_to_exit(
        &[
            "rekey",
            "--data-dir",
            &data.to_string_lossy(),
            "--new-key-file",
            &key.to_string_lossy(),
        ],
        &[],
        s.dir(),
        Duration::from_secs(60),
    );
    assert!(st.is_some_and(|s| s.success()), "{out}\n{err}");
    assert!(out.contains("from plaintext to key"), "{out}");
    assert_eq!(
        files_containing(&data, MARKER.as_bytes()),
        Vec::<PathBuf>::new()
    );
    s.restart();
    let mut c = s.connect();
    assert_all_there(&mut c, &acked);
}

#[test]
fn rekey_rotates_the_key_and_the_old_key_no_longer_opens() {
    let keys = tempdir();
    let old = write_key(keys.path(), "old.key", 4);
    let new = write_key(keys.path(), "new.key", 5);
    let other = write_key(keys.path(), "other.key", 7);
    let mut s = Server::with_config(with_key(Some(&old)));
    let mut c = s.connect();
    let acked = fill(&mut c);
    drop(c);
    s.kill_9(); // rekey replays the unflushed tail first
    let data = s.data_dir();
    let rekey = |old: &Path, new: &Path| {
        run_to_exit(
            &[
                "rekey",
                "--data-dir",
                &data.to_string_lossy(),
                "--old-key-file",
                &old.to_string_lossy(),
                "--new-key-file",
                &new.to_string_lossy(),
            ],
            &[],
            s.dir(),
            Duration::from_secs(60),
        )
    };
    // A wrong old key: exit 1, nothing changed.
    let (st, out, err) = rekey(&new, &other);
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{out}\n{err}");
    assert!(err.contains("different key"), "{err}");
    // Arguments swapped: the data is already under the "new" key.
    let (st, out, err) = rekey(&new, &old);
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{out}\n{err}");
    assert!(err.contains("already in the target setting"), "{err}");
    let (st, out, err) = rekey(&old, &new);
    assert!(st.is_some_and(|s| s.success()), "{out}\n{err}");
    assert!(out.contains("rekeyed"), "{out}");

    assert_refuses(&mut s, &["different key"]);
    set_key(&s, Some(&new));
    s.restart();
    let mut c = s.connect();
    assert_all_there(&mut c, &acked);
    let wal = c.ok("WAL_READ", json!({"from_offset": 0, "limit": 1000}));
    assert!(wal.to_string().contains(MARKER));
    drop(c);
    assert!(s.terminate().success());
    assert_eq!(
        files_containing(&data, MARKER.as_bytes()),
        Vec::<PathBuf>::new()
    );
}

/// (offset, length, seq) of every record of a segment file.
fn records(bytes: &[u8]) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 24 <= bytes.len() {
        let len = 24 + u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let seq = u64::from_le_bytes(bytes[at + 12..at + 20].try_into().unwrap());
        out.push((at, len, seq));
        at += len;
    }
    out
}

#[test]
fn a_record_moved_in_the_wal_tail_stops_startup_and_repair_leaves_it_alone() {
    let keys = tempdir();
    let key = write_key(keys.path(), "data.key", 6);
    let mut s = Server::with_config(with_key(Some(&key)));
    let mut c = s.connect();
    fill(&mut c);
    drop(c);
    s.kill_9();
    let wal_dir = s.data_dir().join("wal");
    let seg = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    // Two consecutive counter increments of the same size: copy the later one over the
    // earlier one, rewriting its seq and CRC (the CRC is no secret).
    let recs = records(&bytes);
    let pair = recs
        .windows(2)
        .rev()
        .find(|w| w[0].1 == w[1].1)
        .expect("two same-size records in the tail");
    let ((to, len, seq), (from, _, _)) = (pair[0], pair[1]);
    let mut moved = bytes[from..from + len].to_vec();
    moved[12..20].copy_from_slice(&seq.to_le_bytes());
    let mut covered = moved[..20].to_vec();
    covered.extend_from_slice(&moved[24..]);
    moved[20..24].copy_from_slice(&crc(&covered).to_le_bytes());
    bytes[to..to + len].copy_from_slice(&moved);
    std::fs::write(&seg, &bytes).unwrap();

    assert_refuses(&mut s, &[&format!("(seq {seq})"), "authentication failed"]);
    // repair works without the key and finds nothing structural to cut.
    let (st, out, err) = run_to_exit(
        &["repair", "--data-dir", &s.data_dir().to_string_lossy()],
        &[],
        s.dir(),
        Duration::from_secs(60),
    );
    assert!(st.is_some_and(|s| s.success()), "{out}\n{err}");
    assert!(out.contains("clean"), "{out}");
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "repair changed nothing"
    );
}
