//! PUT_MACHINE, GET_MACHINE, LIST_MACHINES (protocol.md §5.1–§5.3, engine.md §1,
//! decisions.md "Machine definitions" and "Guard language").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::*;

fn put(c: &mut Client, machine: &str, version: u64, def: Value) -> Value {
    c.request(
        "PUT_MACHINE",
        json!({"machine": machine, "version": version, "definition": def}),
    )
}

/// `details.path` names `field` (or an element/sub-field of it: `states` covers `states[2]`).
fn path_names(got: &Value, field: &str) -> bool {
    let Some(p) = got.as_str() else { return false };
    p == field
        || p.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with('[') || rest.starts_with('.'))
}

/// A rejected definition: BAD_REQUEST, not retryable, `details.path` naming `path`.
fn assert_invalid(def: Value, path: &str) -> Value {
    let s = Server::start();
    let mut c = s.connect();
    let r = put(&mut c, "bad", 1, def.clone());
    assert_eq!(r["status"], "error", "{def} must be rejected: {r}");
    let e = &r["error"];
    assert_eq!(e["code"], "BAD_REQUEST", "{def}: {e}");
    assert_eq!(e["retryable"], false, "{e}");
    assert!(
        path_names(&e["details"]["path"], path),
        "details.path should name {path}: {def}: {e}"
    );
    // Nothing was stored.
    c.err_code(
        "GET_MACHINE",
        json!({"machine": "bad", "version": 1}),
        "MACHINE_NOT_FOUND",
    );
    e.clone()
}

#[test]
fn put_machine_creates_a_new_version() {
    let s = Server::start();
    let mut c = s.connect();
    let r = put_order(&mut c, "order");
    assert_eq!(r["machine"], "order");
    assert_eq!(r["version"], 1);
    assert_eq!(r["created"], true);
    let sum = r["stored_checksum"].as_str().expect("stored_checksum");
    assert!(is_sha256_hex(sum), "checksum is 64 lowercase hex: {sum}");
}

#[test]
fn put_machine_identical_definition_is_created_false() {
    let s = Server::start();
    let mut c = s.connect();
    let first = put_order(&mut c, "order");
    let again = put_order(&mut c, "order");
    assert_eq!(again["created"], false, "{again}");
    assert_eq!(again["stored_checksum"], first["stored_checksum"]);
}

#[test]
fn put_machine_equivalent_spelling_is_created_false() {
    // Key order, `from` as a string vs array, unknown keys and `meta: null` do not matter.
    let s = Server::start();
    let mut c = s.connect();
    let a = put_machine(
        &mut c,
        "m",
        1,
        json!({"states": ["a", "b"], "initial": "a",
               "transitions": [{"from": "a", "event": "go", "to": "b"}]}),
    );
    let b = put_machine(
        &mut c,
        "m",
        1,
        json!({"transitions": [{"to": "b", "event": "go", "from": ["a"], "colour": "red"}],
               "initial": "a", "meta": null, "states": ["a", "b"], "extra": 1}),
    );
    assert_eq!(b["created"], false, "{b}");
    assert_eq!(a["stored_checksum"], b["stored_checksum"]);
}

#[test]
fn put_machine_checksum_is_sha256_of_the_canonical_form() {
    // decisions.md: lowercase hex SHA-256 of the canonical form (keys sorted, `from` always
    // an array, unknown keys dropped), compact JSON.
    let s = Server::start();
    let mut c = s.connect();
    let r = put_machine(
        &mut c,
        "m",
        1,
        json!({"states": ["a", "b"], "initial": "a",
               "transitions": [{"from": "a", "event": "go", "to": "b"}]}),
    );
    let canonical = r#"{"initial":"a","states":["a","b"],"transitions":[{"event":"go","from":["a"],"to":"b"}]}"#;
    let want = format!("{:x}", Sha256::digest(canonical.as_bytes()));
    assert_eq!(r["stored_checksum"], want.as_str(), "{r}");
}

