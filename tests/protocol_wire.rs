//! Wire-level behaviour: framing, JSON lines, pipelining, `meta`, malformed input
//! (protocol.md §2–§3, decisions.md "Protocol").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::*;

/// After a fatal input on one connection, a fresh connection must still be served.
fn second_connection_works(s: &Server) {
    let mut c = s.connect();
    c.ping();
}

/// Expect the connection to be closed; anything sent before the close must be an error
/// response (the server may, but need not, explain itself first).
fn assert_closed_without_success(c: &mut Client) {
    let got = c.expect_closed(CLOSE_TIMEOUT);
    for m in &got {
        assert_eq!(
            m.value["status"], "error",
            "only an error may precede the close, got {}",
            m.value
        );
    }
}

#[test]
fn ping_in_a_crc_frame_gets_pong_frame() {
    let s = Server::start();
    let mut c = s.connect();
    c.send_request("p1", "PING", Some(json!({})));
    let m = c.read_message(READ_TIMEOUT);
    assert!(m.is_frame(), "default output is binary frames");
    assert_eq!(m.value["type"], "response");
    assert_eq!(m.value["id"], "p1");
    assert_eq!(m.value["status"], "ok");
    assert_eq!(m.value["result"]["pong"], true);
}

#[test]
fn spec_example_ping_bytes_are_accepted() {
    // protocol.md §2.3: the exact bytes of the example frame, CRC c32009c4.
    let payload = br#"{"type":"request","id":"1","op":"PING","params":{}}"#;
    assert_eq!(payload.len(), 51);
    let f = frame(payload);
    assert_eq!(
        &f[..18],
        &[
            0x52, 0x43, 0x50, 0x58, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0x33, 0xc3, 0x20, 0x09, 0xc4
        ]
    );
    let s = Server::start();
    let mut c = s.connect();
    c.send_raw(&f);
    let r = c.read_response("1");
    assert_eq!(r["result"]["pong"], true);
}

#[test]
fn frame_without_crc_flag_ignores_crc_field() {
    let s = Server::start();
    let mut c = s.connect();
    let mut f = RawFrame::new(request_json("n1", "PING", Some(json!({}))).to_string());
    f.flags = 0;
    f.crc = Some(0xdead_beef);
    c.send_raw_frame(&f);
    let r = c.read_response("n1");
    assert_eq!(r["status"], "ok");
}

#[test]
fn stream_compressed_flags_and_header_extension_are_ignored() {
    let s = Server::start();
    let mut c = s.connect();
    for (i, flags) in [
        FLAG_CRC | FLAG_COMPRESSED,
        FLAG_CRC | FLAG_STREAM,
        FLAG_CRC | FLAG_END_STREAM,
        FLAG_CRC | FLAG_STREAM | FLAG_END_STREAM | FLAG_COMPRESSED,
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("f{i}");
        let mut f = RawFrame::new(request_json(&id, "PING", Some(json!({}))).to_string());
        f.flags = flags;
        f.ext = vec![0xAB; 7];
        c.send_raw_frame(&f);
        let r = c.read_response(&id);
        assert_eq!(r["status"], "ok", "flags {flags:#06x}: {r}");
    }
}

#[test]
fn server_frames_have_version_1_crc_flag_and_no_extension() {
    let s = Server::start();
    let mut c = s.connect();
    c.send_request("v1", "INFO", Some(json!({})));
    let m = c.try_read_message(READ_TIMEOUT).expect("INFO response");
    assert_eq!(
        m.wire,
        Wire::Frame {
            version: 1,
            flags: FLAG_CRC,
            header_len: 0
        }
    );
}

#[test]
fn json_line_input_is_answered_with_a_frame() {
    // decisions.md: JSON lines accepted on input; output stays frames until HELLO says jsonl.
    let s = Server::start();
    let mut c = s.connect();
    c.send_request_line("l1", "PING", Some(json!({})));
    let m = c.read_message(READ_TIMEOUT);
    assert!(m.is_frame(), "output mode is still binary_json: {m:?}");
    assert_eq!(m.value["id"], "l1");
    assert_eq!(m.value["result"]["pong"], true);
}

