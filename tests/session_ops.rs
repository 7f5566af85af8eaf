//! Session ops: HELLO, AUTH, PING, BYE, INFO and the authentication gate
//! (protocol.md §4, decisions.md "Protocol" and "Server, security, operations").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

/// SHA-256 of "secret" (operations.md §2.1 token hash).
const SECRET_HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

fn auth_server() -> Server {
    Server::with_config(json!({"auth": {"required": true, "token_hashes": [SECRET_HASH]}}))
}

#[test]
fn hello_negotiates_protocol_1_and_binary_json() {
    let s = Server::start();
    let mut c = s.connect();
    let r = c.ok(
        "HELLO",
        json!({"protocol_version": 1, "client_name": "it", "wire_modes": ["binary_json"],
               "features": ["idempotency", "batch"]}),
    );
    assert_eq!(r["protocol_version"], 1, "{r}");
    assert_eq!(r["wire_mode"], "binary_json", "{r}");
    assert_eq!(r["server_name"], "rstmdb", "{r}");
    assert!(
        r["server_version"].as_str().is_some_and(|v| !v.is_empty()),
        "{r}"
    );
    let f: Vec<&str> = r["features"]
        .as_array()
        .expect("features array")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(f.contains(&"idempotency") && f.contains(&"batch"), "{r}");
}

#[test]
fn hello_features_are_a_subset_of_the_requested_ones() {
    let s = Server::start();
    let mut c = s.connect();
    let r = c.ok(
        "HELLO",
        json!({"protocol_version": 1, "features": ["wal_read", "no_such_feature"]}),
    );
    let f = r["features"].as_array().expect("features array");
    assert!(f.contains(&json!("wal_read")), "{r}");
    assert!(!f.contains(&json!("no_such_feature")), "{r}");
    assert!(!f.contains(&json!("batch")), "not requested: {r}");
}

#[test]
fn hello_without_wire_modes_defaults_to_binary_json() {
    let s = Server::start();
    let mut c = s.connect();
    let r = c.ok("HELLO", json!({"protocol_version": 1}));
    assert_eq!(r["wire_mode"], "binary_json");
    assert_eq!(r["features"], json!([]), "nothing requested: {r}");
}

#[test]
fn hello_jsonl_switches_output_to_json_lines() {
    let s = Server::start();
    let mut c = s.connect();
    c.send_request(
        "h",
        "HELLO",
        Some(json!({"protocol_version": 1, "wire_modes": ["jsonl"]})),
    );
    // The HELLO response that selects jsonl is itself a JSON line (protocol.md §2.5).
    let m = c.read_message(READ_TIMEOUT);
    assert!(m.is_line(), "HELLO response in the new mode: {m:?}");
    assert_eq!(m.value["result"]["wire_mode"], "jsonl");
    // Later responses too, whatever the input framing.
    c.send_request("p1", "PING", Some(json!({})));
    let m = c.read_message(READ_TIMEOUT);
    assert!(m.is_line() && m.value["id"] == "p1", "{m:?}");
    c.send_request_line("p2", "PING", Some(json!({})));
    let m = c.read_message(READ_TIMEOUT);
    assert!(m.is_line() && m.value["id"] == "p2", "{m:?}");
    // And back.
    c.send_request(
        "h2",
        "HELLO",
        Some(json!({"protocol_version": 1, "wire_modes": ["binary_json"]})),
    );
    let m = c.read_message(READ_TIMEOUT);
    assert!(m.is_frame(), "{m:?}");
    assert_eq!(m.value["result"]["wire_mode"], "binary_json");
}

