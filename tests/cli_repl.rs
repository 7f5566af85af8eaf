//! The rstmdb-cli REPL driven through stdin (operations.md §6.7 plus `\json`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "cli_support/mod.rs"]
mod cli_support;

use cli_support::*;
use serde_json::Value;

#[test]
fn a_session_through_stdin() {
    let s = Server::start();
    let c = Cli::new(&s);
    let input = "\
ping
pm order 1 {\"states\": [\"pending\", \"paid\"], \"initial\": \"pending\", \"transitions\": [{\"from\": \"pending\", \"event\": \"PAY\", \"to\": \"paid\"}]}
pm order 1 {\"states\": [\"pending\", \"paid\"], \"initial\": \"pending\", \"transitions\": [{\"from\": \"pending\", \"event\": \"PAY\", \"to\": \"paid\"}]}
lm
c order 1 o1 {\"customer\":\"alice\"}
G o1
a o1 PAY {\"amount\":3}
li
li order paid
wal
ws
d o1
li
quit
";
    let r = c.repl(input);
    let out = r.ok();
    let expect_in_order = [
        "rstmdb CLI\n",
        &format!("Connecting to {}...\n", s.server_arg()),
        "Connected!\nType 'help' for available commands.\n\n",
        "PONG\n\n",
        "Created order v1 (checksum: ",
        "Exists order v1 (checksum: ",
        "  order v1 (2 states, 1 transitions)\n\n",
        "Created o1 (state: pending, offset: ",
        "order v1\n  State: pending\n  Context: {\n  \"customer\": \"alice\"\n}\n\n",
        "PAY pending → paid (offset: ",
        "Instances (1 total)\n  o1 (order v1) state=paid\n\n",
        "Instances (1 total)\n  o1 (order v1) state=paid\n\n",
        "[1] put_machine\n[2] create_instance\n[3] apply_event\n\n",
        "WAL Statistics\n  Entries: 3\n",
        "Deleted o1\n\n",
        "No instances\n\n",
        "Disconnected.\n",
    ];
    let mut at = 0;
    for piece in expect_in_order {
        match out[at..].find(piece) {
            Some(i) => at += i + piece.len(),
            None => panic!("missing {piece:?} after byte {at} in:\n{out}"),
        }
    }
}

#[test]
fn json_toggle_usage_lines_and_errors() {
    let s = Server::start();
    let c = Cli::new(&s);
    let r = c.repl(
        "\\json\nping\ninfo\nget nope\n\\json\nfrobnicate\ngm\ncreate\napply x\ndelete\nput-machine a\ngm order one\nwal x y\nhelp\n",
    );
    let out = r.ok();
    assert!(out.contains("JSON output on\n\n"), "{out}");
    // In JSON mode, results are one JSON document per line.
    let info_line = out
        .lines()
        .find(|l| l.contains("\"server_name\""))
        .expect("info as JSON");
    let v: Value = serde_json::from_str(info_line).unwrap();
    assert_eq!(v["server_name"], "rstmdb");
    assert!(
        out.contains("Error: server error: INSTANCE_NOT_FOUND - instance not found: nope\n"),
        "{out}"
    );
    assert!(out.contains("JSON output off\n\n"), "{out}");
    assert!(
        out.contains("Unknown command: frobnicate. Type 'help' for help.\n"),
        "{out}"
    );
    for usage in [
        "Usage: get-machine <name> <version>",
        "Usage: create <machine> <version> [instance_id] [ctx_json]",
        "Usage: apply <instance_id> <event> [payload_json]",
        "Usage: delete <instance_id>",
        "Usage: put-machine <name> <version> <definition_json>",
    ] {
        assert!(out.contains(usage), "missing {usage}:\n{out}");
    }
    assert!(
        out.contains("Error: invalid digit found in string\n"),
        "{out}"
    );
    assert!(out.contains("No entries\n"), "{out}");
    assert!(out.contains("\\json"), "help lists \\json:\n{out}");
    // End of input is Ctrl+D.
    assert!(out.ends_with("^D\nDisconnected.\n"), "{out}");
}

#[test]
fn history_is_saved_except_lines_starting_with_a_space() {
    let s = Server::start();
    let c = Cli::new(&s);
    c.repl("ping\n  info\nquit\n").ok();
    let history = std::fs::read_to_string(c.home().join(".rstmdb_history")).unwrap();
    assert!(history.contains("ping"), "{history}");
    assert!(!history.contains("info"), "{history}");
}

#[test]
fn lost_connection_hints_at_reconnect_and_reconnect_works() {
    let mut s = Server::start();
    let c = Cli::new(&s);
    // The server dies while the REPL waits for its next line; the REPL is fed through a
    // process we control, so write the lines in two steps.
    let mut cmd = cli_command(c.home());
    cmd.args(["-s", &s.server_arg()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    writeln!(stdin, "ping").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    s.kill();
    s.restart_same_port();
    writeln!(stdin, "ping").unwrap();
    writeln!(stdin, "reconnect").unwrap();
    writeln!(stdin, "ping").unwrap();
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "Error: connection closed\nHint: Use 'reconnect' command to reconnect to the server.\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Closing existing connection...\nReconnecting to {}...\nReconnected!\n",
            s.server_arg()
        )),
        "{text}"
    );
    assert_eq!(text.matches("PONG").count(), 2, "{text}");
}

#[test]
fn initial_connect_failure_exits_1() {
    let home = tempdir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = run_cli(
        home.path(),
        &["-s", &format!("127.0.0.1:{port}"), "repl"],
        &[],
        Some("ping\n"),
    );
    assert!(r.fails_with(1).contains("Error: "), "{}", r.stderr);
    assert!(
        r.stdout.starts_with("rstmdb CLI\nConnecting to "),
        "{}",
        r.stdout
    );
}
