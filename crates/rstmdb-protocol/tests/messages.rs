//! Responses, results and events: byte-exact JSON and client-side decoding.

// Helpers outside `#[test]` fns unwrap too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rstmdb_protocol::{
    ApplyEventResult, BatchItemResult, BatchResult, ErrorCode, ErrorObject, Event,
    GetInstanceResult, HelloResult, ListInstancesResult, Meta, Response, ResponseBody,
    ServerMessage, WalReadResult, WalStatsResult, WireMode,
};
use serde_json::{Value, json};

fn text(bytes: bytes::Bytes) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn paid_event(ctx: Option<Value>) -> Event {
    Event {
        subscription_id: "sub-1".into(),
        instance_id: "order-001".into(),
        machine: "order".into(),
        version: 1,
        wal_offset: 1_099_511_628_253,
        from_state: "pending".into(),
        to_state: "paid".into(),
        event: "PAY".into(),
        payload: json!({"amount": 99.5}),
        ctx,
    }
}

#[test]
fn ok_response_is_byte_exact() {
    let response = Response::ok(
        "6",
        json!({"applied": true, "ctx": {"amount": 99.5, "customer": "alice"}, "from_state": "pending", "to_state": "paid", "wal_offset": 1_099_511_628_253u64}),
    );
    assert_eq!(
        text(response.to_json_bytes().unwrap()),
        r#"{"type":"response","id":"6","status":"ok","result":{"applied":true,"ctx":{"amount":99.5,"customer":"alice"},"from_state":"pending","to_state":"paid","wal_offset":1099511628253}}"#
    );
}

#[test]
fn ok_response_with_meta_is_byte_exact() {
    let meta = Meta {
        server_time: Some("2025-01-02T03:04:05Z".into()),
        wal_offset: Some(12),
        extra: Default::default(),
    };
    let response = Response::ok("1", json!({"pong": true})).with_meta(meta);
    assert_eq!(
        text(response.to_json_bytes().unwrap()),
        r#"{"type":"response","id":"1","status":"ok","result":{"pong":true},"meta":{"server_time":"2025-01-02T03:04:05Z","wal_offset":12}}"#
    );
}

#[test]
fn empty_meta_is_omitted() {
    let response = Response::ok("1", json!({})).with_meta(Meta::default());
    assert_eq!(
        text(response.to_json_bytes().unwrap()),
        r#"{"type":"response","id":"1","status":"ok","result":{}}"#
    );
}

#[test]
fn error_response_is_byte_exact_with_retryable_derived_from_the_code() {
    let response = Response::error(
        Some("9".into()),
        ErrorObject::new(ErrorCode::Unauthorized, "authentication required"),
    );
    assert_eq!(
        text(response.to_json_bytes().unwrap()),
        r#"{"type":"response","id":"9","status":"error","error":{"code":"UNAUTHORIZED","message":"authentication required","retryable":false}}"#
    );

    let response = Response::error(
        Some("10".into()),
        ErrorObject::new(ErrorCode::WalIoError, "disk full").with_detail("segment", 3),
    );
    assert_eq!(
        text(response.to_json_bytes().unwrap()),
        r#"{"type":"response","id":"10","status":"error","error":{"code":"WAL_IO_ERROR","message":"disk full","retryable":true,"details":{"segment":3}}}"#
    );
}

#[test]
fn error_response_without_id_sends_null() {
    let response = Response::error(None, ErrorObject::new(ErrorCode::BadRequest, "bad"));
    assert_eq!(
        text(response.to_json_bytes().unwrap()),
        r#"{"type":"response","id":null,"status":"error","error":{"code":"BAD_REQUEST","message":"bad","retryable":false}}"#
    );
}

#[test]
fn every_code_sets_retryable_from_the_code() {
    for code in ErrorCode::ALL {
        assert_eq!(ErrorObject::new(code, "x").retryable, code.retryable());
    }
}

