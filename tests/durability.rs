//! Restart durability: clean shutdown (SIGTERM/SIGINT) and crash (SIGKILL)
//! (decisions.md "WAL, durability and recovery", "Idempotency", "Instances", "Server").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

#[test]
fn sigterm_exits_zero_and_restart_keeps_everything() {
    let mut s = Server::start();
    let mut c = s.connect();
    let put = put_order(&mut c, "order");
    put_counter(&mut c, "ctr");
    create(&mut c, "order", "a", json!({"customer": "alice"}));
    apply(&mut c, "a", "PAY", json!({"amount": 7}));
    create(&mut c, "order", "b", json!({}));
    c.ok("DELETE_INSTANCE", json!({"instance_id": "b"}));
    create(&mut c, "ctr", "c", json!({}));
    for n in 0..10 {
        apply(&mut c, "c", "inc", json!({"n": n}));
    }
    let get_a = c.ok("GET_INSTANCE", json!({"instance_id": "a"}));
    let list = c.ok("LIST_INSTANCES", json!({}));
    let machines = c.ok("LIST_MACHINES", json!({}));
    let wal = c.ok("WAL_READ", json!({"from_offset": 0, "limit": 1000}));
    let stats = c.ok("WAL_STATS", json!({}));
    drop(c);

    let st = s.terminate();
    assert!(
        st.success(),
        "SIGTERM → exit 0, got {st:?}\n{}",
        s.all_logs()
    );
    s.restart();
    let mut c = s.connect();
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "a"})),
        get_a,
        "instance a after restart"
    );
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "b"}),
        "INSTANCE_NOT_FOUND",
    );
    assert_eq!(c.ok("LIST_INSTANCES", json!({})), list);
    assert_eq!(c.ok("LIST_MACHINES", json!({})), machines);
    let g = c.ok("GET_MACHINE", json!({"machine": "order", "version": 1}));
    assert_eq!(g["checksum"], put["stored_checksum"]);
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "c"}))["ctx"],
        json!({"n": 9})
    );
    let before = wal["records"].as_array().unwrap();
    let after = c.ok("WAL_READ", json!({"from_offset": 0, "limit": 1000}));
    let after = after["records"].as_array().unwrap();
    assert!(
        after.len() >= before.len() && after[..before.len()] == before[..],
        "the WAL reads back identically"
    );
    assert!(u64_of(&c.ok("WAL_STATS", json!({}))["entry_count"]) >= u64_of(&stats["entry_count"]));
    // New writes continue after the old offsets.
    let last = u64_of(&stats["entry_count"]);
    let r = apply(&mut c, "a", "SHIP", json!({}));
    assert!(u64_of(&r["wal_offset"]) > last, "{r}");
}

#[test]
fn sigint_exits_zero() {
    let mut s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    drop(c);
    let st = s.interrupt();
    assert!(
        st.success(),
        "SIGINT → exit 0, got {st:?}\n{}",
        s.all_logs()
    );
    s.restart();
    let mut c = s.connect();
    c.ok("GET_MACHINE", json!({"machine": "ctr", "version": 1}));
}

#[test]
fn sigterm_with_open_idle_connections_still_exits_zero() {
    let mut s = Server::start();
    let mut a = s.connect();
    a.ping();
    let mut w = s.connect();
    w.ok("WATCH_ALL", json!({}));
    let st = s.terminate();
    assert!(st.success(), "{st:?}\n{}", s.all_logs());
    a.expect_closed(CLOSE_TIMEOUT);
    w.expect_closed(CLOSE_TIMEOUT);
}

