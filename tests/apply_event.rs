//! APPLY_EVENT: transitions, guards, optimistic checks, idempotency (protocol.md §5.8,
//! engine.md §4, decisions.md "Instances", "Idempotency", "Guard language").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use serde_json::json;
use support::*;

fn setup() -> (Server, Client) {
    let s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    (s, c)
}

#[test]
fn apply_event_transitions_and_merges_payload() {
    let (_s, mut c) = setup();
    let cr = create(&mut c, "order", "o", json!({"customer": "alice", "n": 1}));
    let r = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "PAY", "payload": {"amount": 99.5, "n": 2}}),
    );
    assert_eq!(r["from_state"], "pending");
    assert_eq!(r["to_state"], "paid");
    assert_eq!(
        r["ctx"],
        json!({"customer": "alice", "n": 2, "amount": 99.5})
    );
    assert_eq!(r["applied"], true);
    assert!(u64_of(&r["wal_offset"]) > u64_of(&cr["wal_offset"]));
}

#[test]
fn apply_event_merge_is_shallow() {
    let (_s, mut c) = setup();
    create(
        &mut c,
        "order",
        "o",
        json!({"addr": {"city": "Oslo", "zip": "0150"}, "keep": 1}),
    );
    let r = apply(
        &mut c,
        "o",
        "PAY",
        json!({"addr": {"city": "Bergen"}, "gone": null}),
    );
    assert_eq!(
        r["ctx"],
        json!({"addr": {"city": "Bergen"}, "keep": 1, "gone": null})
    );
}

#[test]
fn apply_event_without_payload_keeps_ctx() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "o", json!({"x": 1}));
    let r = c.ok("APPLY_EVENT", json!({"instance_id": "o", "event": "PAY"}));
    assert_eq!(r["ctx"], json!({"x": 1}));
}

#[test]
fn apply_event_non_object_payload_is_bad_request() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "o", json!({}));
    for p in [json!(1), json!([1]), json!("s")] {
        c.err_code(
            "APPLY_EVENT",
            json!({"instance_id": "o", "event": "PAY", "payload": p}),
            "BAD_REQUEST",
        );
    }
    let g = c.ok("GET_INSTANCE", json!({"instance_id": "o"}));
    assert_eq!(g["state"], "pending", "nothing applied");
}

#[test]
fn apply_event_guard_failed() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "o", json!({"amount": 0}));
    apply(&mut c, "o", "PAY", json!({}));
    let e = c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "SHIP"}),
        "GUARD_FAILED",
    );
    assert_eq!(e["retryable"], false);
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "o"}))["state"],
        "paid"
    );
}

#[test]
fn apply_event_guard_sees_ctx_before_the_payload_merge() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "o", json!({"amount": 0}));
    apply(&mut c, "o", "PAY", json!({}));
    // The payload would make the guard true, but guards read the pre-merge ctx.
    c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "SHIP", "payload": {"amount": 10}}),
        "GUARD_FAILED",
    );
    let g = c.ok("GET_INSTANCE", json!({"instance_id": "o"}));
    assert_eq!(
        g["ctx"],
        json!({"amount": 0}),
        "a failed apply merges nothing"
    );
    apply(&mut c, "o", "CANCEL", json!({}));
}

#[test]
fn apply_event_guard_passes_after_ctx_update() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "o", json!({}));
    apply(&mut c, "o", "PAY", json!({"amount": 5}));
    let r = apply(&mut c, "o", "SHIP", json!({}));
    assert_eq!(r["to_state"], "shipped");
}

#[test]
fn apply_event_first_passing_guarded_alternative_fires() {
    let s = Server::start();
    let mut c = s.connect();
    put_machine(
        &mut c,
        "route",
        1,
        json!({"states": ["new", "big", "small", "other"], "initial": "new", "transitions": [
            {"from": "new", "event": "go", "to": "big", "guard": "payload.size >= 100"},
            {"from": "new", "event": "go", "to": "small", "guard": "payload.size < 100 && ctx.ok"},
            {"from": "new", "event": "go", "to": "other"}
        ]}),
    );
    for (id, ctx, size, want) in [
        ("a", json!({"ok": true}), 500, "big"),
        ("b", json!({"ok": true}), 5, "small"),
        ("c", json!({"ok": false}), 5, "other"),
    ] {
        create(&mut c, "route", id, ctx);
        let r = apply(&mut c, id, "go", json!({"size": size}));
        assert_eq!(r["to_state"], want, "{id}: {r}");
    }
}