#[test]
fn frames_and_json_lines_mix_on_one_connection() {
    let s = Server::start();
    let mut c = s.connect();
    let mut bytes = frame(
        request_json("a", "PING", Some(json!({})))
            .to_string()
            .as_bytes(),
    );
    bytes.extend_from_slice(
        request_json("b", "PING", Some(json!({})))
            .to_string()
            .as_bytes(),
    );
    bytes.push(b'\n');
    bytes.extend(frame(
        request_json("c", "PING", Some(json!({})))
            .to_string()
            .as_bytes(),
    ));
    bytes.extend_from_slice(
        request_json("d", "INFO", Some(json!({})))
            .to_string()
            .as_bytes(),
    );
    bytes.push(b'\n');
    c.send_raw(&bytes);
    for id in ["a", "b", "c", "d"] {
        let r = c.read_response(id);
        assert_eq!(r["status"], "ok", "{r}");
    }
}

#[test]
fn json_line_request_split_across_writes_is_reassembled() {
    let s = Server::start();
    let mut c = s.connect();
    let line = format!("{}\n", request_json("split", "PING", Some(json!({}))));
    let (a, b) = line.as_bytes().split_at(10);
    c.send_raw(a);
    std::thread::sleep(Duration::from_millis(50));
    c.send_raw(b);
    assert_eq!(c.read_response("split")["status"], "ok");
}

#[test]
fn frame_split_across_writes_is_reassembled() {
    let s = Server::start();
    let mut c = s.connect();
    let f = frame(
        request_json("fs", "PING", Some(json!({})))
            .to_string()
            .as_bytes(),
    );
    for chunk in f.chunks(7) {
        c.send_raw(chunk);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(c.read_response("fs")["status"], "ok");
}

/// The server reads every already-received request before flushing answers (so pipelined
/// answers share writes), but a half-received frame behind them must not hold them back.
#[test]
fn answers_are_not_held_back_by_a_partial_frame_behind_them() {
    let s = Server::start();
    let mut c = s.connect();
    let mut bytes = Vec::new();
    for id in ["p1", "p2", "p3"] {
        bytes.extend(frame(
            request_json(id, "PING", Some(json!({})))
                .to_string()
                .as_bytes(),
        ));
    }
    let last = frame(
        request_json("p4", "PING", Some(json!({})))
            .to_string()
            .as_bytes(),
    );
    bytes.extend(&last[..10]);
    c.send_raw(&bytes);
    for id in ["p1", "p2", "p3"] {
        assert_eq!(c.read_response(id)["status"], "ok");
    }
    c.send_raw(&last[10..]);
    assert_eq!(c.read_response("p4")["status"], "ok");
}

#[test]
fn pipelined_200_requests_are_answered_in_order_with_ids_echoed() {
    let s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "pipe");
    let mut bytes = Vec::new();
    let mut ids = Vec::new();
    for i in 0..200 {
        let id = format!("pipe-{i:03}-é");
        let req = match i % 4 {
            0 => request_json(&id, "PING", Some(json!({}))),
            1 => request_json(
                &id,
                "CREATE_INSTANCE",
                Some(json!({"instance_id": format!("p{i:03}"), "machine": "pipe", "version": 1})),
            ),
            2 => request_json(
                &id,
                "GET_INSTANCE",
                Some(json!({"instance_id": format!("p{:03}", i - 1)})),
            ),
            _ => request_json(
                &id,
                "APPLY_EVENT",
                Some(json!({"instance_id": format!("p{:03}", i - 2), "event": "inc"})),
            ),
        };
        bytes.extend(frame(req.to_string().as_bytes()));
        ids.push((id, i % 4));
    }
    c.send_raw(&bytes);
    for (id, kind) in ids {
        let r = c.read_response(&id);
        assert_eq!(r["status"], "ok", "{r}");
        match kind {
            0 => assert_eq!(r["result"]["pong"], true),
            1 => assert_eq!(r["result"]["state"], "on"),
            2 => assert_eq!(r["result"]["state"], "on"),
            _ => assert_eq!(r["result"]["to_state"], "on"),
        }
    }
}

