//! What the reference's 0.3.0 added on the wire, minus replication itself
//! (`shared/spec/rstmdb-0.3.0.md` §5, items 1–4): REPLICATION_STATUS on a standalone node,
//! REPLICATE / REPLICATE_ACK refused, FLUSH_ALL inside and outside BATCH, absent or null
//! `params` on LIST_INSTANCES and WATCH_ALL, `storage.allow_instance_recreate`, and the proof
//! that a standalone node never sends the three replication-only error codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

/// SHA-256 of "secret".
const SECRET_HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

/// 0.3.0's words for REPLICATE / REPLICATE_ACK sent as requests.
const INTERNAL_ONLY: &str = "invalid request: replication operations are handled internally";

/// The 16 codes of 0.1.1, all a standalone node may send (the Python client 0.2.1 knows no
/// others).
const STANDALONE_CODES: [&str; 16] = [
    "UNSUPPORTED_PROTOCOL",
    "BAD_REQUEST",
    "UNAUTHORIZED",
    "AUTH_FAILED",
    "NOT_FOUND",
    "MACHINE_NOT_FOUND",
    "MACHINE_VERSION_EXISTS",
    "MACHINE_VERSION_LIMIT_EXCEEDED",
    "INSTANCE_NOT_FOUND",
    "INSTANCE_EXISTS",
    "INVALID_TRANSITION",
    "GUARD_FAILED",
    "CONFLICT",
    "WAL_IO_ERROR",
    "INTERNAL_ERROR",
    "RATE_LIMITED",
];

/// Sends `op` with `params` exactly as given (`None`: no `params` key at all).
fn raw_request(c: &mut Client, op: &str, params: Option<Value>) -> Value {
    let id = c.fresh_id();
    c.send_request(&id, op, params);
    c.read_response(&id)
}

// ---- 1. REPLICATION_STATUS, REPLICATE, REPLICATE_ACK -----------------------------------------

#[test]
fn replication_status_on_a_standalone_node_is_role_standalone() {
    let s = Server::start();
    let mut c = s.connect();
    // The 0.3.0 clients send `{}`; absent, null and other params are ignored as well.
    for params in [
        Some(json!({})),
        None,
        Some(Value::Null),
        Some(json!({"x": 1})),
    ] {
        let r = raw_request(&mut c, "REPLICATION_STATUS", params.clone());
        assert_eq!(r["status"], "ok", "{params:?}: {r}");
        assert_eq!(r["result"], json!({"role": "standalone"}), "{params:?}");
    }
    // As a JSON line too.
    let r = c.request_line("REPLICATION_STATUS", json!({}));
    assert_eq!(r["result"], json!({"role": "standalone"}), "{r}");
}

#[test]
fn replication_status_needs_authentication_like_every_op() {
    let s = Server::with_config(json!({"auth": {"required": true, "token_hashes": [SECRET_HASH]}}));
    let mut c = s.connect();
    c.err_code("REPLICATION_STATUS", json!({}), "UNAUTHORIZED");
    c.err_code("FLUSH_ALL", json!({}), "UNAUTHORIZED");
    c.err_code("REPLICATE", json!({}), "UNAUTHORIZED");
    c.ok("AUTH", json!({"method": "bearer", "token": "secret"}));
    assert_eq!(
        c.ok("REPLICATION_STATUS", json!({})),
        json!({"role": "standalone"})
    );
}

#[test]
fn replicate_and_replicate_ack_as_requests_are_bad_request_with_the_reference_message() {
    let s = Server::start();
    let mut c = s.connect();
    for op in ["REPLICATE", "REPLICATE_ACK"] {
        for params in [
            Some(json!({})),
            None,
            Some(json!({"sequence": 5, "entry": {"type": "flush_all"}})),
        ] {
            let r = raw_request(&mut c, op, params.clone());
            assert_eq!(r["status"], "error", "{op} {params:?}: {r}");
            assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}");
            assert_eq!(r["error"]["message"], INTERNAL_ONLY, "{r}");
            assert_eq!(r["error"]["retryable"], false, "{r}");
        }
    }
    // The connection stays usable, and nothing was written.
    c.ok("PING", json!({}));
    assert_eq!(c.ok("WAL_STATS", json!({}))["entry_count"], 0);
}

