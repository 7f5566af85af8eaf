//! A real process, really killed: the writer runs durable applies from 16 tasks and prints an
//! ACK line after each acknowledged one; we SIGKILL it mid-burst, reopen the data directory
//! and check that every acknowledged write is there — also with encryption at rest, where the
//! torn tail is an encrypted record.

// Test helpers outside #[test] functions may panic: a panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rstmdb_storage::{Database, EncryptionKey, StorageConfig};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TASKS: usize = 16;

/// Runs the writer until it has acknowledged `acks` writes (or 60 s pass), SIGKILLs it, and
/// returns the highest acknowledged (n, wal_offset) per instance.
fn run_and_kill(
    dir: &std::path::Path,
    acks: usize,
    key_file: Option<&std::path::Path>,
) -> HashMap<String, (u64, u64)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rstmdb-storage-bench"));
    cmd.args(["writer", "--dir"])
        .arg(dir)
        .args(["--tasks", &TASKS.to_string()]);
    if let Some(k) = key_file {
        cmd.arg("--key-file").arg(k);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start writer");
    let stdout = child.stdout.take().expect("writer stdout");
    let mut acked: HashMap<String, (u64, u64)> = HashMap::new();
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read writer output");
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts.len(), 4, "unexpected writer output {line:?}");
        let n: u64 = parts[2].parse().unwrap();
        let off: u64 = parts[3].parse().unwrap();
        let e = acked.entry(parts[1].to_string()).or_insert((0, 0));
        if n > e.0 {
            *e = (n, off);
        }
        count += 1;
        if count >= acks || Instant::now() > deadline {
            break;
        }
    }
    // SIGKILL: no destructors, no final sync, no checkpoint.
    child.kill().expect("kill writer");
    child.wait().expect("reap writer");
    assert!(count >= acks, "writer acknowledged only {count} writes");
    acked
}

fn verify(
    dir: &std::path::Path,
    acked: &HashMap<String, (u64, u64)>,
    key_file: Option<&std::path::Path>,
) {
    let mut config = StorageConfig::new(dir);
    config.encryption = key_file.map(|k| EncryptionKey::from_file(k).unwrap());
    let db = Database::open(config).expect("reopen after SIGKILL");
    for (id, (n, off)) in acked {
        let inst = db
            .get_instance(id)
            .unwrap_or_else(|e| panic!("{id} lost: {e}"));
        let stored_n = inst.ctx.get("n").and_then(|v| v.as_u64()).unwrap_or(0);
        assert!(
            stored_n >= *n && inst.last_wal_offset >= *off,
            "{id}: acknowledged n={n} at offset {off}, found n={stored_n} at {}",
            inst.last_wal_offset
        );
    }
}

/// Three kill/restart cycles on the same directory: recovery output must itself survive
/// being killed and reopened.
fn kill_cycles(key_file: Option<&std::path::Path>) {
    let dir = tempfile::tempdir().unwrap();
    let mut all: HashMap<String, (u64, u64)> = HashMap::new();
    for cycle in 0..3 {
        let acked = run_and_kill(dir.path(), 300 + cycle * 100, key_file);
        for (id, v) in acked {
            let e = all.entry(id).or_insert((0, 0));
            if v.0 > e.0 {
                *e = v;
            }
        }
        verify(dir.path(), &all, key_file);
    }
    assert_eq!(all.len(), TASKS, "every writer task acknowledged something");
}

#[test]
fn sigkill_mid_burst_loses_no_acknowledged_write() {
    kill_cycles(None);
}

#[test]
fn sigkill_mid_burst_loses_no_acknowledged_write_with_encryption() {
    use std::os::unix::fs::PermissionsExt;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("key");
    std::fs::write(&key, [0xa5; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    kill_cycles(Some(&key));
}
