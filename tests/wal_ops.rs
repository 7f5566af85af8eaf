//! SNAPSHOT_INSTANCE, WAL_READ, WAL_STATS, COMPACT, FLUSH_ALL (protocol.md §5.10–§5.13,
//! §5.18, decisions.md "WAL, durability and recovery" and "Protocol").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use serde_json::{Value, json};
use support::*;

/// put_machine(1), create(2), 5 applies (3..=7), delete(8).
fn eight_records(c: &mut Client) {
    put_counter(c, "ctr");
    create(c, "ctr", "w", json!({"n": 0}));
    for n in 1..=5 {
        apply(c, "w", "inc", json!({"n": n}));
    }
    c.ok("DELETE_INSTANCE", json!({"instance_id": "w"}));
}

fn records(r: &Value) -> &Vec<Value> {
    r["records"]
        .as_array()
        .unwrap_or_else(|| panic!("records array: {r}"))
}

/// Follow `next_offset` from `from` with page size `limit` until an empty page.
fn read_all(c: &mut Client, from: u64, limit: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = from;
    for _ in 0..10_000 {
        let r = c.ok("WAL_READ", json!({"from_offset": from, "limit": limit}));
        let recs = records(&r).clone();
        if recs.is_empty() {
            return out;
        }
        assert!(recs.len() as u64 <= limit, "page larger than limit: {r}");
        let last = u64_of(&recs.last().unwrap()["offset"]);
        let next = u64_of(&r["next_offset"]);
        assert!(
            next > last,
            "next_offset {next} must be past the last record {last}"
        );
        out.extend(recs);
        from = next;
    }
    panic!("WAL_READ paging did not end");
}

#[test]
fn snapshot_instance_returns_its_fields() {
    let s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    create(&mut c, "ctr", "s1", json!({}));
    let a = apply(&mut c, "s1", "inc", json!({"n": 1}));
    let before = c.ok("WAL_STATS", json!({}))["entry_count"].clone();
    let r = c.ok("SNAPSHOT_INSTANCE", json!({"instance_id": "s1"}));
    assert_eq!(r["instance_id"], "s1");
    assert!(
        r["snapshot_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{r}"
    );
    assert_eq!(r["wal_offset"], a["wal_offset"], "{r}");
    assert!(r["size_bytes"].is_u64(), "{r}");
    assert!(r["checksum"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    // Nothing written, instance unchanged.
    assert_eq!(c.ok("WAL_STATS", json!({}))["entry_count"], before);
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "s1"}))["ctx"],
        json!({"n": 1})
    );
}

#[test]
fn snapshot_instance_unknown_is_instance_not_found() {
    let s = Server::start();
    let mut c = s.connect();
    c.err_code(
        "SNAPSHOT_INSTANCE",
        json!({"instance_id": "ghost"}),
        "INSTANCE_NOT_FOUND",
    );
}

#[test]
fn snapshot_instance_missing_id_is_bad_request() {
    let s = Server::start();
    let mut c = s.connect();
    c.err_code("SNAPSHOT_INSTANCE", json!({}), "BAD_REQUEST");
}

