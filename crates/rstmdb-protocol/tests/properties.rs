//! Property tests: codec round trips, and no panic on any input.
//!
//! Inputs are biased towards the interesting paths: valid-looking headers followed by noise,
//! valid streams with a few bytes flipped, request-shaped JSON with random field values.

// Helpers outside `#[test]` fns unwrap too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use rstmdb_protocol::{
    FrameCodec, FrameError, InboundCodec, JsonlCodec, Op, crc32c, decode_request, flags,
    request::decode_request_general,
};
use serde_json::{Map, Value};
use tokio_util::codec::{Decoder, Encoder};

const CASES: u32 = 10_000;

/// 10,000 cases per property; XorShift because ChaCha dominates the run time in debug builds
/// and these tests need volume, not cryptographic randomness.
fn config() -> ProptestConfig {
    ProptestConfig {
        rng_algorithm: prop::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::with_cases(CASES)
    }
}

fn raw_frame(flags: u16, ext: &[u8], payload: &[u8], crc: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + ext.len() + payload.len());
    out.extend_from_slice(b"RCPX");
    out.put_u16(1);
    out.put_u16(flags);
    out.put_u16(u16::try_from(ext.len()).unwrap());
    out.put_u32(u32::try_from(payload.len()).unwrap());
    out.put_u32(crc);
    out.extend_from_slice(ext);
    out.extend_from_slice(payload);
    out
}

/// Feeds `input` to `codec` in chunks of the given sizes (cycled), decoding after every
/// chunk and at EOF. Stops at the first error, as a connection would.
fn feed<D>(codec: &mut D, input: &[u8], chunks: &[usize]) -> Result<Vec<D::Item>, D::Error>
where
    D: Decoder,
{
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(1).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        buf.extend_from_slice(chunk);
        while let Some(item) = codec.decode(&mut buf)? {
            out.push(item);
        }
    }
    while let Some(item) = codec.decode_eof(&mut buf)? {
        out.push(item);
    }
    Ok(out)
}

/// Arbitrary bytes, valid-ish frame headers followed by noise, and valid mixed streams with
/// a few bytes overwritten.
fn hostile_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        prop::collection::vec(any::<u8>(), 0..2048).prop_map(|noise| {
            let mut input = b"RCPX\x00\x01".to_vec();
            input.extend(noise);
            input
        }),
        (
            0u16..16,
            prop::collection::vec(any::<u8>(), 0..24),
            prop::collection::vec(any::<u8>(), 0..128),
            prop::collection::vec(any::<u8>(), 0..512),
        )
            .prop_map(|(flags, ext, payload, noise)| {
                let mut input = raw_frame(flags, &ext, &payload, crc32c(&payload));
                input.extend(noise);
                input
            }),
        (
            prop::collection::vec(valid_message(), 1..6),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        )
            .prop_map(|(messages, flips)| {
                let mut input = messages.concat();
                for (index, byte) in flips {
                    let at = index.index(input.len());
                    input[at] = byte;
                }
                input
            }),
    ]
}

/// One valid frame or JSON line.
fn valid_message() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        payload.clone().prop_map(|payload| {
            let mut out = BytesMut::new();
            FrameCodec::new().encode(&payload[..], &mut out).unwrap();
            out.to_vec()
        }),
        payload.prop_map(|payload| {
            let mut line = b"{".to_vec();
            line.extend(payload.into_iter().filter(|&b| b != b'\n'));
            line.extend_from_slice(b"\r\n");
            line
        }),
    ]
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..96, 1..16)
}

/// The frame limit used by the codecs under test: small sometimes, so the length checks
/// fire on short inputs too.
fn max_payload() -> impl Strategy<Value = usize> {
    prop_oneof![Just(rstmdb_protocol::MAX_FRAME_PAYLOAD_BYTES), 0usize..600]
}

const FIELD_NAMES: &[&str] = &[
    "type",
    "id",
    "op",
    "params",
    "protocol_version",
    "client_name",
    "wire_modes",
    "features",
    "method",
    "token",
    "machine",
    "version",
    "definition",
    "checksum",
    "instance_id",
    "initial_ctx",
    "idempotency_key",
    "state",
    "limit",
    "offset",
    "after",
    "include_deleted",
    "event",
    "payload",
    "expected_state",
    "expected_wal_offset",
    "event_id",
    "mode",
    "ops",
    "operations",
    "from_offset",
    "force_snapshot",
    "include_ctx",
    "machines",
    "from_states",
    "to_states",
    "events",
    "subscription_id",
];

