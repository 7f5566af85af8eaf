//! rstmdb-cli one-shot subcommands against the real server (operations.md §6.1–§6.6):
//! human output, `--json`, exit codes, env vars.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "cli_support/mod.rs"]
mod cli_support;

use cli_support::*;
use serde_json::{Value, json};

fn setup() -> (Server, Cli) {
    let s = Server::start();
    let c = Cli::new(&s);
    (s, c)
}

/// A server with the order machine and instance `o1` (ctx `{"customer":"alice"}`).
fn with_order() -> (Server, Cli) {
    let (s, c) = setup();
    let def = c.file("order.json", ORDER);
    c.run(&["put-machine", "-n", "order", "-v", "1", &format!("@{def}")])
        .ok();
    c.run(&[
        "create-instance",
        "-m",
        "order",
        "-V",
        "1",
        "-i",
        "o1",
        "-c",
        r#"{"customer":"alice"}"#,
    ])
    .ok();
    (s, c)
}

// ---- offline commands and argument handling ---------------------------------------------

#[test]
fn hash_token_prints_lowercase_sha256_and_a_newline() {
    let home = tempdir();
    let r = run_cli(home.path(), &["hash-token", "my-secret-token"], &[], None);
    assert_eq!(
        r.ok(),
        "ea5add57437cbf20af59034d7ed17968dcc56767b41965fcc5b376d45db8b4a3\n"
    );
    assert_eq!(r.stderr, "");
    let j = run_cli(
        home.path(),
        &["--json", "hash-token", "my-secret-token"],
        &[],
        None,
    )
    .json();
    assert_eq!(
        j["hash"],
        "ea5add57437cbf20af59034d7ed17968dcc56767b41965fcc5b376d45db8b4a3"
    );
}

#[test]
fn rstmdb_tls_env_must_be_true_or_false() {
    let home = tempdir();
    for bad in ["1", "yes", "TRUE"] {
        let r = run_cli(
            home.path(),
            &["hash-token", "x"],
            &[("RSTMDB_TLS", bad)],
            None,
        );
        r.fails_with(2);
    }
    for good in ["true", "false"] {
        run_cli(
            home.path(),
            &["hash-token", "x"],
            &[("RSTMDB_TLS", good)],
            None,
        )
        .ok();
    }
}

#[test]
fn usage_errors_exit_2() {
    let home = tempdir();
    let h = home.path();
    // Global options go before the subcommand, as in the reference.
    run_cli(h, &["ping", "-s", "127.0.0.1:1"], &[], None).fails_with(2);
    run_cli(h, &["--no-such-flag", "ping"], &[], None).fails_with(2);
    run_cli(h, &["put-machine", "-n", "x"], &[], None).fails_with(2);
    run_cli(h, &["-s", "no-port", "ping"], &[], None).fails_with(2);
    run_cli(h, &["hash-token", "x"], &[("RSTMDB_SERVER", "bad")], None).fails_with(2);
    run_cli(h, &["get-machine", "-n", "x", "-v", "one"], &[], None).fails_with(2);
}

#[test]
fn help_and_version_exit_0() {
    let home = tempdir();
    let v = run_cli(home.path(), &["--version"], &[], None);
    assert!(v.ok().starts_with("rstmdb-cli "), "{}", v.stdout);
    let h = run_cli(home.path(), &["--help"], &[], None);
    for sub in [
        "ping",
        "info",
        "put-machine",
        "get-machine",
        "list-machines",
        "create-instance",
        "get-instance",
        "apply-event",
        "delete-instance",
        "wal-read",
        "compact",
        "hash-token",
        "watch-instance",
        "watch-all",
        "unwatch",
        "repl",
        "list-instances",
        "wal-stats",
        "batch",
        "export-diagram",
        "completions",
        "gen-certs",
    ] {
        assert!(h.ok().contains(sub), "help lacks {sub}:\n{}", h.stdout);
    }
    run_cli(home.path(), &["help", "watch-all"], &[], None).ok();
}

