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

// FLUSH_ALL as a BATCH element (0.3.0 ran it there because BATCH dispatched any op).

fn op(name: &str, params: Value) -> Value {
    json!({"op": name, "params": params})
}

fn get_op(id: &str) -> Value {
    op("GET_INSTANCE", json!({"instance_id": id}))
}

fn create_op(id: &str) -> Value {
    op(
        "CREATE_INSTANCE",
        json!({"instance_id": id, "machine": "order", "version": 1}),
    )
}

fn flush_op() -> Value {
    op("FLUSH_ALL", json!({}))
}

fn flush_allowed() -> Server {
    Server::with_config(json!({"storage": {"allow_flush_all": true}}))
}

fn entry_count(c: &mut Client) -> u64 {
    u64_of(&c.ok("WAL_STATS", json!({}))["entry_count"])
}

/// The `type` of every WAL record from `from` on.
fn wal_types(c: &mut Client, from: u64) -> Vec<String> {
    let r = c.ok("WAL_READ", json!({"from_offset": from}));
    r["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rec| rec["entry"]["type"].as_str().unwrap().to_owned())
        .collect()
}

/// The results of a best-effort BATCH, as `(status, code or "")` pairs.
fn statuses(r: &Value) -> Vec<(String, String)> {
    r["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {r}"))
        .iter()
        .map(|x| {
            (
                x["status"].as_str().unwrap_or_default().to_owned(),
                x["error"]["code"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn pairs(want: &[(&str, &str)]) -> Vec<(String, String)> {
    want.iter()
        .map(|(s, c)| (s.to_string(), c.to_string()))
        .collect()
}

#[test]
fn flush_all_in_a_best_effort_batch_runs_in_its_place_as_its_own_wal_record() {
    let s = flush_allowed();
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({}));
    create(&mut c, "order", "b", json!({}));
    let before = u64_of(&c.ok("WAL_STATS", json!({}))["latest_offset"]);
    let r = c.request(
        "BATCH",
        json!({"ops": [
            get_op("a"),
            op("APPLY_EVENT", json!({"instance_id": "a", "event": "PAY"})),
            flush_op(),
            // After the flush: `a` is gone, and so is its machine (a create of the same id
            // fails on the machine, not with INSTANCE_EXISTS).
            get_op("a"),
            create_op("a"),
            // params absent and null are accepted, as for the op on its own.
            {"op": "FLUSH_ALL"},
            {"op": "FLUSH_ALL", "params": null},
        ]}),
    );
    assert_eq!(r["status"], "ok", "{r}");
    let res = &r["result"];
    assert_eq!(
        statuses(res),
        pairs(&[
            ("ok", ""),
            ("ok", ""),
            ("ok", ""),
            ("error", "INSTANCE_NOT_FOUND"),
            ("error", "MACHINE_NOT_FOUND"),
            ("ok", ""),
            ("ok", ""),
        ]),
        "{r}"
    );
    assert_eq!(res["results"][0]["result"]["state"], "pending", "{r}");
    assert_eq!(res["results"][1]["result"]["to_state"], "paid", "{r}");
    assert_eq!(
        res["results"][2]["result"],
        json!({"flushed": true, "instances_removed": 2, "machines_removed": 1}),
        "the element's result is the standalone op's: {r}"
    );
    for i in [5, 6] {
        assert_eq!(
            res["results"][i]["result"],
            json!({"flushed": true, "instances_removed": 0, "machines_removed": 0}),
            "{r}"
        );
    }
    // One record per write, in order: the apply, then each flush on its own.
    assert_eq!(
        wal_types(&mut c, before + 1),
        ["apply_event", "flush_all", "flush_all", "flush_all"]
    );
    assert_eq!(
        u64_of(&r["meta"]["wal_offset"]),
        before + 4,
        "meta names the batch's last record: {r}"
    );
    assert_eq!(c.ok("LIST_MACHINES", json!({}))["items"], json!([]));
    assert_eq!(c.ok("LIST_INSTANCES", json!({}))["total"], 0);
    // The id is free again once a machine is back.
    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({}));
}

#[test]
fn a_disabled_flush_all_in_a_best_effort_batch_is_that_elements_error_and_the_rest_runs() {
    let s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({}));
    let alone = c.err_code("FLUSH_ALL", json!({}), "BAD_REQUEST");
    let count = entry_count(&mut c);
    let r = c.ok(
        "BATCH",
        json!({"mode": "best_effort", "ops": [create_op("c"), flush_op(), get_op("a")]}),
    );
    assert_eq!(
        statuses(&r),
        pairs(&[("ok", ""), ("error", "BAD_REQUEST"), ("ok", "")]),
        "{r}"
    );
    assert_eq!(
        r["results"][1]["error"]["message"], alone["message"],
        "the standalone op's message: {r}"
    );
    assert_eq!(r["results"][1]["error"]["retryable"], false, "{r}");
    assert_eq!(
        entry_count(&mut c),
        count + 1,
        "only the create was written"
    );
    c.ok("GET_INSTANCE", json!({"instance_id": "a"}));
    c.ok("GET_INSTANCE", json!({"instance_id": "c"}));
    c.ok("GET_MACHINE", json!({"machine": "order", "version": 1}));
}

#[test]
fn an_atomic_batch_reads_then_flushes_as_one_flush_all_record() {
    let s = flush_allowed();
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({"amount": 3}));
    create(&mut c, "order", "b", json!({}));
    let before = u64_of(&c.ok("WAL_STATS", json!({}))["latest_offset"]);
    let r = c.request(
        "BATCH",
        json!({"mode": "atomic", "ops": [get_op("a"), flush_op(), flush_op()]}),
    );
    assert_eq!(r["status"], "ok", "{r}");
    let res = &r["result"]["results"];
    assert_eq!(res[0]["result"]["instance_id"], "a", "{r}");
    assert_eq!(res[0]["result"]["ctx"], json!({"amount": 3}), "{r}");
    assert_eq!(
        res[1]["result"],
        json!({"flushed": true, "instances_removed": 2, "machines_removed": 1}),
        "{r}"
    );
    assert_eq!(
        res[2]["result"],
        json!({"flushed": true, "instances_removed": 0, "machines_removed": 0}),
        "a second flush in the same batch finds nothing: {r}"
    );
    assert_eq!(wal_types(&mut c, before + 1), ["flush_all"], "one record");
    assert_eq!(u64_of(&r["meta"]["wal_offset"]), before + 1, "{r}");
    assert_eq!(c.ok("LIST_INSTANCES", json!({}))["total"], 0);
    assert_eq!(c.ok("LIST_MACHINES", json!({}))["items"], json!([]));
}

#[test]
fn an_atomic_batch_with_flush_all_refuses_writes_before_it_and_ops_after_it_and_runs_nothing() {
    let s = flush_allowed();
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({}));
    let count = entry_count(&mut c);
    // A write before the flush would be wiped by it in the same instant: refused.
    for (i, write) in [
        create_op("c"),
        op("APPLY_EVENT", json!({"instance_id": "a", "event": "PAY"})),
        op("DELETE_INSTANCE", json!({"instance_id": "a"})),
    ]
    .into_iter()
    .enumerate()
    {
        let name = write["op"].as_str().unwrap().to_owned();
        let e = c.err_code(
            "BATCH",
            json!({"mode": "atomic", "ops": [get_op("a"), write, flush_op()]}),
            "BAD_REQUEST",
        );
        let m = e["message"].as_str().unwrap_or_default();
        assert!(
            m.contains("ops[1]") && m.contains(&name) && m.contains("FLUSH_ALL at ops[2]"),
            "case {i}: {e}"
        );
        assert_eq!(e["details"]["index"], 1, "{e}");
        assert_eq!(e["details"]["op"], name.as_str(), "{e}");
    }
    // After the flush nothing is left (no machine either), and a batch cannot put a machine
    // back: the op fails as on an empty database, and the whole batch with it.
    for (after, code) in [
        (get_op("a"), "INSTANCE_NOT_FOUND"),
        (create_op("a"), "MACHINE_NOT_FOUND"),
        (
            op("APPLY_EVENT", json!({"instance_id": "a", "event": "PAY"})),
            "INSTANCE_NOT_FOUND",
        ),
    ] {
        let e = c.err_code(
            "BATCH",
            json!({"mode": "atomic", "ops": [flush_op(), after]}),
            code,
        );
        assert_eq!(e["details"]["index"], 1, "{e}");
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("atomic batch failed at ops[1]")),
            "{e}"
        );
    }
    assert_eq!(entry_count(&mut c), count, "nothing was written");
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "a"}))["state"],
        "pending"
    );
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "c"}),
        "INSTANCE_NOT_FOUND",
    );
    c.ok("GET_MACHINE", json!({"machine": "order", "version": 1}));
}