fn small_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..8).prop_map(String::from_iter),
        prop::sample::select(FIELD_NAMES).prop_map(str::to_owned),
        prop::sample::select(&["atomic", "best_effort", "binary_json", "jsonl", "PING"][..])
            .prop_map(str::to_owned),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..3).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        small_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((small_string(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn op_name() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => prop::sample::select(&Op::ALL[..]).prop_map(|op| Value::from(op.as_str())),
        1 => json_value(),
    ]
}

/// Values of the types params fields have, so typed decoding often succeeds.
fn plausible_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => small_string().prop_map(Value::String),
        2 => (0u64..3).prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
        1 => prop::collection::vec(small_string().prop_map(Value::String), 0..3)
            .prop_map(Value::Array),
        1 => json_value(),
    ]
}

/// Params objects using the real field names: mostly well typed (so typed decoding
/// succeeds and the round trip is exercised), sometimes random.
fn params_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => well_typed_params(true),
        2 => prop::collection::vec((prop::sample::select(FIELD_NAMES), plausible_value()), 0..12)
            .prop_map(|entries| {
                Value::Object(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        1 => prop::collection::vec(batch_element(), 0..4).prop_map(|ops| {
            let mut params = Map::new();
            params.insert("operations".into(), Value::Array(ops));
            Value::Object(params)
        }),
        1 => json_value(),
    ]
}

/// Every params field, each present with probability 0.8 and a value of its own type
/// (one time in twenty, of a random type). `with_ops` adds BATCH elements (one level only).
fn well_typed_params(with_ops: bool) -> impl Strategy<Value = Value> {
    let fields: Vec<_> = FIELD_NAMES
        .iter()
        .copied()
        .filter(|&name| !matches!(name, "type" | "id" | "op" | "params" | "operations"))
        .filter(|&name| with_ops || name != "ops")
        .map(|name| {
            let value = prop_oneof![19 => field_value(name), 1 => plausible_value()];
            prop::option::weighted(0.8, value.prop_map(move |value| (name.to_owned(), value)))
        })
        .collect();
    fields.prop_map(|entries| Value::Object(entries.into_iter().flatten().collect()))
}

/// A value of the type the protocol gives field `name`.
fn field_value(name: &str) -> BoxedStrategy<Value> {
    match name {
        "protocol_version"
        | "version"
        | "limit"
        | "offset"
        | "expected_wal_offset"
        | "from_offset" => prop_oneof![
            (0u64..4).prop_map(Value::from),
            (0u64..70_000).prop_map(Value::from)
        ]
        .boxed(),
        "include_deleted" | "force_snapshot" | "include_ctx" => {
            any::<bool>().prop_map(Value::Bool).boxed()
        }
        "wire_modes" | "features" | "machines" | "from_states" | "to_states" | "events" => {
            prop::collection::vec(small_string().prop_map(Value::String), 0..3)
                .prop_map(Value::Array)
                .boxed()
        }
        "definition" | "initial_ctx" | "payload" => json_value().boxed(),
        "mode" => prop::sample::select(&["atomic", "best_effort"][..])
            .prop_map(Value::from)
            .boxed(),
        "ops" => prop::collection::vec(
            (
                prop::sample::select(&Op::ALL[..]).prop_map(|op| Value::from(op.as_str())),
                well_typed_params(false),
            )
                .prop_map(|(op, params)| element(op, params)),
            0..4,
        )
        .prop_map(Value::Array)
        .boxed(),
        _ => small_string().prop_map(Value::String).boxed(),
    }
}

fn batch_element() -> impl Strategy<Value = Value> {
    (op_name(), json_value()).prop_map(|(op, params)| element(op, params))
}

fn element(op: Value, params: Value) -> Value {
    let mut element = Map::new();
    element.insert("op".into(), op);
    element.insert("params".into(), params);
    Value::Object(element)
}

/// Envelopes that mostly get past the envelope checks, so the params paths are exercised.
fn request_value() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            9 => small_string().prop_map(Value::String),
            1 => json_value(),
        ],
        op_name(),
        params_value(),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(id, op, params, with_type)| {
            let mut envelope = Map::new();
            if with_type {
                envelope.insert("type".into(), "request".into());
            }
            envelope.insert("id".into(), id);
            envelope.insert("op".into(), op);
            envelope.insert("params".into(), params);
            Value::Object(envelope)
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frame_round_trip_is_identity_on_the_payload(
        payload in prop::collection::vec(any::<u8>(), 0..4096),
        input_flags in 0u16..16,
        ext in prop::collection::vec(any::<u8>(), 0..64),
        bogus_crc in any::<u32>(),
        chunks in chunk_sizes(),
    ) {
        // What our encoder produces.
        let mut codec = FrameCodec::new();
        let mut wire = BytesMut::new();
        codec.encode(&payload[..], &mut wire).unwrap();
        let frames = feed(&mut codec, &wire, &chunks).unwrap();
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(&frames[0].payload[..], &payload[..]);

        // What a peer may send: any allowed flags, an extension, a CRC only if flagged.
        let crc = if input_flags & flags::CRC_PRESENT != 0 { crc32c(&payload) } else { bogus_crc };
        let wire = raw_frame(input_flags, &ext, &payload, crc);
        let frames = feed(&mut FrameCodec::new(), &wire, &chunks).unwrap();
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(frames[0].flags, input_flags);
        prop_assert_eq!(&frames[0].payload[..], &payload[..]);
    }

    #[test]
    fn frame_codec_never_panics(
        input in hostile_input(),
        chunks in chunk_sizes(),
        max in max_payload(),
    ) {
        let mut codec = FrameCodec::with_max_payload_bytes(max);
        if let Ok(frames) = feed(&mut codec, &input, &chunks) {
            prop_assert!(frames.iter().all(|frame| frame.payload.len() <= max));
        }
    }

    #[test]
    fn jsonl_codec_never_panics(
        input in hostile_input(),
        chunks in chunk_sizes(),
        max in max_payload(),
    ) {
        let mut codec = JsonlCodec::with_max_line_bytes(max);
        if let Ok(lines) = feed(&mut codec, &input, &chunks) {
            for line in lines {
                prop_assert!(line.len() <= max);
                prop_assert!(!line.contains(&b'\n'));
            }
        }
    }

    #[test]
    fn inbound_codec_never_panics(
        input in hostile_input(),
        chunks in chunk_sizes(),
        max in max_payload(),
    ) {
        let mut codec = InboundCodec::with_max_payload_bytes(max);
        match feed(&mut codec, &input, &chunks) {
            Ok(messages) => prop_assert!(messages.iter().all(|m| m.payload.len() <= max)),
            Err(FrameError::Io(error)) => prop_assert!(false, "unexpected I/O error {}", error),
            Err(_) => {}
        }
    }

    #[test]
    fn decode_request_never_panics_on_bytes(
        input in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            json_value().prop_map(|value| serde_json::to_vec(&value).unwrap()),
        ],
    ) {
        let _ = decode_request(&input);
    }

    /// `decode_request` answers the hot ops on a fast path; whatever it returns must be
    /// exactly what the general decoder returns (results and errors alike).
    #[test]
    fn the_fast_path_agrees_with_the_general_decoder(
        value in prop_oneof![1 => json_value(), 6 => request_value()],
    ) {
        let bytes = serde_json::to_vec(&value).unwrap();
        prop_assert_eq!(decode_request(&bytes), decode_request_general(&bytes));
    }

    #[test]
    fn decode_request_never_panics_on_json_and_re_encodes_faithfully(
        value in prop_oneof![1 => json_value(), 4 => request_value()],
    ) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Ok(request) = decode_request(&bytes) {
            let again = decode_request(&request.to_json_bytes().unwrap()).unwrap();
            prop_assert_eq!(again, request);
        }
    }
}