#[test]
fn put_machine_different_definition_same_version_is_machine_version_exists() {
    let s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    let mut def = order_definition();
    def["states"]
        .as_array_mut()
        .unwrap()
        .push(json!("refunded"));
    let r = put(&mut c, "order", 1, def);
    assert_eq!(r["error"]["code"], "MACHINE_VERSION_EXISTS", "{r}");
    assert_eq!(r["error"]["retryable"], false);
    // The original is untouched.
    let g = c.ok("GET_MACHINE", json!({"machine": "order", "version": 1}));
    assert_eq!(g["definition"]["states"].as_array().unwrap().len(), 4);
}

#[test]
fn put_machine_new_version_of_existing_machine_is_created() {
    let s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    let mut def = order_definition();
    def["states"]
        .as_array_mut()
        .unwrap()
        .push(json!("refunded"));
    let r = put_machine(&mut c, "order", 2, def);
    assert_eq!(r["created"], true);
    assert_eq!(r["version"], 2);
}

#[test]
fn put_machine_target_not_in_states_is_bad_request_with_path() {
    assert_invalid(
        json!({"states": ["a", "b"], "initial": "a", "transitions": [
            {"from": "a", "event": "go", "to": "b"},
            {"from": "b", "event": "back", "to": "nowhere"}
        ]}),
        "transitions[1].to",
    );
}

#[test]
fn put_machine_initial_not_in_states_is_bad_request_with_path() {
    assert_invalid(
        json!({"states": ["a"], "initial": "z", "transitions": []}),
        "initial",
    );
}

#[test]
fn put_machine_source_not_in_states_is_bad_request_with_path() {
    assert_invalid(
        json!({"states": ["a", "b"], "initial": "a", "transitions": [
            {"from": ["a", "ghost"], "event": "go", "to": "b"}
        ]}),
        "transitions[0].from",
    );
}

#[test]
fn put_machine_missing_transitions_is_bad_request_with_path() {
    assert_invalid(json!({"states": ["a"], "initial": "a"}), "transitions");
}

#[test]
fn put_machine_duplicate_states_is_bad_request() {
    let e = assert_invalid(
        json!({"states": ["a", "b", "a"], "initial": "a", "transitions": []}),
        "states",
    );
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[test]
fn put_machine_empty_states_is_bad_request() {
    let s = Server::start();
    let mut c = s.connect();
    let r = put(
        &mut c,
        "m",
        1,
        json!({"states": [], "initial": "a", "transitions": []}),
    );
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}");
}

#[test]
fn put_machine_version_0_is_bad_request() {
    let s = Server::start();
    let mut c = s.connect();
    let r = put(&mut c, "m", 0, counter_definition());
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}");
}

#[test]
fn put_machine_empty_machine_name_is_bad_request() {
    let s = Server::start();
    let mut c = s.connect();
    let r = put(&mut c, "", 1, counter_definition());
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}");
}

#[test]
fn put_machine_definition_not_an_object_is_bad_request() {
    let s = Server::start();
    let mut c = s.connect();
    let r = put(&mut c, "m", 1, json!("states: a"));
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}");
}

#[test]
fn put_machine_malformed_guard_is_bad_request_with_column() {
    // decisions.md: `ctx.a = 5` is a parse error at PUT_MACHINE, with the column (1-based,
    // docs/guards.md) of the first unexpected token: the `=` at column 7.
    let e = assert_invalid(
        json!({"states": ["a", "b"], "initial": "a", "transitions": [
            {"from": "a", "event": "go", "to": "b", "guard": "ctx.a = 5"}
        ]}),
        "transitions[0].guard",
    );
    assert_eq!(e["details"]["column"], 7, "{e}");
}

#[test]
fn put_machine_guard_with_trailing_input_is_rejected() {
    // The reference silently truncated these (engine.md §2.4); decisions.md rejects them.
    for guard in ["ctx.a | ctx.b", "ctx.a == trueish", "ctx.a foo", "ctx.a)"] {
        let s = Server::start();
        let mut c = s.connect();
        let r = put(
            &mut c,
            "m",
            1,
            json!({"states": ["a", "b"], "initial": "a", "transitions": [
                {"from": "a", "event": "go", "to": "b", "guard": guard}
            ]}),
        );
        assert_eq!(r["error"]["code"], "BAD_REQUEST", "guard {guard:?}: {r}");
        assert!(
            path_names(&r["error"]["details"]["path"], "transitions[0].guard"),
            "{r}"
        );
        assert!(r["error"]["details"]["column"].is_u64(), "{r}");
    }
}

