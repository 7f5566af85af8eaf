//! WATCH_INSTANCE, WATCH_ALL, UNWATCH and event messages (protocol.md §5.14–§5.17,
//! decisions.md "Watching").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// How long to listen for events that must NOT come.
const QUIET: Duration = Duration::from_millis(300);

fn setup() -> (Server, Client) {
    let s = Server::start();
    let mut c = s.connect();
    put_order(&mut c, "order");
    (s, c)
}

#[test]
fn watch_instance_result_fields() {
    let (_s, mut c) = setup();
    let cr = create(&mut c, "order", "w", json!({}));
    let r = c.ok("WATCH_INSTANCE", json!({"instance_id": "w"}));
    assert!(
        r["subscription_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{r}"
    );
    assert_eq!(r["instance_id"], "w");
    assert_eq!(r["current_state"], "pending");
    assert_eq!(r["current_wal_offset"], cr["wal_offset"]);
}

#[test]
fn watch_instance_event_follows_own_apply_response() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "w", json!({"customer": "alice"}));
    let sub = c.ok("WATCH_INSTANCE", json!({"instance_id": "w"}))["subscription_id"].clone();
    let ap = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": "w", "event": "PAY", "payload": {"amount": 99.5}}),
    );
    assert!(
        c.events.is_empty(),
        "the event must come after the APPLY response: {:?}",
        c.events
    );
    let e = c.next_event(READ_TIMEOUT);
    assert_eq!(e["type"], "event");
    assert_eq!(e["subscription_id"], sub);
    assert_eq!(e["instance_id"], "w");
    assert_eq!(e["machine"], "order");
    assert_eq!(e["version"], 1);
    assert_eq!(e["wal_offset"], ap["wal_offset"]);
    assert_eq!(e["from_state"], "pending");
    assert_eq!(e["to_state"], "paid");
    assert_eq!(e["event"], "PAY");
    assert_eq!(e["payload"], json!({"amount": 99.5}));
    assert_eq!(e["ctx"], json!({"customer": "alice", "amount": 99.5}));
}

#[test]
fn watch_instance_receives_events_from_other_connections() {
    let (s, mut c) = setup();
    create(&mut c, "order", "w", json!({}));
    let mut w = s.connect();
    w.ok("WATCH_INSTANCE", json!({"instance_id": "w"}));
    create(&mut c, "order", "other", json!({}));
    apply(&mut c, "other", "PAY", json!({}));
    let a1 = apply(&mut c, "w", "PAY", json!({}));
    let a2 = apply(&mut c, "w", "CANCEL", json!({}));
    let e1 = w.next_event(READ_TIMEOUT);
    let e2 = w.next_event(READ_TIMEOUT);
    assert_eq!(e1["wal_offset"], a1["wal_offset"], "only w's events: {e1}");
    assert_eq!(e2["wal_offset"], a2["wal_offset"]);
    assert!(w.try_next_event(QUIET).is_none());
}

#[test]
fn watch_instance_unknown_is_instance_not_found() {
    let (_s, mut c) = setup();
    c.err_code(
        "WATCH_INSTANCE",
        json!({"instance_id": "ghost"}),
        "INSTANCE_NOT_FOUND",
    );
}

#[test]
fn watch_instance_missing_id_is_bad_request() {
    let (_s, mut c) = setup();
    c.err_code(
        "WATCH_INSTANCE",
        json!({"include_ctx": true}),
        "BAD_REQUEST",
    );
}

#[test]
fn watch_instance_include_ctx_false_omits_ctx() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "w", json!({"x": 1}));
    c.ok(
        "WATCH_INSTANCE",
        json!({"instance_id": "w", "include_ctx": false}),
    );
    apply(&mut c, "w", "PAY", json!({"y": 2}));
    let e = c.next_event(READ_TIMEOUT);
    assert!(e.get("ctx").is_none(), "no ctx key: {e}");
    assert_eq!(e["payload"], json!({"y": 2}));
}

