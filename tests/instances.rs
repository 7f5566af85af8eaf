//! CREATE_INSTANCE, GET_INSTANCE, LIST_INSTANCES, DELETE_INSTANCE (protocol.md §5.4–§5.7,
//! decisions.md "Instances", "Idempotency", "WAL" (LIST ordering)).
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

fn ids(list: &Value) -> Vec<String> {
    list["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("instances array: {list}"))
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn create_instance_with_id_starts_in_initial_state() {
    let (_s, mut c) = setup();
    let r = c.ok(
        "CREATE_INSTANCE",
        json!({"instance_id": "o-1", "machine": "order", "version": 1,
               "initial_ctx": {"customer": "alice"}}),
    );
    assert_eq!(r["instance_id"], "o-1");
    assert_eq!(r["state"], "pending");
    assert!(r["wal_offset"].is_u64(), "{r}");
}

#[test]
fn create_instance_without_id_generates_a_uuid_v7() {
    let (_s, mut c) = setup();
    let a = c.ok("CREATE_INSTANCE", json!({"machine": "order", "version": 1}));
    let b = c.ok("CREATE_INSTANCE", json!({"machine": "order", "version": 1}));
    for r in [&a, &b] {
        let id = r["instance_id"].as_str().expect("generated id");
        let parts: Vec<&str> = id.split('-').collect();
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        assert_eq!(lens, vec![8, 4, 4, 4, 12], "UUID shape: {id}");
        assert!(
            id.bytes()
                .all(|c| c == b'-' || matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "lowercase hex: {id}"
        );
        assert_eq!(&parts[2][..1], "7", "UUID version 7: {id}");
        c.ok("GET_INSTANCE", json!({"instance_id": id}));
    }
    assert_ne!(a["instance_id"], b["instance_id"]);
}

#[test]
fn create_instance_existing_id_is_instance_exists() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "dup", json!({}));
    let e = c.err_code(
        "CREATE_INSTANCE",
        json!({"instance_id": "dup", "machine": "order", "version": 1}),
        "INSTANCE_EXISTS",
    );
    assert_eq!(e["retryable"], false);
}

#[test]
fn create_instance_unknown_machine_is_machine_not_found() {
    let (_s, mut c) = setup();
    c.err_code(
        "CREATE_INSTANCE",
        json!({"instance_id": "x", "machine": "ghost", "version": 1}),
        "MACHINE_NOT_FOUND",
    );
    c.err_code(
        "CREATE_INSTANCE",
        json!({"instance_id": "x", "machine": "order", "version": 9}),
        "MACHINE_NOT_FOUND",
    );
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "x"}),
        "INSTANCE_NOT_FOUND",
    );
}

#[test]
fn create_instance_non_object_initial_ctx_is_bad_request() {
    let (_s, mut c) = setup();
    for (i, ctx) in [json!(5), json!([1, 2]), json!("ctx"), json!(true)]
        .into_iter()
        .enumerate()
    {
        let id = format!("bad-{i}");
        let e = c.err_code(
            "CREATE_INSTANCE",
            json!({"instance_id": id, "machine": "order", "version": 1, "initial_ctx": ctx}),
            "BAD_REQUEST",
        );
        assert_eq!(e["retryable"], false);
        c.err_code(
            "GET_INSTANCE",
            json!({"instance_id": id}),
            "INSTANCE_NOT_FOUND",
        );
    }
}

#[test]
fn create_instance_absent_or_null_initial_ctx_is_empty_object() {
    let (_s, mut c) = setup();
    c.ok(
        "CREATE_INSTANCE",
        json!({"instance_id": "a", "machine": "order", "version": 1}),
    );
    c.ok(
        "CREATE_INSTANCE",
        json!({"instance_id": "n", "machine": "order", "version": 1, "initial_ctx": null}),
    );
    for id in ["a", "n"] {
        let g = c.ok("GET_INSTANCE", json!({"instance_id": id}));
        assert_eq!(g["ctx"], json!({}), "{id}: {g}");
    }
}

#[test]
fn create_instance_invalid_ids_are_bad_request() {
    let (_s, mut c) = setup();
    let long = "x".repeat(257);
    for id in ["", "tab\there", "nl\n", long.as_str()] {
        c.err_code(
            "CREATE_INSTANCE",
            json!({"instance_id": id, "machine": "order", "version": 1}),
            "BAD_REQUEST",
        );
    }
    let ok = "y".repeat(256);
    create(&mut c, "order", &ok, json!({}));
}