#[test]
fn apply_event_guard_language_extensions() {
    // decisions.md "Guard language": .length, [index], literal on the left, escapes, 1e3.
    let s = Server::start();
    let mut c = s.connect();
    put_machine(
        &mut c,
        "g",
        1,
        json!({"states": ["s", "t"], "initial": "s", "transitions": [
            {"from": "s", "event": "e", "to": "t",
             "guard": "ctx.items.length == 2 && ctx.items[1] == \"b\\\"q\" && 1e3 < ctx.n"}
        ]}),
    );
    create(
        &mut c,
        "g",
        "yes",
        json!({"items": ["a", "b\"q"], "n": 1001}),
    );
    create(
        &mut c,
        "g",
        "no",
        json!({"items": ["a", "b\"q"], "n": 1000}),
    );
    assert_eq!(apply(&mut c, "yes", "e", json!({}))["to_state"], "t");
    c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "no", "event": "e"}),
        "GUARD_FAILED",
    );
}

#[test]
fn apply_event_integers_compare_exactly() {
    // decisions.md: integers compare exactly (the reference rounded to f64).
    let s = Server::start();
    let mut c = s.connect();
    put_machine(
        &mut c,
        "big",
        1,
        json!({"states": ["s", "t"], "initial": "s", "transitions": [
            {"from": "s", "event": "e", "to": "t", "guard": "ctx.a >= 9007199254740993"}
        ]}),
    );
    create(&mut c, "big", "i", json!({"a": 9007199254740992_u64}));
    c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "i", "event": "e"}),
        "GUARD_FAILED",
    );
}

#[test]
fn apply_event_invalid_transition() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "o", json!({}));
    let e = c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "SHIP"}),
        "INVALID_TRANSITION",
    );
    assert_eq!(e["retryable"], false);
    c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "pay"}),
        "INVALID_TRANSITION",
    );
}

#[test]
fn apply_event_unknown_instance_is_instance_not_found() {
    let (_s, mut c) = setup();
    c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "ghost", "event": "PAY"}),
        "INSTANCE_NOT_FOUND",
    );
}

#[test]
fn apply_event_missing_event_is_bad_request() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "o", json!({}));
    c.err_code("APPLY_EVENT", json!({"instance_id": "o"}), "BAD_REQUEST");
}

#[test]
fn apply_event_expected_state_mismatch_is_conflict() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "o", json!({}));
    let e = c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "PAY", "expected_state": "paid"}),
        "CONFLICT",
    );
    assert_eq!(e["retryable"], false);
    let ok = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "PAY", "expected_state": "pending"}),
    );
    assert_eq!(ok["to_state"], "paid");
}

#[test]
fn apply_event_expected_wal_offset_mismatch_is_conflict() {
    let (_s, mut c) = setup();
    let cr = create(&mut c, "order", "o", json!({}));
    let off = u64_of(&cr["wal_offset"]);
    c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "PAY", "expected_wal_offset": off + 1}),
        "CONFLICT",
    );
    let ok = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "PAY", "expected_wal_offset": off}),
    );
    // The offset moved: the old one no longer matches.
    c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "CANCEL", "expected_wal_offset": off}),
        "CONFLICT",
    );
    c.ok(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "CANCEL", "expected_wal_offset": ok["wal_offset"]}),
    );
}

#[test]
fn apply_event_conflict_has_details() {
    // decisions.md: error.details filled where useful (expected/actual state).
    let (_s, mut c) = setup();
    create(&mut c, "order", "o", json!({}));
    let e = c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "PAY", "expected_state": "shipped"}),
        "CONFLICT",
    );
    assert!(
        e["details"].is_object() && !e["details"].as_object().unwrap().is_empty(),
        "{e}"
    );
}

#[test]
fn apply_event_idempotency_replay_returns_original_with_applied_false() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "o", json!({}));
    let p = json!({"instance_id": "o", "event": "PAY", "payload": {"amount": 5},
                   "idempotency_key": "pay-1"});
    let first = c.ok("APPLY_EVENT", p.clone());
    assert_eq!(first["applied"], true);
    let before = c.ok("WAL_STATS", json!({}))["entry_count"].clone();
    let again = c.ok("APPLY_EVENT", p);
    assert_eq!(again["applied"], false, "{again}");
    assert_eq!(again["wal_offset"], first["wal_offset"]);
    assert_eq!(again["from_state"], "pending");
    assert_eq!(again["to_state"], "paid");
    assert_eq!(again["ctx"], first["ctx"]);
    let after = c.ok("WAL_STATS", json!({}))["entry_count"].clone();
    assert_eq!(before, after, "a replay writes nothing");
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "o"}))["state"],
        "paid"
    );
}

#[test]
fn apply_event_idempotency_key_reused_with_other_params_is_conflict() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "o", json!({}));
    c.ok(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "PAY", "idempotency_key": "k"}),
    );
    let e = c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "CANCEL", "idempotency_key": "k"}),
        "CONFLICT",
    );
    assert_eq!(e["details"]["reason"], "idempotency_key_reused", "{e}");
    let e = c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "PAY", "payload": {"x": 1},
               "idempotency_key": "k"}),
        "CONFLICT",
    );
    assert_eq!(e["details"]["reason"], "idempotency_key_reused", "{e}");
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "o"}))["state"],
        "paid"
    );
}

