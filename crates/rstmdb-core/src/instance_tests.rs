use super::*;
use crate::error::ErrorCode;
use serde_json::json;

fn order() -> Machine {
    Machine::new(
        "order",
        1,
        &json!({
            "states": ["pending", "paid", "shipped"],
            "initial": "pending",
            "transitions": [
                {"from": "pending", "event": "PAY", "to": "paid", "guard": "!ctx.blocked"},
                {"from": "paid", "event": "SHIP", "to": "shipped", "guard": "ctx.amount > 0"},
                {"from": ["pending", "paid"], "event": "TOUCH", "to": "pending"},
                {"from": "shipped", "event": "NOTE", "to": "shipped"}
            ]
        }),
    )
    .unwrap()
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn new_instance(ctx: Value) -> Instance {
    let mut i =
        Instance::create("o-1", &order(), obj(ctx), 1_000, &InstanceLimits::default()).unwrap();
    i.last_wal_offset = 7;
    i
}

fn event<'a>(name: &'a str, payload: &'a Map<String, Value>) -> EventRequest<'a> {
    EventRequest {
        event: name,
        payload,
        expected_state: None,
        expected_wal_offset: None,
        event_id: None,
    }
}

fn apply(i: &Instance, req: &EventRequest<'_>) -> Result<Applied> {
    apply_event(i, &order(), req, 2_000, &InstanceLimits::default())
}

#[test]
fn create_starts_in_the_initial_state_pinned_to_the_version() {
    let i = new_instance(json!({"customer": "alice"}));
    assert_eq!(i.state, "pending");
    assert_eq!((i.machine.as_str(), i.version), ("order", 1));
    assert_eq!(i.ctx["customer"], "alice");
    assert_eq!((i.created_at, i.updated_at), (1_000, 1_000));
    assert!(!i.deleted);
}

#[test]
fn absent_or_null_initial_ctx_is_an_empty_object() {
    assert_eq!(object_param("initial_ctx", None).unwrap(), Map::new());
    assert_eq!(
        object_param("initial_ctx", Some(Value::Null)).unwrap(),
        Map::new()
    );
}

#[test]
fn non_object_initial_ctx_and_payload_are_bad_requests() {
    // Covers engine.md §2.4's ctx=null / ctx=[1] rows: such contexts cannot exist here.
    for bad in [json!([1]), json!(5), json!("x"), json!(true)] {
        let e = object_param("initial_ctx", Some(bad.clone())).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest);
        assert_eq!(e.details()["path"], "initial_ctx", "{bad}");
        let e = object_param("payload", Some(bad)).unwrap_err();
        assert_eq!(e.details()["path"], "payload");
    }
}

#[test]
fn create_validates_the_id() {
    let e = Instance::create("", &order(), Map::new(), 0, &InstanceLimits::default()).unwrap_err();
    assert_eq!(e.details()["path"], "instance_id");
    let e = Instance::create(
        &"x".repeat(257),
        &order(),
        Map::new(),
        0,
        &InstanceLimits::default(),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
}

#[test]
fn create_enforces_the_ctx_limit() {
    let limits = InstanceLimits { max_ctx_bytes: 20 };
    let ok = obj(json!({"a": "0123456789"})); // {"a":"0123456789"} = 18 bytes
    assert!(Instance::create("i", &order(), ok, 0, &limits).is_ok());
    let big = obj(json!({"a": "0123456789abc"}));
    let e = Instance::create("i", &order(), big, 0, &limits).unwrap_err();
    assert_eq!(e.details()["path"], "initial_ctx");
}

#[test]
fn ctx_size_matches_compact_json() {
    let ctx = obj(json!({"a": [1, 2], "b": "é"}));
    assert_eq!(
        ctx_size_bytes(&ctx),
        serde_json::to_string(&ctx).unwrap().len()
    );
}

#[test]
fn apply_moves_state_and_merges_payload_shallowly() {
    let i =
        new_instance(json!({"customer": "alice", "addr": {"city": "X", "zip": "1"}, "keep": 1}));
    let payload = obj(json!({"amount": 5, "addr": {"city": "Y"}, "keep": null}));
    let a = apply(&i, &event("PAY", &payload)).unwrap();
    assert_eq!(
        (a.from_state.as_str(), a.to_state.as_str()),
        ("pending", "paid")
    );
    assert_eq!(a.instance.state, "paid");
    assert_eq!(
        Value::Object(a.instance.ctx.clone()),
        json!({"customer": "alice", "addr": {"city": "Y"}, "keep": null, "amount": 5})
    );
    assert_eq!(a.instance.updated_at, 2_000);
    assert_eq!(a.instance.created_at, 1_000);
    assert_eq!(
        a.instance.last_wal_offset, 7,
        "storage sets the offset once durable"
    );
    // The input instance is untouched: nothing changes until storage commits.
    assert_eq!(i.state, "pending");
}

#[test]
fn guard_sees_the_context_before_the_merge() {
    let i = new_instance(json!({"amount": 0}));
    let paid = apply(&i, &event("PAY", &Map::new())).unwrap().instance;
    // The payload would make ctx.amount positive, but the guard reads the old ctx.
    let payload = obj(json!({"amount": 10}));
    let e = apply(&paid, &event("SHIP", &payload)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::GuardFailed);
}

#[test]
fn guard_failure_and_missing_transition_have_their_codes() {
    let i = new_instance(json!({"blocked": true}));
    assert_eq!(
        apply(&i, &event("PAY", &Map::new())).unwrap_err().code(),
        ErrorCode::GuardFailed
    );
    assert_eq!(
        apply(&i, &event("SHIP", &Map::new())).unwrap_err().code(),
        ErrorCode::InvalidTransition
    );
    assert_eq!(
        apply(&i, &event("pay", &Map::new())).unwrap_err().code(),
        ErrorCode::InvalidTransition,
        "event names are case-sensitive"
    );
}

#[test]
fn expected_state_mismatch_is_a_conflict() {
    let i = new_instance(json!({}));
    let empty = Map::new();
    let mut req = event("PAY", &empty);
    req.expected_state = Some("paid");
    let e = apply(&i, &req).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict);
    assert_eq!(
        e.to_string(),
        "state conflict: expected 'paid', actual 'pending'"
    );
    req.expected_state = Some("pending");
    assert!(apply(&i, &req).is_ok());
}