#[test]
fn wal_read_returns_every_record_with_its_entry() {
    let s = Server::start();
    let mut c = s.connect();
    eight_records(&mut c);
    let r = c.ok("WAL_READ", json!({"from_offset": 0}));
    let recs = records(&r);
    assert_eq!(recs.len(), 8, "{r}");
    let offsets: Vec<u64> = recs.iter().map(|x| u64_of(&x["offset"])).collect();
    assert_eq!(
        offsets,
        (1..=8).collect::<Vec<u64>>(),
        "sequence-number offsets"
    );
    for x in recs {
        assert!(x["sequence"].is_u64(), "{x}");
    }
    let types: Vec<&str> = recs
        .iter()
        .map(|x| x["entry"]["type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        types,
        [
            "put_machine",
            "create_instance",
            "apply_event",
            "apply_event",
            "apply_event",
            "apply_event",
            "apply_event",
            "delete_instance"
        ]
    );
    let pm = &recs[0]["entry"];
    assert_eq!(pm["machine"], "ctr");
    assert_eq!(pm["version"], 1);
    assert!(pm["definition"].is_object(), "{pm}");
    let ci = &recs[1]["entry"];
    assert_eq!(ci["instance_id"], "w");
    assert_eq!(ci["machine"], "ctr");
    assert_eq!(ci["version"], 1);
    assert_eq!(ci["initial_state"], "on");
    assert_eq!(ci["initial_ctx"], json!({"n": 0}));
    let ap = &recs[4]["entry"];
    assert_eq!(ap["instance_id"], "w");
    assert_eq!(ap["event"], "inc");
    assert_eq!(ap["from_state"], "on");
    assert_eq!(ap["to_state"], "on");
    assert_eq!(ap["payload"], json!({"n": 3}));
    assert_eq!(ap["ctx"], json!({"n": 3}));
    assert_eq!(recs[7]["entry"]["instance_id"], "w");
}

#[test]
fn wal_read_from_offset_is_inclusive() {
    let s = Server::start();
    let mut c = s.connect();
    eight_records(&mut c);
    let r = c.ok("WAL_READ", json!({"from_offset": 5, "limit": 2}));
    let offsets: Vec<u64> = records(&r).iter().map(|x| u64_of(&x["offset"])).collect();
    assert_eq!(offsets, [5, 6]);
}

#[test]
fn wal_read_pages_with_next_offset() {
    let s = Server::start();
    let mut c = s.connect();
    eight_records(&mut c);
    let all = c.ok("WAL_READ", json!({"from_offset": 0}));
    let paged = read_all(&mut c, 0, 3);
    assert_eq!(&paged, records(&all), "paging by 3 reads the same records");
    let one_by_one = read_all(&mut c, 1, 1);
    assert_eq!(one_by_one.len(), 8);
}

#[test]
fn wal_read_past_the_end_is_empty() {
    let s = Server::start();
    let mut c = s.connect();
    eight_records(&mut c);
    let r = c.ok("WAL_READ", json!({"from_offset": 9}));
    assert_eq!(records(&r).len(), 0, "{r}");
}

#[test]
fn wal_read_missing_from_offset_is_bad_request() {
    let s = Server::start();
    let mut c = s.connect();
    c.err_code("WAL_READ", json!({"limit": 5}), "BAD_REQUEST");
    c.err_code("WAL_READ", json!({"from_offset": "0"}), "BAD_REQUEST");
}

#[test]
fn wal_read_limit_defaults_to_100_and_is_capped_at_1000() {
    let s = Server::with_config(json!({"storage": {"fsync_policy": "never"}}));
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    // 1 + 1050 records, pipelined.
    let mut bytes = Vec::new();
    for i in 0..1050 {
        bytes.extend(frame(
            request_json(
                &format!("c{i}"),
                "CREATE_INSTANCE",
                Some(json!({"instance_id": format!("i{i:04}"), "machine": "ctr", "version": 1})),
            )
            .to_string()
            .as_bytes(),
        ));
    }
    c.send_raw(&bytes);
    for i in 0..1050 {
        let r = c.read_response(&format!("c{i}"));
        assert_eq!(r["status"], "ok", "{r}");
    }
    let d = c.ok("WAL_READ", json!({"from_offset": 0}));
    assert_eq!(records(&d).len(), 100, "default limit");
    let m = c.ok("WAL_READ", json!({"from_offset": 0, "limit": 1000}));
    assert_eq!(records(&m).len(), 1000);
    let r = c.request("WAL_READ", json!({"from_offset": 0, "limit": 5000}));
    match r["status"].as_str() {
        Some("ok") => assert!(
            records(&r["result"]).len() <= 1000,
            "at most 1000 records per page"
        ),
        _ => assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}"),
    }
    let all = read_all(&mut c, 0, 1000);
    assert_eq!(all.len(), 1051);
}

