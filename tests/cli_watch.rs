//! rstmdb-cli watch-all / watch-instance / unwatch (operations.md §6.4): events printed as
//! they happen, filters, Ctrl+C, end of stream, resume after a server restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "cli_support/mod.rs"]
mod cli_support;

use std::time::Duration;

use cli_support::*;
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(400);

fn with_order() -> (Server, Cli) {
    let s = Server::start();
    let c = Cli::new(&s);
    c.run(&["put-machine", "-n", "order", "-v", "1", ORDER])
        .ok();
    c.run(&[
        "put-machine",
        "-n",
        "ticket",
        "-v",
        "1",
        r#"{"states":["open","closed"],"initial":"open","transitions":[{"from":"open","event":"CLOSE","to":"closed"}]}"#,
    ])
    .ok();
    (s, c)
}

fn create(c: &Cli, machine: &str, id: &str) {
    c.run(&["create-instance", "-m", machine, "-V", "1", "-i", id])
        .ok();
}

fn apply(c: &Cli, id: &str, event: &str, payload: Option<&str>) {
    let mut args = vec!["apply-event", "-i", id, "-e", event];
    if let Some(p) = payload {
        args.extend(["-p", p]);
    }
    c.run(&args).ok();
}

fn event(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON event ({e}): {line}"))
}