#[test]
fn connection_refused_is_a_connection_failure() {
    let home = tempdir();
    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = run_cli(
        home.path(),
        &["-s", &format!("127.0.0.1:{port}"), "ping"],
        &[],
        None,
    );
    let err = r.fails_with(1);
    assert!(err.starts_with("Connection failed: "), "{err}");
    assert!(err.contains("\nError: "), "{err}");
}

#[test]
fn completions_for_each_shell() {
    let home = tempdir();
    for shell in ["bash", "zsh", "fish"] {
        let r = run_cli(home.path(), &["completions", shell], &[], None);
        assert!(r.ok().contains("rstmdb-cli"), "{shell}: {}", r.stdout);
        assert!(r.stdout.contains("watch-all"), "{shell}");
    }
    run_cli(home.path(), &["completions", "tcsh"], &[], None).fails_with(2);
}

// ---- server, env and wire options --------------------------------------------------------

#[test]
fn ping_and_info() {
    let (_s, c) = setup();
    assert_eq!(c.run(&["ping"]).ok(), "PONG\n");
    assert_eq!(c.run(&["--json", "ping"]).json(), json!({"pong": true}));
    let info = c.run(&["info"]);
    let v: Value = serde_json::from_str(info.ok()).expect("info prints JSON");
    assert_eq!(v["server_name"], "rstmdb");
    assert!(
        info.stdout.contains("\n  \"features\""),
        "pretty: {}",
        info.stdout
    );
    assert_eq!(c.run(&["info", "--json"]).json()["protocol_version"], 1);
}

#[test]
fn server_from_env_and_host_names() {
    let (s, c) = setup();
    let port = s.addr().port();
    let r = run_cli(
        c.home(),
        &["ping"],
        &[("RSTMDB_SERVER", &s.server_arg())],
        None,
    );
    assert_eq!(r.ok(), "PONG\n");
    let r = run_cli(
        c.home(),
        &["-s", &format!("localhost:{port}"), "ping"],
        &[],
        None,
    );
    assert_eq!(r.ok(), "PONG\n");
    // The flag beats the env.
    let r = run_cli(
        c.home(),
        &["-s", &s.server_arg(), "ping"],
        &[("RSTMDB_SERVER", "127.0.0.1:1")],
        None,
    );
    assert_eq!(r.ok(), "PONG\n");
}

#[test]
fn jsonl_wire_mode_works() {
    let (_s, c) = with_order();
    assert_eq!(c.run(&["--wire-mode", "jsonl", "ping"]).ok(), "PONG\n");
    let g = c
        .run(&["--wire-mode", "jsonl", "--json", "get-instance", "o1"])
        .json();
    assert_eq!(g["state"], "pending");
}

#[test]
fn token_flag_and_env_authenticate() {
    let hash = "ea5add57437cbf20af59034d7ed17968dcc56767b41965fcc5b376d45db8b4a3";
    let s = Server::with_config(json!({"auth": {"required": true, "token_hashes": [hash]}}));
    let c = Cli::new(&s);
    let err = c.run(&["info"]).fails_with(1).to_owned();
    assert!(
        err.contains("Error: server error: UNAUTHORIZED - "),
        "stderr: {err}"
    );
    c.run(&["-t", "my-secret-token", "info"]).ok();
    c.run_env(&["info"], &[("RSTMDB_TOKEN", "my-secret-token")])
        .ok();
    let bad = c.run(&["-t", "wrong", "ping"]);
    let err = bad.fails_with(1);
    assert!(err.starts_with("Connection failed: "), "{err}");
    assert!(err.contains("AUTH_FAILED"), "{err}");
}

// ---- machines -----------------------------------------------------------------------------

