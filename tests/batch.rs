//! BATCH: best-effort and atomic (protocol.md §5.9, engine.md §5, decisions.md "BATCH").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use serde_json::{Value, json};
use support::*;

fn setup() -> (Server, Client) {
    let s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    (s, c)
}

fn op(name: &str, params: Value) -> Value {
    json!({"op": name, "params": params})
}

fn create_op(id: &str) -> Value {
    op(
        "CREATE_INSTANCE",
        json!({"instance_id": id, "machine": "order", "version": 1, "initial_ctx": {"amount": 1}}),
    )
}

fn apply_op(id: &str, event: &str) -> Value {
    op("APPLY_EVENT", json!({"instance_id": id, "event": event}))
}

fn entry_count(c: &mut Client) -> u64 {
    u64_of(&c.ok("WAL_STATS", json!({}))["entry_count"])
}

#[test]
fn batch_best_effort_reports_per_op_results_and_errors() {
    let (_s, mut c) = setup();
    let r = c.ok(
        "BATCH",
        json!({"mode": "best_effort", "ops": [
            create_op("b1"),
            apply_op("b1", "SHIP"),
            apply_op("b1", "PAY"),
            op("GET_INSTANCE", json!({"instance_id": "missing"})),
            op("GET_INSTANCE", json!({"instance_id": "b1"})),
        ]}),
    );
    let res = r["results"].as_array().expect("results");
    assert_eq!(res.len(), 5, "{r}");
    let statuses: Vec<&str> = res.iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["ok", "error", "ok", "error", "ok"], "{r}");
    assert_eq!(res[0]["result"]["state"], "pending");
    assert_eq!(res[1]["error"]["code"], "INVALID_TRANSITION");
    assert_eq!(res[2]["result"]["to_state"], "paid");
    assert_eq!(res[3]["error"]["code"], "INSTANCE_NOT_FOUND");
    assert_eq!(res[4]["result"]["state"], "paid");
    // Effects of the successful ops are kept.
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "b1"}))["state"],
        "paid"
    );
}

#[test]
fn batch_without_mode_is_best_effort() {
    let (_s, mut c) = setup();
    let r = c.ok(
        "BATCH",
        json!({"ops": [create_op("m1"), apply_op("m1", "SHIP"), create_op("m2")]}),
    );
    let res = r["results"].as_array().unwrap();
    assert_eq!(res[1]["status"], "error");
    assert_eq!(res[2]["status"], "ok", "best-effort continues: {r}");
    c.ok("GET_INSTANCE", json!({"instance_id": "m2"}));
}

#[test]
fn batch_accepts_the_operations_key() {
    let (_s, mut c) = setup();
    let r = c.ok(
        "BATCH",
        json!({"mode": "best_effort", "operations": [create_op("k1"), apply_op("k1", "PAY")]}),
    );
    let res = r["results"].as_array().unwrap();
    assert_eq!(res.len(), 2);
    assert!(res.iter().all(|e| e["status"] == "ok"), "{r}");
}

#[test]
fn batch_empty_ops_gives_empty_results() {
    let (_s, mut c) = setup();
    assert_eq!(c.ok("BATCH", json!({"ops": []}))["results"], json!([]));
}

#[test]
fn batch_atomic_success_later_ops_see_earlier_effects() {
    let (_s, mut c) = setup();
    let r = c.ok(
        "BATCH",
        json!({"mode": "atomic", "ops": [
            create_op("a1"),
            apply_op("a1", "PAY"),
            apply_op("a1", "SHIP"),
            op("DELETE_INSTANCE", json!({"instance_id": "a1"})),
            create_op("a2"),
        ]}),
    );
    let res = r["results"].as_array().unwrap();
    assert_eq!(res.len(), 5);
    assert!(res.iter().all(|e| e["status"] == "ok"), "{r}");
    assert_eq!(res[2]["result"]["to_state"], "shipped");
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "a1"}),
        "INSTANCE_NOT_FOUND",
    );
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "a2"}))["state"],
        "pending"
    );
}

#[test]
fn batch_atomic_failure_applies_nothing_and_reports_the_failing_op() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "pre", json!({}));
    let before = entry_count(&mut c);
    let e = c.err(
        "BATCH",
        json!({"mode": "atomic", "ops": [
            create_op("x1"),
            apply_op("pre", "PAY"),
            apply_op("x1", "SHIP"),
            create_op("x2"),
        ]}),
    );
    assert_eq!(
        e["code"], "INVALID_TRANSITION",
        "the failing op's own code: {e}"
    );
    assert_eq!(e["details"]["index"], 2, "{e}");
    assert_eq!(e["details"]["op"], "APPLY_EVENT", "{e}");
    // All or nothing.
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "x1"}),
        "INSTANCE_NOT_FOUND",
    );
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "x2"}),
        "INSTANCE_NOT_FOUND",
    );
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "pre"}))["state"],
        "pending"
    );
    assert_eq!(entry_count(&mut c), before, "nothing written to the WAL");
}

