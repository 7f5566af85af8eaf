//! Definition tests: every validation rule of engine.md §1.2 (with decisions.md applied), the
//! canonical form and the checksum.

use super::*;
use crate::error::ErrorCode;
use serde_json::json;

fn machine(def: Value) -> Result<Machine> {
    Machine::new("order", 1, &def)
}

/// Asserts a BAD_REQUEST whose `details.path` is `path` and whose message contains `needle`.
fn rejected(def: Value, path: &str, needle: &str) -> Error {
    let e = machine(def.clone()).expect_err(&format!("should be rejected: {def}"));
    assert_eq!(e.code(), ErrorCode::BadRequest, "{e}");
    assert!(!e.retryable(), "validation errors are not retryable");
    assert_eq!(e.details()["path"], path, "{e}");
    assert!(e.to_string().contains(needle), "{e:?} lacks {needle:?}");
    e
}

fn order_def() -> Value {
    json!({
        "states": ["pending", "paid", "shipped"],
        "initial": "pending",
        "transitions": [
            {"from": "pending", "event": "PAY", "to": "paid"},
            {"from": "paid", "event": "SHIP", "to": "shipped", "guard": "ctx.amount > 0"}
        ]
    })
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

// ---- step 0: shape ---------------------------------------------------------------------

#[test]
fn definition_must_be_an_object() {
    rejected(json!([1]), "definition", "JSON object");
    rejected(json!(null), "definition", "JSON object");
}

#[test]
fn required_fields_are_named_when_missing() {
    rejected(
        json!({"initial": "a", "transitions": []}),
        "states",
        "missing field `states`",
    );
    rejected(
        json!({"states": ["a"], "transitions": []}),
        "initial",
        "missing field `initial`",
    );
    rejected(
        json!({"states": ["a"], "initial": "a"}),
        "transitions",
        "missing field `transitions`",
    );
}

#[test]
fn wrongly_typed_fields_are_named() {
    rejected(
        json!({"states": "a", "initial": "a", "transitions": []}),
        "states",
        "array",
    );
    rejected(
        json!({"states": ["a", 1], "initial": "a", "transitions": []}),
        "states[1]",
        "string",
    );
    rejected(
        json!({"states": ["a"], "initial": 1, "transitions": []}),
        "initial",
        "string",
    );
    rejected(
        json!({"states": ["a"], "initial": "a", "transitions": {}}),
        "transitions",
        "array",
    );
    rejected(
        json!({"states": ["a"], "initial": "a", "transitions": ["x"]}),
        "transitions[0]",
        "object",
    );
}

#[test]
fn transition_fields_are_type_checked() {
    let t = |t: Value| json!({"states": ["a", "b"], "initial": "a", "transitions": [{"from": "a", "event": "E", "to": "b"}, t]});
    rejected(
        t(json!({"from": 1, "event": "E", "to": "b"})),
        "transitions[1].from",
        "string or an array",
    );
    rejected(
        t(json!({"from": ["a", 2], "event": "F", "to": "b"})),
        "transitions[1].from[1]",
        "string",
    );
    rejected(
        t(json!({"event": "F", "to": "b"})),
        "transitions[1].from",
        "missing field `from`",
    );
    rejected(
        t(json!({"from": "a", "to": "b"})),
        "transitions[1].event",
        "missing field `event`",
    );
    rejected(
        t(json!({"from": "a", "event": 5, "to": "b"})),
        "transitions[1].event",
        "string",
    );
    rejected(
        t(json!({"from": "a", "event": "F"})),
        "transitions[1].to",
        "missing field `to`",
    );
    rejected(
        t(json!({"from": "a", "event": "F", "to": "b", "guard": true})),
        "transitions[1].guard",
        "string",
    );
}

// ---- step 1: initial ∈ states ------------------------------------------------------------

#[test]
fn initial_must_be_a_state() {
    rejected(
        json!({"states": ["a"], "initial": "b", "transitions": []}),
        "initial",
        "initial state 'b' not in states list",
    );
}

#[test]
fn states_must_not_be_empty() {
    // Reference: reported as an `initial` error. decisions.md: states non-empty.
    rejected(
        json!({"states": [], "initial": "a", "transitions": []}),
        "states",
        "at least one",
    );
}

#[test]
fn states_must_not_repeat() {
    // Reference: accepted. decisions.md: no duplicates.
    rejected(
        json!({"states": ["a", "b", "a"], "initial": "a", "transitions": []}),
        "states[2]",
        "duplicate state 'a'",
    );
}

// ---- step 2a: to ∈ states ----------------------------------------------------------------

#[test]
fn transition_target_must_be_a_state() {
    rejected(
        json!({"states": ["a"], "initial": "a", "transitions": [{"from": "a", "event": "E", "to": "zz"}]}),
        "transitions[0].to",
        "transition target 'zz' not in states list",
    );
}

// ---- step 2b: guards parse -------------------------------------------------------------

#[test]
fn malformed_guard_is_rejected_with_its_column() {
    // The reference silently accepts `ctx.a = 5` as `ctx.a`.
    let def = json!({"states": ["a", "b"], "initial": "a",
        "transitions": [{"from": "a", "event": "E", "to": "b", "guard": "ctx.a = 5"}]});
    let e = rejected(def, "transitions[0].guard", "column 7");
    assert_eq!(e.details()["column"], 7);
}

#[test]
fn guard_with_trailing_tokens_is_rejected() {
    let def = json!({"states": ["a", "b"], "initial": "a",
        "transitions": [{"from": "a", "event": "E", "to": "b", "guard": "ctx.a > 1 ctx.b"}]});
    let e = rejected(def, "transitions[0].guard", "after a complete expression");
    assert_eq!(e.details()["column"], 11);
}

#[test]
fn empty_guard_is_rejected_and_null_guard_is_absent() {
    let def = |g: Value| {
        json!({"states": ["a", "b"], "initial": "a",
        "transitions": [{"from": "a", "event": "E", "to": "b", "guard": g}]})
    };
    rejected(
        def(json!("")),
        "transitions[0].guard",
        "empty guard expression",
    );
    rejected(
        def(json!("  ")),
        "transitions[0].guard",
        "empty guard expression",
    );
    let m = machine(def(json!(null))).unwrap();
    assert!(m.definition().transitions[0].guard.is_none());
}

// ---- step 2c: from ∈ states ------------------------------------------------------------

#[test]
fn transition_source_must_be_a_state() {
    rejected(
        json!({"states": ["a", "b"], "initial": "a", "transitions": [{"from": "x", "event": "E", "to": "b"}]}),
        "transitions[0].from",
        "transition source 'x' not in states list",
    );
    rejected(
        json!({"states": ["a", "b"], "initial": "a", "transitions": [{"from": ["a", "x"], "event": "E", "to": "b"}]}),
        "transitions[0].from[1]",
        "transition source 'x' not in states list",
    );
}

#[test]
fn star_is_not_a_wildcard() {
    rejected(
        json!({"states": ["a", "b"], "initial": "a", "transitions": [{"from": "*", "event": "E", "to": "b"}]}),
        "transitions[0].from",
        "transition source '*' not in states list",
    );
}

#[test]
fn empty_source_list_is_rejected() {
    // Reference: accepted, a transition that can never fire.
    rejected(
        json!({"states": ["a"], "initial": "a", "transitions": [{"from": [], "event": "E", "to": "a"}]}),
        "transitions[0].from",
        "at least one",
    );
}

// ---- step 2d: duplicates and guarded alternatives ----------------------------------------

#[test]
fn unguarded_duplicate_pair_is_unreachable() {
    rejected(
        json!({"states": ["a", "b"], "initial": "a", "transitions": [
            {"from": "a", "event": "E", "to": "b"},
            {"from": "a", "event": "E", "to": "a"}
        ]}),
        "transitions[1]",
        "unreachable",
    );
}

#[test]
fn unguarded_alternative_before_a_guarded_one_is_unreachable() {
    rejected(
        json!({"states": ["a", "b"], "initial": "a", "transitions": [
            {"from": ["b", "a"], "event": "E", "to": "b"},
            {"from": "a", "event": "E", "to": "a", "guard": "ctx.x"}
        ]}),
        "transitions[1]",
        "transitions[0] already fires unconditionally from 'a'",
    );
}

#[test]
fn guarded_alternatives_are_accepted_with_unguarded_last() {
    let m = machine(
        json!({"states": ["a", "big", "small", "none"], "initial": "a", "transitions": [
            {"from": "a", "event": "E", "to": "big", "guard": "payload.n > 100"},
            {"from": "a", "event": "E", "to": "small", "guard": "payload.n > 0"},
            {"from": "a", "event": "E", "to": "none"}
        ]}),
    )
    .unwrap();
    let ctx = Map::new();
    let pick = |n: i64| {
        m.select_transition("a", "E", &ctx, &obj(json!({"n": n})))
            .unwrap()
            .to
            .clone()
    };
    assert_eq!(pick(500), "big");
    assert_eq!(pick(5), "small");
    assert_eq!(pick(-1), "none");
}

#[test]
fn same_source_twice_in_one_transition_is_rejected() {
    rejected(
        json!({"states": ["a"], "initial": "a", "transitions": [{"from": ["a", "a"], "event": "E", "to": "a"}]}),
        "transitions[0].from[1]",
        "duplicate source state 'a'",
    );
}

#[test]
fn same_event_from_different_states_is_fine() {
    assert!(
        machine(
            json!({"states": ["a", "b"], "initial": "a", "transitions": [
                {"from": "a", "event": "E", "to": "b"},
                {"from": "b", "event": "E", "to": "a"}
            ]})
        )
        .is_ok()
    );
}

// ---- names, version, limits (decisions.md) ---------------------------------------------

#[test]
fn version_zero_is_rejected() {
    let e = Machine::new("order", 0, &order_def()).unwrap_err();
    assert_eq!(e.details()["path"], "version");
}

#[test]
fn machine_name_rules() {
    assert_eq!(
        Machine::new("", 1, &order_def()).unwrap_err().details()["path"],
        "machine"
    );
    assert!(Machine::new(&"m".repeat(129), 1, &order_def()).is_err());
    assert!(Machine::new("a\nb", 1, &order_def()).is_err());
    assert!(Machine::new(&"m".repeat(128), 1, &order_def()).is_ok());
}

#[test]
fn state_and_event_name_rules() {
    rejected(
        json!({"states": [""], "initial": "", "transitions": []}),
        "states[0]",
        "empty",
    );
    rejected(
        json!({"states": ["a\tb"], "initial": "a\tb", "transitions": []}),
        "states[0]",
        "control",
    );
    rejected(
        json!({"states": ["a"], "initial": "a", "transitions": [{"from": "a", "event": "", "to": "a"}]}),
        "transitions[0].event",
        "empty",
    );
    rejected(
        json!({"states": ["a"], "initial": "a", "transitions": [{"from": "a", "event": "x".repeat(129), "to": "a"}]}),
        "transitions[0].event",
        "128",
    );
}

#[test]
fn state_count_is_limited() {
    let states: Vec<String> = (0..=MAX_STATES).map(|i| format!("s{i}")).collect();
    rejected(
        json!({"states": states, "initial": "s0", "transitions": []}),
        "states",
        "limit",
    );
}

#[test]
fn transition_count_is_limited() {
    let ts: Vec<Value> = (0..=MAX_TRANSITIONS)
        .map(|i| json!({"from": "a", "event": format!("e{i}"), "to": "a"}))
        .collect();
    rejected(
        json!({"states": ["a"], "initial": "a", "transitions": ts}),
        "transitions",
        "limit",
    );
}

// ---- canonical form and checksum ---------------------------------------------------------

#[test]
fn checksum_is_lowercase_sha256_hex() {
    let m = machine(json!({"states": ["a"], "initial": "a", "transitions": []})).unwrap();
    assert_eq!(m.checksum().len(), 64);
    assert!(
        m.checksum()
            .chars()
            .all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    );
    // `printf '%s' '<canonical text>' | sha256sum`, computed outside the code under test.
    assert_eq!(
        canonical_string(&m.canonical_json()),
        r#"{"initial":"a","states":["a"],"transitions":[]}"#
    );
    assert_eq!(
        m.checksum(),
        "7c73188424ccd5cb3c3b6ee28c7b542e41c908b51ffd2af7fcfbc02596264464"
    );
}

#[test]
fn checksum_ignores_key_order_from_form_unknown_keys_and_null_meta() {
    let a = machine(json!({
        "states": ["a", "b"], "initial": "a",
        "transitions": [{"from": "a", "event": "E", "to": "b"}]
    }))
    .unwrap();
    let b = machine(json!({
        "transitions": [{"to": "b", "event": "E", "from": ["a"], "note": "x"}],
        "initial": "a", "states": ["a", "b"], "meta": null, "extra": 1
    }))
    .unwrap();
    assert_eq!(a.checksum(), b.checksum());
    assert_eq!(a.canonical_json(), b.canonical_json());
}

#[test]
fn checksum_covers_guards_meta_and_state_order() {
    let base = machine(order_def()).unwrap();
    let mut with_meta = order_def();
    with_meta["meta"] = json!({"owner": "billing"});
    let mut other_guard = order_def();
    other_guard["transitions"][1]["guard"] = json!("ctx.amount > 1");
    let mut reordered = order_def();
    reordered["states"] = json!(["paid", "pending", "shipped"]);
    for d in [with_meta, other_guard, reordered] {
        assert_ne!(machine(d).unwrap().checksum(), base.checksum());
    }
}

#[test]
fn meta_key_order_does_not_change_the_checksum() {
    let mut a = order_def();
    a["meta"] = json!({"x": 1, "y": {"b": 2, "a": 1}});
    let mut b = order_def();
    b["meta"] = json!({"y": {"a": 1, "b": 2}, "x": 1});
    assert_eq!(
        machine(a).unwrap().checksum(),
        machine(b).unwrap().checksum()
    );
}

#[test]
fn meta_may_be_any_json_value() {
    let mut d = order_def();
    d["meta"] = json!(5);
    assert_eq!(machine(d).unwrap().canonical_json()["meta"], 5);
}

#[test]
fn canonical_json_is_the_normalised_definition() {
    let m = machine(json!({
        "states": ["a", "b"], "initial": "a", "junk": true,
        "transitions": [{"from": "a", "event": "E", "to": "b", "guard": "ctx.ok", "junk": 1}]
    }))
    .unwrap();
    assert_eq!(
        m.canonical_json(),
        json!({"states": ["a", "b"], "initial": "a",
               "transitions": [{"from": ["a"], "event": "E", "to": "b", "guard": "ctx.ok"}]})
    );
}

#[test]
fn canonical_string_sorts_keys_and_escapes_strings() {
    let v = json!({"b": [1, {"z": "é\"\n", "a": null}], "a": 1.5});
    assert_eq!(
        canonical_string(&v),
        r#"{"a":1.5,"b":[1,{"a":null,"z":"é\"\n"}]}"#
    );
}

// ---- transition selection ---------------------------------------------------------------

#[test]
fn unknown_event_is_an_invalid_transition() {
    let m = machine(order_def()).unwrap();
    let e = m
        .select_transition("pending", "SHIP", &Map::new(), &Map::new())
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidTransition);
    assert_eq!(
        e.to_string(),
        "invalid transition: cannot apply 'SHIP' in state 'pending'"
    );
}

#[test]
fn failing_guard_is_guard_failed() {
    let m = machine(order_def()).unwrap();
    let e = m
        .select_transition("paid", "SHIP", &obj(json!({"amount": 0})), &Map::new())
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::GuardFailed);
    assert_eq!(
        e.to_string(),
        "guard failed for transition 'paid' -> 'shipped' on event 'SHIP'"
    );
}

#[test]
fn multi_source_transitions_fire_from_each_source() {
    let m = machine(json!({"states": ["a", "b", "c"], "initial": "a",
        "transitions": [{"from": ["a", "b"], "event": "RESET", "to": "c"}]}))
    .unwrap();
    for s in ["a", "b"] {
        assert_eq!(
            m.select_transition(s, "RESET", &Map::new(), &Map::new())
                .unwrap()
                .to,
            "c"
        );
    }
    assert!(
        m.select_transition("c", "RESET", &Map::new(), &Map::new())
            .is_err()
    );
}