#[test]
fn put_machine_from_text_at_file_and_file_flag() {
    let (_s, c) = setup();
    let def = c.file("order.json", ORDER);
    let r = c.run(&["put-machine", "-n", "order", "-v", "1", ORDER]);
    let out = r.ok();
    assert!(
        out.starts_with("Created machine order v1 (checksum: ") && out.ends_with(")\n"),
        "{out}"
    );
    let again = c.run(&["put-machine", "-n", "order", "-v", "1", &format!("@{def}")]);
    assert!(
        again
            .ok()
            .starts_with("Already exists machine order v1 (checksum: "),
        "{}",
        again.stdout
    );
    let j = c
        .run(&[
            "--json",
            "put-machine",
            "-n",
            "order",
            "-v",
            "2",
            "-f",
            &def,
        ])
        .json();
    assert_eq!(j["created"], true);
    assert_eq!(j["version"], 2);
}

#[test]
fn put_machine_errors() {
    let (_s, c) = setup();
    let bad_json = c.run(&["put-machine", "-n", "m", "-v", "1", "{not json"]);
    assert!(
        bad_json.fails_with(1).starts_with("Error: "),
        "{}",
        bad_json.stderr
    );
    let missing = c.run(&["put-machine", "-n", "m", "-v", "1", "@/nonexistent.json"]);
    assert!(missing.fails_with(1).contains("cannot read"));
    let invalid = c.run(&[
        "put-machine",
        "-n",
        "m",
        "-v",
        "1",
        r#"{"states":["a"],"initial":"b","transitions":[]}"#,
    ]);
    assert!(
        invalid
            .fails_with(1)
            .starts_with("Error: server error: BAD_REQUEST - "),
        "{}",
        invalid.stderr
    );
    // Both a definition and --file is a usage error.
    c.run(&["put-machine", "-n", "m", "-v", "1", "{}", "-f", "x.json"])
        .fails_with(2);
}

#[test]
fn get_machine_and_list_machines() {
    let (_s, c) = setup();
    assert_eq!(c.run(&["list-machines"]).ok(), "No machines registered\n");
    c.run(&["put-machine", "-n", "order", "-v", "1", ORDER])
        .ok();
    c.run(&[
        "put-machine",
        "-n",
        "order",
        "-v",
        "2",
        r#"{"states":["a","b"],"initial":"a","transitions":[{"from":"a","event":"GO","to":"b"}]}"#,
    ])
    .ok();
    let g = c.run(&["get-machine", "-n", "order", "-v", "1"]);
    let out = g.ok();
    let (head, body) = out.split_once('\n').unwrap();
    assert_eq!(head, "Machine order v1");
    let def: Value = serde_json::from_str(body).unwrap();
    assert_eq!(def["initial"], "pending");
    let j = c
        .run(&["--json", "get-machine", "-n", "order", "-v", "1"])
        .json();
    assert!(j["checksum"].is_string());
    assert_eq!(j["definition"]["states"][0], "pending");
    let nf = c.run(&["get-machine", "-n", "order", "-v", "9"]);
    assert!(nf.fails_with(1).contains("MACHINE_NOT_FOUND"));

    assert_eq!(
        c.run(&["list-machines"]).ok(),
        "  order v2 (2 states, 1 transitions)\n\n"
    );
    let l = c.run(&["--json", "list-machines"]).json();
    assert_eq!(l["items"][0]["machine"], "order");
    assert_eq!(l["items"][0]["versions"], json!([1, 2]));
}

