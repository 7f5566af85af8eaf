//! BACKUP_BEGIN / BACKUP_READ / BACKUP_END and RESTORE_INSTANCE on the wire (extensions,
//! docs/backup.md), with the tests' own RCP client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::*;

fn spool_files(s: &Server) -> usize {
    std::fs::read_dir(s.data_dir().join("backup-spool"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_backup_is_read_in_pieces_that_hash_to_the_announced_body() {
    let s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    for i in 0..20 {
        create(&mut c, "ctr", &format!("i{i}"), json!({"n": i}));
    }
    let b = c.ok("BACKUP_BEGIN", json!({}));
    let id = b["backup_id"].as_str().unwrap().to_owned();
    let size = b["body_bytes"].as_u64().unwrap();
    assert_eq!(b["counts"]["instances"], 20);
    assert_eq!(b["counts"]["machines"], 1);
    assert_eq!(b["wal_end"], 21);
    assert_eq!(b["format_version"], 1);
    assert_eq!(spool_files(&s), 1);

    let mut body = Vec::new();
    loop {
        let r = c.ok(
            "BACKUP_READ",
            json!({"backup_id": id, "offset": body.len(), "max_bytes": 700}),
        );
        let data = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert!(data.len() <= 700);
        body.extend_from_slice(&data);
        assert_eq!(r["next_offset"], body.len());
        if r["eof"] == true {
            break;
        }
        assert!(!data.is_empty(), "no progress before eof");
    }
    assert_eq!(body.len() as u64, size);
    let sha: String = Sha256::digest(&body)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    assert_eq!(b["body_sha256"], sha.as_str());
    let lines: Vec<Value> = body
        .split(|&x| x == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.iter().filter(|l| l["t"] == "instance").count(), 20);

    // Past the end; an unknown id.
    c.err_code(
        "BACKUP_READ",
        json!({"backup_id": id, "offset": size + 1}),
        "BAD_REQUEST",
    );
    c.err_code(
        "BACKUP_READ",
        json!({"backup_id": "nope", "offset": 0}),
        "NOT_FOUND",
    );
    assert_eq!(
        c.ok("BACKUP_END", json!({"backup_id": id}))["removed"],
        true
    );
    assert_eq!(
        c.ok("BACKUP_END", json!({"backup_id": id}))["removed"],
        false
    );
    assert_eq!(spool_files(&s), 0);
    c.err_code(
        "BACKUP_READ",
        json!({"backup_id": id, "offset": 0}),
        "NOT_FOUND",
    );
    c.err_code("BACKUP_READ", json!({"offset": 0}), "BAD_REQUEST");
}

#[test]
fn spooled_backups_are_limited_and_removed_at_startup() {
    let mut s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    for _ in 0..4 {
        c.ok("BACKUP_BEGIN", json!({}));
    }
    let e = c.err_code("BACKUP_BEGIN", json!({}), "RATE_LIMITED");
    assert!(e["message"].as_str().unwrap().contains("BACKUP_END"));
    assert_eq!(spool_files(&s), 4);
    // A crash (the session never ends) leaves the spools behind; the next start removes them.
    s.kill_9();
    assert_eq!(spool_files(&s), 4);
    drop(c);
    s.restart();
    assert_eq!(spool_files(&s), 0, "leftover spools are removed at start");
}

#[test]
fn restore_instance_puts_the_instance_at_the_backups_end_back() {
    let s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    let exported = json!({"id": "r", "machine": "ctr", "version": 1, "state": "on",
        "ctx": {"n": 1}, "last_wal_offset": 5, "created_at": 1, "updated_at": 2});
    let r = c.ok(
        "RESTORE_INSTANCE",
        json!({"instance_id": "r", "instance": exported}),
    );
    assert_eq!(r["instance_id"], "r");
    assert_eq!(r["replaced"], false);
    let g = c.ok("GET_INSTANCE", json!({"instance_id": "r"}));
    assert_eq!(g["ctx"], json!({"n": 1}));
    assert_eq!(g["last_wal_offset"], r["wal_offset"]);
    // The record is in the WAL, so it survives a restart and shows in WAL_READ.
    let w = c.ok("WAL_READ", json!({"from_offset": r["wal_offset"]}));
    assert_eq!(w["records"][0]["entry"]["type"], "restore_instance");
    c.err_code(
        "RESTORE_INSTANCE",
        json!({"instance_id": "r", "instance": exported}),
        "INSTANCE_EXISTS",
    );
    // Unknown machine version, a state the machine lacks, malformed WAL elements.
    let mut other = exported.clone();
    other["version"] = json!(9);
    c.err_code(
        "RESTORE_INSTANCE",
        json!({"instance_id": "r", "instance": other, "as_id": "r2"}),
        "MACHINE_NOT_FOUND",
    );
    let mut bad = exported.clone();
    bad["state"] = json!("nowhere");
    c.err_code(
        "RESTORE_INSTANCE",
        json!({"instance_id": "r", "instance": bad, "as_id": "r3"}),
        "BAD_REQUEST",
    );
    let e = c.err_code(
        "RESTORE_INSTANCE",
        json!({"instance_id": "r", "instance": exported, "as_id": "r4", "wal": [{"x": 1}]}),
        "BAD_REQUEST",
    );
    assert_eq!(e["details"]["path"], "wal[0]");
    c.err_code(
        "RESTORE_INSTANCE",
        json!({"instance_id": "gone"}),
        "INSTANCE_NOT_FOUND",
    );
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "r2"}),
        "INSTANCE_NOT_FOUND",
    );
}