#[test]
fn a_disabled_flush_all_fails_an_atomic_batch_with_the_standalone_message() {
    let s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({}));
    let alone = c.err_code("FLUSH_ALL", json!({}), "BAD_REQUEST");
    let count = entry_count(&mut c);
    let e = c.err_code(
        "BATCH",
        json!({"mode": "atomic", "ops": [get_op("a"), flush_op()]}),
        "BAD_REQUEST",
    );
    assert_eq!(e["details"]["index"], 1, "{e}");
    assert_eq!(e["details"]["op"], "FLUSH_ALL", "{e}");
    let m = e["message"].as_str().unwrap_or_default();
    assert!(
        m.ends_with(alone["message"].as_str().unwrap_or("?")),
        "{e} / {alone}"
    );
    assert_eq!(entry_count(&mut c), count);
    c.ok("GET_INSTANCE", json!({"instance_id": "a"}));
}

/// A server with an admin, a writer and an admin limited to `order*` machines.
fn roles_server() -> Server {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    let sha = |t: &str| -> String {
        Sha256::digest(t.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let dir = tempdir();
    let secrets = dir.path().join("secrets");
    std::fs::write(
        &secrets,
        format!(
            "{} root admin\n{} ci write\n{} orders-admin admin,order*\n",
            sha("admin-token"),
            sha("writer-token"),
            sha("orders-admin-token")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cfg = base_config(&dir.path().join("data"));
    merge(
        &mut cfg,
        &json!({
            "auth": {"required": true, "secrets_file": secrets.to_string_lossy()},
            "storage": {"allow_flush_all": true},
        }),
    );
    Server::try_start_in(dir, &to_yaml(&cfg), ConfigVia::Flag, &[])
        .unwrap_or_else(|f| panic!("start: {}\n{}", f.stdout, f.stderr))
}

fn login(s: &Server, token: &str) -> Client {
    let mut c = s.connect();
    c.ok("AUTH", json!({"method": "bearer", "token": token}));
    c
}

#[test]
fn a_batch_with_flush_all_needs_an_unrestricted_admin_and_otherwise_runs_nothing() {
    let s = roles_server();
    let mut admin = login(&s, "admin-token");
    put_order(&mut admin, "order");
    create(&mut admin, "order", "a", json!({}));
    let count = entry_count(&mut admin);
    let mut writer = login(&s, "writer-token");
    let mut limited = login(&s, "orders-admin-token");
    for mode in ["best_effort", "atomic"] {
        let batch = json!({"mode": mode, "ops": [create_op("new"), flush_op()]});
        let e = writer.err_code("BATCH", batch.clone(), "UNAUTHORIZED");
        assert_eq!(
            e["message"], "ops[1]: FLUSH_ALL requires the admin role; ci has write",
            "{mode}: {e}"
        );
        // FLUSH_ALL wipes every machine: as on its own, a machine-limited admin may not.
        let alone = limited.err_code("FLUSH_ALL", json!({}), "UNAUTHORIZED");
        let e = limited.err_code("BATCH", batch, "UNAUTHORIZED");
        assert_eq!(
            e["message"].as_str().unwrap_or_default(),
            format!("ops[1]: {}", alone["message"].as_str().unwrap_or("?")),
            "{mode}: {e}"
        );
    }
    assert_eq!(entry_count(&mut admin), count, "nothing ran");
    admin.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "new"}),
        "INSTANCE_NOT_FOUND",
    );
    admin.ok("GET_INSTANCE", json!({"instance_id": "a"}));
    // The writer's batches without FLUSH_ALL still work.
    let r = writer.ok("BATCH", json!({"ops": [create_op("w")]}));
    assert_eq!(r["results"][0]["status"], "ok", "{r}");
    // The unrestricted admin may.
    let r = admin.ok("BATCH", json!({"ops": [flush_op()]}));
    assert_eq!(r["results"][0]["result"]["instances_removed"], 2, "{r}");
}

#[test]
fn batched_flushes_survive_sigkill_and_replay_rebuilds_what_followed_them() {
    let mut s = flush_allowed();
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({"v": "old"}));
    create(&mut c, "order", "b", json!({}));
    // Best effort: a write before the flush, the flush, a read after it.
    let r = c.ok(
        "BATCH",
        json!({"ops": [create_op("c"), flush_op(), get_op("b")]}),
    );
    assert_eq!(
        statuses(&r),
        pairs(&[("ok", ""), ("ok", ""), ("error", "INSTANCE_NOT_FOUND")]),
        "{r}"
    );
    // Ops after the flush: the same ids again, on a machine put back.
    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({"v": "new"}));
    apply(&mut c, "a", "PAY", json!({}));
    create(&mut c, "order", "d", json!({}));
    // Atomic: read `d`, flush; then `d` once more.
    let r = c.ok(
        "BATCH",
        json!({"mode": "atomic", "ops": [get_op("d"), flush_op()]}),
    );
    assert_eq!(r["results"][1]["result"]["instances_removed"], 2, "{r}");
    put_order(&mut c, "order");
    create(&mut c, "order", "d", json!({"v": "last"}));
    let want_list = c.ok("LIST_INSTANCES", json!({}));
    let records = entry_count(&mut c);
    drop(c);
    s.kill_9();
    s.restart();
    // No checkpoint was taken (thresholds far away): recovery replayed every record.
    let log = s.stdout();
    let opened = log
        .lines()
        .rfind(|l| l.contains("database open"))
        .unwrap_or_else(|| panic!("no `database open` line:\n{log}"));
    assert!(
        opened.contains(&format!("replayed={records}")),
        "{records} records: {opened}"
    );
    let mut c = s.connect();
    assert_eq!(c.ok("LIST_INSTANCES", json!({})), want_list);
    assert_eq!(want_list["total"], 1, "{want_list}");
    let d = c.ok("GET_INSTANCE", json!({"instance_id": "d"}));
    assert_eq!(d["ctx"], json!({"v": "last"}), "{d}");
    for gone in ["a", "b", "c"] {
        c.err_code(
            "GET_INSTANCE",
            json!({"instance_id": gone}),
            "INSTANCE_NOT_FOUND",
        );
    }
    let machines = c.ok("LIST_MACHINES", json!({}));
    assert_eq!(
        machines["items"],
        json!([{"machine": "order", "versions": [1]}])
    );
}