#[test]
fn request_ids_are_echoed_byte_for_byte() {
    let s = Server::start();
    let mut c = s.connect();
    let long = "x".repeat(256);
    for id in [
        "",
        "1",
        "ünïcødé-😀",
        "with \"quotes\" and \\",
        long.as_str(),
    ] {
        c.send_request(id, "PING", Some(json!({})));
        let r = c.read_response(id);
        assert_eq!(r["id"], json!(id));
    }
}

#[test]
fn meta_server_time_is_on_every_response() {
    let s = Server::start();
    let mut c = s.connect();
    let ok = c.request("PING", json!({}));
    let err = c.request("GET_INSTANCE", json!({"instance_id": "nope"}));
    assert_eq!(err["status"], "error");
    for r in [&ok, &err] {
        let t = r["meta"]["server_time"]
            .as_str()
            .unwrap_or_else(|| panic!("meta.server_time missing: {r}"));
        assert!(is_rfc3339_utc(t), "server_time {t:?} is not RFC 3339 UTC");
    }
}

#[test]
fn meta_wal_offset_is_on_mutations_and_matches_result() {
    let s = Server::start();
    let mut c = s.connect();
    let put = c.request(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition": order_definition()}),
    );
    assert!(
        put["meta"]["wal_offset"].is_u64(),
        "PUT_MACHINE meta: {put}"
    );
    let cr = c.request(
        "CREATE_INSTANCE",
        json!({"instance_id": "i", "machine": "m", "version": 1}),
    );
    assert_eq!(cr["meta"]["wal_offset"], cr["result"]["wal_offset"], "{cr}");
    let ap = c.request("APPLY_EVENT", json!({"instance_id": "i", "event": "PAY"}));
    assert_eq!(ap["meta"]["wal_offset"], ap["result"]["wal_offset"], "{ap}");
    let de = c.request("DELETE_INSTANCE", json!({"instance_id": "i"}));
    assert_eq!(de["meta"]["wal_offset"], de["result"]["wal_offset"], "{de}");
    let offs: Vec<u64> = [&put, &cr, &ap, &de]
        .iter()
        .map(|r| u64_of(&r["meta"]["wal_offset"]))
        .collect();
    assert!(offs.windows(2).all(|w| w[0] < w[1]), "increasing: {offs:?}");
}

#[test]
fn wal_offsets_are_sequence_numbers_starting_at_1() {
    // decisions.md: wal_offset = sequence number, starts at 1, +1 per record.
    let s = Server::start();
    let mut c = s.connect();
    let put = c.request(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition": counter_definition()}),
    );
    assert_eq!(put["meta"]["wal_offset"], 1, "{put}");
    assert_eq!(create(&mut c, "m", "a", json!({}))["wal_offset"], 2);
    assert_eq!(apply(&mut c, "a", "inc", json!({}))["wal_offset"], 3);
    assert_eq!(create(&mut c, "m", "b", json!({}))["wal_offset"], 4);
    assert_eq!(apply(&mut c, "b", "inc", json!({}))["wal_offset"], 5);
    assert_eq!(
        c.ok("DELETE_INSTANCE", json!({"instance_id": "a"}))["wal_offset"],
        6
    );
}

#[test]
fn client_half_close_still_gets_every_answer() {
    let s = Server::start();
    let mut c = s.connect();
    let mut bytes = Vec::new();
    for id in ["h1", "h2", "h3"] {
        bytes.extend(frame(
            request_json(id, "PING", Some(json!({})))
                .to_string()
                .as_bytes(),
        ));
    }
    c.send_raw(&bytes);
    c.shutdown_write();
    for id in ["h1", "h2", "h3"] {
        assert_eq!(c.read_response(id)["status"], "ok");
    }
    assert!(c.expect_closed(CLOSE_TIMEOUT).is_empty());
}

#[test]
fn frame_payload_of_exactly_16_mib_is_accepted() {
    // protocol.md §2.1: payload_len limit 16 777 216 is inclusive.
    let s = Server::start();
    let mut c = s.connect();
    let head = r#"{"type":"request","id":"big","op":"PING","params":{"pad":""#;
    let tail = r#""}}"#;
    let pad = MAX_PAYLOAD as usize - head.len() - tail.len();
    let mut payload = Vec::with_capacity(MAX_PAYLOAD as usize);
    payload.extend_from_slice(head.as_bytes());
    payload.resize(head.len() + pad, b'a');
    payload.extend_from_slice(tail.as_bytes());
    assert_eq!(payload.len(), MAX_PAYLOAD as usize);
    c.send_frame(&payload);
    let r = c.read_response("big");
    assert_eq!(r["status"], "ok", "{r}");
}

