//! Backups, verification, restores and point-in-time recovery, end to end: the real `rstmdb`
//! server, `rstmdb-cli backup` / `backup verify` / `restore-instance` / `restore-machine`,
//! and the offline `rstmdb restore`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "cli_support/mod.rs"]
mod cli_support;

use cli_support::*;
use rstmdb_client::{Client, ClientConfig};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FLIP: &str = r#"{"states": ["a", "b"], "initial": "a", "transitions": [
    {"from": "a", "event": "T", "to": "b"}, {"from": "b", "event": "T", "to": "a"}]}"#;

/// Live instances: id → (state, ctx).
type State = BTreeMap<String, (String, Value)>;
/// Per instance, every acknowledged write: (offset, Some((state, ctx)) or None = deleted).
type History = BTreeMap<String, Vec<(u64, Option<(String, Value)>)>>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn client(s: &str) -> Client {
    Client::connect(ClientConfig::new(s.to_owned()))
        .await
        .unwrap()
}

async fn put_flip(c: &Client) {
    let def: Value = serde_json::from_str(FLIP).unwrap();
    c.call_raw(
        "PUT_MACHINE",
        json!({"machine": "flip", "version": 1, "definition": def}),
    )
    .await
    .unwrap();
}

/// Every live instance with its state and context, through LIST (paged) and GET.
async fn dump(c: &Client) -> State {
    let mut out = State::new();
    let mut after: Option<String> = None;
    loop {
        let mut p = json!({"limit": 1000});
        if let Some(a) = &after {
            p["after"] = Value::from(a.as_str());
        }
        let page = c.call_raw("LIST_INSTANCES", p).await.unwrap();
        let items = page["instances"].as_array().cloned().unwrap_or_default();
        // Pipelined on the one connection.
        let gets = items.iter().map(|i| {
            let id = i["id"].as_str().unwrap().to_owned();
            async move {
                let g = c
                    .call_raw("GET_INSTANCE", json!({"instance_id": id}))
                    .await
                    .unwrap();
                (
                    id,
                    (g["state"].as_str().unwrap().to_owned(), g["ctx"].clone()),
                )
            }
        });
        out.extend(futures::future::join_all(gets).await);
        match page["next_after"].as_str() {
            Some(n) if page["has_more"].as_bool().unwrap_or(true) => after = Some(n.to_owned()),
            _ => break,
        }
        if items.is_empty() {
            break;
        }
    }
    out
}

fn expected_at(base: &State, hist: &History, n: u64) -> State {
    let mut out = base.clone();
    for (id, h) in hist {
        if let Some((_, v)) = h.iter().filter(|(o, _)| *o <= n).max_by_key(|(o, _)| *o) {
            match v {
                Some(v) => {
                    out.insert(id.clone(), v.clone());
                }
                None => {
                    out.remove(id);
                }
            }
        }
    }
    out
}

/// Writer `w` until `stop`: creates, applies and deletes on its own instances, recording
/// each acknowledged result.
async fn writer(c: Client, w: usize, stop: Arc<AtomicBool>, hist: Arc<Mutex<History>>) {
    let mut r = 0usize;
    let mut live: BTreeMap<String, bool> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let id = format!("w{w}-{}", r % 5);
        let exists = live.get(&id).copied().unwrap_or(false);
        let (off, v) = if !exists {
            let ctx = json!({"w": w, "r": r});
            let x = c
                .call_raw(
                    "CREATE_INSTANCE",
                    json!({"instance_id": id, "machine": "flip", "version": 1, "initial_ctx": ctx}),
                )
                .await
                .unwrap();
            live.insert(id.clone(), true);
            (
                x["wal_offset"].as_u64().unwrap(),
                Some(("a".to_owned(), ctx)),
            )
        } else if r % 7 == 6 {
            let x = c
                .call_raw("DELETE_INSTANCE", json!({"instance_id": id}))
                .await
                .unwrap();
            live.insert(id.clone(), false);
            (x["wal_offset"].as_u64().unwrap(), None)
        } else {
            let x = c
                .call_raw(
                    "APPLY_EVENT",
                    json!({"instance_id": id, "event": "T", "payload": {"r": r}}),
                )
                .await
                .unwrap();
            (
                x["wal_offset"].as_u64().unwrap(),
                Some((x["to_state"].as_str().unwrap().to_owned(), x["ctx"].clone())),
            )
        };
        hist.lock().unwrap().entry(id).or_default().push((off, v));
        r += 1;
    }
}