#[test]
fn idempotency_keys_survive_restart() {
    let mut s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "i", json!({}));
    let p = json!({"instance_id": "i", "event": "PAY", "idempotency_key": "pay-1"});
    let first = c.ok("APPLY_EVENT", p.clone());
    let cp = json!({"machine": "order", "version": 1, "idempotency_key": "create-1"});
    let created = c.ok("CREATE_INSTANCE", cp.clone());
    drop(c);
    assert!(s.terminate().success());
    s.restart();
    let mut c = s.connect();
    let again = c.ok("APPLY_EVENT", p);
    assert_eq!(again["applied"], false, "{again}");
    assert_eq!(again["wal_offset"], first["wal_offset"]);
    let e = c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "i", "event": "CANCEL", "idempotency_key": "pay-1"}),
        "CONFLICT",
    );
    assert_eq!(e["details"]["reason"], "idempotency_key_reused");
    let c2 = c.ok("CREATE_INSTANCE", cp);
    assert_eq!(c2["instance_id"], created["instance_id"]);
    assert_eq!(c2["wal_offset"], created["wal_offset"]);
}

#[test]
fn timestamps_survive_restart() {
    let mut s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "t", json!({}));
    apply(&mut c, "t", "PAY", json!({}));
    let before = c.ok("GET_INSTANCE", json!({"instance_id": "t"}));
    let list_before = c.ok("LIST_INSTANCES", json!({}));
    drop(c);
    // Make a wall-clock replay time observably different.
    std::thread::sleep(Duration::from_millis(20));
    assert!(s.terminate().success());
    s.restart();
    let mut c = s.connect();
    let after = c.ok("GET_INSTANCE", json!({"instance_id": "t"}));
    assert_eq!(after["created_at"], before["created_at"], "{after}");
    assert_eq!(after["updated_at"], before["updated_at"], "{after}");
    let list_after = c.ok("LIST_INSTANCES", json!({}));
    assert_eq!(
        list_after["instances"][0]["created_at"],
        list_before["instances"][0]["created_at"]
    );
}

#[test]
fn sigkill_then_restart_keeps_a_small_history() {
    let mut s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "k", json!({"v": 1}));
    apply(&mut c, "k", "PAY", json!({"amount": 1}));
    create(&mut c, "order", "gone", json!({}));
    c.ok("DELETE_INSTANCE", json!({"instance_id": "gone"}));
    let g = c.ok("GET_INSTANCE", json!({"instance_id": "k"}));
    drop(c);
    s.kill_9();
    s.restart();
    let mut c = s.connect();
    assert_eq!(c.ok("GET_INSTANCE", json!({"instance_id": "k"})), g);
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "gone"}),
        "INSTANCE_NOT_FOUND",
    );
    assert!(u64_of(&c.ok("WAL_STATS", json!({}))["entry_count"]) >= 5);
    // No offset is reused.
    let r = apply(&mut c, "k", "SHIP", json!({}));
    assert!(u64_of(&r["wal_offset"]) > 5, "{r}");
}