/// Every file under `<data>/backup-spool/`, with its bytes.
fn spool_contents(s: &Server) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    std::fs::read_dir(s.data_dir().join("backup-spool"))
        .map(|d| {
            d.flatten()
                .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

fn read_all(c: &mut Client, id: &str, size: u64, max_bytes: u64) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let r = c.ok(
            "BACKUP_READ",
            json!({"backup_id": id, "offset": body.len(), "max_bytes": max_bytes}),
        );
        let data = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        body.extend_from_slice(&data);
        assert_eq!(r["next_offset"], body.len());
        if r["eof"] == true {
            break;
        }
        assert!(!data.is_empty(), "no progress before eof");
    }
    assert_eq!(body.len() as u64, size);
    body
}

fn wait_for_no_spool(s: &Server, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while spool_files(s) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the spool is still there 10 s after {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Issue 18 finding 1: the spool is sealed (no instance data in clear on disk), 0600 in a
/// 0700 directory, and what the client reads is still the exact body it was promised, at any
/// offset and piece size, across the spool's chunk boundaries.
#[test]
fn the_spool_on_disk_is_sealed_and_private_and_reads_back_exactly() {
    use std::os::unix::fs::PermissionsExt;
    const MARKER: &str = "spool-marker-7d1e0c5a-never-on-disk";
    let s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    // About 300 KiB of body: several 64 KiB chunks.
    let pad = "x".repeat(1000);
    for i in 0..300 {
        create(
            &mut c,
            "ctr",
            &format!("i{i}"),
            json!({"n": i, "secret": MARKER, "pad": pad}),
        );
    }
    let b = c.ok("BACKUP_BEGIN", json!({}));
    let id = b["backup_id"].as_str().unwrap().to_owned();
    let size = b["body_bytes"].as_u64().unwrap();
    assert!(
        size > 3 * 65536,
        "body of {size} bytes spans several chunks"
    );

    let files = spool_contents(&s);
    assert_eq!(files.len(), 1);
    for (path, bytes) in &files {
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{} holds instance data in clear",
            path.display()
        );
        assert!(
            !bytes.windows(8).any(|w| w == b"instance"),
            "{} holds body records in clear",
            path.display()
        );
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
    }
    let dir = s.data_dir().join("backup-spool");
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "spool directory mode {dir_mode:o}");

    // The body hashes to what BEGIN announced, read in odd-sized pieces.
    let body = read_all(&mut c, &id, size, 70_001);
    let sha: String = Sha256::digest(&body)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    assert_eq!(b["body_sha256"], sha.as_str());
    assert!(
        body.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "the body the client gets does hold the data"
    );
    // Reads at arbitrary offsets (straddling chunk boundaries, the last byte, the end).
    for (off, n) in [
        (65_530u64, 20u64),
        (65_536, 1),
        (131_071, 65_538),
        (1, 4 * 65_536),
        (size - 1, 10),
        (size, 10),
    ] {
        let r = c.ok(
            "BACKUP_READ",
            json!({"backup_id": id, "offset": off, "max_bytes": n}),
        );
        let data = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        let end = (off + n).min(size) as usize;
        assert_eq!(data, &body[off as usize..end], "read at {off} of {n}");
        assert_eq!(r["eof"], end as u64 == size);
    }
    c.ok("BACKUP_END", json!({"backup_id": id}));
    assert_eq!(spool_files(&s), 0);
}

/// Issue 18 finding 1: a spool does not outlive the session that began it.
#[test]
fn a_spool_is_deleted_when_its_session_ends() {
    let mut s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    create(&mut c, "ctr", "a", json!({"n": 1}));

    // The connection closes without BACKUP_END.
    c.ok("BACKUP_BEGIN", json!({}));
    assert_eq!(spool_files(&s), 1);
    drop(c);
    wait_for_no_spool(&s, "the connection closed");

    // BYE.
    let mut c = s.connect();
    c.ok("BACKUP_BEGIN", json!({}));
    assert_eq!(spool_files(&s), 1);
    c.ok("BYE", json!({}));
    wait_for_no_spool(&s, "BYE");

    // Another session's spool is not touched when one session ends.
    let mut keeper = s.connect();
    let kept = keeper.ok("BACKUP_BEGIN", json!({}));
    let mut other = s.connect();
    other.ok("BACKUP_BEGIN", json!({}));
    assert_eq!(spool_files(&s), 2);
    drop(other);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while spool_files(&s) != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the other spool stayed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let size = kept["body_bytes"].as_u64().unwrap();
    read_all(&mut keeper, kept["backup_id"].as_str().unwrap(), size, 4096);

    // Server shutdown: the spool is gone before any restart could sweep it.
    assert_eq!(spool_files(&s), 1);
    assert!(s.terminate().success());
    assert_eq!(spool_files(&s), 0, "the spool outlived a clean shutdown");
    drop(keeper);
}