#[test]
fn put_machine_empty_guard_is_bad_request() {
    assert_invalid(
        json!({"states": ["a", "b"], "initial": "a", "transitions": [
            {"from": "a", "event": "go", "to": "b", "guard": "   "}
        ]}),
        "transitions[0].guard",
    );
}

#[test]
fn put_machine_unguarded_alternative_before_another_is_rejected() {
    // decisions.md: an unguarded alternative must be the last one for its (from, event).
    assert_invalid(
        json!({"states": ["a", "b", "c"], "initial": "a", "transitions": [
            {"from": "a", "event": "go", "to": "b"},
            {"from": "a", "event": "go", "to": "c", "guard": "ctx.x"}
        ]}),
        "transitions[1]",
    );
}

#[test]
fn put_machine_guarded_alternatives_are_accepted() {
    let s = Server::start();
    let mut c = s.connect();
    let r = put_machine(
        &mut c,
        "m",
        1,
        json!({"states": ["a", "b", "c"], "initial": "a", "transitions": [
            {"from": "a", "event": "go", "to": "b", "guard": "ctx.x > 1e3"},
            {"from": "a", "event": "go", "to": "c"}
        ]}),
    );
    assert_eq!(r["created"], true);
}

#[test]
fn put_machine_missing_version_param_is_bad_request() {
    let s = Server::start();
    let mut c = s.connect();
    c.err_code(
        "PUT_MACHINE",
        json!({"machine": "m", "definition": counter_definition()}),
        "BAD_REQUEST",
    );
}

#[test]
fn put_machine_over_max_machine_versions_is_limit_exceeded() {
    let s = Server::with_config(json!({"storage": {"max_machine_versions": 2}}));
    let mut c = s.connect();
    put_machine(&mut c, "m", 1, counter_definition());
    put_machine(&mut c, "m", 2, counter_definition());
    let r = put(&mut c, "m", 3, counter_definition());
    assert_eq!(r["error"]["code"], "MACHINE_VERSION_LIMIT_EXCEEDED", "{r}");
    // Re-putting an existing version is still fine; other machines are unaffected.
    assert_eq!(
        put_machine(&mut c, "m", 2, counter_definition())["created"],
        false
    );
    assert_eq!(
        put_machine(&mut c, "n", 1, counter_definition())["created"],
        true
    );
}

#[test]
fn get_machine_returns_the_normalised_definition_and_checksum() {
    let s = Server::start();
    let mut c = s.connect();
    let p = put_machine(
        &mut c,
        "m",
        1,
        json!({"states": ["a", "b"], "initial": "a", "unknown_key": true,
               "meta": {"owner": "billing"},
               "transitions": [{"from": "a", "event": "go", "to": "b", "guard": "ctx.ok",
                                "junk": 1}]}),
    );
    let g = c.ok("GET_MACHINE", json!({"machine": "m", "version": 1}));
    assert_eq!(g["checksum"], p["stored_checksum"]);
    let d = &g["definition"];
    assert_eq!(d["states"], json!(["a", "b"]));
    assert_eq!(d["initial"], "a");
    assert_eq!(d["meta"], json!({"owner": "billing"}));
    assert!(d.get("unknown_key").is_none(), "unknown keys dropped: {d}");
    let t = &d["transitions"][0];
    assert_eq!(t["from"], json!(["a"]), "from is always an array: {t}");
    assert_eq!(t["event"], "go");
    assert_eq!(t["to"], "b");
    assert_eq!(t["guard"], "ctx.ok");
    assert!(t.get("junk").is_none(), "{t}");
}

#[test]
fn get_machine_unknown_name_is_machine_not_found() {
    let s = Server::start();
    let mut c = s.connect();
    let e = c.err_code(
        "GET_MACHINE",
        json!({"machine": "ghost", "version": 1}),
        "MACHINE_NOT_FOUND",
    );
    assert_eq!(e["retryable"], false);
}