// ---- FLUSH_ALL inside and outside BATCH ------------------------------------------------------

#[test]
fn flush_all_outside_batch_removes_everything_and_reports_the_counts() {
    let s = Server::with_config(json!({"storage": {"allow_flush_all": true}}));
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({}));
    create(&mut c, "order", "b", json!({}));
    // 0.3.0's client sends `{}`; absent params work too.
    let r = raw_request(&mut c, "FLUSH_ALL", None);
    assert_eq!(
        r["result"],
        json!({"flushed": true, "instances_removed": 2, "machines_removed": 1}),
        "{r}"
    );
    assert!(
        r["meta"]["wal_offset"].is_u64(),
        "a mutation reports its offset: {r}"
    );
    assert_eq!(c.ok("LIST_INSTANCES", json!({}))["total"], 0);
}

#[test]
fn flush_all_when_disabled_is_bad_request_and_changes_nothing() {
    let s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({}));
    let e = c.err_code("FLUSH_ALL", json!({}), "BAD_REQUEST");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("storage.allow_flush_all")),
        "the message names the key to set: {e}"
    );
    c.ok("GET_INSTANCE", json!({"instance_id": "a"}));
}

#[test]
fn flush_all_inside_batch_is_refused_before_anything_runs() {
    // decisions.md keeps BATCH to the four instance ops (0.3.0 ran any op there): a FLUSH_ALL
    // element is refused with a message naming it, in either mode, and no element runs.
    let s = Server::with_config(json!({"storage": {"allow_flush_all": true}}));
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "keep", json!({}));
    for mode in ["best_effort", "atomic"] {
        let e = c.err_code(
            "BATCH",
            json!({"mode": mode, "ops": [
                {"op": "CREATE_INSTANCE", "params": {"instance_id": "new", "machine": "order", "version": 1}},
                {"op": "FLUSH_ALL", "params": {}},
            ]}),
            "BAD_REQUEST",
        );
        let m = e["message"].as_str().unwrap_or_default();
        assert!(m.contains("ops[1]") && m.contains("FLUSH_ALL"), "{e}");
        assert_eq!(e["details"]["op"], "FLUSH_ALL", "{e}");
    }
    c.ok("GET_INSTANCE", json!({"instance_id": "keep"}));
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "new"}),
        "INSTANCE_NOT_FOUND",
    );
}

// ---- 3. absent or null params on LIST_INSTANCES and WATCH_ALL --------------------------------

#[test]
fn list_instances_with_absent_or_null_params_lists_with_the_defaults() {
    let s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({}));
    create(&mut c, "order", "b", json!({}));
    let with_empty = c.ok("LIST_INSTANCES", json!({}));
    for params in [None, Some(Value::Null)] {
        let r = raw_request(&mut c, "LIST_INSTANCES", params.clone());
        assert_eq!(r["status"], "ok", "{params:?}: {r}");
        assert_eq!(r["result"], with_empty, "{params:?}");
        assert_eq!(r["result"]["total"], 2);
    }
}

#[test]
fn watch_all_with_absent_or_null_params_watches_everything() {
    let s = Server::start();
    let mut w = s.connect();
    let mut c = s.connect();
    put_order(&mut c, "order");
    let mut subs = Vec::new();
    for params in [None, Some(Value::Null)] {
        let r = raw_request(&mut w, "WATCH_ALL", params.clone());
        assert_eq!(r["status"], "ok", "{params:?}: {r}");
        subs.push(r["result"]["subscription_id"].clone());
    }
    create(&mut c, "order", "a", json!({}));
    apply(&mut c, "a", "PAY", json!({}));
    let mut seen = BTreeSet::new();
    for _ in 0..2 {
        let e = w.next_event(Duration::from_secs(5));
        assert_eq!(e["event"], "PAY", "{e}");
        seen.insert(e["subscription_id"].to_string());
    }
    let want: BTreeSet<_> = subs.iter().map(Value::to_string).collect();
    assert_eq!(seen, want, "each default subscription gets the event");
}

