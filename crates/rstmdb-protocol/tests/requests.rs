//! Request decoding: the envelope rules of protocol.md §3.1 as amended by decisions.md, and
//! the typed params of every op.

// Helpers outside `#[test]` fns unwrap too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rstmdb_protocol::{
    ApplyEventParams, AuthParams, BatchMode, BatchParams, Command, CompactParams,
    CreateInstanceParams, DeleteInstanceParams, ErrorCode, FlushAllParams, GetInstanceParams,
    GetMachineParams, HelloParams, ListInstancesParams, MAX_REQUEST_ID_BYTES, Op, PutMachineParams,
    Request, RequestError, ResponseBody, SnapshotInstanceParams, UnwatchParams, WalReadParams,
    WatchAllParams, WatchInstanceParams, decode_request,
};
use serde_json::json;

fn decode(text: &str) -> Result<Request, RequestError> {
    decode_request(text.as_bytes())
}

fn command(text: &str) -> Command {
    match decode(text) {
        Ok(request) => request.command,
        Err(error) => panic!("{text}: {error:?}"),
    }
}

/// Asserts an `Invalid` error and returns (id, message, field).
fn invalid(text: &str) -> (Option<String>, String, Option<String>) {
    match decode(text) {
        Err(RequestError::Invalid { id, message, field }) => (id, message, field),
        other => panic!("{text}: expected Invalid, got {other:?}"),
    }
}

// ---- protocol.md §7 transcript ----

#[test]
fn hello_example_decodes() {
    let request = decode(
        r#"{"type":"request","id":"1","op":"HELLO","params":{"protocol_version":1,"client_name":"example-app","wire_modes":["binary_json"],"features":["idempotency","batch"]}}"#,
    )
    .unwrap();
    assert_eq!(request.id, "1");
    assert_eq!(request.op(), Op::Hello);
    assert_eq!(
        request.command,
        Command::Hello(HelloParams {
            protocol_version: 1,
            client_name: Some("example-app".into()),
            wire_modes: vec!["binary_json".into()],
            features: vec!["idempotency".into(), "batch".into()],
        })
    );
}

#[test]
fn auth_example_decodes() {
    let command = command(
        r#"{"type":"request","id":"2","op":"AUTH","params":{"method":"bearer","token":"secret"}}"#,
    );
    assert_eq!(
        command,
        Command::Auth(AuthParams {
            method: "bearer".into(),
            token: "secret".into()
        })
    );
}

#[test]
fn auth_token_never_appears_in_debug_output() {
    let command = command(
        r#"{"type":"request","id":"2","op":"AUTH","params":{"method":"bearer","token":"hunter2"}}"#,
    );
    assert!(!format!("{command:?}").contains("hunter2"));
}

#[test]
fn put_machine_example_decodes() {
    let command = command(
        r#"{"type":"request","id":"3","op":"PUT_MACHINE","params":{"machine":"order","version":1,"definition":{"states":["pending","paid","shipped"],"initial":"pending","transitions":[{"from":"pending","event":"PAY","to":"paid"},{"from":"paid","event":"SHIP","to":"shipped","guard":"ctx.amount > 0"}]}}}"#,
    );
    assert_eq!(
        command,
        Command::PutMachine(PutMachineParams {
            machine: "order".into(),
            version: 1,
            definition: json!({
                "states": ["pending", "paid", "shipped"],
                "initial": "pending",
                "transitions": [
                    {"from": "pending", "event": "PAY", "to": "paid"},
                    {"from": "paid", "event": "SHIP", "to": "shipped", "guard": "ctx.amount > 0"}
                ]
            }),
            checksum: None,
        })
    );
}

#[test]
fn create_instance_example_decodes() {
    let command = command(
        r#"{"type":"request","id":"4","op":"CREATE_INSTANCE","params":{"instance_id":"order-001","machine":"order","version":1,"initial_ctx":{"customer":"alice"}}}"#,
    );
    assert_eq!(
        command,
        Command::CreateInstance(CreateInstanceParams {
            instance_id: Some("order-001".into()),
            machine: "order".into(),
            version: 1,
            initial_ctx: Some(json!({"customer": "alice"})),
            idempotency_key: None,
        })
    );
}

