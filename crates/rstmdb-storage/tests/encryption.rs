//! Encryption at rest over real files: nothing of an instance's context reaches the disk in
//! the clear, everything comes back after a restart with the key, and every mismatch (no key,
//! wrong key, plaintext data with a key, a moved record) is a clear error. Also key files and
//! `rekey`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rstmdb_storage::wal::{Wal, WalError, WalOptions};
use rstmdb_storage::{
    ApplyEvent, CreateInstance, Database, ListQuery, OpenError, RekeyError, StorageConfig, rekey,
};
use rstmdb_storage::{Cipher, EncryptionKey, KeyError};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

const MARKER: &str = "MARKER-9f3c7a1e-ctx";

fn key(b: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([b; 32])
}

fn config(dir: &Path, key: Option<EncryptionKey>) -> StorageConfig {
    let mut c = StorageConfig::new(dir);
    c.encryption = key;
    c
}

fn order_def() -> Value {
    json!({
        "states": ["pending", "paid"],
        "initial": "pending",
        "transitions": [{"from": "pending", "event": "PAY", "to": "paid"},
                        {"from": "paid", "event": "NOTE", "to": "paid"}]
    })
}

fn create(id: &str) -> CreateInstance {
    CreateInstance {
        instance_id: Some(id.into()),
        machine: "order".into(),
        version: 1,
        initial_ctx: Some(json!({"secret": format!("{MARKER}-{id}")})),
        idempotency_key: Some(format!("create-{id}")),
    }
}

fn pay(id: &str) -> ApplyEvent {
    ApplyEvent {
        instance_id: id.into(),
        event: "PAY".into(),
        payload: Some(json!({"note": format!("{MARKER}-paid")})),
        idempotency_key: Some(format!("pay-{id}")),
        ..Default::default()
    }
}

/// Instances a0..a{n}: created and paid, a checkpoint, then more instances left only in the
/// WAL tail (b0..b{n}).
async fn fill(db: &Database, n: usize) {
    db.put_machine("order", 1, &order_def()).await.unwrap();
    for i in 0..n {
        db.create_instance(create(&format!("a{i}"))).await.unwrap();
        db.apply_event(pay(&format!("a{i}"))).await.unwrap();
    }
    db.checkpoint().await.unwrap();
    for i in 0..n {
        db.create_instance(create(&format!("b{i}"))).await.unwrap();
        db.apply_event(pay(&format!("b{i}"))).await.unwrap();
    }
}

/// Every file under `dir` (recursively) whose raw bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                let bytes = std::fs::read(&path).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path.display().to_string());
                }
            }
        }
    }
    assert!(files > 0, "no files under {}", dir.display());
    hits
}

