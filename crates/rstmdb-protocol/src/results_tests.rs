//! The borrowed views write exactly the bytes of the owned results (and of the `Value`
//! objects the server used to build): the wire must not change with the type used.

use super::*;
use serde_json::json;

fn ctx() -> serde_json::Map<String, Value> {
    json!({"z": 1, "a": {"b": [1, 2.5, "x\"y"]}})
        .as_object()
        .cloned()
        .unwrap()
}

/// `v` written through a `Value` (keys sorted), as the server writes owned results.
fn via_value<T: Serialize>(v: &T) -> String {
    serde_json::to_string(&serde_json::to_value(v).unwrap()).unwrap()
}

#[test]
fn views_serialize_like_the_owned_results_and_value_objects() {
    let ctx = ctx();
    for event_id in [None, Some("ev-7")] {
        let view = InstanceView {
            created_at: 1_700_000_000_000,
            ctx: &ctx,
            instance_id: "order-1",
            last_event_id: event_id,
            last_wal_offset: 42,
            machine: "order",
            state: "paid",
            updated_at: 1_700_000_000_500,
            version: 3,
        };
        let owned = GetInstanceResult {
            instance_id: Some("order-1".into()),
            machine: "order".into(),
            version: 3,
            state: "paid".into(),
            ctx: Value::Object(ctx.clone()),
            last_event_id: event_id.map(Into::into),
            last_wal_offset: 42,
            created_at: Some(1_700_000_000_000),
            updated_at: Some(1_700_000_000_500),
        };
        let mut want = json!({
            "instance_id": "order-1", "machine": "order", "version": 3, "state": "paid",
            "ctx": ctx, "last_wal_offset": 42,
            "created_at": 1_700_000_000_000i64, "updated_at": 1_700_000_000_500i64,
        });
        if let Some(id) = event_id {
            want["last_event_id"] = json!(id);
        }
        let raw = serde_json::value::to_raw_value(&view).unwrap();
        assert_eq!(raw.get(), serde_json::to_string(&want).unwrap());
        assert_eq!(raw.get(), via_value(&owned));

        let view = AppliedView {
            applied: true,
            ctx: &ctx,
            event_id,
            from_state: "pending",
            to_state: "paid",
            wal_offset: 43,
        };
        let owned = ApplyEventResult {
            from_state: "pending".into(),
            to_state: "paid".into(),
            ctx: Value::Object(ctx.clone()),
            wal_offset: 43,
            applied: true,
            event_id: event_id.map(Into::into),
        };
        let mut want = json!({
            "from_state": "pending", "to_state": "paid", "ctx": ctx,
            "wal_offset": 43, "applied": true,
        });
        if let Some(id) = event_id {
            want["event_id"] = json!(id);
        }
        let raw = serde_json::value::to_raw_value(&view).unwrap();
        assert_eq!(raw.get(), serde_json::to_string(&want).unwrap());
        assert_eq!(raw.get(), via_value(&owned));
    }
    let view = CreatedView {
        instance_id: "i-1",
        state: "new",
        wal_offset: 7,
    };
    let owned = CreateInstanceResult {
        instance_id: "i-1".into(),
        state: "new".into(),
        wal_offset: 7,
    };
    let raw = serde_json::value::to_raw_value(&view).unwrap();
    assert_eq!(
        raw.get(),
        json!({"instance_id": "i-1", "state": "new", "wal_offset": 7}).to_string()
    );
    assert_eq!(raw.get(), via_value(&owned));
}