/// `rstmdb <args>` (the server binary's offline subcommands).
fn rstmdb(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(server_bin());
    scrub_env(&mut cmd);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn server_on(data_dir: &Path) -> Server {
    Server::with_config(json!({"storage": {"data_dir": data_dir.to_string_lossy()}}))
}

fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, hex(&[byte; 32])).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn backup_under_concurrent_writes_restores_every_write_acknowledged_before_its_end() {
    let rt = runtime();
    let server = Server::with_config(json!({
        "storage": {"wal_segment_size_mb": 1, "wal_retention_mb": 0},
        "compaction": {"enabled": true, "events_threshold": 300, "size_threshold_mb": 0},
    }));
    let cli = Cli::new(&server);
    let addr = server.server_arg();
    // 1,000 instances of about 8 KB, so that the export takes a while.
    let base: State = rt.block_on(async {
        let c = client(&addr).await;
        put_flip(&c).await;
        let pad = "p".repeat(8000);
        let mut base = State::new();
        for b in 0..10 {
            let ops: Vec<Value> = (0..100)
                .map(|i| {
                    let id = format!("pre-{b:03}-{i:03}");
                    let ctx = json!({"pad": pad, "n": b * 100 + i});
                    base.insert(id.clone(), ("a".into(), ctx.clone()));
                    json!({"op": "CREATE_INSTANCE", "params": {
                        "instance_id": id, "machine": "flip", "version": 1, "initial_ctx": ctx}})
                })
                .collect();
            c.call_raw("BATCH", json!({"mode": "atomic", "ops": ops}))
                .await
                .unwrap();
        }
        base
    });

    let stop = Arc::new(AtomicBool::new(false));
    let hist = Arc::new(Mutex::new(History::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, hist, addr) = (stop.clone(), hist.clone(), addr.clone());
            rt.spawn(async move { writer(client(&addr).await, w, stop, hist).await })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let out = cli.home().join("full.rbk");
    let b = cli.run(&["--json", "backup", "--out", &s(&out)]).json();
    {
        // Issue 18 finding 6: a backup holds every instance; only its owner may read it.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "backup file mode {mode:o}");
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        rt.block_on(w).unwrap();
    }
    let (base_offset, end) = (
        b["base_offset"].as_u64().unwrap(),
        b["wal_end"].as_u64().unwrap(),
    );
    let hist = hist.lock().unwrap().clone();
    let acked: Vec<u64> = hist.values().flatten().map(|(o, _)| *o).collect();
    assert!(
        base_offset < end,
        "writes were committed during the backup: {b}"
    );
    assert!(acked.iter().any(|&o| o <= end) && acked.iter().any(|&o| o > end));
    assert_eq!(b["encrypted"], false);
    assert!(out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(cli.home())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "temporary file left behind");

    let v = cli.run(&["--json", "backup", "verify", &s(&out)]).json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["manifest"]["wal_end"], end);
    assert_eq!(v["manifest"]["counts"]["machines"], 1);

    let restored = tempdir();
    let data = restored.path().join("data");
    let r = rstmdb(
        &["restore", "--from", &s(&out), "--data-dir", &s(&data)],
        &[],
    );
    assert!(
        r.ok().contains(&format!("state at offset {end}")),
        "{}",
        r.stdout
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "restored data directory mode {mode:o}");
    }
    let srv = server_on(&data);
    let got = rt.block_on(async {
        let c = client(&srv.server_arg()).await;
        let stats = c.call_raw("WAL_STATS", json!({})).await.unwrap();
        assert_eq!(stats["latest_offset"], end);
        dump(&c).await
    });
    let want = expected_at(&base, &hist, end);
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "restored state differs from the acknowledged history at {end}"
    );
    // The spool on the server is gone once the CLI ended the backup.
    let spool = server.dir().join("data").join("backup-spool");
    assert_eq!(std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0), 0);
}