#[test]
fn create_instance_missing_machine_is_bad_request() {
    let (_s, mut c) = setup();
    c.err_code(
        "CREATE_INSTANCE",
        json!({"instance_id": "x", "version": 1}),
        "BAD_REQUEST",
    );
}

#[test]
fn create_instance_idempotency_key_replays_the_original_result() {
    let (_s, mut c) = setup();
    let p = json!({"machine": "order", "version": 1, "idempotency_key": "create-1"});
    let first = c.ok("CREATE_INSTANCE", p.clone());
    let again = c.ok("CREATE_INSTANCE", p);
    assert_eq!(again["instance_id"], first["instance_id"], "{again}");
    assert_eq!(again["wal_offset"], first["wal_offset"], "{again}");
    assert_eq!(again["state"], "pending");
    let l = c.ok("LIST_INSTANCES", json!({}));
    assert_eq!(l["total"], 1, "the replay created nothing: {l}");
}

#[test]
fn create_instance_idempotency_key_with_other_params_is_conflict() {
    let (_s, mut c) = setup();
    c.ok(
        "CREATE_INSTANCE",
        json!({"instance_id": "k1", "machine": "order", "version": 1,
               "idempotency_key": "same-key"}),
    );
    let e = c.err_code(
        "CREATE_INSTANCE",
        json!({"instance_id": "k2", "machine": "order", "version": 1,
               "idempotency_key": "same-key"}),
        "CONFLICT",
    );
    assert_eq!(e["details"]["reason"], "idempotency_key_reused", "{e}");
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "k2"}),
        "INSTANCE_NOT_FOUND",
    );
}

#[test]
fn get_instance_returns_state_ctx_and_offsets() {
    let (_s, mut c) = setup();
    let cr = create(&mut c, "order", "g1", json!({"customer": "bob"}));
    let g = c.ok("GET_INSTANCE", json!({"instance_id": "g1"}));
    assert_eq!(g["machine"], "order");
    assert_eq!(g["version"], 1);
    assert_eq!(g["state"], "pending");
    assert_eq!(g["ctx"], json!({"customer": "bob"}));
    assert_eq!(g["last_wal_offset"], cr["wal_offset"]);
    assert!(g.get("last_event_id").is_none_or(Value::is_null), "{g}");
    // Additive fields (decisions.md "Instances").
    assert_eq!(g["instance_id"], "g1", "{g}");
    assert!(g["created_at"].is_i64() || g["created_at"].is_u64(), "{g}");
    assert!(g["updated_at"].is_i64() || g["updated_at"].is_u64(), "{g}");
}

#[test]
fn get_instance_reflects_applies_and_event_id() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "g2", json!({"a": 1}));
    let ap = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": "g2", "event": "PAY", "payload": {"amount": 3},
               "event_id": "evt-1"}),
    );
    let g = c.ok("GET_INSTANCE", json!({"instance_id": "g2"}));
    assert_eq!(g["state"], "paid");
    assert_eq!(g["ctx"], json!({"a": 1, "amount": 3}));
    assert_eq!(g["last_event_id"], "evt-1");
    assert_eq!(g["last_wal_offset"], ap["wal_offset"]);
}

#[test]
fn get_instance_unknown_is_instance_not_found() {
    let (_s, mut c) = setup();
    let e = c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "nobody"}),
        "INSTANCE_NOT_FOUND",
    );
    assert_eq!(e["retryable"], false);
}

#[test]
fn list_instances_is_ordered_by_id_in_byte_order_with_fields() {
    let (_s, mut c) = setup();
    for id in ["inst-b", "inst-A", "inst-c", "inst-a", "Zed"] {
        create(&mut c, "order", id, json!({}));
    }
    let l = c.ok("LIST_INSTANCES", json!({}));
    assert_eq!(ids(&l), ["Zed", "inst-A", "inst-a", "inst-b", "inst-c"]);
    assert_eq!(l["total"], 5);
    assert_eq!(l["has_more"], false);
    let first = &l["instances"][0];
    assert_eq!(first["machine"], "order");
    assert_eq!(first["version"], 1);
    assert_eq!(first["state"], "pending");
    for k in ["created_at", "updated_at", "last_wal_offset"] {
        assert!(first[k].is_u64() || first[k].is_i64(), "{k}: {first}");
    }
    assert!(first.get("ctx").is_none(), "LIST has no ctx: {first}");
}