#[test]
fn apply_event_idempotency_key_is_scoped_to_the_instance() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "a", json!({}));
    create(&mut c, "order", "b", json!({}));
    let ra = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": "a", "event": "PAY", "idempotency_key": "same"}),
    );
    let rb = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": "b", "event": "PAY", "idempotency_key": "same"}),
    );
    assert_eq!(rb["applied"], true);
    assert_ne!(ra["wal_offset"], rb["wal_offset"]);
}

#[test]
fn apply_event_failed_apply_does_not_record_the_key() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "o", json!({}));
    c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "SHIP", "idempotency_key": "k2"}),
        "INVALID_TRANSITION",
    );
    let r = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "PAY", "idempotency_key": "k2"}),
    );
    assert_eq!(r["applied"], true);
}

#[test]
fn apply_event_event_id_is_echoed() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "o", json!({}));
    let r = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": "o", "event": "PAY", "event_id": "e-42"}),
    );
    assert_eq!(r["event_id"], "e-42");
}

#[test]
fn apply_event_self_transition_is_a_new_record() {
    let s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    create(&mut c, "ctr", "x", json!({}));
    let a = apply(&mut c, "x", "inc", json!({"n": 1}));
    let b = apply(&mut c, "x", "inc", json!({"n": 2}));
    assert_eq!(u64_of(&b["wal_offset"]), u64_of(&a["wal_offset"]) + 1);
    assert_eq!(b["ctx"], json!({"n": 2}));
}

#[test]
fn apply_event_ctx_over_max_ctx_bytes_is_bad_request() {
    let s = Server::with_config(json!({"storage": {"max_ctx_bytes": 200}}));
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    create(&mut c, "ctr", "x", json!({"small": 1}));
    c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "x", "event": "inc", "payload": {"big": "z".repeat(300)}}),
        "BAD_REQUEST",
    );
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "x"}))["ctx"],
        json!({"small": 1})
    );
    c.err_code(
        "CREATE_INSTANCE",
        json!({"instance_id": "y", "machine": "ctr", "version": 1,
               "initial_ctx": {"big": "z".repeat(300)}}),
        "BAD_REQUEST",
    );
}

#[test]
fn concurrent_applies_with_expected_state_only_one_wins() {
    let (s, mut c) = setup();
    create(&mut c, "order", "race", json!({}));
    let addr = s.addr();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let r = c.request(
                    "APPLY_EVENT",
                    json!({"instance_id": "race", "event": "PAY", "expected_state": "pending"}),
                );
                r["status"] == "ok"
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|w| *w)
        .count();
    assert_eq!(wins, 1, "exactly one PAY from pending succeeds");
}

#[test]
fn concurrent_creates_of_one_id_only_one_wins() {
    let (s, _c) = setup();
    let addr = s.addr();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let r = c.request(
                    "CREATE_INSTANCE",
                    json!({"instance_id": "one", "machine": "order", "version": 1,
                           "initial_ctx": {"by": i}}),
                );
                r["status"] == "ok"
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|w| *w)
        .count();
    assert_eq!(wins, 1);
}

#[test]
fn apply_event_unicode_guard_fields_strings_and_whitespace() {
    // decisions.md: any Unicode input is handled; docs/guards.md: Unicode letters in names,
    // any Unicode whitespace between tokens.
    let s = Server::start();
    let mut c = s.connect();
    put_machine(
        &mut c,
        "u",
        1,
        json!({"states": ["s", "t"], "initial": "s", "transitions": [
            {"from": "s", "event": "e", "to": "t",
             "guard": "ctx.prénom\u{00A0}==\u{2003}\"Zoë 😀\""}
        ]}),
    );
    create(&mut c, "u", "yes", json!({"prénom": "Zoë 😀"}));
    create(&mut c, "u", "no", json!({"prénom": "Zoe"}));
    assert_eq!(apply(&mut c, "yes", "e", json!({}))["to_state"], "t");
    c.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "no", "event": "e"}),
        "GUARD_FAILED",
    );
}

#[test]
fn apply_event_on_deleted_instance_with_used_key_is_instance_not_found() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "o", json!({}));
    let p = json!({"instance_id": "o", "event": "PAY", "idempotency_key": "k"});
    c.ok("APPLY_EVENT", p.clone());
    c.ok("DELETE_INSTANCE", json!({"instance_id": "o"}));
    c.err_code("APPLY_EVENT", p, "INSTANCE_NOT_FOUND");
}