/// Shapes JSON values cannot show: repeated keys, arrays for objects, whitespace, escapes.
#[test]
fn the_fast_path_agrees_with_the_general_decoder_on_tricky_texts() {
    let cases = [
        r#"{"type":"request","id":"1","op":"GET_INSTANCE","params":{"instance_id":"a"}}"#,
        r#"  {"type":"request","id":"1","op":"GET_INSTANCE","params":{"instance_id":"a"}}  "#,
        r#"{"type":"request","id":"1","id":"2","op":"GET_INSTANCE","params":{"instance_id":"a"}}"#,
        r#"{"type":"request","id":"1","op":"GET_INSTANCE","params":{"instance_id":"a","instance_id":"b"}}"#,
        r#"{"type":"request","id":"1","op":"GET_INSTANCE","params":{"instance_id":"a"},"params":{"instance_id":"b"}}"#,
        r#"{"type":"request","id":"1","op":"GET_INSTANCE","params":["a"]}"#,
        r#"["request","1","GET_INSTANCE",{"instance_id":"a"}]"#,
        r#"{"type":"request","id":"1","op":"GET_INSTANCE","params":null}"#,
        r#"{"type":"request","id":"1","op":"GET_INSTANCE"}"#,
        r#"{"id":"1","op":"GET_INSTANCE","params":{"instance_id":"a"}}"#,
        r#"{"type":7,"id":"1","op":"GET_INSTANCE","params":{"instance_id":"a"}}"#,
        r#"{"type":"request","id":1,"op":"GET_INSTANCE","params":{"instance_id":"a"}}"#,
        r#"{"type":"request","id":"\u0031","op":"GET_\u0049NSTANCE","params":{"instance_id":"\u00e9"}}"#,
        r#"{"type":"request","id":"1","op":"get_instance","params":{"instance_id":"a"}}"#,
        r#"{"type":"request","id":"1","op":"GET_INSTANCE","params":{"instance_id":"a","extra":[1,{"x":null}]}}"#,
        r#"{"type":"request","id":"1","op":"GET_INSTANCE","params":{"instance_id":"a"},"extra":true}"#,
        r#"{"type":"request","id":"1","op":"APPLY_EVENT","params":{"instance_id":"a","event":"GO","payload":{"n":1.5e300,"s":"x"},"expected_wal_offset":18446744073709551615}}"#,
        r#"{"type":"request","id":"1","op":"APPLY_EVENT","params":{"instance_id":"a","event":"GO","payload":null,"event_id":null}}"#,
        r#"{"type":"request","id":"1","op":"APPLY_EVENT","params":{"instance_id":"a","event":"GO","expected_wal_offset":18446744073709551616}}"#,
        r#"{"type":"request","id":"1","op":"APPLY_EVENT","params":{"instance_id":"a","event":"GO","expected_wal_offset":-1}}"#,
        r#"{"type":"request","id":"1","op":"APPLY_EVENT","params":{"instance_id":"a","event":"GO","payload":[1]}}"#,
        r#"{"type":"request","id":"1","op":"CREATE_INSTANCE","params":{"machine":"m","version":1.0}}"#,
        r#"{"type":"request","id":"1","op":"CREATE_INSTANCE","params":{"machine":"m","version":4294967296}}"#,
        r#"{"type":"request","id":"1","op":"CREATE_INSTANCE","params":{"machine":"m","version":1,"initial_ctx":{"a":{"b":[]}},"idempotency_key":"k"}}"#,
        r#"{"type":"request","id":"1","op":"CREATE_INSTANCE","params":{"machine":"m","version":1}} x"#,
        // Numbers past f64 in fields the ops ignore (found by the request_decode fuzzer): the
        // general decoder refuses the payload as JSON, so the fast path must not accept it.
        r#"{"type":"request","id":"1","op":"CREATE_INSTANCE","params":{"machine":"m","version":1,"initali_ctx":{"a":5.6e66666}}}"#,
        r#"{"type":"request","id":"1","op":"GET_INSTANCE","params":{"instance_id":"a","x":1e400}}"#,
        r#"{"type":"request","id":"1","op":"GET_INSTANCE","params":{"instance_id":"a"},"x":-1e400}"#,
    ];
    for text in cases {
        assert_eq!(
            decode_request(text.as_bytes()),
            decode_request_general(text.as_bytes()),
            "{text}"
        );
    }
    let huge = format!(
        r#"{{"type":"request","id":"1","op":"APPLY_EVENT","params":{{"instance_id":"a","event":"GO","x":1{}}}}}"#,
        "0".repeat(400)
    );
    assert_eq!(
        decode_request(huge.as_bytes()),
        decode_request_general(huge.as_bytes()),
        "{huge}"
    );
    let long_id = format!(
        r#"{{"type":"request","id":"{}","op":"GET_INSTANCE","params":{{"instance_id":"a"}}}}"#,
        "x".repeat(4096)
    );
    assert_eq!(
        decode_request(long_id.as_bytes()),
        decode_request_general(long_id.as_bytes())
    );
}