#[test]
fn list_instances_filters_by_machine_and_state() {
    let (_s, mut c) = setup();
    put_counter(&mut c, "counter");
    for i in 0..4 {
        create(&mut c, "order", &format!("o{i}"), json!({}));
        create(&mut c, "counter", &format!("c{i}"), json!({}));
    }
    apply(&mut c, "o1", "PAY", json!({}));
    apply(&mut c, "o3", "PAY", json!({}));
    let by_machine = c.ok("LIST_INSTANCES", json!({"machine": "order"}));
    assert_eq!(ids(&by_machine), ["o0", "o1", "o2", "o3"]);
    assert_eq!(by_machine["total"], 4);
    let by_state = c.ok("LIST_INSTANCES", json!({"state": "paid"}));
    assert_eq!(ids(&by_state), ["o1", "o3"]);
    assert_eq!(by_state["total"], 2);
    let both = c.ok(
        "LIST_INSTANCES",
        json!({"machine": "order", "state": "pending"}),
    );
    assert_eq!(ids(&both), ["o0", "o2"]);
    let none = c.ok(
        "LIST_INSTANCES",
        json!({"machine": "counter", "state": "paid"}),
    );
    assert_eq!(none["total"], 0);
    assert_eq!(none["instances"], json!([]));
    let case = c.ok("LIST_INSTANCES", json!({"machine": "ORDER"}));
    assert_eq!(case["total"], 0, "machine filter is case-sensitive");
}

#[test]
fn list_instances_pages_with_limit_offset_total_and_has_more() {
    let (_s, mut c) = setup();
    for i in 0..7 {
        create(&mut c, "order", &format!("p{i}"), json!({}));
    }
    let p1 = c.ok("LIST_INSTANCES", json!({"limit": 3}));
    assert_eq!(ids(&p1), ["p0", "p1", "p2"]);
    assert_eq!(p1["total"], 7);
    assert_eq!(p1["has_more"], true);
    let p3 = c.ok("LIST_INSTANCES", json!({"limit": 3, "offset": 6}));
    assert_eq!(ids(&p3), ["p6"]);
    assert_eq!(p3["total"], 7);
    assert_eq!(p3["has_more"], false);
    let empty = c.ok("LIST_INSTANCES", json!({"limit": 0}));
    assert_eq!(empty["instances"], json!([]));
    assert_eq!(empty["total"], 7);
    let past = c.ok("LIST_INSTANCES", json!({"offset": 100}));
    assert_eq!(past["instances"], json!([]));
    assert_eq!(past["has_more"], false);
}

#[test]
fn list_instances_after_cursor_continues_after_the_given_id() {
    let (_s, mut c) = setup();
    for i in 1..=6 {
        create(&mut c, "order", &format!("id-{i:02}"), json!({}));
    }
    let p = c.ok("LIST_INSTANCES", json!({"after": "id-03", "limit": 2}));
    assert_eq!(ids(&p), ["id-04", "id-05"]);
    let rest = c.ok("LIST_INSTANCES", json!({"after": "id-05"}));
    assert_eq!(ids(&rest), ["id-06"]);
    // The cursor need not be an existing id.
    let between = c.ok("LIST_INSTANCES", json!({"after": "id-025"}));
    assert_eq!(ids(&between), ["id-03", "id-04", "id-05", "id-06"]);
    // Walking the whole set with the cursor visits every id once, in order.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let mut p = json!({"limit": 4});
        if let Some(a) = &after {
            p["after"] = json!(a);
        }
        let page = ids(&c.ok("LIST_INSTANCES", p));
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        seen.extend(page);
    }
    let want: Vec<String> = (1..=6).map(|i| format!("id-{i:02}")).collect();
    assert_eq!(seen, want);
}

#[test]
fn list_instances_wrongly_typed_limit_is_bad_request() {
    let (_s, mut c) = setup();
    c.err_code("LIST_INSTANCES", json!({"limit": "ten"}), "BAD_REQUEST");
    c.err_code("LIST_INSTANCES", json!({"machine": 5}), "BAD_REQUEST");
}