#[test]
fn export_diagram_mermaid_and_dot() {
    let (_s, c) = with_order();
    let m = c.run(&["export-diagram", "-n", "order", "-v", "1"]);
    let out = m.ok();
    assert!(out.contains("stateDiagram-v2"), "{out}");
    assert!(out.contains(": SHIP [ctx.amount #gt; 0]"), "{out}");
    let d = c.run(&[
        "export-diagram",
        "-n",
        "order",
        "-v",
        "1",
        "--format",
        "dot",
    ]);
    let dot = d.ok();
    assert!(dot.starts_with("digraph "), "{dot}");
    assert!(
        dot.contains(r#""paid" -> "shipped" [label="SHIP [ctx.amount > 0]"];"#),
        "{dot}"
    );
    let j = c
        .run(&[
            "--json",
            "export-diagram",
            "-n",
            "order",
            "-v",
            "1",
            "--format",
            "dot",
        ])
        .json();
    assert_eq!(j["diagram"].as_str(), Some(dot));
    c.run(&["export-diagram", "-n", "nope", "-v", "1"])
        .fails_with(1);

    // Graphviz must accept it.
    let have_dot = std::process::Command::new("dot")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_dot {
        eprintln!("NOTICE: graphviz `dot` not installed; skipping the dot -Tsvg check");
        return;
    }
    let path = c.file("order.dot", dot);
    let svg = std::process::Command::new("dot")
        .args(["-Tsvg", &path])
        .output()
        .unwrap();
    assert!(
        svg.status.success(),
        "dot rejected the diagram: {}",
        String::from_utf8_lossy(&svg.stderr)
    );
    let svg = String::from_utf8_lossy(&svg.stdout);
    assert!(svg.contains("<svg") && svg.contains("SHIP"), "{svg}");
}

// ---- instances ----------------------------------------------------------------------------

#[test]
fn create_instance_output_and_errors() {
    let (_s, c) = setup();
    c.run(&["put-machine", "-n", "order", "-v", "1", ORDER])
        .ok();
    let ctx = c.file("ctx.json", r#"{"customer": "bob"}"#);
    let r = c.run(&[
        "create-instance",
        "-m",
        "order",
        "-V",
        "1",
        "-i",
        "o7",
        "-c",
        &format!("@{ctx}"),
    ]);
    let out = r.ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Created instance o7");
    assert_eq!(lines[1], "  Machine: order v1");
    assert_eq!(lines[2], "  State: pending");
    assert!(lines[3].starts_with("  WAL offset: "), "{out}");
    assert_eq!(lines.len(), 4);

    let j = c
        .run(&["--json", "create-instance", "-m", "order", "-V", "1"])
        .json();
    assert!(
        !j["instance_id"].as_str().unwrap().is_empty(),
        "generated id"
    );
    assert_eq!(j["state"], "pending");

    let dup = c.run(&["create-instance", "-m", "order", "-V", "1", "-i", "o7"]);
    assert!(
        dup.fails_with(1)
            .starts_with("Error: server error: INSTANCE_EXISTS - "),
        "{}",
        dup.stderr
    );
    let nm = c.run(&["create-instance", "-m", "nope", "-V", "1"]);
    assert!(nm.fails_with(1).contains("MACHINE_NOT_FOUND"));
    c.run(&["create-instance", "-m", "order", "-V", "1", "-c", "{bad"])
        .fails_with(1);
}

#[test]
fn get_instance_output_and_not_found() {
    let (_s, c) = with_order();
    let out = c.run(&["get-instance", "o1"]);
    let text = out.ok();
    assert!(
        text.starts_with("Instance o1\n  Machine: order v1\n  State: pending\n  Context: {\n"),
        "{text}"
    );
    assert!(text.contains("\"customer\": \"alice\""), "{text}");
    let last = text.lines().last().unwrap();
    assert!(last.starts_with("  Last WAL offset: "), "{text}");
    let j = c.run(&["--json", "get-instance", "o1"]).json();
    assert_eq!(j["ctx"], json!({"customer": "alice"}));
    let nf = c.run(&["get-instance", "nope"]);
    assert_eq!(
        nf.fails_with(1),
        "Error: server error: INSTANCE_NOT_FOUND - instance not found: nope\n"
    );
    assert_eq!(nf.stdout, "");
}

#[test]
fn apply_event_output_and_errors() {
    let (_s, c) = with_order();
    let r = c.run(&[
        "apply-event",
        "-i",
        "o1",
        "-e",
        "PAY",
        "-p",
        r#"{"amount": 12}"#,
        "--expected-state",
        "pending",
    ]);
    let out = r.ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Applied event PAY on o1");
    assert_eq!(lines[1], "  pending → paid");
    assert!(lines[2].starts_with("  WAL offset: "));
    let conflict = c.run(&[
        "apply-event",
        "-i",
        "o1",
        "-e",
        "SHIP",
        "--expected-state",
        "pending",
    ]);
    assert!(conflict.fails_with(1).contains("server error: CONFLICT - "));
    let invalid = c.run(&["apply-event", "-i", "o1", "-e", "PAY"]);
    assert!(invalid.fails_with(1).contains("INVALID_TRANSITION"));
    c.run(&["create-instance", "-m", "order", "-V", "1", "-i", "o2"])
        .ok();
    c.run(&["apply-event", "-i", "o2", "-e", "PAY"]).ok();
    let guard = c.run(&["apply-event", "-i", "o2", "-e", "SHIP"]);
    assert!(guard.fails_with(1).contains("GUARD_FAILED"));
    let j = c
        .run(&[
            "--json",
            "apply-event",
            "-i",
            "o1",
            "-e",
            "SHIP",
            "--idempotency-key",
            "k1",
        ])
        .json();
    assert_eq!(j["to_state"], "shipped");
    assert_eq!(j["ctx"]["amount"], 12);
    let nf = c.run(&["apply-event", "-i", "zz", "-e", "PAY"]);
    assert!(nf.fails_with(1).contains("INSTANCE_NOT_FOUND"));
}

#[test]
fn delete_instance_and_list_instances() {
    let (_s, c) = with_order();
    for id in ["o2", "o3"] {
        c.run(&["create-instance", "-m", "order", "-V", "1", "-i", id])
            .ok();
    }
    c.run(&["apply-event", "-i", "o3", "-e", "PAY"]).ok();
    let all = c.run(&["list-instances"]);
    assert_eq!(
        all.ok(),
        "Instances (3 total)\n  o1 (order v1) state=pending\n  o2 (order v1) state=pending\n  o3 (order v1) state=paid\n"
    );
    let paid = c
        .run(&["--json", "list-instances", "--state", "paid"])
        .json();
    assert_eq!(paid["total"], 1);
    assert_eq!(paid["instances"][0]["id"], "o3");
    let page = c
        .run(&[
            "--json",
            "list-instances",
            "-m",
            "order",
            "--limit",
            "1",
            "--offset",
            "1",
        ])
        .json();
    assert_eq!(page["instances"][0]["id"], "o2");
    assert_eq!(page["has_more"], true);
    let after = c.run(&["--json", "list-instances", "--after", "o2"]).json();
    assert_eq!(after["instances"][0]["id"], "o3");

    assert_eq!(
        c.run(&["delete-instance", "o2"]).ok(),
        "Deleted instance o2\n"
    );
    let j = c.run(&["--json", "delete-instance", "o3"]).json();
    assert_eq!(j["deleted"], true);
    assert_eq!(
        c.run(&["list-instances", "--state", "paid"]).ok(),
        "No instances\n"
    );
    let with_deleted = c
        .run(&["--json", "list-instances", "--include-deleted"])
        .json();
    assert_eq!(with_deleted["total"], 3);
    assert!(
        c.run(&["delete-instance", "nope"])
            .fails_with(1)
            .contains("INSTANCE_NOT_FOUND")
    );
}

#[test]
fn snapshot_instance() {
    let (_s, c) = with_order();
    let out = c.run(&["snapshot-instance", "o1"]);
    assert!(out.ok().starts_with("Snapshot "), "{}", out.stdout);
    let j = c.run(&["--json", "snapshot-instance", "o1"]).json();
    assert_eq!(j["instance_id"], "o1");
    c.run(&["snapshot-instance", "nope"]).fails_with(1);
}

#[test]
fn batch_from_file() {
    let (_s, c) = with_order();
    let ok_file = c.file(
        "ok.json",
        r#"{"mode": "atomic", "ops": [
            {"op": "CREATE_INSTANCE", "params": {"instance_id": "b1", "machine": "order", "version": 1}},
            {"op": "APPLY_EVENT", "params": {"instance_id": "b1", "event": "PAY"}}
        ]}"#,
    );
    let out = c.run(&["batch", "-f", &ok_file]);
    let text = out.ok();
    assert!(
        text.starts_with("Batch (atomic): 2 ok, 0 failed\n"),
        "{text}"
    );
    assert!(text.contains("  [1] APPLY_EVENT ok "), "{text}");
    assert_eq!(
        c.run(&["--json", "get-instance", "b1"]).json()["state"],
        "paid"
    );

    let mixed = c.file(
        "mixed.json",
        r#"[
            {"op": "GET_INSTANCE", "params": {"instance_id": "o1"}},
            {"op": "GET_INSTANCE", "params": {"instance_id": "missing"}}
        ]"#,
    );
    let r = c.run(&["batch", "-f", &mixed]);
    assert_eq!(r.code, Some(1), "a failed element fails the command");
    assert!(r.stdout.contains("1 ok, 1 failed"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("  [1] GET_INSTANCE error INSTANCE_NOT_FOUND - "),
        "{}",
        r.stdout
    );
    let j: Value =
        serde_json::from_str(c.run(&["--json", "batch", "-f", &mixed]).stdout.trim()).unwrap();
    assert_eq!(j["results"][0]["status"], "ok");
    assert_eq!(j["results"][1]["error"]["code"], "INSTANCE_NOT_FOUND");

    // Atomic with a failing op: nothing applied, the server's code on stderr.
    let atomic = c.file(
        "atomic.json",
        r#"{"ops": [
            {"op": "CREATE_INSTANCE", "params": {"instance_id": "b2", "machine": "order", "version": 1}},
            {"op": "APPLY_EVENT", "params": {"instance_id": "b2", "event": "NOPE"}}
        ]}"#,
    );
    let r = c.run(&["batch", "-f", &atomic, "--mode", "atomic"]);
    assert!(
        r.fails_with(1).contains("server error: INVALID_TRANSITION"),
        "{}",
        r.stderr
    );
    c.run(&["get-instance", "b2"]).fails_with(1);

    let junk = c.file("junk.json", r#""just a string""#);
    c.run(&["batch", "-f", &junk]).fails_with(1);
    c.run(&["batch", "-f", "/nonexistent.json"]).fails_with(1);
}