/// a0.. and b0.. are there as `fill` left them, plus `extra` other live instances.
fn assert_all_there(db: &Database, n: usize, extra: u64) {
    for prefix in ["a", "b"] {
        for i in 0..n {
            let id = format!("{prefix}{i}");
            let inst = db.get_instance(&id).unwrap();
            assert_eq!(inst.state, "paid", "{id}");
            assert_eq!(inst.ctx["secret"], json!(format!("{MARKER}-{id}")));
        }
    }
    let page = db
        .list_instances(&ListQuery {
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.total, 2 * n as u64 + extra);
}

#[tokio::test]
async fn an_encrypted_data_dir_holds_no_plaintext_context_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(config(dir.path(), Some(key(1)))).unwrap();
    fill(&db, 20).await;
    // The tail after the checkpoint is in the WAL, not yet checkpointed.
    assert!(db.wal_stats().await.unwrap().latest_offset > 41);
    drop(db); // no close: no final checkpoint
    assert_eq!(
        files_containing(dir.path(), MARKER.as_bytes()),
        Vec::<String>::new()
    );

    let db = Database::open(config(dir.path(), Some(key(1)))).unwrap();
    assert_all_there(&db, 20, 0);
    // Readers decrypt: WAL_READ and a watch replay see the plaintext entries.
    let page = db.wal_read(0, Some(1000)).unwrap();
    assert_eq!(page.records.len(), 81);
    assert!(page.records[2].entry.to_string().contains(MARKER));
    let mut watch = db.watch(Some(1)).unwrap();
    let ev = watch.next().await.unwrap();
    assert_eq!(ev.ctx["secret"], json!(format!("{MARKER}-a0")));
    // Idempotent retries replay the stored (encrypted) result.
    let again = db.apply_event(pay("a3")).await.unwrap();
    assert!(!again.applied);
    assert_eq!(again.ctx["secret"], json!(format!("{MARKER}-a3")));
    db.close().await.unwrap();
    assert_eq!(
        files_containing(dir.path(), MARKER.as_bytes()),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn control_without_encryption_the_marker_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(config(dir.path(), None)).unwrap();
    fill(&db, 5).await;
    drop(db);
    let hits = files_containing(dir.path(), MARKER.as_bytes());
    assert!(hits.iter().any(|h| h.ends_with(".wal")), "{hits:?}");
}

fn open_err(dir: &Path, key: Option<EncryptionKey>) -> String {
    match Database::open(config(dir, key)) {
        Ok(_) => panic!("open succeeded"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn opening_with_a_wrong_missing_or_unexpected_key_is_a_clear_error() {
    let enc = tempfile::tempdir().unwrap();
    let db = Database::open(config(enc.path(), Some(key(1)))).unwrap();
    fill(&db, 2).await;
    db.close().await.unwrap();
    let wrong = open_err(enc.path(), Some(key(2)));
    assert!(wrong.contains("different key"), "{wrong}");
    assert!(wrong.contains(&key(1).id().to_string()), "{wrong}");
    let missing = open_err(enc.path(), None);
    assert!(missing.contains("no encryption key"), "{missing}");

    let plain = tempfile::tempdir().unwrap();
    let db = Database::open(config(plain.path(), None)).unwrap();
    fill(&db, 2).await;
    db.close().await.unwrap();
    let unexpected = open_err(plain.path(), Some(key(1)));
    assert!(unexpected.contains("not encrypted"), "{unexpected}");
    assert!(unexpected.contains("rstmdb rekey"), "{unexpected}");
    // Nothing was changed by the refused opens.
    let db = Database::open(config(enc.path(), Some(key(1)))).unwrap();
    assert_all_there(&db, 2, 0);
}

fn wal_opts(dir: &Path, key: Option<&EncryptionKey>) -> WalOptions {
    WalOptions {
        cipher: key.map(|k| Arc::new(Cipher::new(k))),
        ..WalOptions::new(dir)
    }
}

#[test]
fn the_wal_refuses_records_that_do_not_match_the_configured_key() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(wal_opts(dir.path(), Some(&key(1))), 1).unwrap();
    wal.append(&[b"one", b"two"]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    for (k, expected) in [(None, "no encryption key"), (Some(key(2)), "different key")] {
        match Wal::open(wal_opts(dir.path(), k.as_ref()), 1) {
            Err(WalError::Encryption { seq, reason, .. }) => {
                assert_eq!(seq, 1);
                assert!(reason.contains(expected), "{reason}");
            }
            other => panic!("expected an encryption error, got {other:?}"),
        }
    }
    let (wal, _) = Wal::open(wal_opts(dir.path(), Some(&key(1))), 1).unwrap();
    let recs = wal.reader().read(1, 10, 1 << 20).unwrap();
    assert_eq!(recs[1].payload, b"two");
    assert_eq!(recs[1].flags, rstmdb_storage::wal::FLAG_ENCRYPTED);
    drop(wal);

    let plain = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(wal_opts(plain.path(), None), 1).unwrap();
    wal.append(&[b"one"]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    match Wal::open(wal_opts(plain.path(), Some(&key(1))), 1) {
        Err(WalError::Encryption { reason, .. }) => {
            assert!(reason.contains("not encrypted"), "{reason}")
        }
        other => panic!("expected an encryption error, got {other:?}"),
    }
}

/// Moves the record at `from` (bytes) over the record at `to`, both `len` long, rewriting its
/// seq and CRC as anyone with write access could: only the AES-GCM tag can notice.
fn move_record(seg: &Path, from: usize, to: usize, len: usize, seq: u64) {
    let mut bytes = std::fs::read(seg).unwrap();
    let mut rec = bytes[from..from + len].to_vec();
    rec[12..20].copy_from_slice(&seq.to_le_bytes());
    let mut covered = rec[..20].to_vec();
    covered.extend_from_slice(&rec[24..]);
    let crc = crc32c::crc32c(&covered);
    rec[20..24].copy_from_slice(&crc.to_le_bytes());
    bytes[to..to + len].copy_from_slice(&rec);
    std::fs::write(seg, bytes).unwrap();
}

fn only_segment(dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    assert_eq!(segs.len(), 1);
    segs.remove(0)
}

#[test]
fn a_record_moved_within_a_segment_fails_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(wal_opts(dir.path(), Some(&key(1))), 1).unwrap();
    wal.append(&[b"first-payload", b"secnd-payload", b"third-payload"])
        .unwrap();
    wal.sync().unwrap();
    drop(wal);
    let seg = only_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len() as usize / 3;
    // Record 3 copied over record 2, with seq 2 and a fresh CRC.
    move_record(&seg, 2 * len, len, len, 2);
    let (wal, _) = Wal::open(wal_opts(dir.path(), Some(&key(1))), 1).unwrap();
    match wal.reader().read(1, 10, 1 << 20) {
        Err(WalError::Encryption { seq, reason, .. }) => {
            assert_eq!(seq, 2);
            assert!(reason.contains("authentication failed"), "{reason}");
        }
        other => panic!("expected an authentication failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_swapped_record_in_the_wal_tail_stops_startup_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(config(dir.path(), Some(key(1)))).unwrap();
    db.put_machine("order", 1, &order_def()).await.unwrap();
    db.create_instance(create("s1")).await.unwrap();
    db.create_instance(create("s2")).await.unwrap();
    drop(db); // seqs 1..3 stay above the checkpoint (0)
    let seg = only_segment(&dir.path().join("wal"));
    let bytes = std::fs::read(&seg).unwrap();
    let first_len = 24 + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let rest = &bytes[first_len..];
    let len2 = 24 + u32::from_le_bytes(rest[8..12].try_into().unwrap()) as usize;
    assert_eq!(rest.len(), 2 * len2, "the two creates have the same size");
    // Swap records 2 and 3 (fixing seqs and CRCs).
    let (a, b) = (first_len, first_len + len2);
    let original = bytes.clone();
    move_record(&seg, b, a, len2, 2);
    let mut swapped = std::fs::read(&seg).unwrap();
    let mut rec2 = original[a..a + len2].to_vec();
    rec2[12..20].copy_from_slice(&3u64.to_le_bytes());
    let mut covered = rec2[..20].to_vec();
    covered.extend_from_slice(&rec2[24..]);
    let crc = crc32c::crc32c(&covered);
    rec2[20..24].copy_from_slice(&crc.to_le_bytes());
    swapped[b..b + len2].copy_from_slice(&rec2);
    std::fs::write(&seg, swapped).unwrap();
    match Database::open(config(dir.path(), Some(key(1)))) {
        Err(OpenError::Wal(WalError::Encryption { seq, reason, .. })) => {
            assert_eq!(seq, 2);
            assert!(reason.contains("authentication failed"), "{reason}");
        }
        Err(other) => panic!("expected an authentication failure, got {other}"),
        Ok(_) => panic!("a swapped record was accepted"),
    }
}

#[tokio::test]
async fn rekey_rotates_converts_and_the_old_key_no_longer_opens() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(config(dir.path(), Some(key(1)))).unwrap();
    fill(&db, 10).await;
    drop(db); // a WAL tail that rekey must replay first

    let report = rekey(dir.path(), Some(key(1)), Some(key(2))).await.unwrap();
    assert!(report.wal_records >= 41, "{report:?}");
    assert!(report.sealed_values >= 41, "{report:?}");
    assert!(!dir.path().join("rekey.tmp").exists());
    assert!(!dir.path().join("rekey.old").exists());
    let old = open_err(dir.path(), Some(key(1)));
    assert!(old.contains("different key"), "{old}");
    let db = Database::open(config(dir.path(), Some(key(2)))).unwrap();
    assert_all_there(&db, 10, 0);
    assert_eq!(db.wal_read(0, Some(1000)).unwrap().records.len(), 41);
    db.create_instance(create("after")).await.unwrap();
    db.close().await.unwrap();
    assert_eq!(
        files_containing(dir.path(), MARKER.as_bytes()),
        Vec::<String>::new()
    );

    // Encrypted to plaintext, and back.
    rekey(dir.path(), Some(key(2)), None).await.unwrap();
    assert!(!files_containing(dir.path(), MARKER.as_bytes()).is_empty());
    let db = Database::open(config(dir.path(), None)).unwrap();
    assert_all_there(&db, 10, 1);
    db.close().await.unwrap();
    rekey(dir.path(), None, Some(key(3))).await.unwrap();
    assert_eq!(
        files_containing(dir.path(), MARKER.as_bytes()),
        Vec::<String>::new()
    );
    let db = Database::open(config(dir.path(), Some(key(3)))).unwrap();
    assert_all_there(&db, 10, 1);
    assert!(db.get_instance("after").is_ok());
    db.close().await.unwrap();

    // Running the same rotation again is recognised as done.
    match rekey(dir.path(), Some(key(2)), Some(key(3))).await {
        Err(RekeyError::Refused(why)) => assert!(why.contains("already"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A wrong old key changes nothing.
    match rekey(dir.path(), Some(key(1)), Some(key(4))).await {
        Err(RekeyError::Open(e)) => assert!(e.to_string().contains("different key"), "{e}"),
        other => panic!("expected a key error, got {other:?}"),
    }
    let db = Database::open(config(dir.path(), Some(key(3)))).unwrap();
    assert_all_there(&db, 10, 1);
}

#[tokio::test]
async fn an_interrupted_rekey_blocks_startup_until_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(config(dir.path(), Some(key(1)))).unwrap();
    fill(&db, 3).await;
    db.close().await.unwrap();
    // A copy that never completed (no READY file).
    std::fs::create_dir_all(dir.path().join("rekey.tmp/state")).unwrap();
    let refused = open_err(dir.path(), Some(key(1)));
    assert!(refused.contains("interrupted `rstmdb rekey`"), "{refused}");
    rekey(dir.path(), Some(key(1)), Some(key(2))).await.unwrap();
    let db = Database::open(config(dir.path(), Some(key(2)))).unwrap();
    assert_all_there(&db, 3, 0);
}

fn write_key_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn key_files_are_raw_or_hex_and_must_be_private() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_key_file(dir.path(), "raw", &[7u8; 32], 0o600);
    let hex = write_key_file(
        dir.path(),
        "hex",
        format!("{}\n", "07".repeat(32)).as_bytes(),
        0o400,
    );
    assert_eq!(
        EncryptionKey::from_file(&raw).unwrap(),
        EncryptionKey::from_file(&hex).unwrap()
    );
    assert_eq!(EncryptionKey::from_file(&raw).unwrap(), key(7));

    let open = write_key_file(dir.path(), "open", &[7u8; 32], 0o644);
    let e = EncryptionKey::from_file(&open).unwrap_err();
    assert!(matches!(e, KeyError::Insecure { .. }));
    assert!(e.to_string().contains("chmod 600"), "{e}");
    assert!(e.to_string().contains(&open.display().to_string()), "{e}");
    let group = write_key_file(dir.path(), "group", &[7u8; 32], 0o640);
    assert!(matches!(
        EncryptionKey::from_file(&group),
        Err(KeyError::Insecure { .. })
    ));

    let short = write_key_file(dir.path(), "short", &[7u8; 31], 0o600);
    let e = EncryptionKey::from_file(&short).unwrap_err();
    assert!(e.to_string().contains("31 bytes"), "{e}");
    let nothex = write_key_file(dir.path(), "nothex", "zz".repeat(32).as_bytes(), 0o600);
    assert!(matches!(
        EncryptionKey::from_file(&nothex),
        Err(KeyError::Invalid { .. })
    ));
    let long = write_key_file(dir.path(), "long", &[7u8; 4096], 0o600);
    assert!(matches!(
        EncryptionKey::from_file(&long),
        Err(KeyError::Invalid { .. })
    ));
    // A typed 32-character passphrase is text, not 32 random bytes: refused, with the way out.
    let phrase = write_key_file(
        dir.path(),
        "phrase",
        b"correct horse battery staple 123",
        0o600,
    );
    let e = EncryptionKey::from_file(&phrase).unwrap_err();
    assert!(matches!(e, KeyError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("passphrase"), "{e}");
    assert!(e.to_string().contains("openssl rand -hex 32"), "{e}");
    let missing = EncryptionKey::from_file(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(missing, KeyError::Io { .. }));
    assert!(missing.to_string().contains("missing"), "{missing}");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_rekey_interrupted_during_the_swap_is_finished_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = Database::open(config(&data, Some(key(1)))).unwrap();
    fill(&db, 4).await;
    db.close().await.unwrap();
    // The complete copy a rekey to key 2 makes, staged as it would be before the swap...
    let scratch = dir.path().join("scratch");
    copy_tree(&data, &scratch);
    rekey(&scratch, Some(key(1)), Some(key(2))).await.unwrap();
    copy_tree(&scratch.join("state"), &data.join("rekey.tmp/state"));
    copy_tree(&scratch.join("wal"), &data.join("rekey.tmp/wal"));
    std::fs::write(data.join("rekey.tmp/READY"), b"complete\n").unwrap();
    // ...and a crash right after the first rename of the swap.
    std::fs::create_dir_all(data.join("rekey.old")).unwrap();
    std::fs::rename(data.join("state"), data.join("rekey.old/state")).unwrap();

    let refused = open_err(&data, Some(key(2)));
    assert!(refused.contains("interrupted"), "{refused}");
    let report = rekey(&data, Some(key(1)), Some(key(2))).await.unwrap();
    assert!(report.finished_interrupted, "{report:?}");
    assert!(!data.join("rekey.tmp").exists() && !data.join("rekey.old").exists());
    let db = Database::open(config(&data, Some(key(2)))).unwrap();
    assert_all_there(&db, 4, 0);
    drop(db);
    let old = open_err(&data, Some(key(1)));
    assert!(old.contains("different key"), "{old}");
}

#[tokio::test]
async fn a_rebuilt_state_store_does_not_record_a_setting_the_log_contradicts() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(config(dir.path(), Some(key(1)))).unwrap();
    fill(&db, 2).await;
    drop(db);
    // The state store is lost; the WAL (encrypted, from seq 1) is all there is.
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let missing = open_err(dir.path(), None);
    assert!(missing.contains("no encryption key"), "{missing}");
    // That refused open did not mark the new store as plaintext: the right key still works,
    // rebuilding everything from the log.
    let db = Database::open(config(dir.path(), Some(key(1)))).unwrap();
    assert_all_there(&db, 2, 0);
}