// ----- malformed input: each on its own connection, then a second connection works --------

#[test]
fn bad_magic_closes_the_connection() {
    let s = Server::start();
    let mut c = s.connect();
    let mut f = RawFrame::new(request_json("x", "PING", Some(json!({}))).to_string());
    f.magic = *b"RCPZ";
    c.send_raw_frame(&f);
    assert_closed_without_success(&mut c);
    second_connection_works(&s);
}

#[test]
fn garbage_first_byte_closes_the_connection() {
    let s = Server::start();
    let mut c = s.connect();
    c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_closed_without_success(&mut c);
    second_connection_works(&s);
}

#[test]
fn bad_version_closes_the_connection() {
    let s = Server::start();
    let mut c = s.connect();
    let mut f = RawFrame::new(request_json("x", "PING", Some(json!({}))).to_string());
    f.version = 2;
    c.send_raw_frame(&f);
    assert_closed_without_success(&mut c);
    second_connection_works(&s);
}

#[test]
fn reserved_flag_bits_close_the_connection() {
    let s = Server::start();
    let mut c = s.connect();
    let mut f = RawFrame::new(request_json("x", "PING", Some(json!({}))).to_string());
    f.flags = FLAG_CRC | 0x0010;
    c.send_raw_frame(&f);
    assert_closed_without_success(&mut c);
    second_connection_works(&s);
}

#[test]
fn bad_crc_closes_the_connection() {
    let s = Server::start();
    let mut c = s.connect();
    let payload = request_json("x", "PING", Some(json!({}))).to_string();
    let mut f = RawFrame::new(payload.clone());
    f.crc = Some(crc(payload.as_bytes()) ^ 1);
    c.send_raw_frame(&f);
    assert_closed_without_success(&mut c);
    second_connection_works(&s);
}

#[test]
fn oversized_declared_payload_closes_the_connection() {
    // 16 MiB + 1 declared; only the header is sent: checks 1–4 use the header alone.
    let s = Server::start();
    let mut c = s.connect();
    let mut f = RawFrame::new(Vec::new());
    f.payload_len = Some(MAX_PAYLOAD + 1);
    f.crc = Some(0);
    c.send_raw_frame(&f);
    assert_closed_without_success(&mut c);
    second_connection_works(&s);
}

#[test]
fn truncated_frame_then_eof_closes_the_connection() {
    let s = Server::start();
    let mut c = s.connect();
    let payload = request_json("x", "PING", Some(json!({}))).to_string();
    let full = frame(payload.as_bytes());
    c.send_raw(&full[..HEADER_LEN + 10]);
    c.shutdown_write();
    let got = c.expect_closed(CLOSE_TIMEOUT);
    assert!(
        got.iter().all(|m| m.value["status"] != "ok"),
        "a truncated frame must not be executed: {got:?}"
    );
    second_connection_works(&s);
}

#[test]
fn frames_before_a_bad_frame_are_answered() {
    let s = Server::start();
    let mut c = s.connect();
    let mut bytes = frame(
        request_json("good", "PING", Some(json!({})))
            .to_string()
            .as_bytes(),
    );
    let mut bad = RawFrame::new(request_json("bad", "PING", Some(json!({}))).to_string());
    bad.magic = *b"XXXX";
    bytes.extend(bad.encode());
    c.send_raw(&bytes);
    let got = c.expect_closed(CLOSE_TIMEOUT);
    let first = got
        .first()
        .expect("the good frame is answered before the close");
    assert_eq!(first.value["id"], "good");
    assert_eq!(first.value["status"], "ok");
    assert!(
        !got.iter()
            .any(|m| m.value["id"] == "bad" && m.value["status"] == "ok"),
        "{got:?}"
    );
}