#[test]
fn encrypted_backups_need_their_key_and_any_damage_fails_verify_and_restore() {
    let server = Server::start();
    let cli = Cli::new(&server);
    let def = cli.file("flip.json", FLIP);
    cli.run(&["put-machine", "-n", "flip", "-v", "1", &format!("@{def}")])
        .ok();
    for i in 0..50 {
        cli.run(&[
            "create-instance",
            "-m",
            "flip",
            "-V",
            "1",
            "-i",
            &format!("i{i}"),
            "-c",
            r#"{"secret":"plaintext-marker"}"#,
        ])
        .ok();
    }
    let home = cli.home().to_path_buf();
    let key = key_file(&home, "k", 7);
    let wrong = key_file(&home, "wrong", 8);
    let out = home.join("enc.rbk");

    let err = cli
        .run(&["backup", "--out", &s(&out), "--encrypt"])
        .fails_with(1)
        .to_owned();
    assert!(err.contains("needs a key"), "{err}");
    assert!(!out.exists());
    let loose = home.join("loose");
    std::fs::copy(&key, &loose).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let err = cli
        .run(&[
            "backup",
            "--out",
            &s(&out),
            "--encrypt",
            "--key-file",
            &s(&loose),
        ])
        .fails_with(1)
        .to_owned();
    assert!(err.contains("readable by group or others"), "{err}");

    cli.run(&[
        "backup",
        "--out",
        &s(&out),
        "--encrypt",
        "--key-file",
        &s(&key),
    ])
    .ok();
    let bytes = std::fs::read(&out).unwrap();
    assert!(
        !bytes.windows(16).any(|w| w == b"plaintext-marker"),
        "the encrypted file holds plaintext"
    );
    let verify = |file: &Path, key: Option<&Path>| -> Run {
        let mut args = vec!["backup".to_owned(), "verify".to_owned(), s(file)];
        if let Some(k) = key {
            args.push("--key-file".into());
            args.push(s(k));
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&home, &a, &[], None)
    };
    assert!(verify(&out, Some(&key)).ok().contains("Backup OK"));
    assert!(verify(&out, None).fails_with(1).contains("encrypted"));
    assert!(
        verify(&out, Some(&wrong))
            .fails_with(1)
            .contains("wrong key")
    );
    // The key from the environment works too.
    let env_key = hex(&[7; 32]);
    run_cli(
        &home,
        &["backup", "verify", &s(&out)],
        &[("RSTMDB_BACKUP_KEY", env_key.as_str())],
        None,
    )
    .ok();

    // A flipped byte anywhere: magic, manifest, body, last byte.
    let len = bytes.len();
    for pos in [2, 20, 60, len / 2, len - 40, len - 1] {
        let mut b = bytes.clone();
        b[pos] ^= 0x10;
        let f = home.join(format!("flip-{pos}.rbk"));
        std::fs::write(&f, &b).unwrap();
        let e = verify(&f, Some(&key)).fails_with(1).to_owned();
        assert!(e.contains("Error"), "flip at {pos}: {e}");
    }
    let cut = home.join("cut.rbk");
    std::fs::write(&cut, &bytes[..len - 100]).unwrap();
    assert!(verify(&cut, Some(&key)).fails_with(1).contains("truncated"));
    assert!(
        verify(&home.join("missing.rbk"), Some(&key))
            .fails_with(1)
            .contains("missing.rbk")
    );

    // Offline restore: wrong key, damaged file, non-empty directory; nothing is left behind.
    let d = tempdir();
    let data = d.path().join("data");
    let e = rstmdb(
        &[
            "restore",
            "--from",
            &s(&out),
            "--data-dir",
            &s(&data),
            "--key-file",
            &s(&wrong),
        ],
        &[],
    );
    assert!(e.fails_with(1).contains("wrong key"));
    let e = rstmdb(
        &[
            "restore",
            "--from",
            &s(&home.join("flip-60.rbk")),
            "--data-dir",
            &s(&data),
            "--key-file",
            &s(&key),
        ],
        &[],
    );
    e.fails_with(1);
    assert_eq!(std::fs::read_dir(&data).map(|d| d.count()).unwrap_or(0), 0);
    let e = rstmdb(
        &[
            "restore",
            "--from",
            &s(&cut),
            "--data-dir",
            &s(&data),
            "--key-file",
            &s(&key),
        ],
        &[],
    );
    e.fails_with(1);
    let e = rstmdb(
        &[
            "restore",
            "--from",
            &s(&out),
            "--data-dir",
            &s(&home),
            "--key-file",
            &s(&key),
        ],
        &[],
    );
    assert!(e.fails_with(1).contains("not empty"));
    rstmdb(
        &[
            "restore",
            "--from",
            &s(&out),
            "--data-dir",
            &s(&data),
            "--key-file",
            &s(&key),
        ],
        &[],
    )
    .ok();
    let srv = server_on(&data);
    let c2 = Cli::new(&srv);
    let g = c2.run(&["--json", "get-instance", "i42"]).json();
    assert_eq!(g["ctx"]["secret"], "plaintext-marker");
}