#[test]
fn wal_stats_reports_every_field() {
    let s = Server::start();
    let mut c = s.connect();
    eight_records(&mut c);
    let r = c.ok("WAL_STATS", json!({}));
    assert_eq!(r["entry_count"], 8, "{r}");
    assert!(u64_of(&r["segment_count"]) >= 1, "{r}");
    assert!(r["total_size_bytes"].is_u64(), "{r}");
    assert!(u64_of(&r["total_size_bytes"]) > 0, "true values: {r}");
    assert!(u64_of(&r["latest_offset"]) >= 8, "{r}");
    for k in ["bytes_written", "bytes_read", "writes", "reads", "fsyncs"] {
        assert!(r["io_stats"][k].is_u64(), "io_stats.{k}: {r}");
    }
    assert!(u64_of(&r["io_stats"]["bytes_written"]) > 0, "{r}");
    // Additive fields (decisions.md).
    assert!(
        r["earliest_offset"].is_u64() || r["earliest_offset"].is_null(),
        "{r}"
    );
    assert!(r.get("earliest_offset").is_some(), "{r}");
    assert!(r.get("checkpoint_offset").is_some(), "{r}");
}

#[test]
fn wal_stats_entry_count_counts_records() {
    let s = Server::start();
    let mut c = s.connect();
    assert_eq!(c.ok("WAL_STATS", json!({}))["entry_count"], 0);
    put_counter(&mut c, "ctr");
    create(&mut c, "ctr", "x", json!({}));
    assert_eq!(c.ok("WAL_STATS", json!({}))["entry_count"], 2);
    // Reads and failed writes add nothing.
    c.ok("GET_INSTANCE", json!({"instance_id": "x"}));
    c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "x", "event": "nope"}),
        "INVALID_TRANSITION",
    );
    assert_eq!(c.ok("WAL_STATS", json!({}))["entry_count"], 2);
}

#[test]
fn compact_returns_its_counters_and_keeps_all_data() {
    let s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({"k": 1}));
    apply(&mut c, "a", "PAY", json!({"amount": 2}));
    create(&mut c, "order", "b", json!({}));
    c.ok("DELETE_INSTANCE", json!({"instance_id": "b"}));
    let last = u64_of(&c.ok("WAL_STATS", json!({}))["entry_count"]);
    let r = c.ok("COMPACT", json!({}));
    for k in [
        "snapshots_created",
        "segments_deleted",
        "bytes_reclaimed",
        "total_snapshots",
        "wal_segments",
    ] {
        assert!(r[k].is_u64(), "COMPACT.{k}: {r}");
    }
    let g = c.ok("GET_INSTANCE", json!({"instance_id": "a"}));
    assert_eq!(g["state"], "paid");
    assert_eq!(g["ctx"], json!({"k": 1, "amount": 2}));
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "b"}),
        "INSTANCE_NOT_FOUND",
    );
    c.ok("GET_MACHINE", json!({"machine": "order", "version": 1}));
    // Offsets are never reused after a compaction.
    let cr = create(&mut c, "order", "c", json!({}));
    assert!(u64_of(&cr["wal_offset"]) > last, "{cr}");
}

#[test]
fn compact_with_force_snapshot() {
    let s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    create(&mut c, "ctr", "x", json!({}));
    let r = c.ok("COMPACT", json!({"force_snapshot": true}));
    assert!(r["snapshots_created"].is_u64(), "{r}");
    apply(&mut c, "x", "inc", json!({"n": 1}));
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "x"}))["ctx"],
        json!({"n": 1})
    );
}

#[test]
fn compact_without_params_is_accepted() {
    let s = Server::start();
    let mut c = s.connect();
    c.send_request("cp", "COMPACT", None);
    let r = c.read_response("cp");
    assert_eq!(
        r["status"], "ok",
        "COMPACT params may be absent (protocol.md §5.13): {r}"
    );
}