#[test]
fn watch_all_result_fields() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "x", json!({}));
    let r = c.ok("WATCH_ALL", json!({}));
    assert!(
        r["subscription_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{r}"
    );
    assert!(r["wal_offset"].is_u64(), "{r}");
}

#[test]
fn watch_all_receives_every_apply_and_no_creates_or_deletes() {
    let (s, mut c) = setup();
    let mut w = s.connect();
    let sub = w.ok("WATCH_ALL", json!({}))["subscription_id"].clone();
    create(&mut c, "order", "a", json!({}));
    let a1 = apply(&mut c, "a", "PAY", json!({}));
    c.ok("DELETE_INSTANCE", json!({"instance_id": "a"}));
    create(&mut c, "order", "b", json!({}));
    let a2 = apply(&mut c, "b", "CANCEL", json!({}));
    let e1 = w.next_event(READ_TIMEOUT);
    let e2 = w.next_event(READ_TIMEOUT);
    assert_eq!(e1["subscription_id"], sub);
    assert_eq!(e1["wal_offset"], a1["wal_offset"]);
    assert_eq!(e2["wal_offset"], a2["wal_offset"]);
    assert_eq!(e2["instance_id"], "b");
    assert!(w.try_next_event(QUIET).is_none());
}

#[test]
fn watch_all_filters_machines_states_and_events() {
    let (s, mut c) = setup();
    put_order(&mut c, "order2");
    let mut w = s.connect();
    let mut subs: HashMap<String, &str> = HashMap::new();
    for (name, params) in [
        ("machines", json!({"machines": ["order"]})),
        ("from", json!({"from_states": ["paid"]})),
        ("to", json!({"to_states": ["cancelled"]})),
        ("events", json!({"events": ["PAY"]})),
        (
            "combo",
            json!({"machines": ["order"], "events": ["CANCEL"], "from_states": ["pending"]}),
        ),
        (
            "multi",
            json!({"machines": ["order", "order2"], "to_states": ["paid", "nowhere"]}),
        ),
    ] {
        let id = w.ok("WATCH_ALL", params)["subscription_id"]
            .as_str()
            .unwrap()
            .to_string();
        subs.insert(id, name);
    }
    create(&mut c, "order2", "b", json!({}));
    create(&mut c, "order", "i1", json!({}));
    create(&mut c, "order", "i2", json!({}));
    let e1 = u64_of(&apply(&mut c, "b", "PAY", json!({}))["wal_offset"]);
    let e2 = u64_of(&apply(&mut c, "i1", "PAY", json!({}))["wal_offset"]);
    let e3 = u64_of(&apply(&mut c, "i1", "CANCEL", json!({}))["wal_offset"]);
    let e4 = u64_of(&apply(&mut c, "i2", "CANCEL", json!({}))["wal_offset"]);
    let want: HashMap<&str, Vec<u64>> = HashMap::from([
        ("machines", vec![e2, e3, e4]),
        ("from", vec![e3]),
        ("to", vec![e3, e4]),
        ("events", vec![e1, e2]),
        ("combo", vec![e4]),
        ("multi", vec![e1, e2]),
    ]);
    let total: usize = want.values().map(Vec::len).sum();
    let mut got: HashMap<&str, Vec<u64>> = HashMap::new();
    for _ in 0..total {
        let e = w.next_event(READ_TIMEOUT);
        let name = subs[e["subscription_id"].as_str().unwrap()];
        got.entry(name).or_default().push(u64_of(&e["wal_offset"]));
    }
    if let Some(extra) = w.try_next_event(QUIET) {
        panic!("unexpected extra event {extra}; so far {got:?}");
    }
    for (name, offs) in got.iter_mut() {
        let sorted = {
            let mut v = offs.clone();
            v.sort_unstable();
            v
        };
        assert_eq!(*offs, sorted, "{name}: events in WAL order");
    }
    for (name, offs) in &want {
        assert_eq!(
            got.get(name).cloned().unwrap_or_default(),
            *offs,
            "filter {name}"
        );
    }
}