#[test]
fn a_batched_flush_ends_every_subscription_in_either_mode() {
    let s = flush_allowed();
    let mut c = s.connect();
    for mode in ["best_effort", "atomic"] {
        put_order(&mut c, "order");
        create(&mut c, "order", "a", json!({}));
        let mut w = s.connect();
        let all = w.ok("WATCH_ALL", json!({}))["subscription_id"].clone();
        let one = w.ok("WATCH_INSTANCE", json!({"instance_id": "a"}))["subscription_id"].clone();
        let r = c.ok("BATCH", json!({"mode": mode, "ops": [flush_op()]}));
        assert_eq!(r["results"][0]["result"]["flushed"], true, "{r}");
        // Writes after the flush reach no old subscription.
        put_order(&mut c, "order");
        create(&mut c, "order", "a", json!({}));
        apply(&mut c, "a", "PAY", json!({}));
        match w.try_read_message(Duration::from_secs(1)) {
            Err(ReadError::Timeout) => {}
            Ok(m) => panic!(
                "{mode}: a subscription got a message after the flush: {}",
                m.value
            ),
            Err(e) => panic!("{mode}: {e:?}"),
        }
        for sub in [all, one] {
            let r = w.ok("UNWATCH", json!({"subscription_id": sub}));
            assert_eq!(r["removed"], false, "{mode}: subscription survived: {r}");
        }
        // The connection still subscribes normally.
        w.ok("WATCH_ALL", json!({}));
        apply(&mut c, "a", "CANCEL", json!({}));
        let ev = w.next_event(Duration::from_secs(5));
        assert_eq!(ev["instance_id"], "a", "{ev}");
        c.ok("FLUSH_ALL", json!({}));
    }
}