#[test]
fn flush_all_is_bad_request_when_disabled() {
    let s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "keep", json!({}));
    let e = c.err_code("FLUSH_ALL", json!({}), "BAD_REQUEST");
    assert_eq!(e["retryable"], false);
    c.ok("GET_INSTANCE", json!({"instance_id": "keep"}));
    c.ok("GET_MACHINE", json!({"machine": "order", "version": 1}));
}

#[test]
fn flush_all_wipes_everything_when_enabled_and_survives_restart() {
    let mut s = Server::with_config(json!({"storage": {"allow_flush_all": true}}));
    let mut c = s.connect();
    put_order(&mut c, "order");
    put_counter(&mut c, "ctr");
    create(&mut c, "order", "a", json!({}));
    create(&mut c, "ctr", "b", json!({}));
    let last = u64_of(&c.ok("WAL_STATS", json!({}))["entry_count"]);
    let r = c.ok("FLUSH_ALL", json!({}));
    assert_eq!(r["flushed"], true, "{r}");
    assert_eq!(r["instances_removed"], 2, "{r}");
    assert_eq!(r["machines_removed"], 2, "{r}");
    assert_eq!(c.ok("LIST_MACHINES", json!({}))["items"], json!([]));
    assert_eq!(c.ok("LIST_INSTANCES", json!({}))["total"], 0);
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "a"}),
        "INSTANCE_NOT_FOUND",
    );
    drop(c);
    assert!(s.terminate().success());
    s.restart();
    let mut c = s.connect();
    assert_eq!(c.ok("LIST_MACHINES", json!({}))["items"], json!([]));
    assert_eq!(c.ok("LIST_INSTANCES", json!({}))["total"], 0);
    // The database works normally afterwards, and offsets are not reused.
    let p = c.request(
        "PUT_MACHINE",
        json!({"machine": "order", "version": 1, "definition": order_definition()}),
    );
    assert_eq!(p["result"]["created"], true, "{p}");
    let cr = create(&mut c, "order", "a", json!({}));
    assert!(u64_of(&cr["wal_offset"]) > last + 1, "{cr}");
}

#[test]
fn wal_read_page_stops_before_8_mib() {
    // decisions.md: WAL_READ responses stop before 8 MiB and return next_offset.
    let s = Server::with_config(json!({"storage": {"fsync_policy": "never"}}));
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    create(&mut c, "ctr", "x", json!({}));
    let blob = "w".repeat(400 * 1024);
    for n in 0..30 {
        // Each record holds the payload and the merged ctx: ~800 KiB.
        apply(&mut c, "x", "inc", json!({"n": n, "blob": blob}));
    }
    c.send_request(
        "big",
        "WAL_READ",
        Some(json!({"from_offset": 0, "limit": 1000})),
    );
    let r = c.read_response("big");
    assert_eq!(r["status"], "ok", "{}", r["error"]);
    let size = r.to_string().len();
    assert!(size < 8 * 1024 * 1024, "page of {size} bytes");
    let n = records(&r["result"]).len();
    assert!(n < 32, "the page must stop early, got all {n} records");
    let all = read_all(&mut c, 0, 1000);
    assert_eq!(all.len(), 32, "paging still reaches every record");
}

#[test]
fn concurrent_writers_get_unique_dense_offsets() {
    // decisions.md: wal_offset increases by one per record, never reused (group commit).
    let s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    let addr = s.addr();
    let handles: Vec<_> = (0..6)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut offs = Vec::new();
                for i in 0..40 {
                    let r = create(&mut c, "ctr", &format!("t{t}-{i}"), json!({}));
                    offs.push(u64_of(&r["wal_offset"]));
                    let r = apply(&mut c, &format!("t{t}-{i}"), "inc", json!({}));
                    offs.push(u64_of(&r["wal_offset"]));
                }
                offs
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    let want: Vec<u64> = (2..2 + 480).collect();
    assert_eq!(all, want, "offsets 2..=481, each exactly once");
    assert_eq!(c.ok("WAL_STATS", json!({}))["entry_count"], 481);
}