#[test]
fn watch_all_include_ctx_false_omits_ctx() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "a", json!({"x": 1}));
    c.ok("WATCH_ALL", json!({"include_ctx": false}));
    apply(&mut c, "a", "PAY", json!({}));
    let e = c.next_event(READ_TIMEOUT);
    assert!(e.get("ctx").is_none(), "{e}");
    let mut d = c;
    d.ok("WATCH_ALL", json!({"include_ctx": true}));
    apply(&mut d, "a", "CANCEL", json!({}));
    let mut with = 0;
    let mut without = 0;
    for _ in 0..2 {
        let e = d.next_event(READ_TIMEOUT);
        if e.get("ctx").is_some() {
            with += 1;
        } else {
            without += 1;
        }
    }
    assert_eq!((with, without), (1, 1), "one copy per subscription");
}

#[test]
fn watch_all_wrongly_typed_filter_is_bad_request() {
    let (_s, mut c) = setup();
    c.err_code("WATCH_ALL", json!({"machines": "order"}), "BAD_REQUEST");
    c.err_code("WATCH_ALL", json!({"include_ctx": "yes"}), "BAD_REQUEST");
}

#[test]
fn watch_instance_from_offset_resumes_without_gap_or_duplicate() {
    let (s, mut c) = setup();
    put_counter(&mut c, "ctr");
    create(&mut c, "ctr", "r", json!({}));
    let mut offs = Vec::new();
    for n in 0..5 {
        offs.push(u64_of(
            &apply(&mut c, "r", "inc", json!({"n": n}))["wal_offset"],
        ));
    }
    let mut w = s.connect();
    let res = w.ok(
        "WATCH_INSTANCE",
        json!({"instance_id": "r", "from_offset": offs[2]}),
    );
    assert_eq!(res["instance_id"], "r");
    for n in 5..7 {
        offs.push(u64_of(
            &apply(&mut c, "r", "inc", json!({"n": n}))["wal_offset"],
        ));
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        let e = w.next_event(READ_TIMEOUT);
        got.push((
            u64_of(&e["wal_offset"]),
            e["payload"]["n"].as_u64().unwrap(),
        ));
    }
    let want: Vec<(u64, u64)> = (2..7).map(|n| (offs[n], n as u64)).collect();
    assert_eq!(got, want);
    assert!(w.try_next_event(QUIET).is_none(), "no duplicates");
}

#[test]
fn watch_all_from_offset_replays_history_with_full_event_fields() {
    let (s, mut c) = setup();
    create(&mut c, "order", "h", json!({"k": 1}));
    let a = apply(&mut c, "h", "PAY", json!({"amount": 3}));
    let mut w = s.connect();
    w.ok("WATCH_ALL", json!({"from_offset": 1}));
    let e = w.next_event(READ_TIMEOUT);
    assert_eq!(e["wal_offset"], a["wal_offset"]);
    assert_eq!(e["instance_id"], "h");
    assert_eq!(e["machine"], "order");
    assert_eq!(e["version"], 1);
    assert_eq!(e["from_state"], "pending");
    assert_eq!(e["to_state"], "paid");
    assert_eq!(e["event"], "PAY");
    assert_eq!(e["payload"], json!({"amount": 3}));
    assert_eq!(e["ctx"], json!({"k": 1, "amount": 3}));
    assert!(w.try_next_event(QUIET).is_none());
}