#[test]
fn hello_first_supported_mode_in_the_clients_list_wins() {
    // decisions.md: "the client's first listed mode that the server supports wins".
    let s = Server::start();
    let mut c = s.connect();
    c.send_request(
        "h",
        "HELLO",
        Some(json!({"protocol_version": 1, "wire_modes": ["carrier_pigeon", "jsonl", "binary_json"]})),
    );
    let m = c.read_message(READ_TIMEOUT);
    assert_eq!(m.value["result"]["wire_mode"], "jsonl", "{}", m.value);
    assert!(m.is_line());

    let mut d = s.connect();
    let r = d.ok(
        "HELLO",
        json!({"protocol_version": 1, "wire_modes": ["binary_json", "jsonl"]}),
    );
    assert_eq!(r["wire_mode"], "binary_json");
}

#[test]
fn hello_with_unsupported_version_is_unsupported_protocol() {
    let s = Server::start();
    let mut c = s.connect();
    let e = c.err_code(
        "HELLO",
        json!({"protocol_version": 2, "wire_modes": ["binary_json"]}),
        "UNSUPPORTED_PROTOCOL",
    );
    assert_eq!(e["retryable"], false);
    // The connection stays usable and a correct HELLO works.
    c.ping();
    c.ok("HELLO", json!({"protocol_version": 1}));
}

#[test]
fn hello_without_protocol_version_is_bad_request() {
    let s = Server::start();
    let mut c = s.connect();
    c.err_code("HELLO", json!({"client_name": "x"}), "BAD_REQUEST");
    c.ping();
}

#[test]
fn hello_is_optional() {
    let s = Server::start();
    let mut c = s.connect();
    let r = c.ok("INFO", json!({}));
    assert_eq!(r["server_name"], "rstmdb");
}

#[test]
fn ping_returns_pong() {
    let s = Server::start();
    let mut c = s.connect();
    assert_eq!(c.ok("PING", json!({})), json!({"pong": true}));
}

#[test]
fn bye_answers_goodbye_then_closes() {
    let s = Server::start();
    let mut c = s.connect();
    let r = c.ok("BYE", json!({}));
    assert_eq!(r["goodbye"], true);
    assert!(c.expect_closed(CLOSE_TIMEOUT).is_empty());
    s.connect().ping();
}

#[test]
fn requests_after_bye_are_not_answered() {
    let s = Server::start();
    let mut c = s.connect();
    let mut bytes = frame(
        request_json("bye", "BYE", Some(json!({})))
            .to_string()
            .as_bytes(),
    );
    bytes.extend(frame(
        request_json("late", "PING", Some(json!({})))
            .to_string()
            .as_bytes(),
    ));
    c.send_raw(&bytes);
    let got = c.expect_closed(CLOSE_TIMEOUT);
    assert_eq!(got.len(), 1, "only the BYE response: {got:?}");
    assert_eq!(got[0].value["id"], "bye");
}

#[test]
fn info_reports_every_field() {
    let s = Server::start();
    let mut c = s.connect();
    let r = c.ok("INFO", json!({}));
    assert_eq!(r["server_name"], "rstmdb", "{r}");
    assert!(
        r["server_version"].as_str().is_some_and(|v| !v.is_empty()),
        "{r}"
    );
    assert_eq!(r["protocol_version"], 1, "{r}");
    let f = r["features"].as_array().expect("features");
    for want in ["idempotency", "batch", "wal_read"] {
        assert!(f.contains(&json!(want)), "feature {want}: {r}");
    }
    assert_eq!(r["max_frame_bytes"], 16777216, "{r}");
    assert_eq!(r["max_batch_ops"], 100, "{r}");
}

/// INFO pipelined right behind writes reports an offset that covers them.
#[test]
fn info_pipelined_after_writes_counts_them() {
    let s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "info-order");
    for round in 0..20 {
        let mut bytes = Vec::new();
        for i in 0..8 {
            let req = request_json(
                &format!("w{round}-{i}"),
                "CREATE_INSTANCE",
                Some(json!({"machine": "info-order", "version": 1})),
            );
            bytes.extend(frame(req.to_string().as_bytes()));
        }
        let info = request_json(&format!("i{round}"), "INFO", Some(json!({})));
        bytes.extend(frame(info.to_string().as_bytes()));
        c.send_raw(&bytes);
        let mut last_write = 0;
        for i in 0..8 {
            let r = c.read_response(&format!("w{round}-{i}"));
            last_write = last_write.max(u64_of(&r["result"]["wal_offset"]));
        }
        let r = c.read_response(&format!("i{round}"));
        let seen = u64_of(&r["result"]["wal_offset"]);
        assert!(
            seen >= last_write,
            "round {round}: INFO says {seen}, but this client's writes reached {last_write}"
        );
    }
}