// ---- WAL ----------------------------------------------------------------------------------

#[test]
fn wal_read_output() {
    let (_s, c) = setup();
    assert_eq!(c.run(&["wal-read"]).ok(), "No WAL entries\n");
    c.run(&["put-machine", "-n", "order", "-v", "1", ORDER])
        .ok();
    c.run(&["create-instance", "-m", "order", "-V", "1", "-i", "o1"])
        .ok();
    c.run(&["apply-event", "-i", "o1", "-e", "PAY"]).ok();
    let out = c.run(&["wal-read"]);
    assert_eq!(
        out.ok(),
        "[     1]            1 | put_machine\n\
         [     2]            2 | create_instance\n\
         \x20        Instance: o1, Machine: order v1\n\
         [     3]            3 | apply_event\n\
         \x20        Instance: o1, Event: PAY, pending → paid\n\
         \n\
         Next offset: 4\n"
    );
    let page = c.run(&["wal-read", "-f", "2", "-l", "1"]);
    assert!(page.ok().starts_with("[     2]"), "{}", page.stdout);
    assert!(page.stdout.ends_with("Next offset: 3\n"));
    let j = c.run(&["--json", "wal-read", "--from", "3"]).json();
    assert_eq!(j["records"][0]["entry"]["type"], "apply_event");
}