#[test]
fn expected_wal_offset_mismatch_is_a_conflict() {
    let i = new_instance(json!({}));
    let empty = Map::new();
    let mut req = event("PAY", &empty);
    req.expected_wal_offset = Some(6);
    let e = apply(&i, &req).unwrap_err();
    assert_eq!(e.details()["reason"], "wal_offset_mismatch");
    req.expected_wal_offset = Some(7);
    assert!(apply(&i, &req).is_ok());
}

#[test]
fn state_check_comes_before_offset_check() {
    let i = new_instance(json!({}));
    let empty = Map::new();
    let mut req = event("PAY", &empty);
    req.expected_state = Some("paid");
    req.expected_wal_offset = Some(1);
    assert_eq!(
        apply(&i, &req).unwrap_err().details()["reason"],
        "state_mismatch"
    );
}

#[test]
fn conflict_checks_come_before_transition_lookup() {
    let i = new_instance(json!({}));
    let empty = Map::new();
    let mut req = event("NO_SUCH_EVENT", &empty);
    req.expected_state = Some("paid");
    assert_eq!(apply(&i, &req).unwrap_err().code(), ErrorCode::Conflict);
}

#[test]
fn apply_on_deleted_instance_is_not_found() {
    let i = new_instance(json!({}));
    let Deletion::Deleted(gone) = delete_instance(&i, 3_000) else {
        panic!("first delete must delete");
    };
    let e = apply(&gone, &event("PAY", &Map::new())).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InstanceNotFound);
}

#[test]
fn event_id_is_recorded_and_cleared_by_an_apply_without_one() {
    let i = new_instance(json!({}));
    let empty = Map::new();
    let mut req = event("TOUCH", &empty);
    req.event_id = Some("evt-1");
    let a = apply(&i, &req).unwrap().instance;
    assert_eq!(a.last_event_id.as_deref(), Some("evt-1"));
    let b = apply(&a, &event("TOUCH", &empty)).unwrap().instance;
    assert_eq!(b.last_event_id, None);
}

#[test]
fn self_transition_is_an_ordinary_apply() {
    let i = new_instance(json!({}));
    let a = apply(&i, &event("TOUCH", &obj(json!({"n": 1})))).unwrap();
    assert_eq!(
        (a.from_state.as_str(), a.to_state.as_str()),
        ("pending", "pending")
    );
    assert_eq!(a.instance.ctx["n"], 1);
}

#[test]
fn merged_ctx_over_the_limit_is_rejected() {
    let i = new_instance(json!({"a": "x"}));
    let limits = InstanceLimits { max_ctx_bytes: 32 };
    let payload = obj(json!({"b": "y".repeat(40)}));
    let e = apply_event(&i, &order(), &event("TOUCH", &payload), 0, &limits).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    assert_eq!(e.details()["path"], "payload");
}

#[test]
fn applying_with_another_machine_is_an_internal_error() {
    let i = new_instance(json!({}));
    let other = Machine::new(
        "order",
        2,
        &json!({"states": ["pending"], "initial": "pending", "transitions": []}),
    )
    .unwrap();
    let e = apply_event(
        &i,
        &other,
        &event("PAY", &Map::new()),
        0,
        &InstanceLimits::default(),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InternalError);
}

#[test]
fn second_delete_reports_the_original_offset() {
    let i = new_instance(json!({}));
    let Deletion::Deleted(mut gone) = delete_instance(&i, 3_000) else {
        panic!("first delete must delete");
    };
    assert!(gone.deleted);
    assert_eq!(gone.updated_at, 3_000);
    gone.last_wal_offset = 9; // storage records the delete's offset
    assert_eq!(
        delete_instance(&gone, 4_000),
        Deletion::AlreadyDeleted { wal_offset: 9 }
    );
}

#[test]
fn instance_serde_round_trips() {
    let mut i = new_instance(json!({"k": [1, {"x": null}]}));
    i.last_event_id = Some("e".into());
    let back: Instance = serde_json::from_str(&serde_json::to_string(&i).unwrap()).unwrap();
    assert_eq!(back, i);
}