// ---- 4. storage.allow_instance_recreate ------------------------------------------------------

/// Create `id` (ctx gen 1), pay it, delete it.
fn create_pay_delete(c: &mut Client, id: &str) {
    create(c, "order", id, json!({"gen": 1}));
    apply(c, id, "PAY", json!({}));
    c.ok("DELETE_INSTANCE", json!({"instance_id": id}));
}

#[test]
fn recreate_is_allowed_by_default_and_the_wal_replays_the_new_instance() {
    // No automatic checkpoint: after SIGKILL the state is rebuilt from the WAL.
    let mut s = Server::with_config(json!({"compaction": {"enabled": false}}));
    let mut c = s.connect();
    put_order(&mut c, "order");
    create_pay_delete(&mut c, "r");
    let r = create(&mut c, "order", "r", json!({"gen": 2}));
    assert_eq!(r["state"], "pending", "a fresh instance: {r}");
    apply(&mut c, "r", "CANCEL", json!({"n": 1}));
    let before = c.ok("GET_INSTANCE", json!({"instance_id": "r"}));
    assert_eq!(before["state"], "cancelled");
    assert_eq!(before["ctx"], json!({"gen": 2, "n": 1}));
    drop(c);

    s.kill_9();
    s.restart();
    let mut c = s.connect();
    let after = c.ok("GET_INSTANCE", json!({"instance_id": "r"}));
    assert_eq!(
        after, before,
        "replay rebuilds the re-created instance exactly"
    );
    // And once more after a clean stop (checkpoint, then nothing to replay).
    drop(c);
    assert!(s.terminate().success());
    s.restart();
    let mut c = s.connect();
    assert_eq!(c.ok("GET_INSTANCE", json!({"instance_id": "r"})), before);
}

#[test]
fn recreate_disabled_is_instance_exists_and_stays_so_across_checkpoint_and_restart() {
    let mut s = Server::with_config(json!({
        "storage": {"allow_instance_recreate": false},
        "compaction": {"enabled": false},
    }));
    let mut c = s.connect();
    put_order(&mut c, "order");
    create_pay_delete(&mut c, "gone");
    let params = json!({"instance_id": "gone", "machine": "order", "version": 1});
    let e = c.err_code("CREATE_INSTANCE", params.clone(), "INSTANCE_EXISTS");
    assert_eq!(e["details"]["instance_id"], "gone", "{e}");
    assert_eq!(e["details"]["reason"], "deleted", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("allow_instance_recreate")),
        "the message names the setting: {e}"
    );
    // Reads and events on the deleted instance stay INSTANCE_NOT_FOUND.
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "gone"}),
        "INSTANCE_NOT_FOUND",
    );
    c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "gone", "event": "CANCEL"}),
        "INSTANCE_NOT_FOUND",
    );
    // A checkpoint would purge the tombstone; with re-creation off it must not.
    c.ok("COMPACT", json!({}));
    c.err_code("CREATE_INSTANCE", params.clone(), "INSTANCE_EXISTS");
    // Other ids are not affected.
    create(&mut c, "order", "other", json!({}));
    drop(c);

    s.kill_9();
    s.restart();
    let mut c = s.connect();
    c.err_code("CREATE_INSTANCE", params.clone(), "INSTANCE_EXISTS");
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "gone"}),
        "INSTANCE_NOT_FOUND",
    );
    c.ok("GET_INSTANCE", json!({"instance_id": "other"}));
}