/// Writers hammer the server; SIGKILL mid-stream; after restart every acknowledged write is
/// present and no offset is reused.
fn sigkill_keeps_every_acknowledged_write(fsync_policy: &str) {
    let mut s = Server::with_config(json!({"storage": {"fsync_policy": fsync_policy}}));
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    drop(c);
    let addr = s.addr();
    let stop = Arc::new(AtomicBool::new(false));
    // Per writer: acknowledged creates and the last acknowledged `n` per instance.
    type Acks = Arc<Mutex<(Vec<String>, HashMap<String, (u64, u64)>)>>;
    let acks: Acks = Arc::new(Mutex::new((Vec::new(), HashMap::new())));
    let mut handles = Vec::new();
    for w in 0..4 {
        let stop = stop.clone();
        let acks = acks.clone();
        handles.push(std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("w{w}-{:04}", i / 5);
                let (op, params) = if i.is_multiple_of(5) {
                    (
                        "CREATE_INSTANCE",
                        json!({"instance_id": id, "machine": "ctr", "version": 1}),
                    )
                } else {
                    (
                        "APPLY_EVENT",
                        json!({"instance_id": id, "event": "inc", "payload": {"n": i}}),
                    )
                };
                let rid = c.fresh_id();
                if c.try_send_raw(&frame(
                    request_json(&rid, op, Some(params)).to_string().as_bytes(),
                ))
                .is_err()
                {
                    return;
                }
                let r = match c.try_read_message(Duration::from_secs(10)) {
                    Ok(m) => m.value,
                    Err(_) => return,
                };
                if r["status"] != "ok" {
                    panic!("write failed before the crash: {r}");
                }
                let off = u64_of(&r["result"]["wal_offset"]);
                let mut a = acks.lock().unwrap();
                if i.is_multiple_of(5) {
                    a.0.push(id);
                } else {
                    a.1.insert(id, (i, off));
                }
                i += 1;
            }
        }));
    }
    // Let them run, then crash the server under load.
    wait_for(Duration::from_secs(30), || {
        (acks.lock().unwrap().1.len() >= 40).then_some(())
    })
    .expect("writers make progress");
    std::thread::sleep(Duration::from_millis(200));
    s.kill_9();
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().expect("writer thread");
    }
    let (created, applied) = acks.lock().unwrap().clone();
    assert!(!created.is_empty());
    eprintln!(
        "{fsync_policy}: {} creates, applies on {} instances acknowledged before SIGKILL",
        created.len(),
        applied.len()
    );

    s.restart();
    let mut c = s.connect();
    for id in &created {
        c.ok("GET_INSTANCE", json!({"instance_id": id}));
    }
    let mut max_off = 0;
    for (id, (n, off)) in &applied {
        let g = c.ok("GET_INSTANCE", json!({"instance_id": id}));
        let got = u64_of(&g["ctx"]["n"]);
        assert!(
            got >= *n,
            "{id}: acknowledged n={n} (offset {off}) but after restart ctx.n={got}"
        );
        assert!(u64_of(&g["last_wal_offset"]) >= *off, "{id}: {g}");
        max_off = max_off.max(*off);
    }
    let r = create(&mut c, "ctr", "after-crash", json!({}));
    assert!(
        u64_of(&r["wal_offset"]) > max_off,
        "offset reused after crash: {r} vs acknowledged {max_off}"
    );
}

#[test]
fn sigkill_keeps_every_acknowledged_write_every_write() {
    sigkill_keeps_every_acknowledged_write("every_write");
}

#[test]
fn sigkill_keeps_every_acknowledged_write_never() {
    // docs/storage.md: "A process crash (SIGKILL) loses nothing under any policy".
    sigkill_keeps_every_acknowledged_write("never");
}

#[test]
fn restart_twice_without_writes_in_between_is_stable() {
    let mut s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    create(&mut c, "ctr", "x", json!({}));
    drop(c);
    for _ in 0..2 {
        assert!(s.terminate().success());
        s.restart();
    }
    let mut c = s.connect();
    let v: Value = c.ok("WAL_STATS", json!({}));
    assert!(u64_of(&v["entry_count"]) >= 2, "{v}");
    let r = apply(&mut c, "x", "inc", json!({}));
    assert!(u64_of(&r["wal_offset"]) > 2, "{r}");
    let recs = c.ok("WAL_READ", json!({"from_offset": 0}));
    let types: Vec<&str> = recs["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["entry"]["type"].as_str())
        .filter(|t| *t != "checkpoint")
        .collect();
    assert_eq!(types, ["put_machine", "create_instance", "apply_event"]);
}

#[test]
fn atomic_batch_survives_sigkill_as_a_whole() {
    let mut s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    let r = c.ok(
        "BATCH",
        json!({"mode": "atomic", "ops": [
            {"op": "CREATE_INSTANCE", "params": {"instance_id": "b1", "machine": "order",
                                                  "version": 1, "initial_ctx": {"amount": 2}}},
            {"op": "APPLY_EVENT", "params": {"instance_id": "b1", "event": "PAY"}},
            {"op": "CREATE_INSTANCE", "params": {"instance_id": "b2", "machine": "order",
                                                  "version": 1}},
            {"op": "DELETE_INSTANCE", "params": {"instance_id": "b2"}}
        ]}),
    );
    assert_eq!(r["results"].as_array().unwrap().len(), 4);
    drop(c);
    s.kill_9();
    s.restart();
    let mut c = s.connect();
    let g = c.ok("GET_INSTANCE", json!({"instance_id": "b1"}));
    assert_eq!(g["state"], "paid");
    assert_eq!(g["ctx"], json!({"amount": 2}));
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "b2"}),
        "INSTANCE_NOT_FOUND",
    );
}