#[test]
fn wal_stats_and_compact() {
    let (_s, c) = with_order();
    let out = c.run(&["wal-stats"]);
    let text = out.ok();
    assert!(text.starts_with("WAL Statistics\n  Entries: 2\n"), "{text}");
    assert!(
        text.contains("\nI/O Statistics\n  Bytes written: "),
        "{text}"
    );
    let j = c.run(&["--json", "wal-stats"]).json();
    assert_eq!(j["entry_count"], 2);
    assert!(j["io_stats"]["fsyncs"].is_u64());

    let out = c.run(&["compact", "--force"]);
    let text = out.ok();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "Compaction complete");
    assert!(lines[1].starts_with("  Snapshots created: "));
    assert!(lines[2].starts_with("  WAL segments deleted: "));
    assert!(lines[3].starts_with("  Bytes reclaimed: ") && lines[3].ends_with('B'));
    assert_eq!(lines[4], "  ---");
    assert!(lines[5].starts_with("  Total snapshots: "));
    assert!(lines[6].starts_with("  WAL segments remaining: "));
    let j = c.run(&["--json", "compact"]).json();
    assert!(j["wal_segments"].is_u64());
}

#[test]
fn unwatch_of_an_unknown_subscription_warns_and_succeeds() {
    let (_s, c) = setup();
    assert_eq!(
        c.run(&["unwatch", "sub-nope"]).ok(),
        "Warning: subscription sub-nope not found\n"
    );
    let j = c.run(&["--json", "unwatch", "sub-nope"]).json();
    assert_eq!(j["removed"], false);
}