#[test]
fn info_reflects_configured_limits() {
    let s = Server::with_config(json!({
        "network": {"max_frame_bytes": 65536},
        "storage": {"max_batch_ops": 7}
    }));
    let mut c = s.connect();
    let r = c.ok("INFO", json!({}));
    assert_eq!(r["max_frame_bytes"], 65536, "{r}");
    assert_eq!(r["max_batch_ops"], 7, "{r}");
}

#[test]
fn info_server_version_matches_cli_version() {
    let (st, out, _) = run_to_exit(
        &["--version"],
        &[],
        &std::env::temp_dir(),
        Duration::from_secs(10),
    );
    assert!(st.is_some_and(|s| s.success()));
    let s = Server::start();
    let mut c = s.connect();
    let v = c.ok("INFO", json!({}))["server_version"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(out.contains(&v), "--version {out:?} vs INFO {v:?}");
}

#[test]
fn auth_with_any_nonempty_token_succeeds_when_auth_is_off() {
    let s = Server::start();
    let mut c = s.connect();
    let r = c.ok("AUTH", json!({"method": "bearer", "token": "whatever"}));
    assert_eq!(r, json!({"authenticated": true}));
}

#[test]
fn auth_with_empty_token_fails() {
    let s = Server::start();
    let mut c = s.connect();
    let e = c.err_code(
        "AUTH",
        json!({"method": "bearer", "token": ""}),
        "AUTH_FAILED",
    );
    assert_eq!(e["retryable"], false);
    c.ping();
}

#[test]
fn auth_with_unsupported_method_fails() {
    let s = Server::start();
    let mut c = s.connect();
    c.err_code(
        "AUTH",
        json!({"method": "basic", "token": "x"}),
        "AUTH_FAILED",
    );
}

#[test]
fn auth_without_token_is_bad_request() {
    let s = Server::start();
    let mut c = s.connect();
    c.err_code("AUTH", json!({"method": "bearer"}), "BAD_REQUEST");
}

#[test]
fn auth_required_gates_every_op_but_hello_auth_ping_bye() {
    let s = auth_server();
    let mut c = s.connect();
    c.ok("HELLO", json!({"protocol_version": 1}));
    c.ping();
    let gated = [
        ("INFO", json!({})),
        (
            "PUT_MACHINE",
            json!({"machine": "m", "version": 1, "definition": order_definition()}),
        ),
        ("GET_MACHINE", json!({"machine": "m", "version": 1})),
        ("LIST_MACHINES", json!({})),
        ("CREATE_INSTANCE", json!({"machine": "m", "version": 1})),
        ("GET_INSTANCE", json!({"instance_id": "i"})),
        ("LIST_INSTANCES", json!({})),
        ("DELETE_INSTANCE", json!({"instance_id": "i"})),
        ("APPLY_EVENT", json!({"instance_id": "i", "event": "PAY"})),
        ("BATCH", json!({"mode": "best_effort", "ops": []})),
        ("SNAPSHOT_INSTANCE", json!({"instance_id": "i"})),
        ("WAL_READ", json!({"from_offset": 0})),
        ("WAL_STATS", json!({})),
        ("COMPACT", json!({})),
        ("FLUSH_ALL", json!({})),
        ("WATCH_INSTANCE", json!({"instance_id": "i"})),
        ("WATCH_ALL", json!({})),
        ("UNWATCH", json!({"subscription_id": "sub-x"})),
    ];
    for (op, params) in gated {
        let e = c.err(op, params);
        assert_eq!(e["code"], "UNAUTHORIZED", "{op} before AUTH: {e}");
        assert_eq!(e["retryable"], false);
    }
    let r = c.ok("AUTH", json!({"method": "bearer", "token": "secret"}));
    assert_eq!(r["authenticated"], true);
    c.ok("INFO", json!({}));
    c.ok("LIST_MACHINES", json!({}));
    c.ok("WATCH_ALL", json!({}));
    c.ok("BYE", json!({}));
}

#[test]
fn auth_with_wrong_token_fails_and_connection_stays_open() {
    let s = auth_server();
    let mut c = s.connect();
    c.err_code(
        "AUTH",
        json!({"method": "bearer", "token": "not-the-secret"}),
        "AUTH_FAILED",
    );
    c.ping();
    c.err_code("INFO", json!({}), "UNAUTHORIZED");
    c.ok("AUTH", json!({"method": "bearer", "token": "secret"}));
    c.ok("INFO", json!({}));
}

#[test]
fn authentication_is_per_connection() {
    let s = auth_server();
    let mut a = s.connect();
    a.ok("AUTH", json!({"method": "bearer", "token": "secret"}));
    a.ok("INFO", json!({}));
    let mut b = s.connect();
    b.err_code("INFO", json!({}), "UNAUTHORIZED");
}

#[test]
fn uppercase_token_hash_is_accepted() {
    // decisions.md: token hashes in lowercase or uppercase hex.
    let s = Server::with_config(json!({"auth": {"required": true,
        "token_hashes": [SECRET_HASH.to_uppercase()]}}));
    let mut c = s.connect();
    c.ok("AUTH", json!({"method": "bearer", "token": "secret"}));
    c.ok("INFO", json!({}));
}

#[test]
fn repeated_auth_failures_are_rate_limited() {
    // decisions.md: repeated AUTH failures from one address are throttled (RATE_LIMITED).
    let s = auth_server();
    let mut c = s.connect();
    let mut codes = Vec::new();
    for i in 0..50 {
        let e = c.err(
            "AUTH",
            json!({"method": "bearer", "token": format!("wrong-{i}")}),
        );
        let code = e["code"].as_str().unwrap_or_default().to_string();
        if code == "RATE_LIMITED" {
            assert_eq!(e["retryable"], true, "{e}");
            return;
        }
        assert_eq!(code, "AUTH_FAILED", "{e}");
        codes.push(code);
    }
    panic!("50 failed AUTHs in a row were never RATE_LIMITED");
}

#[test]
fn a_throttled_address_still_lets_a_correct_token_in() {
    // Issue 18 finding 9: clients behind one NAT share an address. An attacker there throttles
    // it, yet another client with a correct token gets in through the slow lane (one check per
    // second), retrying when told to.
    let s = auth_server();
    let mut attacker = s.connect();
    let mut throttled = false;
    for i in 0..50 {
        let e = attacker.err(
            "AUTH",
            json!({"method": "bearer", "token": format!("wrong-{i}")}),
        );
        if e["code"] == "RATE_LIMITED" {
            let wait = e["details"]["retry_after_ms"].as_u64().unwrap();
            assert!(wait <= 1000, "the slow lane reopens within a second: {e}");
            throttled = true;
            break;
        }
    }
    assert!(throttled, "the attacker's address was never throttled");
    let mut other = s.connect();
    for _ in 0..5 {
        let r = other.request("AUTH", json!({"method": "bearer", "token": "secret"}));
        if r["status"] == "ok" {
            other.ok("INFO", json!({}));
            // The attacker is still throttled (the success just took this second's check, and
            // a success clears nothing).
            attacker.err_code(
                "AUTH",
                json!({"method": "bearer", "token": "wrong-x"}),
                "RATE_LIMITED",
            );
            return;
        }
        assert_eq!(r["error"]["code"], "RATE_LIMITED", "{r}");
        let wait = r["error"]["details"]["retry_after_ms"].as_u64().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(wait + 20));
    }
    panic!("a correct token was refused five times while the address was throttled");
}