#[test]
fn recreate_setting_comes_from_its_environment_variable_too() {
    let dir = tempdir();
    let mut cfg = base_config(&dir.path().join("data"));
    merge(
        &mut cfg,
        &json!({"storage": {"allow_instance_recreate": true}}),
    );
    let s = Server::try_start_in(
        dir,
        &to_yaml(&cfg),
        ConfigVia::Flag,
        &[("RSTMDB_ALLOW_INSTANCE_RECREATE", "false")],
    )
    .unwrap_or_else(|f| panic!("{f:?}"));
    let mut c = s.connect();
    put_order(&mut c, "order");
    create_pay_delete(&mut c, "e");
    c.err_code(
        "CREATE_INSTANCE",
        json!({"instance_id": "e", "machine": "order", "version": 1}),
        "INSTANCE_EXISTS",
    );
}

#[test]
fn flush_all_setting_comes_from_its_environment_variable_too() {
    let dir = tempdir();
    let cfg = base_config(&dir.path().join("data"));
    let s = Server::try_start_in(
        dir,
        &to_yaml(&cfg),
        ConfigVia::Flag,
        &[("RSTMDB_ALLOW_FLUSH_ALL", "true")],
    )
    .unwrap_or_else(|f| panic!("{f:?}"));
    let mut c = s.connect();
    assert_eq!(c.ok("FLUSH_ALL", json!({}))["flushed"], true);
}

// ---- 2. a standalone node never sends a replication-only code --------------------------------