#[test]
fn invalid_json_in_a_frame_gets_bad_request_with_null_id_then_close() {
    let s = Server::start();
    let mut c = s.connect();
    c.send_frame(br#"{"type":"request","id":"j1","op":"PING","params":{"#);
    let got = c.expect_closed(CLOSE_TIMEOUT);
    assert_eq!(got.len(), 1, "exactly one error before the close: {got:?}");
    let r = &got[0].value;
    assert_eq!(r["type"], "response", "{r}");
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["id"].is_null(), "id must be null: {r}");
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}");
    second_connection_works(&s);
}

#[test]
fn invalid_json_line_gets_bad_request_with_null_id_then_close() {
    let s = Server::start();
    let mut c = s.connect();
    c.send_raw(b"{\"type\":\"request\",\"id\":\"j2\",\"op\":PING}\n");
    let got = c.expect_closed(CLOSE_TIMEOUT);
    assert_eq!(got.len(), 1, "exactly one error before the close: {got:?}");
    let r = &got[0].value;
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["id"].is_null(), "id must be null: {r}");
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}");
    second_connection_works(&s);
}

#[test]
fn non_utf8_payload_is_treated_as_unparsable() {
    let s = Server::start();
    let mut c = s.connect();
    c.send_frame(b"{\"type\":\"request\",\"id\":\"\xff\xfe\",\"op\":\"PING\"}");
    let got = c.expect_closed(CLOSE_TIMEOUT);
    assert!(got.iter().all(|m| m.value["status"] == "error"), "{got:?}");
    second_connection_works(&s);
}

/// A valid-JSON, invalid request: BAD_REQUEST echoing the id, the connection stays open.
fn assert_bad_request_keeps_connection(req: Value) {
    let s = Server::start();
    let mut c = s.connect();
    let id = req["id"].as_str().unwrap().to_string();
    c.send_json_frame(&req);
    let r = c.read_response(&id);
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}");
    assert_eq!(r["error"]["retryable"], false, "{r}");
    c.ping();
    second_connection_works(&s);
}

#[test]
fn unknown_op_gets_bad_request_and_connection_stays_open() {
    assert_bad_request_keeps_connection(request_json("u1", "FROBNICATE", Some(json!({}))));
}

#[test]
fn lowercase_op_gets_bad_request_and_connection_stays_open() {
    assert_bad_request_keeps_connection(request_json("u2", "ping", Some(json!({}))));
}

#[test]
fn missing_params_field_gets_bad_request_and_connection_stays_open() {
    assert_bad_request_keeps_connection(request_json("m1", "GET_INSTANCE", None));
}

#[test]
fn null_params_gets_bad_request_and_connection_stays_open() {
    assert_bad_request_keeps_connection(request_json("m2", "GET_INSTANCE", Some(Value::Null)));
}

#[test]
fn missing_required_param_gets_bad_request_and_connection_stays_open() {
    assert_bad_request_keeps_connection(request_json(
        "m3",
        "GET_MACHINE",
        Some(json!({"machine": "x"})),
    ));
}

#[test]
fn wrongly_typed_param_gets_bad_request_and_connection_stays_open() {
    assert_bad_request_keeps_connection(request_json(
        "w1",
        "GET_INSTANCE",
        Some(json!({"instance_id": 5})),
    ));
}

#[test]
fn out_of_range_integer_param_gets_bad_request() {
    assert_bad_request_keeps_connection(request_json(
        "w2",
        "GET_MACHINE",
        Some(json!({"machine": "m", "version": -1})),
    ));
}

#[test]
fn bad_request_in_a_json_line_echoes_the_id() {
    let s = Server::start();
    let mut c = s.connect();
    c.send_request_line("jl", "NOPE", Some(json!({})));
    let r = c.read_response("jl");
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}");
    c.ping();
}

#[test]
fn params_are_ignored_by_ping_even_when_absent() {
    // protocol.md §3.1: PING, BYE, INFO, LIST_MACHINES, WAL_STATS never read params.
    let s = Server::start();
    let mut c = s.connect();
    for op in ["PING", "INFO", "LIST_MACHINES", "WAL_STATS"] {
        let id = format!("np-{op}");
        c.send_request(&id, op, None);
        let r = c.read_response(&id);
        assert_eq!(r["status"], "ok", "{op} without params: {r}");
    }
}