#[test]
fn watch_all_from_offset_under_concurrent_writes_has_no_gap_or_duplicate() {
    let (s, mut c) = setup();
    put_counter(&mut c, "ctr");
    for i in 0..3 {
        create(&mut c, "ctr", &format!("k{i}"), json!({}));
    }
    const N: usize = 300;
    let acked = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let count = Arc::new(AtomicU64::new(0));
    let addr = s.addr();
    let writer = {
        let acked = acked.clone();
        let count = count.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            for n in 0..N {
                let r = apply(&mut c, &format!("k{}", n % 3), "inc", json!({"n": n}));
                acked.lock().unwrap().push(u64_of(&r["wal_offset"]));
                count.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // Subscribe mid-stream, resuming from an offset already written.
    wait_for(Duration::from_secs(30), || {
        (count.load(Ordering::SeqCst) >= 60).then_some(())
    })
    .expect("writer progresses");
    let from = acked.lock().unwrap()[20];
    let mut w = s.connect();
    w.ok(
        "WATCH_ALL",
        json!({"machines": ["ctr"], "from_offset": from}),
    );
    writer.join().unwrap();
    let all = acked.lock().unwrap().clone();
    let want: Vec<u64> = all.iter().copied().filter(|o| *o >= from).collect();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < want.len() && Instant::now() < deadline {
        match w.try_next_event(Duration::from_secs(5)) {
            Some(e) => got.push(u64_of(&e["wal_offset"])),
            None => break,
        }
    }
    assert_eq!(
        got.len(),
        want.len(),
        "event count from offset {from} (first missing/extra near index {:?})",
        got.iter().zip(&want).position(|(a, b)| a != b)
    );
    assert_eq!(got, want, "every event from {from}, in order, exactly once");
    assert!(
        w.try_next_event(QUIET).is_none(),
        "no duplicates at the end"
    );
}

#[test]
fn watch_events_are_json_lines_in_jsonl_mode() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "j", json!({}));
    c.send_request(
        "h",
        "HELLO",
        Some(json!({"protocol_version": 1, "wire_modes": ["jsonl"]})),
    );
    let m = c.read_message(READ_TIMEOUT);
    assert!(m.is_line());
    c.send_request("w", "WATCH_INSTANCE", Some(json!({"instance_id": "j"})));
    let m = c.read_message(READ_TIMEOUT);
    assert!(m.is_line() && m.value["status"] == "ok", "{m:?}");
    c.send_request(
        "a",
        "APPLY_EVENT",
        Some(json!({"instance_id": "j", "event": "PAY"})),
    );
    let m = c.read_message(READ_TIMEOUT);
    assert!(m.is_line() && m.value["id"] == "a", "{m:?}");
    let m = c.read_message(READ_TIMEOUT);
    assert!(m.is_line(), "{m:?}");
    assert_eq!(m.value["type"], "event");
    assert_eq!(m.value["to_state"], "paid");
}

#[test]
fn idempotent_replay_does_not_notify_watchers_again() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "r", json!({}));
    c.ok("WATCH_INSTANCE", json!({"instance_id": "r"}));
    let p = json!({"instance_id": "r", "event": "PAY", "idempotency_key": "once"});
    c.ok("APPLY_EVENT", p.clone());
    c.next_event(READ_TIMEOUT);
    let again = c.ok("APPLY_EVENT", p);
    assert_eq!(again["applied"], false);
    assert!(c.try_next_event(QUIET).is_none(), "no second event");
}

#[test]
fn unwatch_known_subscription_is_removed_and_stops_events() {
    let (_s, mut c) = setup();
    create(&mut c, "order", "u", json!({}));
    let sub = c.ok("WATCH_INSTANCE", json!({"instance_id": "u"}))["subscription_id"].clone();
    let r = c.ok("UNWATCH", json!({"subscription_id": sub}));
    assert_eq!(r["subscription_id"], sub);
    assert_eq!(r["removed"], true);
    apply(&mut c, "u", "PAY", json!({}));
    c.ping();
    assert!(c.events.is_empty(), "{:?}", c.events);
    assert!(c.try_next_event(QUIET).is_none());
    // A second UNWATCH of the same id: already removed.
    let r = c.ok("UNWATCH", json!({"subscription_id": sub}));
    assert_eq!(r["removed"], false);
}

#[test]
fn unwatch_unknown_subscription_is_removed_false() {
    let (_s, mut c) = setup();
    let r = c.ok("UNWATCH", json!({"subscription_id": "sub-does-not-exist"}));
    assert_eq!(r["subscription_id"], "sub-does-not-exist");
    assert_eq!(r["removed"], false);
}