/// The WAL segment files (`<20 digits>.wal`, docs/wal-format.md), oldest first.
fn segments(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(data_dir.join("wal"))
        .expect("wal dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 24 && n.ends_with(".wal"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn torn_tail_is_truncated_on_restart() {
    // decisions.md: a torn record at the tail is truncated and logged.
    let mut s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    create(&mut c, "ctr", "t", json!({}));
    for n in 0..8 {
        apply(&mut c, "t", "inc", json!({"n": n}));
    }
    drop(c);
    s.kill_9();
    let last = segments(&s.data_dir()).pop().expect("a segment");
    let mut bytes = std::fs::read(&last).unwrap();
    // Half a record: a plausible header, then nothing.
    bytes
        .extend_from_slice(b"RWAL\x01\x00\x00\x00\x00\x01\x00\x00\x0b\x00\x00\x00\x00\x00\x00\x00");
    std::fs::write(&last, bytes).unwrap();
    s.restart();
    let mut c = s.connect();
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "t"}))["ctx"],
        json!({"n": 7})
    );
    let r = apply(&mut c, "t", "inc", json!({"n": 8}));
    assert_eq!(r["wal_offset"], 11, "next offset after 10 records: {r}");
    let recs = c.ok("WAL_READ", json!({"from_offset": 0}));
    assert_eq!(recs["records"].as_array().unwrap().len(), 11);
}