// ---- 0.3.0 additions: replication-status, flush-all -------------------------------------------

#[test]
fn replication_status_on_a_standalone_server_prints_the_reference_sentence() {
    let (_s, c) = setup();
    assert_eq!(
        c.run(&["replication-status"]).ok(),
        "Server is not configured for replication\n"
    );
    assert_eq!(
        c.run(&["replication-status", "--json"]).json(),
        json!({"role": "standalone"})
    );
}

#[test]
fn flush_all_piped_runs_without_asking_and_reports_the_counts() {
    let s = Server::with_config(json!({"storage": {"allow_flush_all": true}}));
    let c = Cli::new(&s);
    let def = c.file("order.json", ORDER);
    c.run(&["put-machine", "-n", "order", "-v", "1", &format!("@{def}")])
        .ok();
    c.run(&["create-instance", "-m", "order", "-V", "1", "-i", "a"])
        .ok();
    // stdin is not a terminal (run_cli gives /dev/null): no prompt, as 0.3.0's scripts expect.
    let r = c.run(&["flush-all"]);
    assert_eq!(
        r.ok(),
        "Database flushed\n  Instances removed: 1\n  Machines removed: 1\n"
    );
    assert_eq!(r.stderr, "", "no prompt when piped");
    assert_eq!(
        c.run(&["flush-all", "--json"]).json(),
        json!({"flushed": true, "instances_removed": 0, "machines_removed": 0})
    );
    assert_eq!(c.run(&["list-machines"]).ok(), "No machines registered\n");
}

#[test]
fn flush_all_refused_by_the_server_exits_1_with_its_message() {
    let (_s, c) = setup();
    let err = c.run(&["flush-all", "--yes"]).fails_with(1).to_string();
    assert!(
        err.contains("BAD_REQUEST") || err.contains("allow_flush_all"),
        "{err}"
    );
}

/// Runs `rstmdb-cli -s <server> <args>` on a pseudo-terminal (util-linux `script`), typing
/// `typed` into it. Returns exit code and everything the terminal showed.
fn on_terminal(c: &Cli, args: &[&str], typed: &str) -> (Option<i32>, String) {
    let mut line = format!("{} -s {}", cli_bin().display(), c.server);
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    let mut cmd = std::process::Command::new("script");
    scrub_env(&mut cmd);
    cmd.env("HOME", c.home())
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("util-linux `script` runs the CLI on a terminal");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        // Typed once the prompt is up: the pty would otherwise echo it before the CLI starts.
        std::thread::sleep(std::time::Duration::from_millis(500));
        stdin.write_all(typed.as_bytes()).expect("type");
    }
    let out = child.wait_with_output().expect("script finishes");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n"),
    )
}