#[test]
fn event_with_ctx_is_byte_exact() {
    let event = paid_event(Some(json!({"amount": 99.5, "customer": "alice"})));
    assert_eq!(
        text(event.to_json_bytes().unwrap()),
        r#"{"type":"event","subscription_id":"sub-1","instance_id":"order-001","machine":"order","version":1,"wal_offset":1099511628253,"from_state":"pending","to_state":"paid","event":"PAY","payload":{"amount":99.5},"ctx":{"amount":99.5,"customer":"alice"}}"#
    );
}

#[test]
fn event_without_ctx_omits_the_key() {
    assert_eq!(
        text(paid_event(None).to_json_bytes().unwrap()),
        r#"{"type":"event","subscription_id":"sub-1","instance_id":"order-001","machine":"order","version":1,"wal_offset":1099511628253,"from_state":"pending","to_state":"paid","event":"PAY","payload":{"amount":99.5}}"#
    );
}

#[test]
fn event_with_null_ctx_keeps_the_key() {
    let json = text(paid_event(Some(Value::Null)).to_json_bytes().unwrap());
    assert!(
        json.ends_with(r#""payload":{"amount":99.5},"ctx":null}"#),
        "{json}"
    );
}

#[test]
fn server_messages_round_trip() {
    let messages: Vec<ServerMessage> = vec![
        Response::ok("1", json!({"pong": true})).into(),
        Response::ok("2", json!({"x": [1, 2.5, null]}))
            .with_meta(Meta {
                server_time: Some("t".into()),
                wal_offset: None,
                extra: [("leader".to_owned(), json!(true))].into_iter().collect(),
            })
            .into(),
        Response::error(None, ErrorObject::new(ErrorCode::BadRequest, "no")).into(),
        Response::error(
            Some("3".into()),
            ErrorObject::new(ErrorCode::Conflict, "c")
                .with_detail("reason", "idempotency_key_reused"),
        )
        .into(),
        paid_event(None).into(),
        paid_event(Some(Value::Null)).into(),
        paid_event(Some(json!({"a": 1}))).into(),
    ];
    for message in messages {
        let bytes = message.to_json_bytes().unwrap();
        assert_eq!(
            ServerMessage::from_json_bytes(&bytes).unwrap(),
            message,
            "{bytes:?}"
        );
    }
}

#[test]
fn reference_transcript_lines_decode_as_server_messages() {
    let response = ServerMessage::from_json_bytes(
        br#"{"type":"response","id":"1","status":"ok","result":{"features":["idempotency","batch"],"protocol_version":1,"server_name":"rstmdb","server_version":"0.1.1","wire_mode":"binary_json"}}"#,
    )
    .unwrap();
    let ServerMessage::Response(Response {
        id,
        body: ResponseBody::Ok(result),
        meta: None,
    }) = response
    else {
        panic!("not an ok response: {response:?}");
    };
    assert_eq!(id.as_deref(), Some("1"));
    let hello: HelloResult = serde_json::from_value(result).unwrap();
    assert_eq!(hello.wire_mode, WireMode::BinaryJson);
    assert_eq!(hello.features, ["idempotency", "batch"]);

    let event = ServerMessage::from_json_bytes(
        br#"{"type":"event","subscription_id":"sub-b376feca-a37c-4a35-b795-d8ffc12cb7ef","instance_id":"order-001","machine":"order","version":1,"wal_offset":1099511628253,"from_state":"pending","to_state":"paid","event":"PAY","payload":{"amount":99.5},"ctx":{"amount":99.5,"customer":"alice"}}"#,
    )
    .unwrap();
    assert!(matches!(
        event,
        ServerMessage::Event(Event { ctx: Some(_), .. })
    ));

    let error = ServerMessage::from_json_bytes(
        br#"{"type":"response","id":"x","status":"error","error":{"code":"UNAUTHORIZED","message":"authentication required","retryable":false}}"#,
    )
    .unwrap();
    let ServerMessage::Response(Response {
        body: ResponseBody::Err(error),
        ..
    }) = error
    else {
        panic!("not an error response: {error:?}");
    };
    assert_eq!(error.code, ErrorCode::Unauthorized);
}

#[test]
fn unknown_message_types_and_codes_are_rejected() {
    assert!(ServerMessage::from_json_bytes(br#"{"type":"request","id":"1"}"#).is_err());
    assert!(
        ServerMessage::from_json_bytes(
            br#"{"type":"response","id":"1","status":"error","error":{"code":"NOPE","message":"m","retryable":false}}"#
        )
        .is_err()
    );
    assert!(
        ServerMessage::from_json_bytes(br#"{"type":"response","id":"1","status":"error"}"#)
            .is_err()
    );
}

#[test]
fn batch_entries_always_carry_all_three_keys() {
    let result = BatchResult {
        results: vec![
            BatchItemResult::ok(json!({"pong": true})),
            BatchItemResult::error(ErrorObject::new(ErrorCode::InstanceNotFound, "gone")),
        ],
    };
    assert_eq!(
        serde_json::to_string(&result).unwrap(),
        r#"{"results":[{"status":"ok","result":{"pong":true},"error":null},{"status":"error","result":null,"error":{"code":"INSTANCE_NOT_FOUND","message":"gone","retryable":false}}]}"#
    );
    let back: BatchResult = serde_json::from_str(&serde_json::to_string(&result).unwrap()).unwrap();
    assert_eq!(back, result);
}

#[test]
fn wal_read_next_offset_is_null_when_absent() {
    let result = WalReadResult {
        records: vec![],
        next_offset: None,
    };
    assert_eq!(
        serde_json::to_string(&result).unwrap(),
        r#"{"records":[],"next_offset":null}"#
    );
}

#[test]
fn optional_result_fields_are_omitted_when_absent() {
    let apply = ApplyEventResult {
        from_state: "a".into(),
        to_state: "b".into(),
        ctx: Value::Null,
        wal_offset: 5,
        applied: true,
        event_id: None,
    };
    assert_eq!(
        serde_json::to_value(&apply).unwrap(),
        json!({"from_state": "a", "to_state": "b", "ctx": null, "wal_offset": 5, "applied": true})
    );

    let list = ListInstancesResult {
        instances: vec![],
        total: 0,
        has_more: false,
        next_after: None,
    };
    assert_eq!(
        serde_json::to_value(&list).unwrap(),
        json!({"instances": [], "total": 0, "has_more": false})
    );
}

#[test]
fn reference_results_without_our_additions_still_decode() {
    let get: GetInstanceResult = serde_json::from_value(json!({
        "machine": "order", "version": 1, "state": "paid", "ctx": null, "last_wal_offset": 9
    }))
    .unwrap();
    assert_eq!(get.instance_id, None);
    assert_eq!(get.ctx, Value::Null);

    let stats: WalStatsResult = serde_json::from_value(json!({
        "entry_count": 3, "segment_count": 1, "total_size_bytes": 0, "latest_offset": null,
        "io_stats": {"bytes_written": 1, "bytes_read": 2, "writes": 3, "reads": 4, "fsyncs": 5}
    }))
    .unwrap();
    assert_eq!(stats.earliest_offset, None);
    assert_eq!(stats.io_stats.fsyncs, 5);
}

#[test]
fn ok_from_serialises_a_typed_result() {
    let response = Response::ok_from(
        "1",
        &HelloResult {
            protocol_version: 1,
            wire_mode: WireMode::Jsonl,
            server_name: "rstmdb".into(),
            server_version: "0.1.0".into(),
            features: vec![],
        },
    )
    .unwrap();
    let value: Value = serde_json::from_slice(&response.to_json_bytes().unwrap()).unwrap();
    assert_eq!(
        value,
        json!({"type": "response", "id": "1", "status": "ok", "result": {
            "features": [], "protocol_version": 1, "server_name": "rstmdb",
            "server_version": "0.1.0", "wire_mode": "jsonl"
        }})
    );
}
