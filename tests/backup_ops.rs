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
    drop(c);
    s.kill_9();
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