#[test]
fn flush_all_on_a_terminal_asks_and_a_no_keeps_everything() {
    let s = Server::with_config(json!({"storage": {"allow_flush_all": true}}));
    let c = Cli::new(&s);
    let def = c.file("order.json", ORDER);
    c.run(&["put-machine", "-n", "order", "-v", "1", &format!("@{def}")])
        .ok();

    let (code, shown) = on_terminal(&c, &["flush-all"], "n\n");
    assert!(shown.contains("Continue? [y/N]"), "{shown}");
    assert!(shown.contains("Aborted: nothing was flushed"), "{shown}");
    assert_eq!(code, Some(1), "{shown}");
    assert!(c.run(&["list-machines"]).ok().contains("order v1"));

    let (code, shown) = on_terminal(&c, &["flush-all"], "yes\n");
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("Machines removed: 1"), "{shown}");

    c.run(&["put-machine", "-n", "order", "-v", "1", &format!("@{def}")])
        .ok();
    // --yes: no question even on a terminal.
    let (code, shown) = on_terminal(&c, &["flush-all", "--yes"], "");
    assert_eq!(code, Some(0), "{shown}");
    assert!(!shown.contains("Continue?"), "{shown}");
    assert!(shown.contains("Machines removed: 1"), "{shown}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `cluster status` against a cluster node that waits to be added (no initial_members): it
/// knows no leader and is a learner with no members yet. Against a server without a
/// cluster the ops are `BAD_REQUEST`.
#[test]
fn cluster_status_json_and_human_and_refusals() {
    let (client, raft) = (free_port(), free_port());
    let s = Server::with_config(json!({
        "network": {"bind_addr": format!("127.0.0.1:{client}")},
        "cluster": {
            "cluster_id": "cli-cluster",
            "node_id": 7,
            "raft_listen": format!("127.0.0.1:{raft}"),
            "insecure_plaintext": true
        }
    }));
    let c = Cli::new(&s);
    let v = c.run(&["--json", "cluster", "status"]).json();
    assert_eq!(v["cluster_id"], "cli-cluster", "{v}");
    assert_eq!(v["node_id"], 7, "{v}");
    assert_eq!(v["role"], "learner", "{v}");
    assert!(v["leader"].is_null(), "{v}");
    assert_eq!(v["members"], json!([]), "{v}");
    for k in ["term", "last_log_index", "committed_index", "applied_index"] {
        assert!(v[k].is_u64(), "{k}: {v}");
    }
    let human = c.run(&["cluster", "status"]).ok().to_owned();
    assert!(
        human.starts_with("Cluster cli-cluster (node 7, learner)"),
        "{human}"
    );
    assert!(human.contains("  Leader: unknown"), "{human}");
    assert!(human.contains("NODE"), "{human}");
    // Membership changes go to the leader; this node knows none.
    let err = c
        .run(&["cluster", "remove-node", "--id", "1"])
        .fails_with(1)
        .to_owned();
    assert!(
        err.contains("WAL_IO_ERROR") && err.contains("not the leader"),
        "{err}"
    );
    let err = c
        .run(&[
            "cluster",
            "add-node",
            "--id",
            "8",
            "--client",
            "127.0.0.1:1",
            "--raft",
            "nope",
        ])
        .fails_with(1)
        .to_owned();
    assert!(err.contains("BAD_REQUEST") && err.contains("raft"), "{err}");

    let (_plain, p) = setup();
    let err = p.run(&["cluster", "status"]).fails_with(1).to_owned();
    assert!(
        err.contains("BAD_REQUEST") && err.contains("not a cluster member"),
        "{err}"
    );
}