#[test]
fn corrupt_record_mid_log_stops_startup_and_repair_recovers() {
    // decisions.md: a bad record followed by valid ones stops startup with an error naming
    // segment and offset; `rstmdb repair` (server stopped) truncates there.
    let mut s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    create(&mut c, "ctr", "m", json!({}));
    for n in 0..30 {
        apply(&mut c, "m", "inc", json!({"n": n, "pad": "p".repeat(100)}));
    }
    drop(c);
    s.kill_9();
    let seg = segments(&s.data_dir()).pop().expect("a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&seg, bytes).unwrap();
    match s.try_restart() {
        Ok(()) => panic!(
            "the server started on a WAL with a corrupt record mid-log\n{}",
            s.all_logs()
        ),
        Err(f) => {
            assert_eq!(f.status.and_then(|s| s.code()), Some(1), "{f:?}");
            let out = format!("{}{}", f.stdout, f.stderr);
            assert!(
                out.contains("00000000000000000001"),
                "the error names the segment:\n{out}"
            );
        }
    }
    let data = s.data_dir();
    let (st, out, err) = run_to_exit(
        &["repair", "--data-dir", &data.to_string_lossy()],
        &[],
        s.dir(),
        Duration::from_secs(60),
    );
    assert!(
        st.is_some_and(|st| st.success()),
        "repair failed: {st:?}\n{out}\n{err}"
    );
    assert!(
        data.join("wal").join("damaged").is_dir(),
        "damaged data kept aside"
    );
    s.restart();
    let mut c = s.connect();
    c.ok("GET_MACHINE", json!({"machine": "ctr", "version": 1}));
    let g = c.ok("GET_INSTANCE", json!({"instance_id": "m"}));
    let n = g["ctx"]["n"].as_u64().expect("some applies survived");
    assert!(n < 29, "records after the damage were cut: ctx.n = {n}");
    let r = apply(&mut c, "m", "inc", json!({"n": 100}));
    assert_eq!(r["to_state"], "on");
}

#[test]
fn auto_checkpoint_at_events_threshold_then_crash_recovers() {
    // decisions.md: auto-checkpoint triggers work; recovery = checkpoint + WAL replay.
    let mut s = Server::with_config(json!({"compaction": {"events_threshold": 20,
                                                          "min_interval_secs": 0}}));
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    for i in 0..30 {
        create(&mut c, "ctr", &format!("a{i:02}"), json!({"i": i}));
    }
    let cp = wait_for(Duration::from_secs(20), || {
        let st = c.ok("WAL_STATS", json!({}));
        st["checkpoint_offset"]
            .as_u64()
            .filter(|o| *o >= 20)
            .map(|_| st)
    });
    assert!(
        cp.is_some(),
        "no checkpoint after 31 records with events_threshold 20: {}",
        c.ok("WAL_STATS", json!({}))
    );
    for i in 0..30 {
        apply(&mut c, &format!("a{i:02}"), "inc", json!({"after": true}));
    }
    drop(c);
    s.kill_9();
    s.restart();
    let mut c = s.connect();
    let l = c.ok("LIST_INSTANCES", json!({"limit": 1000}));
    assert_eq!(l["total"], 30);
    for i in 0..30 {
        let g = c.ok("GET_INSTANCE", json!({"instance_id": format!("a{i:02}")}));
        assert_eq!(g["ctx"], json!({"i": i, "after": true}), "{g}");
    }
}

#[test]
fn compaction_deletes_old_segments_but_keeps_every_instance() {
    let mut s = Server::with_config(json!({"storage": {"wal_segment_size_mb": 1,
                                                       "wal_retention_mb": 1}}));
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    let blob = "s".repeat(100 * 1024);
    for i in 0..40 {
        let id = format!("c{i:02}");
        create(&mut c, "ctr", &id, json!({}));
        apply(&mut c, &id, "inc", json!({"i": i, "blob": blob}));
    }
    let before = c.ok("WAL_STATS", json!({}));
    assert!(u64_of(&before["segment_count"]) >= 5, "{before}");
    let r = c.ok("COMPACT", json!({}));
    assert!(
        u64_of(&r["segments_deleted"]) >= 1,
        "COMPACT deleted nothing: {r}"
    );
    let after = c.ok("WAL_STATS", json!({}));
    assert!(
        u64_of(&after["segment_count"]) < u64_of(&before["segment_count"]),
        "{after}"
    );
    let earliest = u64_of(&after["earliest_offset"]);
    assert!(earliest > 1, "{after}");
    let w = c.ok("WAL_READ", json!({"from_offset": 0, "limit": 1}));
    assert_eq!(
        u64_of(&w["records"][0]["offset"]),
        earliest,
        "WAL_READ from 0 starts at the earliest retained record"
    );
    drop(c);
    s.kill_9();
    s.restart();
    let mut c = s.connect();
    c.ok("GET_MACHINE", json!({"machine": "ctr", "version": 1}));
    for i in 0..40 {
        let g = c.ok("GET_INSTANCE", json!({"instance_id": format!("c{i:02}")}));
        assert_eq!(g["ctx"]["i"], i, "c{i:02}");
    }
    assert_eq!(c.ok("LIST_INSTANCES", json!({}))["total"], 40);
}

#[test]
fn sigterm_right_after_startup_is_a_clean_shutdown() {
    // The handlers are installed before the server announces itself: a SIGTERM that follows
    // the listening line immediately must drain and exit 0, never meet the default action.
    let mut s = Server::start();
    for _ in 0..5 {
        let status = s.terminate();
        assert!(status.success(), "exit status {status:?}\n{}", s.all_logs());
        s.restart();
    }
}

#[test]
fn repair_of_a_directory_without_a_wal_fails_instead_of_reporting_clean() {
    // A mistyped --data-dir used to print "clean, nothing to repair" and exit 0.
    let dir = tempdir();
    let missing = dir.path().join("no-such-data-dir");
    let (st, out, err) = run_to_exit(
        &["repair", "--data-dir", &missing.to_string_lossy()],
        &[],
        dir.path(),
        Duration::from_secs(30),
    );
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{out}\n{err}");
    assert!(
        err.contains("no-such-data-dir") && err.contains("storage.data_dir"),
        "{err}"
    );
    assert!(!out.contains("clean"), "{out}");
    assert!(!missing.exists(), "repair must not create the directory");
}