/// Every op, with parameters that fail in as many ways as we can think of, plus gate
/// failures (authentication, roles, disabled features, limits): every error code seen is
/// one of the 16 standalone codes. Together with the unit tests of `rstmdb-server`'s
/// `error` module (every engine code maps to a standalone code) this is the proof that a
/// standalone node cannot produce READ_ONLY_MODE, REPLICATION_TIMEOUT or REPLICATION_ERROR.
#[test]
fn a_standalone_node_never_sends_a_replication_only_code() {
    let s = Server::with_config(json!({
        "auth": {"required": true, "token_hashes": [SECRET_HASH]},
        "storage": {"max_batch_ops": 2, "max_machine_versions": 1},
    }));
    let mut seen = BTreeSet::new();
    let mut record = |r: &Value| {
        if r["status"] == "error" {
            seen.insert(r["error"]["code"].as_str().unwrap_or("?").to_string());
        }
    };
    let mut c = s.connect();
    // Before AUTH: every op is refused by the gate.
    let ops = [
        "HELLO",
        "AUTH",
        "PING",
        "INFO",
        "PUT_MACHINE",
        "GET_MACHINE",
        "LIST_MACHINES",
        "CREATE_INSTANCE",
        "GET_INSTANCE",
        "LIST_INSTANCES",
        "DELETE_INSTANCE",
        "APPLY_EVENT",
        "BATCH",
        "SNAPSHOT_INSTANCE",
        "WAL_READ",
        "WAL_STATS",
        "COMPACT",
        "WATCH_INSTANCE",
        "WATCH_ALL",
        "UNWATCH",
        "FLUSH_ALL",
        "REPLICATION_STATUS",
        "REPLICATE",
        "REPLICATE_ACK",
        "BACKUP_BEGIN",
        "BACKUP_READ",
        "BACKUP_END",
        "RESTORE_INSTANCE",
    ];
    for op in ops {
        record(&c.request(op, json!({})));
    }
    record(&c.request("AUTH", json!({"method": "bearer", "token": "wrong"})));
    record(&c.request("HELLO", json!({"protocol_version": 99})));
    c.ok("AUTH", json!({"method": "bearer", "token": "secret"}));

    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({"amount": 0}));
    create_pay_delete(&mut c, "d");
    let failing: Vec<(&str, Value)> = vec![
        (
            "PUT_MACHINE",
            json!({"machine": "order", "version": 1, "definition": {"states": []}}),
        ),
        (
            "PUT_MACHINE",
            json!({"machine": "order", "version": 1, "definition": counter_definition()}),
        ),
        (
            "PUT_MACHINE",
            json!({"machine": "order", "version": 2, "definition": order_definition()}),
        ),
        ("GET_MACHINE", json!({"machine": "nope", "version": 1})),
        (
            "CREATE_INSTANCE",
            json!({"instance_id": "a", "machine": "order", "version": 1}),
        ),
        ("CREATE_INSTANCE", json!({"machine": "nope", "version": 1})),
        (
            "CREATE_INSTANCE",
            json!({"machine": "order", "version": 1, "initial_ctx": 5}),
        ),
        ("GET_INSTANCE", json!({"instance_id": "nope"})),
        ("GET_INSTANCE", json!({"instance_id": "d"})),
        ("LIST_INSTANCES", json!({"limit": "x"})),
        ("DELETE_INSTANCE", json!({"instance_id": "nope"})),
        ("APPLY_EVENT", json!({"instance_id": "a", "event": "SHIP"})),
        (
            "APPLY_EVENT",
            json!({"instance_id": "a", "event": "PAY", "expected_state": "paid"}),
        ),
        ("APPLY_EVENT", json!({"instance_id": "d", "event": "PAY"})),
        ("BATCH", json!({"ops": [{"op": "PING"}]})),
        (
            "BATCH",
            json!({"ops": [{"op": "PING"}, {"op": "PING"}, {"op": "PING"}]}),
        ),
        (
            "BATCH",
            json!({"mode": "atomic", "ops": [
            {"op": "APPLY_EVENT", "params": {"instance_id": "nope", "event": "PAY"}}]}),
        ),
        ("SNAPSHOT_INSTANCE", json!({"instance_id": "nope"})),
        ("WAL_READ", json!({"from_offset": "x"})),
        ("WATCH_INSTANCE", json!({"instance_id": "nope"})),
        ("WATCH_ALL", json!({"machines": 5})),
        ("UNWATCH", json!({})),
        ("FLUSH_ALL", json!({})),
        ("REPLICATE", json!({})),
        ("REPLICATE_ACK", json!({})),
        ("BACKUP_READ", json!({"backup_id": "nope", "offset": 0})),
        ("BACKUP_END", json!({})),
        (
            "RESTORE_INSTANCE",
            json!({"instance_id": "x", "instance": {}, "wal": []}),
        ),
        ("NO_SUCH_OP", json!({})),
    ];
    for (op, params) in failing {
        let r = c.request(op, params.clone());
        assert_eq!(r["status"], "error", "{op} {params} was meant to fail: {r}");
        record(&r);
    }
    // Guards and idempotency conflicts.
    apply(&mut c, "a", "PAY", json!({}));
    record(&c.request("APPLY_EVENT", json!({"instance_id": "a", "event": "SHIP"})));
    c.ok(
        "APPLY_EVENT",
        json!({"instance_id": "a", "event": "CANCEL", "idempotency_key": "k"}),
    );
    record(&c.request(
        "APPLY_EVENT",
        json!({"instance_id": "a", "event": "PAY", "idempotency_key": "k"}),
    ));

    let standalone: BTreeSet<String> = STANDALONE_CODES.iter().map(|c| c.to_string()).collect();
    let outside: Vec<_> = seen.difference(&standalone).collect();
    assert!(outside.is_empty(), "codes outside the 16: {outside:?}");
    // The run really exercised a wide range of codes, not just BAD_REQUEST.
    for code in [
        "UNAUTHORIZED",
        "AUTH_FAILED",
        "UNSUPPORTED_PROTOCOL",
        "BAD_REQUEST",
        "MACHINE_NOT_FOUND",
        "MACHINE_VERSION_EXISTS",
        "MACHINE_VERSION_LIMIT_EXCEEDED",
        "INSTANCE_NOT_FOUND",
        "INSTANCE_EXISTS",
        "INVALID_TRANSITION",
        "GUARD_FAILED",
        "CONFLICT",
        "NOT_FOUND",
    ] {
        assert!(seen.contains(code), "{code} not produced; seen {seen:?}");
    }
}