#[test]
fn error_responses_have_code_message_and_retryable() {
    let s = Server::start();
    let mut c = s.connect();
    let e = c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "ghost"}),
        "INSTANCE_NOT_FOUND",
    );
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    assert_eq!(e["retryable"], false);
}

// ----- network limits from the config -----------------------------------------------------

#[test]
fn idle_connection_is_closed_after_idle_timeout() {
    let s = Server::with_config(json!({"network": {"idle_timeout_secs": 1}}));
    let mut c = s.connect();
    c.ping();
    let t = std::time::Instant::now();
    c.expect_closed(Duration::from_secs(6));
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "closed too early: {:?}",
        t.elapsed()
    );
    second_connection_works(&s);
}

#[test]
fn activity_pushes_the_idle_timeout_back() {
    // The session arms its idle timer once and moves it only when it fires early: requests
    // past the first deadline must keep the connection, and the close must come a full
    // timeout after the last one.
    let s = Server::with_config(json!({"network": {"idle_timeout_secs": 2}}));
    let mut c = s.connect();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(3500) {
        c.ping();
        std::thread::sleep(Duration::from_millis(400));
    }
    c.ping();
    let last = std::time::Instant::now();
    c.expect_closed(Duration::from_secs(8));
    assert!(
        last.elapsed() >= Duration::from_millis(1800),
        "closed {:?} after the last request, before the 2 s idle timeout",
        last.elapsed()
    );
    second_connection_works(&s);
}

#[test]
fn connections_beyond_max_connections_are_closed() {
    let s = Server::with_config(json!({"network": {"max_connections": 2}}));
    let mut a = s.connect();
    let mut b = s.connect();
    a.ping();
    b.ping();
    let mut third = s.connect();
    let _ = third.try_send_raw(&frame(
        request_json("3", "PING", Some(json!({})))
            .to_string()
            .as_bytes(),
    ));
    let got = third.expect_closed(CLOSE_TIMEOUT);
    assert!(
        got.iter().all(|m| m.value["status"] != "ok"),
        "over the limit nothing is served: {got:?}"
    );
    drop(a);
    // A slot frees up once a connection is gone.
    let ok = wait_for(Duration::from_secs(5), || {
        let mut c = s.connect();
        c.try_send_raw(&frame(
            request_json("again", "PING", Some(json!({})))
                .to_string()
                .as_bytes(),
        ))
        .ok()?;
        match c.try_read_message(Duration::from_millis(500)) {
            Ok(m) if m.value["status"] == "ok" => Some(()),
            _ => None,
        }
    });
    assert!(ok.is_some(), "a new connection is served after one closed");
    b.ping();
}

#[test]
fn frame_larger_than_max_frame_bytes_closes_the_connection() {
    let s = Server::with_config(json!({"network": {"max_frame_bytes": 1024}}));
    let mut c = s.connect();
    let big = request_json("big", "PING", Some(json!({"pad": "a".repeat(2000)})));
    let _ = c.try_send_raw(&frame(big.to_string().as_bytes()));
    assert_closed_without_success(&mut c);
    let mut d = s.connect();
    d.ping();
}

#[test]
fn meta_server_time_is_the_current_time() {
    let s = Server::start();
    let mut c = s.connect();
    let r = c.request("PING", json!({}));
    let t = r["meta"]["server_time"].as_str().unwrap_or_default();
    let secs = rfc3339_to_unix(t).unwrap_or_else(|| panic!("server_time {t:?}"));
    assert!(
        (secs - unix_now()).abs() <= 120,
        "server_time {t} is not now (unix {})",
        unix_now()
    );
}

#[test]
fn empty_payload_gets_bad_request_with_null_id_then_close() {
    // An empty payload is not parsable JSON (decisions.md: BAD_REQUEST, id null, close).
    let s = Server::start();
    let mut c = s.connect();
    c.send_frame(b"");
    let got = c.expect_closed(CLOSE_TIMEOUT);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].value["id"].is_null(), "{:?}", got[0].value);
    assert_eq!(got[0].value["error"]["code"], "BAD_REQUEST");
    second_connection_works(&s);
}