#[test]
fn restore_instance_and_machine_leave_everything_else_alone() {
    let rt = runtime();
    let server = Server::start();
    let cli = Cli::new(&server);
    let addr = server.server_arg();
    rt.block_on(async {
        let c = client(&addr).await;
        put_flip(&c).await;
        let def2: Value = serde_json::from_str(FLIP).unwrap();
        c.call_raw("PUT_MACHINE", json!({"machine": "flip", "version": 2, "definition": def2}))
            .await
            .unwrap();
        for id in ["a", "b", "c"] {
            c.call_raw(
                "CREATE_INSTANCE",
                json!({"instance_id": id, "machine": "flip", "version": 1, "initial_ctx": {"id": id}}),
            )
            .await
            .unwrap();
        }
        c.call_raw("APPLY_EVENT", json!({"instance_id": "a", "event": "T", "payload": {"x": 1}}))
            .await
            .unwrap();
    });
    let out = cli.home().join("b.rbk");
    cli.run(&["backup", "--out", &s(&out)]).ok();
    // After the backup: a moves on, b is deleted, d is new.
    let before = rt.block_on(async {
        let c = client(&addr).await;
        c.call_raw(
            "APPLY_EVENT",
            json!({"instance_id": "a", "event": "T", "payload": {"x": 2}}),
        )
        .await
        .unwrap();
        c.call_raw("DELETE_INSTANCE", json!({"instance_id": "b"}))
            .await
            .unwrap();
        c.call_raw(
            "CREATE_INSTANCE",
            json!({"instance_id": "d", "machine": "flip", "version": 1}),
        )
        .await
        .unwrap();
        dump(&c).await
    });
    let get = |id: &str| cli.run(&["--json", "get-instance", id]).json();
    let c_before = get("c");
    let d_before = get("d");

    // A live instance is not replaced without --replace.
    let e = cli
        .run(&["restore-instance", "--from", &s(&out), "--instance", "a"])
        .fails_with(1)
        .to_owned();
    assert!(e.contains("INSTANCE_EXISTS"), "{e}");
    let r = cli
        .run(&[
            "--json",
            "restore-instance",
            "--from",
            &s(&out),
            "--instance",
            "a",
            "--replace",
        ])
        .json();
    assert_eq!(r["replaced"], true);
    let a = get("a");
    assert_eq!(a["state"], "b");
    assert_eq!(a["ctx"], json!({"id": "a", "x": 1}));
    // Deleted after the backup: restored.
    cli.run(&["restore-instance", "--from", &s(&out), "--instance", "b"])
        .ok();
    assert_eq!(get("b")["ctx"], json!({"id": "b"}));
    // Under a new id; the original stays as it is.
    let r = cli
        .run(&[
            "--json",
            "restore-instance",
            "--from",
            &s(&out),
            "--instance",
            "c",
            "--as",
            "c-copy",
        ])
        .json();
    assert_eq!(r["instance_id"], "c-copy");
    assert_eq!(get("c-copy")["ctx"], json!({"id": "c"}));
    // Not in the backup.
    let e = cli
        .run(&["restore-instance", "--from", &s(&out), "--instance", "d"])
        .fails_with(1)
        .to_owned();
    assert!(e.contains("INSTANCE_NOT_FOUND"), "{e}");
    // Nothing else changed.
    assert_eq!(get("c"), c_before);
    assert_eq!(get("d"), d_before);
    let after = rt.block_on(async { dump(&client(&addr).await).await });
    for (id, v) in &before {
        if id != "a" {
            assert_eq!(after.get(id), Some(v), "{id} changed");
        }
    }
    assert_eq!(after.len(), before.len() + 2, "b and c-copy added");

    // restore-machine into an empty server: both versions and every instance.
    let other = Server::start();
    let oc = Cli::new(&other);
    let r = oc
        .run(&[
            "--json",
            "restore-machine",
            "--from",
            &s(&out),
            "--machine",
            "flip",
        ])
        .json();
    assert_eq!(r["versions"].as_array().unwrap().len(), 2);
    assert_eq!(r["restored"].as_array().unwrap().len(), 3);
    assert_eq!(
        oc.run(&["--json", "get-instance", "a"]).json()["ctx"],
        json!({"id": "a", "x": 1})
    );
    // Again: identical definitions are no-ops, live instances are kept and reported.
    let r = oc
        .run(&[
            "--json",
            "restore-machine",
            "--from",
            &s(&out),
            "--machine",
            "flip",
        ])
        .json();
    assert_eq!(r["restored"].as_array().unwrap().len(), 0);
    assert_eq!(r["skipped"].as_array().unwrap().len(), 3);
    assert!(
        r["versions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["created"] == false)
    );
    // A machine the backup does not hold.
    oc.run(&["restore-machine", "--from", &s(&out), "--machine", "nope"])
        .fails_with(1);
}

#[test]
fn pitr_replays_archived_segments_to_exactly_the_requested_offset() {
    let rt = runtime();
    let mut server = Server::with_config(json!({
        "storage": {"wal_segment_size_mb": 1, "wal_retention_mb": 0, "wal_archive_dir": "{tmp}/archive"},
        "compaction": {"enabled": false},
    }));
    let cli = Cli::new(&server);
    let addr = server.server_arg();
    let archive = server.dir().join("archive");
    rt.block_on(async {
        let c = client(&addr).await;
        put_flip(&c).await;
    });
    let out = cli.home().join("early.rbk");
    let b = cli.run(&["--json", "backup", "--out", &s(&out)]).json();
    let end = b["wal_end"].as_u64().unwrap();
    // About 4 MB of writes after the backup, so that several segments fill up, with a
    // moment `cut` (Unix ms) between the two halves.
    let hist = Arc::new(Mutex::new(History::new()));
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let mut cut = (0u64, 0u64);
    rt.block_on(async {
        let c = client(&addr).await;
        let pad = "q".repeat(1500);
        for i in 0..2500u64 {
            if i == 1250 {
                let last = hist.lock().unwrap().values().flatten().map(|(o, _)| *o).max().unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                cut = (now_ms(), last);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let id = format!("x{}", i % 40);
            let known = hist.lock().unwrap().contains_key(&id);
            let (off, v) = if !known {
                let ctx = json!({"pad": pad, "i": i});
                let x = c
                    .call_raw("CREATE_INSTANCE", json!({"instance_id": id, "machine": "flip", "version": 1, "initial_ctx": ctx}))
                    .await
                    .unwrap();
                (x["wal_offset"].as_u64().unwrap(), Some(("a".to_owned(), ctx)))
            } else {
                let x = c
                    .call_raw("APPLY_EVENT", json!({"instance_id": id, "event": "T", "payload": {"i": i}}))
                    .await
                    .unwrap();
                (x["wal_offset"].as_u64().unwrap(), Some((x["to_state"].as_str().unwrap().to_owned(), x["ctx"].clone())))
            };
            hist.lock().unwrap().entry(id).or_default().push((off, v));
        }
    });
    let compact = cli.run(&["--json", "compact"]).json();
    assert!(
        compact["segments_deleted"].as_u64().unwrap() >= 2,
        "{compact}"
    );
    let archived: Vec<String> = std::fs::read_dir(&archive)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(archived.len() as u64 >= compact["segments_deleted"].as_u64().unwrap());
    assert!(archived.iter().all(|n| n.ends_with(".wal")), "{archived:?}");
    {
        // Issue 18 finding 6: the archive holds the whole log; only its owner may read it.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&archive), 0o700, "archive directory");
        for n in &archived {
            assert_eq!(mode(&archive.join(n)), 0o600, "archived segment {n}");
        }
    }
    let earliest = rt.block_on(async {
        let c = client(&addr).await;
        c.call_raw("WAL_STATS", json!({})).await.unwrap()["earliest_offset"]
            .as_u64()
            .unwrap()
    });
    server.kill();
    let hist = hist.lock().unwrap().clone();
    let last_archived = earliest - 1;
    assert!(last_archived > end + 100);
    for n in [end, end + 57, last_archived] {
        let d = tempdir();
        let data = d.path().join("data");
        let r = rstmdb(
            &[
                "restore",
                "--from",
                &s(&out),
                "--data-dir",
                &s(&data),
                "--until-offset",
                &n.to_string(),
                "--wal-archive",
                &s(&archive),
            ],
            &[],
        );
        assert!(
            r.ok().contains(&format!("state at offset {n}")),
            "{}",
            r.stdout
        );
        let srv = server_on(&data);
        let got = rt.block_on(async { dump(&client(&srv.server_arg()).await).await });
        assert!(
            got == expected_at(&State::new(), &hist, n),
            "state at offset {n}"
        );
    }
    // Beyond what the backup and the archive hold; before the backup's end.
    let d = tempdir();
    let data = d.path().join("data");
    let e = rstmdb(
        &[
            "restore",
            "--from",
            &s(&out),
            "--data-dir",
            &s(&data),
            "--until-offset",
            &(earliest + 5).to_string(),
            "--wal-archive",
            &s(&archive),
        ],
        &[],
    );
    assert!(e.fails_with(1).contains("beyond"));
    assert_eq!(std::fs::read_dir(&data).map(|d| d.count()).unwrap_or(0), 0);
    // --until-time: the state of the last write stamped before `cut`.
    let (t, n1) = cut;
    let r = rstmdb(
        &[
            "restore",
            "--from",
            &s(&out),
            "--data-dir",
            &s(&data),
            "--until-time",
            &t.to_string(),
            "--wal-archive",
            &s(&archive),
        ],
        &[],
    );
    assert!(
        r.ok().contains(&format!("state at offset {n1}")),
        "{}",
        r.stdout
    );
    {
        let srv = server_on(&data);
        let got = rt.block_on(async { dump(&client(&srv.server_arg()).await).await });
        assert!(
            got == expected_at(&State::new(), &hist, n1),
            "state at time {t}"
        );
    }
    // A time before every write after the backup: the backup's end (its WAL part is empty
    // here; a stamped record inside it would make this an error, see the storage tests).
    assert_eq!(end, 1);
    let d = tempdir();
    let data = d.path().join("data");
    let e = rstmdb(
        &[
            "restore",
            "--from",
            &s(&out),
            "--data-dir",
            &s(&data),
            "--until-time",
            "2001-01-01T00:00:00Z",
            "--wal-archive",
            &s(&archive),
        ],
        &[],
    );
    assert!(
        e.ok().contains(&format!("state at offset {end}")),
        "{}",
        e.stdout
    );
}

#[test]
fn backup_and_restore_ops_need_the_admin_role() {
    use std::os::unix::fs::PermissionsExt;
    let secrets = tempdir();
    let file = secrets.path().join("secrets");
    let sha = |t: &str| {
        use sha2::Digest;
        hex(&sha2::Sha256::digest(t.as_bytes()))
    };
    std::fs::write(
        &file,
        format!(
            "{} boss admin\n{} app write\n",
            sha("admin-token"),
            sha("write-token")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::with_config(json!({
        "auth": {"required": true, "secrets_file": s(&file)},
    }));
    let cli = Cli::new(&server);
    let out = cli.home().join("b.rbk");
    let e = cli
        .run(&["-t", "write-token", "backup", "--out", &s(&out)])
        .fails_with(1)
        .to_owned();
    assert!(e.contains("UNAUTHORIZED"), "{e}");
    assert!(!out.exists());
    cli.run(&["-t", "admin-token", "backup", "--out", &s(&out)])
        .ok();
    let e = cli
        .run(&[
            "-t",
            "write-token",
            "restore-instance",
            "--from",
            &s(&out),
            "--instance",
            "x",
        ])
        .fails_with(1)
        .to_owned();
    assert!(e.contains("UNAUTHORIZED"), "{e}");
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn restore_with_a_data_key_writes_an_encrypted_directory() {
    // Issue 18 finding 6: restore always wrote a plaintext data directory, even for a backup
    // of an encrypted server; --data-key-file encrypts it for the server that will serve it.
    const MARKER: &str = "restore-plaintext-marker";
    let server = Server::start();
    let cli = Cli::new(&server);
    let def = cli.file("flip.json", FLIP);
    cli.run(&["put-machine", "-n", "flip", "-v", "1", &format!("@{def}")])
        .ok();
    cli.run(&[
        "create-instance",
        "-m",
        "flip",
        "-V",
        "1",
        "-i",
        "secret-1",
        "-c",
        &format!(r#"{{"card":"{MARKER}"}}"#),
    ])
    .ok();
    let home = cli.home().to_path_buf();
    let out = home.join("full.rbk");
    cli.run(&["backup", "--out", &s(&out)]).ok();
    let data_key = key_file(&home, "data.key", 0x5c);
    let restored = tempdir();
    let data = restored.path().join("data");
    let r = rstmdb(
        &[
            "restore",
            "--from",
            &s(&out),
            "--data-dir",
            &s(&data),
            "--data-key-file",
            &s(&data_key),
        ],
        &[],
    );
    r.ok();
    assert_eq!(
        files_containing(&data, MARKER.as_bytes()),
        Vec::<PathBuf>::new(),
        "plaintext left in the restored directory"
    );
    // A server with the key opens it (one would refuse a plaintext directory with a key
    // configured) and everything is there.
    let srv = Server::with_config(json!({"storage": {
        "data_dir": data.to_string_lossy(),
        "encryption": {"key_file": data_key.to_string_lossy()},
    }}));
    let got = Cli::new(&srv)
        .run(&["--json", "get-instance", "secret-1"])
        .json();
    assert_eq!(got["ctx"]["card"], MARKER, "{got}");
}