#[test]
fn unwatch_of_another_connections_subscription_is_removed_false() {
    let (s, mut c) = setup();
    let sub = c.ok("WATCH_ALL", json!({}))["subscription_id"].clone();
    let mut other = s.connect();
    let r = other.ok("UNWATCH", json!({"subscription_id": sub}));
    assert_eq!(r["removed"], false);
    // Still active on its own connection.
    create(&mut c, "order", "z", json!({}));
    apply(&mut c, "z", "PAY", json!({}));
    c.next_event(READ_TIMEOUT);
}

#[test]
fn unwatch_missing_subscription_id_is_bad_request() {
    let (_s, mut c) = setup();
    c.err_code("UNWATCH", json!({}), "BAD_REQUEST");
}

#[test]
fn subscriptions_beyond_the_per_connection_limit_are_bad_request() {
    let s = Server::with_config(json!({"network": {"max_subscriptions_per_connection": 2}}));
    let mut c = s.connect();
    let a = c.ok("WATCH_ALL", json!({}))["subscription_id"].clone();
    c.ok("WATCH_ALL", json!({}));
    c.err_code("WATCH_ALL", json!({}), "BAD_REQUEST");
    // Freeing one makes room again.
    c.ok("UNWATCH", json!({"subscription_id": a}));
    c.ok("WATCH_ALL", json!({}));
}

#[test]
fn watcher_disconnect_does_not_disturb_writers() {
    let (s, mut c) = setup();
    put_counter(&mut c, "ctr");
    create(&mut c, "ctr", "d", json!({}));
    {
        let mut w = s.connect();
        w.ok("WATCH_ALL", json!({}));
    }
    for n in 0..20 {
        apply(&mut c, "d", "inc", json!({"n": n}));
    }
    let v: Value = c.ok("GET_INSTANCE", json!({"instance_id": "d"}));
    assert_eq!(v["ctx"], json!({"n": 19}));
}

#[test]
fn slow_subscriber_is_disconnected_without_blocking_writers() {
    // decisions.md "Watching": a subscriber that cannot keep up has its connection closed
    // rather than slowing writers or growing memory.
    let s = Server::with_config(json!({"network": {"subscription_queue_depth": 8}}));
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    create(&mut c, "ctr", "x", json!({}));
    let mut slow = s.connect();
    slow.ok("WATCH_ALL", json!({}));
    // ~250 events of ~128 KiB (payload + ctx): far more than socket buffers hold.
    let blob = "b".repeat(64 * 1024);
    let t = Instant::now();
    for n in 0..250 {
        apply(&mut c, "x", "inc", json!({"n": n, "blob": blob}));
    }
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "writers were held up by a stalled subscriber: {:?}",
        t.elapsed()
    );
    let got = slow.expect_closed(Duration::from_secs(30));
    let events = got.iter().filter(|m| m.kind() == "event").count();
    assert!(
        events < 250,
        "the stalled subscriber was not cut off ({events} events)"
    );
    // The server and other connections are fine.
    apply(&mut c, "x", "inc", json!({"n": -1}));
    s.connect().ping();
}

#[test]
fn flush_all_ends_every_subscription() {
    // decisions.md: FLUSH_ALL closes every subscription.
    let s = Server::with_config(json!({"storage": {"allow_flush_all": true}}));
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "a", json!({}));
    let mut w = s.connect();
    let sub = w.ok("WATCH_ALL", json!({}))["subscription_id"].clone();
    c.ok("FLUSH_ALL", json!({}));
    put_order(&mut c, "order");
    create(&mut c, "order", "b", json!({}));
    apply(&mut c, "b", "PAY", json!({}));
    // Either the watcher's connection was closed, or it stays open without the subscription.
    match w.try_read_message(Duration::from_secs(1)) {
        Err(ReadError::Timeout) => {
            let r = w.ok("UNWATCH", json!({"subscription_id": sub}));
            assert_eq!(r["removed"], false, "subscription survived FLUSH_ALL: {r}");
        }
        Err(ReadError::Closed { .. }) | Err(ReadError::Reset(_)) => {}
        Ok(m) => panic!(
            "the old subscription got a message after FLUSH_ALL: {}",
            m.value
        ),
        Err(e) => panic!("{e:?}"),
    }
}