/// Valid JSON that is not a request and carries no usable id: BAD_REQUEST with `id: null`,
/// the connection stays open.
fn assert_bad_request_null_id_keeps_connection(payload: &str) {
    let s = Server::start();
    let mut c = s.connect();
    c.send_frame(payload.as_bytes());
    let m = c.read_message(READ_TIMEOUT);
    assert_eq!(m.value["type"], "response", "{payload}: {}", m.value);
    assert_eq!(m.value["status"], "error", "{payload}: {}", m.value);
    assert_eq!(
        m.value["error"]["code"], "BAD_REQUEST",
        "{payload}: {}",
        m.value
    );
    assert!(m.value["id"].is_null(), "{payload}: {}", m.value);
    c.ping();
}

#[test]
fn json_array_payload_gets_bad_request_and_connection_stays_open() {
    assert_bad_request_null_id_keeps_connection(r#"[1,2,3]"#);
}

#[test]
fn request_without_id_gets_bad_request_and_connection_stays_open() {
    assert_bad_request_null_id_keeps_connection(r#"{"type":"request","op":"PING","params":{}}"#);
}

#[test]
fn request_id_over_256_bytes_gets_bad_request_and_connection_stays_open() {
    // decisions.md: request ids are strings up to 256 bytes.
    let s = Server::start();
    let mut c = s.connect();
    let id = "i".repeat(257);
    c.send_request(&id, "PING", Some(json!({})));
    let m = c.read_message(READ_TIMEOUT);
    assert_eq!(m.value["status"], "error", "{}", m.value);
    assert_eq!(m.value["error"]["code"], "BAD_REQUEST", "{}", m.value);
    c.ping();
}

#[test]
fn pipelined_reads_see_earlier_writes_of_the_same_connection() {
    // Pipelined requests may run concurrently, but a request must observe the effects of
    // the requests before it on the same connection (the reference runs them in order).
    let s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    let mut bytes = Vec::new();
    bytes.extend(frame(
        request_json(
            "c",
            "CREATE_INSTANCE",
            Some(json!({"instance_id": "x", "machine": "ctr", "version": 1})),
        )
        .to_string()
        .as_bytes(),
    ));
    for n in 0..20 {
        bytes.extend(frame(
            request_json(
                &format!("a{n}"),
                "APPLY_EVENT",
                Some(
                    json!({"instance_id": "x", "event": "inc", "payload": {"n": n},
                             "expected_state": "on"}),
                ),
            )
            .to_string()
            .as_bytes(),
        ));
    }
    bytes.extend(frame(
        request_json("g", "GET_INSTANCE", Some(json!({"instance_id": "x"})))
            .to_string()
            .as_bytes(),
    ));
    bytes.extend(frame(
        request_json("d", "DELETE_INSTANCE", Some(json!({"instance_id": "x"})))
            .to_string()
            .as_bytes(),
    ));
    bytes.extend(frame(
        request_json("g2", "GET_INSTANCE", Some(json!({"instance_id": "x"})))
            .to_string()
            .as_bytes(),
    ));
    c.send_raw(&bytes);
    assert_eq!(c.read_response("c")["status"], "ok");
    let mut last = 0;
    for n in 0..20 {
        let r = c.read_response(&format!("a{n}"));
        assert_eq!(r["status"], "ok", "{r}");
        let off = u64_of(&r["result"]["wal_offset"]);
        assert!(off > last, "applies in request order");
        last = off;
    }
    let g = c.read_response("g");
    assert_eq!(g["result"]["ctx"], json!({"n": 19}), "{g}");
    assert_eq!(c.read_response("d")["status"], "ok");
    assert_eq!(c.read_response("g2")["error"]["code"], "INSTANCE_NOT_FOUND");
}

#[test]
fn pipelining_beyond_max_inflight_is_still_answered_in_order() {
    let s = Server::with_config(json!({"network": {"max_inflight_per_connection": 1}}));
    let mut c = s.connect();
    let mut bytes = Vec::new();
    for i in 0..100 {
        bytes.extend(frame(
            request_json(&format!("q{i}"), "PING", Some(json!({})))
                .to_string()
                .as_bytes(),
        ));
    }
    c.send_raw(&bytes);
    for i in 0..100 {
        assert_eq!(c.read_response(&format!("q{i}"))["status"], "ok");
    }
}