#[test]
fn delete_instance_soft_deletes_and_get_is_instance_not_found() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "d1", json!({}));
    let d = c.ok("DELETE_INSTANCE", json!({"instance_id": "d1"}));
    assert_eq!(d["instance_id"], "d1");
    assert_eq!(d["deleted"], true);
    assert!(d["wal_offset"].is_u64(), "{d}");
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "d1"}),
        "INSTANCE_NOT_FOUND",
    );
}

#[test]
fn delete_instance_again_returns_the_original_offset() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "d2", json!({}));
    let first = c.ok("DELETE_INSTANCE", json!({"instance_id": "d2"}));
    let before = c.ok("WAL_STATS", json!({}))["entry_count"].clone();
    let again = c.ok("DELETE_INSTANCE", json!({"instance_id": "d2"}));
    assert_eq!(again["deleted"], true);
    assert_eq!(again["wal_offset"], first["wal_offset"]);
    let after = c.ok("WAL_STATS", json!({}))["entry_count"].clone();
    assert_eq!(before, after, "a repeated delete writes nothing");
}

#[test]
fn delete_instance_unknown_is_instance_not_found() {
    let (_s, mut c) = setup();
    c.err_code(
        "DELETE_INSTANCE",
        json!({"instance_id": "never-was"}),
        "INSTANCE_NOT_FOUND",
    );
}

#[test]
fn delete_instance_missing_id_is_bad_request() {
    let (_s, mut c) = setup();
    c.err_code("DELETE_INSTANCE", json!({}), "BAD_REQUEST");
}

#[test]
fn deleted_instance_rejects_apply_snapshot_and_watch() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "d3", json!({}));
    c.ok("DELETE_INSTANCE", json!({"instance_id": "d3"}));
    c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "d3", "event": "PAY"}),
        "INSTANCE_NOT_FOUND",
    );
    c.err_code(
        "SNAPSHOT_INSTANCE",
        json!({"instance_id": "d3"}),
        "INSTANCE_NOT_FOUND",
    );
    c.err_code(
        "WATCH_INSTANCE",
        json!({"instance_id": "d3"}),
        "INSTANCE_NOT_FOUND",
    );
}

#[test]
fn list_instances_excludes_deleted_unless_include_deleted() {
    let (_s, mut c) = setup();
    for id in ["a", "b", "c"] {
        create(&mut c, "order", id, json!({}));
    }
    c.ok("DELETE_INSTANCE", json!({"instance_id": "b"}));
    let l = c.ok("LIST_INSTANCES", json!({}));
    assert_eq!(ids(&l), ["a", "c"]);
    assert_eq!(l["total"], 2);
    let all = c.ok("LIST_INSTANCES", json!({"include_deleted": true}));
    assert_eq!(ids(&all), ["a", "b", "c"]);
}

#[test]
fn create_with_a_deleted_id_creates_a_new_instance() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "again", json!({"gen": 1}));
    apply(&mut c, "again", "PAY", json!({}));
    c.ok("DELETE_INSTANCE", json!({"instance_id": "again"}));
    let r = create(&mut c, "order", "again", json!({"gen": 2}));
    assert_eq!(r["state"], "pending");
    let g = c.ok("GET_INSTANCE", json!({"instance_id": "again"}));
    assert_eq!(g["state"], "pending");
    assert_eq!(g["ctx"], json!({"gen": 2}));
}

#[test]
fn delete_instance_idempotency_key_replays() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "dk", json!({}));
    let p = json!({"instance_id": "dk", "idempotency_key": "del-1"});
    let first = c.ok("DELETE_INSTANCE", p.clone());
    let again = c.ok("DELETE_INSTANCE", p);
    assert_eq!(again["wal_offset"], first["wal_offset"]);
    assert_eq!(again["deleted"], true);
}

#[test]
fn list_instances_after_cursor_combines_with_filters() {
    let (_s, mut c) = setup();
    for i in 0..8 {
        create(&mut c, "order", &format!("f{i}"), json!({}));
        if i % 2 == 1 {
            apply(&mut c, &format!("f{i}"), "PAY", json!({}));
        }
    }
    let p = c.ok(
        "LIST_INSTANCES",
        json!({"machine": "order", "state": "paid", "after": "f1", "limit": 2}),
    );
    assert_eq!(ids(&p), ["f3", "f5"]);
    let p = c.ok("LIST_INSTANCES", json!({"state": "paid", "after": "f5"}));
    assert_eq!(ids(&p), ["f7"]);
}