#[test]
fn watch_instance_example_decodes_with_include_ctx_defaulting_to_true() {
    let command = command(
        r#"{"type":"request","id":"5","op":"WATCH_INSTANCE","params":{"instance_id":"order-001"}}"#,
    );
    assert_eq!(
        command,
        Command::WatchInstance(WatchInstanceParams {
            instance_id: "order-001".into(),
            include_ctx: true,
            from_offset: None,
        })
    );
}

#[test]
fn apply_event_example_decodes() {
    let command = command(
        r#"{"type":"request","id":"6","op":"APPLY_EVENT","params":{"instance_id":"order-001","event":"PAY","payload":{"amount":99.5},"expected_state":"pending","idempotency_key":"pay-001"}}"#,
    );
    assert_eq!(
        command,
        Command::ApplyEvent(ApplyEventParams {
            instance_id: "order-001".into(),
            event: "PAY".into(),
            payload: Some(json!({"amount": 99.5})),
            expected_state: Some("pending".into()),
            expected_wal_offset: None,
            event_id: None,
            idempotency_key: Some("pay-001".into()),
        })
    );
}

#[test]
fn bye_example_decodes() {
    assert_eq!(
        command(r#"{"type":"request","id":"7","op":"BYE","params":{}}"#),
        Command::Bye
    );
}

// ---- the other ops ----

#[test]
fn ops_without_params_decode() {
    for (op, expected) in [
        ("PING", Command::Ping),
        ("BYE", Command::Bye),
        ("INFO", Command::Info),
        ("LIST_MACHINES", Command::ListMachines),
        ("WAL_STATS", Command::WalStats),
    ] {
        assert_eq!(
            command(&format!(r#"{{"type":"request","id":"1","op":"{op}"}}"#)),
            expected
        );
    }
}

#[test]
fn ops_without_params_ignore_any_params_value() {
    for params in ["null", "{}", "[1,2]", "\"x\"", "7", "{\"junk\":true}"] {
        for op in ["PING", "BYE", "INFO", "LIST_MACHINES", "WAL_STATS"] {
            let text = format!(r#"{{"type":"request","id":"1","op":"{op}","params":{params}}}"#);
            assert!(decode(&text).is_ok(), "{text}");
        }
    }
}

#[test]
fn get_machine_decodes() {
    assert_eq!(
        command(
            r#"{"type":"request","id":"1","op":"GET_MACHINE","params":{"machine":"order","version":2}}"#
        ),
        Command::GetMachine(GetMachineParams {
            machine: "order".into(),
            version: 2
        })
    );
}

#[test]
fn get_instance_decodes() {
    assert_eq!(
        command(
            r#"{"type":"request","id":"1","op":"GET_INSTANCE","params":{"instance_id":"i-1"}}"#
        ),
        Command::GetInstance(GetInstanceParams {
            instance_id: "i-1".into()
        })
    );
}

#[test]
fn list_instances_decodes_with_extensions() {
    assert_eq!(
        command(r#"{"type":"request","id":"1","op":"LIST_INSTANCES","params":{}}"#),
        Command::ListInstances(ListInstancesParams::default())
    );
    assert_eq!(
        command(
            r#"{"type":"request","id":"1","op":"LIST_INSTANCES","params":{"machine":"order","state":"paid","limit":10,"offset":5,"after":"i-9","include_deleted":true}}"#
        ),
        Command::ListInstances(ListInstancesParams {
            machine: Some("order".into()),
            state: Some("paid".into()),
            limit: Some(10),
            offset: Some(5),
            after: Some("i-9".into()),
            include_deleted: true,
        })
    );
}

#[test]
fn delete_instance_decodes() {
    assert_eq!(
        command(
            r#"{"type":"request","id":"1","op":"DELETE_INSTANCE","params":{"instance_id":"i-1","idempotency_key":"k"}}"#
        ),
        Command::DeleteInstance(DeleteInstanceParams {
            instance_id: "i-1".into(),
            idempotency_key: Some("k".into())
        })
    );
}

#[test]
fn snapshot_instance_decodes() {
    assert_eq!(
        command(
            r#"{"type":"request","id":"1","op":"SNAPSHOT_INSTANCE","params":{"instance_id":"i-1"}}"#
        ),
        Command::SnapshotInstance(SnapshotInstanceParams {
            instance_id: "i-1".into()
        })
    );
}

#[test]
fn wal_read_decodes() {
    assert_eq!(
        command(
            r#"{"type":"request","id":"1","op":"WAL_READ","params":{"from_offset":1099511627776,"limit":50}}"#
        ),
        Command::WalRead(WalReadParams {
            from_offset: 1_099_511_627_776,
            limit: Some(50)
        })
    );
}

#[test]
fn wal_read_requires_from_offset() {
    let (_, message, field) =
        invalid(r#"{"type":"request","id":"1","op":"WAL_READ","params":{"limit":5}}"#);
    assert_eq!(message, "missing field `from_offset`");
    assert_eq!(field.as_deref(), Some("from_offset"));
}

#[test]
fn compact_decodes_with_and_without_params() {
    assert_eq!(
        command(r#"{"type":"request","id":"1","op":"COMPACT"}"#),
        Command::Compact(CompactParams {
            force_snapshot: false
        })
    );
    assert_eq!(
        command(r#"{"type":"request","id":"1","op":"COMPACT","params":{"force_snapshot":true}}"#),
        Command::Compact(CompactParams {
            force_snapshot: true
        })
    );
}

#[test]
fn watch_all_decodes_filters() {
    assert_eq!(
        command(r#"{"type":"request","id":"1","op":"WATCH_ALL","params":{}}"#),
        Command::WatchAll(WatchAllParams::default())
    );
    assert_eq!(
        command(
            r#"{"type":"request","id":"1","op":"WATCH_ALL","params":{"include_ctx":false,"from_offset":3,"machines":["order"],"from_states":["a"],"to_states":["b","c"],"events":null}}"#
        ),
        Command::WatchAll(WatchAllParams {
            include_ctx: false,
            from_offset: Some(3),
            machines: vec!["order".into()],
            from_states: vec!["a".into()],
            to_states: vec!["b".into(), "c".into()],
            events: vec![],
        })
    );
}

#[test]
fn watch_instance_null_include_ctx_means_default() {
    assert_eq!(
        command(
            r#"{"type":"request","id":"1","op":"WATCH_INSTANCE","params":{"instance_id":"i","include_ctx":null,"from_offset":7}}"#
        ),
        Command::WatchInstance(WatchInstanceParams {
            instance_id: "i".into(),
            include_ctx: true,
            from_offset: Some(7)
        })
    );
}

#[test]
fn unwatch_decodes() {
    assert_eq!(
        command(
            r#"{"type":"request","id":"1","op":"UNWATCH","params":{"subscription_id":"sub-1"}}"#
        ),
        Command::Unwatch(UnwatchParams {
            subscription_id: "sub-1".into()
        })
    );
}

#[test]
fn flush_all_decodes() {
    let request = decode(r#"{"type":"request","id":"9","op":"FLUSH_ALL","params":{}}"#).unwrap();
    assert_eq!(request.op(), Op::FlushAll);
    assert_eq!(request.command, Command::FlushAll(FlushAllParams {}));
    assert_eq!(
        command(r#"{"type":"request","id":"9","op":"FLUSH_ALL"}"#),
        Command::FlushAll(FlushAllParams {})
    );
}

// ---- optional fields, unknown keys ----

#[test]
fn null_optional_fields_mean_absent() {
    assert_eq!(
        command(
            r#"{"type":"request","id":"1","op":"CREATE_INSTANCE","params":{"instance_id":null,"machine":"m","version":1,"initial_ctx":null,"idempotency_key":null}}"#
        ),
        Command::CreateInstance(CreateInstanceParams {
            instance_id: None,
            machine: "m".into(),
            version: 1,
            initial_ctx: None,
            idempotency_key: None,
        })
    );
}

#[test]
fn unknown_keys_are_ignored() {
    assert_eq!(
        command(
            r#"{"type":"request","id":"1","op":"GET_INSTANCE","params":{"instance_id":"i","future":[1]},"trace":"x"}"#
        ),
        Command::GetInstance(GetInstanceParams {
            instance_id: "i".into()
        })
    );
}

#[test]
fn type_value_is_not_checked() {
    assert_eq!(
        command(r#"{"type":"banana","id":"1","op":"PING"}"#),
        Command::Ping
    );
}

#[test]
fn empty_id_is_accepted() {
    assert_eq!(
        decode(r#"{"type":"request","id":"","op":"PING"}"#)
            .unwrap()
            .id,
        ""
    );
}

// ---- envelope errors ----

#[test]
fn invalid_json_is_malformed() {
    for text in [
        "",
        "{",
        "{\"type\":\"request\",",
        "nope",
        "{\"id\":\"1\"} trailing",
    ] {
        let error = decode(text).unwrap_err();
        assert!(matches!(error, RequestError::Malformed { .. }), "{text:?}");
        assert!(error.closes_connection());
        assert_eq!(error.id(), None);
    }
}

#[test]
fn invalid_utf8_is_malformed() {
    let error =
        decode_request(b"{\"type\":\"request\",\"id\":\"\xff\",\"op\":\"PING\"}").unwrap_err();
    assert!(matches!(error, RequestError::Malformed { .. }));
}

#[test]
fn non_object_json_is_invalid_without_id() {
    for text in ["[\"request\",\"1\",\"PING\",{}]", "null", "42", "\"PING\""] {
        let (id, message, _) = invalid(text);
        assert_eq!(id, None);
        assert!(
            message.starts_with("request must be a JSON object"),
            "{message}"
        );
    }
}

#[test]
fn id_that_is_not_a_string_is_invalid_without_id() {
    for id in ["1", "null", "true", "[\"1\"]"] {
        let (echoed, message, field) =
            invalid(&format!(r#"{{"type":"request","id":{id},"op":"PING"}}"#));
        assert_eq!(echoed, None);
        assert!(message.starts_with("`id` must be a string"), "{message}");
        assert_eq!(field.as_deref(), Some("id"));
    }
}

#[test]
fn missing_id_is_invalid() {
    let (id, message, field) = invalid(r#"{"type":"request","op":"PING"}"#);
    assert_eq!(id, None);
    assert_eq!(message, "missing field `id`");
    assert_eq!(field.as_deref(), Some("id"));
}

#[test]
fn id_over_256_bytes_is_invalid_without_id() {
    let at_limit = "x".repeat(MAX_REQUEST_ID_BYTES);
    let text = format!(r#"{{"type":"request","id":"{at_limit}","op":"PING"}}"#);
    assert_eq!(decode(&text).unwrap().id, at_limit);

    let over = "x".repeat(MAX_REQUEST_ID_BYTES + 1);
    let (id, message, field) = invalid(&format!(
        r#"{{"type":"request","id":"{over}","op":"PING"}}"#
    ));
    assert_eq!(id, None);
    assert!(message.contains("256"), "{message}");
    assert_eq!(field.as_deref(), Some("id"));
}

#[test]
fn missing_or_non_string_type_is_invalid_with_id() {
    let (id, message, field) = invalid(r#"{"id":"5","op":"PING"}"#);
    assert_eq!(id.as_deref(), Some("5"));
    assert_eq!(message, "missing field `type`");
    assert_eq!(field.as_deref(), Some("type"));

    let (id, _, field) = invalid(r#"{"type":1,"id":"5","op":"PING"}"#);
    assert_eq!(id.as_deref(), Some("5"));
    assert_eq!(field.as_deref(), Some("type"));
}

#[test]
fn missing_or_non_string_op_is_invalid_with_id() {
    let (id, message, field) = invalid(r#"{"type":"request","id":"5"}"#);
    assert_eq!(id.as_deref(), Some("5"));
    assert_eq!(message, "missing field `op`");
    assert_eq!(field.as_deref(), Some("op"));

    let (_, message, _) = invalid(r#"{"type":"request","id":"5","op":7}"#);
    assert!(message.starts_with("`op` must be a string"), "{message}");
}

#[test]
fn unknown_op_is_invalid_with_id_echoed() {
    let error = decode(r#"{"type":"request","id":"req-42","op":"FROB","params":{}}"#).unwrap_err();
    assert!(!error.closes_connection());
    assert_eq!(error.id(), Some("req-42"));
    assert_eq!(error.message(), "unknown op `FROB`");
    assert_eq!(error.field(), Some("op"));
}

#[test]
fn lower_case_op_is_unknown() {
    let (_, message, _) = invalid(r#"{"type":"request","id":"1","op":"ping"}"#);
    assert_eq!(message, "unknown op `ping`");
}

#[test]
fn a_huge_unknown_op_is_not_echoed_whole() {
    let op = "X".repeat(100_000);
    let (_, message, _) = invalid(&format!(r#"{{"type":"request","id":"1","op":"{op}"}}"#));
    assert!(message.len() < 200, "{} bytes", message.len());
}

// ---- params errors ----

#[test]
fn missing_required_fields_are_named() {
    for (op, params, missing) in [
        ("GET_INSTANCE", "{}", "instance_id"),
        ("APPLY_EVENT", r#"{"instance_id":"i"}"#, "event"),
        (
            "PUT_MACHINE",
            r#"{"machine":"m","version":1}"#,
            "definition",
        ),
        ("CREATE_INSTANCE", r#"{"machine":"m"}"#, "version"),
        ("AUTH", r#"{"method":"bearer"}"#, "token"),
        ("HELLO", r#"{"wire_modes":[]}"#, "protocol_version"),
        ("UNWATCH", "{}", "subscription_id"),
        ("DELETE_INSTANCE", "{}", "instance_id"),
        ("SNAPSHOT_INSTANCE", "{}", "instance_id"),
        ("WATCH_INSTANCE", "{}", "instance_id"),
        ("GET_MACHINE", r#"{"version":1}"#, "machine"),
    ] {
        let text = format!(r#"{{"type":"request","id":"7","op":"{op}","params":{params}}}"#);
        let (id, message, field) = invalid(&text);
        assert_eq!(id.as_deref(), Some("7"));
        assert_eq!(message, format!("missing field `{missing}`"), "{op}");
        assert_eq!(field.as_deref(), Some(missing), "{op}");
    }
}

#[test]
fn wrongly_typed_fields_are_named_by_path() {
    let (_, message, field) = invalid(
        r#"{"type":"request","id":"1","op":"GET_MACHINE","params":{"machine":"m","version":"1"}}"#,
    );
    assert_eq!(
        message,
        r#"version: invalid type: string "1", expected u32"#
    );
    assert_eq!(field.as_deref(), Some("version"));

    let (_, message, field) = invalid(
        r#"{"type":"request","id":"1","op":"HELLO","params":{"protocol_version":1,"wire_modes":["jsonl",3]}}"#,
    );
    assert_eq!(field.as_deref(), Some("wire_modes[1]"));
    assert!(
        message.starts_with("wire_modes[1]: invalid type: integer `3`"),
        "{message}"
    );
}

#[test]
fn out_of_range_and_fractional_integers_are_rejected() {
    let (_, message, field) = invalid(
        r#"{"type":"request","id":"1","op":"CREATE_INSTANCE","params":{"machine":"m","version":-1}}"#,
    );
    assert_eq!(
        message,
        "version: invalid value: integer `-1`, expected u32"
    );
    assert_eq!(field.as_deref(), Some("version"));

    let (_, _, field) =
        invalid(r#"{"type":"request","id":"1","op":"HELLO","params":{"protocol_version":70000}}"#);
    assert_eq!(field.as_deref(), Some("protocol_version"));

    let (_, message, _) = invalid(
        r#"{"type":"request","id":"1","op":"GET_MACHINE","params":{"machine":"m","version":1.0}}"#,
    );
    assert!(
        message.starts_with("version: invalid type: floating point"),
        "{message}"
    );
}

#[test]
fn params_null_or_absent_is_an_empty_object() {
    let (id, message, field) =
        invalid(r#"{"type":"request","id":"3","op":"GET_INSTANCE","params":null}"#);
    assert_eq!(id.as_deref(), Some("3"));
    assert_eq!(message, "missing field `instance_id`");
    assert_eq!(field.as_deref(), Some("instance_id"));

    let (_, message, _) = invalid(r#"{"type":"request","id":"3","op":"GET_INSTANCE"}"#);
    assert_eq!(message, "missing field `instance_id`");

    assert_eq!(
        command(r#"{"type":"request","id":"1","op":"PING","params":null}"#),
        Command::Ping
    );
    assert_eq!(
        command(r#"{"type":"request","id":"1","op":"LIST_INSTANCES","params":null}"#),
        Command::ListInstances(ListInstancesParams::default())
    );
}

#[test]
fn non_object_params_are_invalid_for_ops_with_params() {
    for params in ["[]", "\"x\"", "1", "true"] {
        let (id, message, field) = invalid(&format!(
            r#"{{"type":"request","id":"1","op":"LIST_INSTANCES","params":{params}}}"#
        ));
        assert_eq!(id.as_deref(), Some("1"));
        assert!(
            message.starts_with("params must be a JSON object"),
            "{message}"
        );
        assert_eq!(field.as_deref(), Some("params"));
    }
}

#[test]
fn huge_wrongly_typed_strings_are_not_echoed_whole() {
    let big = "y".repeat(100_000);
    let (_, message, _) = invalid(&format!(
        r#"{{"type":"request","id":"1","op":"GET_MACHINE","params":{{"machine":"m","version":"{big}"}}}}"#
    ));
    assert!(message.len() <= 512, "{} bytes", message.len());
}

// ---- BATCH ----

#[test]
fn batch_decodes_ops_into_commands() {
    let command = command(
        r#"{"type":"request","id":"1","op":"BATCH","params":{"mode":"atomic","ops":[
            {"op":"CREATE_INSTANCE","params":{"machine":"m","version":1}},
            {"op":"APPLY_EVENT","params":{"instance_id":"i","event":"GO"}},
            {"op":"PING"}
        ]}}"#,
    );
    let Command::Batch(BatchParams { mode, ops }) = command else {
        panic!("not a batch: {command:?}");
    };
    assert_eq!(mode, BatchMode::Atomic);
    assert_eq!(
        ops.iter().map(Command::op).collect::<Vec<_>>(),
        [Op::CreateInstance, Op::ApplyEvent, Op::Ping]
    );
}

#[test]
fn batch_flush_all_element_decodes_with_params_absent_null_or_empty() {
    // The server runs FLUSH_ALL as a batch element; its params are read as for the op alone.
    let command = command(
        r#"{"type":"request","id":"1","op":"BATCH","params":{"ops":[
            {"op":"FLUSH_ALL","params":{}},
            {"op":"FLUSH_ALL"},
            {"op":"FLUSH_ALL","params":null}
        ]}}"#,
    );
    assert_eq!(
        command,
        Command::Batch(BatchParams {
            mode: BatchMode::BestEffort,
            ops: vec![Command::FlushAll(FlushAllParams {}); 3],
        })
    );
    let (_, _, field) = invalid(
        r#"{"type":"request","id":"1","op":"BATCH","params":{"ops":[{"op":"FLUSH_ALL","params":[]}]}}"#,
    );
    assert_eq!(field.as_deref(), Some("ops[0].params"));
}

#[test]
fn batch_accepts_operations_as_the_list_name() {
    let command = command(
        r#"{"type":"request","id":"1","op":"BATCH","params":{"operations":[{"op":"GET_INSTANCE","params":{"instance_id":"i"}}]}}"#,
    );
    assert_eq!(
        command,
        Command::Batch(BatchParams {
            mode: BatchMode::BestEffort,
            ops: vec![Command::GetInstance(GetInstanceParams {
                instance_id: "i".into()
            })],
        })
    );
}

#[test]
fn batch_without_ops_or_operations_names_ops() {
    let (id, message, field) =
        invalid(r#"{"type":"request","id":"1","op":"BATCH","params":{"mode":"atomic"}}"#);
    assert_eq!(id.as_deref(), Some("1"));
    assert_eq!(message, "missing field `ops`");
    assert_eq!(field.as_deref(), Some("ops"));
}

#[test]
fn batch_with_both_list_names_is_invalid() {
    let (_, _, field) =
        invalid(r#"{"type":"request","id":"1","op":"BATCH","params":{"ops":[],"operations":[]}}"#);
    assert_eq!(field.as_deref(), Some("operations"));
}

#[test]
fn batch_empty_list_is_fine() {
    assert_eq!(
        command(r#"{"type":"request","id":"1","op":"BATCH","params":{"ops":[]}}"#),
        Command::Batch(BatchParams {
            mode: BatchMode::BestEffort,
            ops: vec![]
        })
    );
}

#[test]
fn batch_rejects_unknown_modes_clearly() {
    let (_, message, field) =
        invalid(r#"{"type":"request","id":"1","op":"BATCH","params":{"mode":"yolo","ops":[]}}"#);
    assert_eq!(field.as_deref(), Some("mode"));
    assert!(
        message.contains("yolo") && message.contains("atomic"),
        "{message}"
    );
}

#[test]
fn batch_element_with_unknown_op_names_its_index() {
    let (id, message, field) = invalid(
        r#"{"type":"request","id":"b","op":"BATCH","params":{"ops":[
            {"op":"PING"},{"op":"PING"},{"op":"PING"},{"op":"NOPE","params":{}}
        ]}}"#,
    );
    assert_eq!(id.as_deref(), Some("b"));
    assert_eq!(message, "ops[3]: unknown op `NOPE`");
    assert_eq!(field.as_deref(), Some("ops[3].op"));
}

#[test]
fn batch_element_errors_carry_their_path() {
    let (_, message, field) = invalid(
        r#"{"type":"request","id":"1","op":"BATCH","params":{"ops":[{"op":"GET_INSTANCE","params":{}}]}}"#,
    );
    assert_eq!(message, "ops[0].params: missing field `instance_id`");
    assert_eq!(field.as_deref(), Some("ops[0].params.instance_id"));

    let (_, message, field) = invalid(
        r#"{"type":"request","id":"1","op":"BATCH","params":{"operations":[{"op":"PING"},{"op":"GET_MACHINE","params":{"machine":"m","version":"2"}}]}}"#,
    );
    assert_eq!(
        message,
        r#"operations[1].params.version: invalid type: string "2", expected u32"#
    );
    assert_eq!(field.as_deref(), Some("operations[1].params.version"));

    let (_, _, field) =
        invalid(r#"{"type":"request","id":"1","op":"BATCH","params":{"ops":[{"params":{}}]}}"#);
    assert_eq!(field.as_deref(), Some("ops[0].op"));

    let (_, _, field) =
        invalid(r#"{"type":"request","id":"1","op":"BATCH","params":{"ops":[{"op":"PING"},7]}}"#);
    assert_eq!(field.as_deref(), Some("ops[1]"));

    let (_, _, field) = invalid(
        r#"{"type":"request","id":"1","op":"BATCH","params":{"ops":[{"op":"GET_INSTANCE","params":[1]}]}}"#,
    );
    assert_eq!(field.as_deref(), Some("ops[0].params"));

    let (_, _, field) =
        invalid(r#"{"type":"request","id":"1","op":"BATCH","params":{"ops":{"op":"PING"}}}"#);
    assert_eq!(field.as_deref(), Some("ops"));
}

// ---- errors as responses, requests as bytes ----

#[test]
fn invalid_request_becomes_a_bad_request_response_echoing_the_id() {
    let error =
        decode(r#"{"type":"request","id":"7","op":"GET_INSTANCE","params":{}}"#).unwrap_err();
    let response = error.to_response();
    assert_eq!(response.id.as_deref(), Some("7"));
    let ResponseBody::Err(body) = &response.body else {
        panic!("not an error: {response:?}");
    };
    assert_eq!(body.code, ErrorCode::BadRequest);
    assert!(!body.retryable);
    assert_eq!(body.message, "invalid request: missing field `instance_id`");
    assert_eq!(body.details.get("field"), Some(&json!("instance_id")));
}

#[test]
fn malformed_request_becomes_a_response_with_null_id() {
    let error = decode("{oops").unwrap_err();
    let bytes = error.to_response().to_json_bytes().unwrap();
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(value["id"], serde_json::Value::Null);
    assert_eq!(value["error"]["code"], "BAD_REQUEST");
}

#[test]
fn encoded_requests_decode_to_themselves() {
    let requests = [
        Request::new("1", Command::Ping),
        Request::new(
            "2",
            Command::Batch(BatchParams {
                mode: BatchMode::Atomic,
                ops: vec![
                    Command::CreateInstance(CreateInstanceParams {
                        instance_id: None,
                        machine: "m".into(),
                        version: 3,
                        initial_ctx: Some(json!({"a": [1, 2]})),
                        idempotency_key: Some("k".into()),
                    }),
                    Command::WatchAll(WatchAllParams::default()),
                    Command::FlushAll(FlushAllParams {}),
                ],
            }),
        ),
    ];
    for request in requests {
        let bytes = request.to_json_bytes().unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), request);
    }
}

#[test]
fn ping_request_encodes_as_the_protocol_example() {
    let bytes = Request::new("1", Command::Ping).to_json_bytes().unwrap();
    assert_eq!(
        bytes,
        r#"{"type":"request","id":"1","op":"PING","params":{}}"#
    );
}

// ---- nesting ----

#[test]
fn deeply_nested_definitions_decode_without_exhausting_the_stack() {
    // serde_json refuses more than 128 levels; go right up to that.
    let depth = 120;
    let definition = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let text = format!(
        r#"{{"type":"request","id":"1","op":"PUT_MACHINE","params":{{"machine":"m","version":1,"definition":{definition}}}}}"#
    );
    assert!(decode(&text).is_ok());

    let too_deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let text = format!(
        r#"{{"type":"request","id":"1","op":"PUT_MACHINE","params":{{"machine":"m","version":1,"definition":{too_deep}}}}}"#
    );
    assert!(matches!(decode(&text), Err(RequestError::Malformed { .. })));
}

#[test]
fn deeply_nested_batches_decode_without_exhausting_the_stack() {
    let mut params = r#"{"ops":[{"op":"PING"}]}"#.to_owned();
    let mut depth = 0;
    loop {
        let wrapped = format!(r#"{{"ops":[{{"op":"BATCH","params":{params}}}]}}"#);
        let text = format!(r#"{{"type":"request","id":"1","op":"BATCH","params":{wrapped}}}"#);
        if decode(&text).is_err() {
            break;
        }
        params = wrapped;
        depth += 1;
    }
    assert!(depth > 30, "only {depth} levels decoded");
}

#[test]
fn numbers_in_json_values_survive_decoding_exactly() {
    let text = r#"{"type":"request","id":"1","op":"APPLY_EVENT","params":{"instance_id":"i","event":"E","payload":{"f":7.043766409691288e-168,"big":18446744073709551615,"neg":-9223372036854775808}}}"#;
    let request = decode(text).unwrap();
    let again = decode_request(&request.to_json_bytes().unwrap()).unwrap();
    assert_eq!(again, request);
    let Command::ApplyEvent(params) = request.command else {
        panic!("not APPLY_EVENT");
    };
    assert_eq!(
        serde_json::to_string(&params.payload).unwrap(),
        r#"{"big":18446744073709551615,"f":7.043766409691288e-168,"neg":-9223372036854775808}"#
    );
}

#[test]
fn cluster_ops_decode_with_voter_defaulting_to_true() {
    assert_eq!(
        command(r#"{"type":"request","id":"1","op":"CLUSTER_STATUS","params":{"junk":1}}"#),
        Command::ClusterStatus
    );
    let add = command(
        r#"{"type":"request","id":"1","op":"CLUSTER_ADD_NODE","params":{"node_id":4,"client":"h:1","raft":"h:2"}}"#,
    );
    assert_eq!(
        add,
        Command::ClusterAddNode(rstmdb_protocol::ClusterAddNodeParams {
            node_id: 4,
            client: "h:1".into(),
            raft: "h:2".into(),
            voter: true,
            timeout_ms: None,
        })
    );
    assert_eq!(add.op(), Op::ClusterAddNode);
    assert_eq!(add.names(), rstmdb_protocol::Names::default());
    assert_eq!(
        command(r#"{"type":"request","id":"1","op":"CLUSTER_REMOVE_NODE","params":{"node_id":2}}"#),
        Command::ClusterRemoveNode(rstmdb_protocol::ClusterRemoveNodeParams { node_id: 2 })
    );
    let (_, message, _) = invalid(
        r#"{"type":"request","id":"1","op":"CLUSTER_ADD_NODE","params":{"node_id":4,"client":"h:1"}}"#,
    );
    assert!(message.contains("raft"), "{message}");
}