#[test]
fn a_batch_with_flush_all_is_one_audit_line_and_counted_as_a_batch() {
    use support::scrape::{get, metrics_addr, sample};
    let dir = tempdir();
    let audit = dir.path().join("audit.log");
    let s = Server::with_config(json!({
        "storage": {"allow_flush_all": true},
        "audit": {"enabled": true, "path": audit.to_string_lossy()},
        "metrics": {"enabled": true, "bind_addr": "127.0.0.1:0"},
    }));
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({}));
    c.ok("BATCH", json!({"ops": [get_op("a"), flush_op()]}));
    c.err_code(
        "BATCH",
        json!({"mode": "atomic", "ops": [create_op("x"), flush_op()]}),
        "BAD_REQUEST",
    );
    let lines = wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&audit).ok()?;
        (text.lines().filter(|l| l.contains("\"BATCH\"")).count() >= 2).then_some(text)
    })
    .unwrap_or_else(|| std::fs::read_to_string(&audit).unwrap_or_default());
    let batches: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|r| r["op"] == "BATCH")
        .collect();
    assert_eq!(batches.len(), 2, "{lines}");
    assert_eq!(batches[0]["status"], "ok", "{lines}");
    assert!(batches[0]["error_code"].is_null(), "{lines}");
    assert_eq!(batches[1]["status"], "error", "{lines}");
    assert_eq!(batches[1]["error_code"], "BAD_REQUEST", "{lines}");
    assert!(
        !lines.contains("\"FLUSH_ALL\""),
        "an element is not a request of its own: {lines}"
    );
    let (_, _, body) = get(metrics_addr(&s), "/metrics");
    assert_eq!(
        sample(&body, "rstmdb_requests_total{operation=\"BATCH\"}"),
        2.0
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