#[test]
fn get_machine_unknown_version_is_machine_not_found() {
    let s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    c.err_code(
        "GET_MACHINE",
        json!({"machine": "order", "version": 2}),
        "MACHINE_NOT_FOUND",
    );
}

#[test]
fn get_machine_version_as_string_is_bad_request() {
    let s = Server::start();
    let mut c = s.connect();
    c.err_code(
        "GET_MACHINE",
        json!({"machine": "order", "version": "1"}),
        "BAD_REQUEST",
    );
}

#[test]
fn list_machines_is_sorted_by_name_with_ascending_versions() {
    let s = Server::start();
    let mut c = s.connect();
    assert_eq!(c.ok("LIST_MACHINES", json!({}))["items"], json!([]));
    put_machine(&mut c, "zeta", 3, counter_definition());
    put_machine(&mut c, "alpha", 2, counter_definition());
    put_machine(&mut c, "zeta", 1, counter_definition());
    put_machine(&mut c, "Beta", 1, counter_definition());
    put_machine(&mut c, "alpha", 10, counter_definition());
    let r = c.ok("LIST_MACHINES", json!({}));
    assert_eq!(
        r["items"],
        json!([
            {"machine": "Beta", "versions": [1]},
            {"machine": "alpha", "versions": [2, 10]},
            {"machine": "zeta", "versions": [1, 3]}
        ])
    );
}

fn guarded(guard: &str) -> Value {
    json!({"states": ["a", "b"], "initial": "a", "transitions": [
        {"from": "a", "event": "go", "to": "b", "guard": guard}
    ]})
}

#[test]
fn put_machine_guard_nesting_over_64_is_bad_request() {
    // decisions.md: nesting depth 64.
    let s = Server::start();
    let mut c = s.connect();
    let ok = format!("{}ctx.a{}", "(".repeat(60), ")".repeat(60));
    assert_eq!(put(&mut c, "ok", 1, guarded(&ok))["status"], "ok");
    let deep = format!("{}ctx.a{}", "(".repeat(65), ")".repeat(65));
    let r = put(&mut c, "deep", 1, guarded(&deep));
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}");
    let nots = format!("{}ctx.a", "!".repeat(100));
    let r = put(&mut c, "nots", 1, guarded(&nots));
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}");
}

#[test]
fn put_machine_pathological_guard_does_not_crash_the_server() {
    let s = Server::start();
    let mut c = s.connect();
    for guard in [
        "(".repeat(3000),
        format!("{}ctx.a", "!".repeat(3000)),
        "ctx.a == \"\\".to_string(),
        "ctx.ü == \"é\u{00A0}\"".to_string(),
        format!("ctx.a == {}", "9".repeat(400)),
        "\u{1F600} && ctx.a".to_string(),
    ] {
        let r = put(&mut c, "p", 1, guarded(&guard));
        assert_eq!(r["type"], "response", "{r}");
    }
    c.ping();
    s.connect().ping();
}

#[test]
fn put_machine_guard_over_4_kib_is_bad_request() {
    let s = Server::start();
    let mut c = s.connect();
    let long = format!("ctx.a == \"{}\"", "x".repeat(4100));
    let r = put(&mut c, "long", 1, guarded(&long));
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}");
}

#[test]
fn put_machine_names_over_128_bytes_or_with_control_chars_are_bad_request() {
    // decisions.md: names (machine, state, event) are 1–128 bytes, no control characters.
    let s = Server::start();
    let mut c = s.connect();
    let long = "s".repeat(129);
    let r = put(&mut c, &"m".repeat(129), 1, counter_definition());
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "machine name: {r}");
    let r = put(
        &mut c,
        "m",
        1,
        json!({"states": ["a", long], "initial": "a", "transitions": []}),
    );
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "state name: {r}");
    let r = put(
        &mut c,
        "m",
        1,
        json!({"states": ["a"], "initial": "a",
               "transitions": [{"from": "a", "event": "go\u{7}", "to": "a"}]}),
    );
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "event name: {r}");
    let ok = "n".repeat(128);
    assert_eq!(put(&mut c, &ok, 1, counter_definition())["status"], "ok");
}