#[test]
fn watch_all_prints_each_event_as_it_happens() {
    let (_s, c) = with_order();
    create(&c, "order", "o1");
    let w = c.spawn(&["watch-all"]);
    let started = w.wait_stderr("Press Ctrl+C to stop...");
    assert!(
        started[0].starts_with("Watching all events (sub_id: sub-"),
        "{started:?}"
    );
    apply(&c, "o1", "PAY", Some(r#"{"amount": 5}"#));
    // Read before the next event is even caused: output is not buffered until exit.
    let first = event(&w.next_line());
    assert_eq!(first["type"], "event");
    assert_eq!(first["instance_id"], "o1");
    assert_eq!(first["from_state"], "pending");
    assert_eq!(first["to_state"], "paid");
    assert_eq!(first["payload"], json!({"amount": 5}));
    assert_eq!(first["ctx"], json!({"amount": 5}));
    apply(&c, "o1", "SHIP", None);
    let second = event(&w.next_line());
    assert_eq!(second["event"], "SHIP");
    assert!(second["wal_offset"].as_u64() > first["wal_offset"].as_u64());
}

#[test]
fn event_lines_keep_the_reference_field_order() {
    let (_s, c) = with_order();
    create(&c, "order", "o1");
    let w = c.spawn(&["watch-all"]);
    w.wait_stderr("Press Ctrl+C");
    apply(&c, "o1", "PAY", Some(r#"{"amount": 5}"#));
    let line = w.next_line();
    let keys = [
        "\"type\"",
        "\"subscription_id\"",
        "\"instance_id\"",
        "\"machine\"",
        "\"version\"",
        "\"wal_offset\"",
        "\"from_state\"",
        "\"to_state\"",
        "\"event\"",
        "\"payload\"",
        "\"ctx\"",
    ];
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| line.find(&format!("{k}:")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
}

#[test]
fn watch_all_filters() {
    let (_s, c) = with_order();
    for id in ["o1", "o2"] {
        create(&c, "order", id);
    }
    create(&c, "ticket", "t1");
    let by_machine = c.spawn(&["watch-all", "--machines", "ticket"]);
    let by_to = c.spawn(&["watch-all", "--to-states", "cancelled,closed"]);
    let by_event_and_from = c.spawn(&[
        "watch-all",
        "--events",
        "PAY",
        "--events",
        "CANCEL",
        "--from-states",
        "paid",
    ]);
    for w in [&by_machine, &by_to, &by_event_and_from] {
        w.wait_stderr("Press Ctrl+C");
    }
    apply(&c, "o1", "PAY", None); // order pending → paid
    apply(&c, "o1", "CANCEL", None); // order paid → cancelled
    apply(&c, "o2", "CANCEL", None); // order pending → cancelled
    apply(&c, "t1", "CLOSE", None); // ticket open → closed

    assert_eq!(event(&by_machine.next_line())["instance_id"], "t1");
    assert_eq!(by_machine.try_line(QUIET), None);

    let got: Vec<String> = (0..3)
        .map(|_| {
            event(&by_to.next_line())["instance_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(got, ["o1", "o2", "t1"]);
    assert_eq!(by_to.try_line(QUIET), None);

    let e = event(&by_event_and_from.next_line());
    assert_eq!(
        (e["instance_id"].as_str(), e["event"].as_str()),
        (Some("o1"), Some("CANCEL"))
    );
    assert_eq!(by_event_and_from.try_line(QUIET), None);
}

#[test]
fn no_ctx_and_null_payload_are_left_out() {
    let (_s, c) = with_order();
    create(&c, "order", "o1");
    let w = c.spawn(&["watch-all", "--no-ctx"]);
    w.wait_stderr("Press Ctrl+C");
    apply(&c, "o1", "PAY", None);
    let e = event(&w.next_line());
    assert!(e.get("ctx").is_none(), "{e}");
    // With --json the event is printed exactly as received (payload always present).
    let j = c.spawn(&["--json", "watch-all"]);
    j.wait_stderr("Press Ctrl+C");
    apply(&c, "o1", "CANCEL", None);
    let e = event(&j.next_line());
    assert!(e.get("payload").is_some() && e.get("ctx").is_some(), "{e}");
}

#[test]
fn watch_instance_and_ctrl_c_unwatches() {
    let (s, c) = with_order();
    create(&c, "order", "o1");
    create(&c, "order", "o2");
    let mut w = c.spawn(&["watch-instance", "o1"]);
    let started = w.wait_stderr("Press Ctrl+C");
    assert!(
        started[0].starts_with("Watching instance o1 (sub_id: sub-")
            && started[0].contains(", state: pending, wal_offset: "),
        "{started:?}"
    );
    apply(&c, "o2", "PAY", None);
    apply(&c, "o1", "PAY", None);
    let e = event(&w.next_line());
    assert_eq!(e["instance_id"], "o1");
    w.signal("INT");
    let tail = w.wait_stderr("Stopping watch...");
    assert_eq!(tail.first().map(String::as_str), Some(""), "{tail:?}");
    assert_eq!(w.wait(Duration::from_secs(10)), Some(0));
    drop(s);
}

#[test]
fn sigterm_stops_a_watch_cleanly() {
    let (_s, c) = with_order();
    let mut w = c.spawn(&["watch-all"]);
    w.wait_stderr("Press Ctrl+C");
    w.signal("TERM");
    w.wait_stderr("Stopping watch...");
    assert_eq!(w.wait(Duration::from_secs(10)), Some(0));
}

#[test]
fn watch_instance_of_unknown_instance_fails() {
    let (_s, c) = with_order();
    let r = c.run(&["watch-instance", "nope"]);
    assert!(
        r.fails_with(1)
            .contains("Error: server error: INSTANCE_NOT_FOUND"),
        "{}",
        r.stderr
    );
}

#[test]
fn server_going_away_ends_the_watch_with_exit_0() {
    let (mut s, c) = with_order();
    let mut w = c.spawn(&["watch-all"]);
    w.wait_stderr("Press Ctrl+C");
    s.kill();
    w.wait_stderr("Connection closed");
    assert_eq!(w.wait(Duration::from_secs(10)), Some(0));
}

#[test]
fn from_offset_replays_history_first() {
    let (_s, c) = with_order();
    create(&c, "order", "o1");
    apply(&c, "o1", "PAY", None);
    apply(&c, "o1", "CANCEL", None);
    let w = c.spawn(&["watch-instance", "o1", "--from-offset", "0"]);
    assert_eq!(event(&w.next_line())["event"], "PAY");
    assert_eq!(event(&w.next_line())["event"], "CANCEL");
    assert_eq!(w.try_line(QUIET), None);
}

#[test]
fn reconnect_resumes_after_a_restart_without_losing_events() {
    let (mut s, c) = with_order();
    for id in ["o1", "o2"] {
        create(&c, "order", id);
    }
    let mut w = c.spawn(&["watch-all", "--reconnect"]);
    w.wait_stderr("Press Ctrl+C");
    apply(&c, "o1", "PAY", None);
    assert_eq!(event(&w.next_line())["instance_id"], "o1");

    s.kill();
    s.restart_same_port();
    // Written while the watcher may still be reconnecting: it must still see it, once.
    apply(&c, "o2", "PAY", None);
    apply(&c, "o2", "CANCEL", None);
    assert_eq!(event(&w.next_line())["event"], "PAY");
    assert_eq!(event(&w.next_line())["event"], "CANCEL");
    assert_eq!(w.try_line(QUIET), None, "no duplicates");
    w.signal("INT");
    assert_eq!(w.wait(Duration::from_secs(10)), Some(0));
}

#[test]
fn unwatch_from_another_connection_does_not_stop_a_stream() {
    let (_s, c) = with_order();
    create(&c, "order", "o1");
    let w = c.spawn(&["watch-all"]);
    let started = w.wait_stderr("Press Ctrl+C");
    let sub = started[0]
        .split("sub_id: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .to_owned();
    assert_eq!(
        c.run(&["unwatch", &sub]).ok(),
        format!("Warning: subscription {sub} not found\n")
    );
    apply(&c, "o1", "PAY", None);
    assert_eq!(event(&w.next_line())["instance_id"], "o1");
}