#[test]
fn batch_atomic_failure_on_first_op_reports_index_0() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "exists", json!({}));
    let e = c.err(
        "BATCH",
        json!({"mode": "atomic", "ops": [create_op("exists"), create_op("new")]}),
    );
    assert_eq!(e["code"], "INSTANCE_EXISTS", "{e}");
    assert_eq!(e["details"]["index"], 0, "{e}");
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "new"}),
        "INSTANCE_NOT_FOUND",
    );
}

#[test]
fn batch_atomic_is_one_wal_record() {
    // decisions.md: an atomic batch is written as ONE WAL record.
    let (_s, mut c) = setup();
    let before = entry_count(&mut c);
    c.ok(
        "BATCH",
        json!({"mode": "atomic", "ops": [create_op("r1"), create_op("r2"), apply_op("r1", "PAY")]}),
    );
    assert_eq!(entry_count(&mut c), before + 1);
}

#[test]
fn batch_over_100_ops_is_bad_request_and_runs_nothing() {
    let (_s, mut c) = setup();
    let ops: Vec<Value> = (0..101).map(|i| create_op(&format!("o{i}"))).collect();
    let e = c.err_code(
        "BATCH",
        json!({"mode": "best_effort", "ops": ops}),
        "BAD_REQUEST",
    );
    assert_eq!(e["retryable"], false);
    assert_eq!(c.ok("LIST_INSTANCES", json!({}))["total"], 0);
    // Exactly 100 is fine.
    let ops: Vec<Value> = (0..100).map(|i| create_op(&format!("o{i}"))).collect();
    let r = c.ok("BATCH", json!({"mode": "best_effort", "ops": ops}));
    assert_eq!(r["results"].as_array().unwrap().len(), 100);
    assert_eq!(c.ok("LIST_INSTANCES", json!({}))["total"], 100);
}

#[test]
fn batch_limit_follows_max_batch_ops() {
    let s = Server::with_config(json!({"storage": {"max_batch_ops": 3}}));
    let mut c = s.connect();
    put_order(&mut c, "order");
    let ops: Vec<Value> = (0..4).map(|i| create_op(&format!("o{i}"))).collect();
    c.err_code("BATCH", json!({"ops": ops}), "BAD_REQUEST");
    let ops: Vec<Value> = (0..3).map(|i| create_op(&format!("o{i}"))).collect();
    c.ok("BATCH", json!({"ops": ops}));
}

#[test]
fn batch_without_ops_is_bad_request() {
    let (_s, mut c) = setup();
    c.err_code("BATCH", json!({"mode": "atomic"}), "BAD_REQUEST");
    c.err_code("BATCH", json!({"ops": "CREATE_INSTANCE"}), "BAD_REQUEST");
}

#[test]
fn batch_element_without_op_is_bad_request() {
    let (_s, mut c) = setup();
    let e = c.err(
        "BATCH",
        json!({"mode": "best_effort", "ops": [{"params": {"instance_id": "x"}}]}),
    );
    assert_eq!(e["code"], "BAD_REQUEST", "{e}");
}

#[test]
fn batch_apply_events_notify_watchers() {
    let (s, mut c) = setup();
    create(&mut c, "order", "w", json!({}));
    let mut w = s.connect();
    let sub = w.ok("WATCH_INSTANCE", json!({"instance_id": "w"}))["subscription_id"].clone();
    let r = c.ok(
        "BATCH",
        json!({"mode": "atomic", "ops": [apply_op("w", "PAY"), apply_op("w", "CANCEL")]}),
    );
    assert_eq!(r["results"].as_array().unwrap().len(), 2);
    let e1 = w.next_event(READ_TIMEOUT);
    let e2 = w.next_event(READ_TIMEOUT);
    assert_eq!(e1["subscription_id"], sub);
    assert_eq!(e1["event"], "PAY");
    assert_eq!(e2["event"], "CANCEL");
    assert_eq!(e2["to_state"], "cancelled");
}

#[test]
fn batch_rejects_non_batchable_ops() {
    // decisions.md: batchable ops are CREATE_INSTANCE, APPLY_EVENT, DELETE_INSTANCE,
    // GET_INSTANCE, and (0.3.0 compatibility, reference_0_3_0.rs) FLUSH_ALL. Anything else is
    // refused (as the whole batch or as that element).
    let (_s, mut c) = setup();
    for bad in [
        op("PING", json!({})),
        op(
            "PUT_MACHINE",
            json!({"machine": "x", "version": 1, "definition": counter_definition()}),
        ),
        op("BATCH", json!({"ops": []})),
        op("WATCH_ALL", json!({})),
        op("FROBNICATE", json!({})),
    ] {
        let r = c.request(
            "BATCH",
            json!({"mode": "best_effort", "ops": [bad.clone()]}),
        );
        let refused = r["error"]["code"] == "BAD_REQUEST"
            || (r["result"]["results"][0]["status"] == "error"
                && r["result"]["results"][0]["error"]["code"] == "BAD_REQUEST");
        assert!(refused, "{bad} inside BATCH: {r}");
    }
    c.err_code(
        "GET_MACHINE",
        json!({"machine": "x", "version": 1}),
        "MACHINE_NOT_FOUND",
    );
}
