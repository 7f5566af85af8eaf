//! The commands in the docs, run against the real binaries, so a page cannot drift from what
//! `rstmdb` and `rstmdb-cli` do.
//!
//! In a covered page every fenced block in a shell language (`sh`, `bash`, `shell`,
//! `console`) is tagged in its info string: `doc-test` (run it) or `no-doc-test` (not run:
//! cargo builds, commands for a real host). An untagged one fails the test, so a new example
//! cannot slip in unrun. Tags, after the language word (Markdown renderers ignore them):
//!
//! - `sh doc-test`: runs in `bash -eo pipefail`; a non-zero exit (or more than
//!   [`BLOCK_TIMEOUT`]) fails the page.
//! - `sh doc-test server`: a block that starts the server (a reader's "in another
//!   terminal: `rstmdb`"). It runs in the background with `RSTMDB_BIND=127.0.0.1:0` and
//!   `RSTMDB_METRICS_BIND=127.0.0.1:0`, so it takes free loopback ports; the runner waits
//!   for `Server listening on ADDR` and points later blocks at it: `RSTMDB_SERVER` (which
//!   `rstmdb-cli` honours) is set, and the documented defaults `127.0.0.1:7401` and
//!   `127.0.0.1:9090` (metrics, when enabled) in a block's text are replaced by the real
//!   addresses. A later server block, or the end of the page, stops it with SIGINT (Ctrl+C),
//!   and it must exit 0.
//! - `sh doc-test bg=NAME`: a long-running command (a watch) started in the background; the
//!   runner waits for its first line of output (a watch's `Watching …` on stderr, printed
//!   once it is subscribed). At the end of the page it gets SIGINT and must exit 0.
//! - `text doc-output`: the lines the previous `doc-test` block must print on stdout, as a
//!   contiguous run; `...` in a line matches anything (ids, times).
//!   `text doc-output bg=NAME`: the same for a background block's stdout, waited for.
//! - `<!-- doc-test stop-server -->` (a line of its own, invisible when rendered): the
//!   reader stops the server here; it gets SIGINT and must exit 0 (before an offline step
//!   such as `rstmdb repair`).
//!
//! Blocks run in order in one scratch directory (also `HOME`), holding symlinks to the
//! checkout's `scripts/`, `config/`, `deploy/` and `docs/`, with `target/<profile>` (where
//! `rstmdb` and `rstmdb-cli` are) first on `PATH`. Exported variables and the working
//! directory carry over from one block to the next, as in a reader's terminal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "cli_support/mod.rs"]
mod cli_support;

use cli_support::{cli_bin, scrub_env, server_bin, tempdir, workspace_root};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest a foreground block may run.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// Wait for a server's listening line, a background block's first line, or a background
/// block's expected output.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A stopped server or watch must exit within this.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Run,
    Server,
    Background(String),
    /// Expected stdout of the previous `Run` block, or of the named background block.
    Output(Option<String>),
    /// `<!-- doc-test stop-server -->`: the reader stops the server (Ctrl+C) here.
    StopServer,
}

#[derive(Debug, Clone)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    kind: Kind,
    text: String,
}

/// The tagged blocks of a Markdown page, in order; an untagged shell block is an error.
fn parse_blocks(page: &str, markdown: &str) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.trim_end() == "<!-- doc-test stop-server -->" {
            blocks.push(Block {
                line: i + 1,
                kind: Kind::StopServer,
                text: String::new(),
            });
            continue;
        }
        if !trimmed.starts_with("```") {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let ticks = trimmed.chars().take_while(|&c| c == '`').count();
        let fence = &trimmed[..ticks];
        let info: Vec<&str> = trimmed[ticks..].split_whitespace().collect();
        let mut body = String::new();
        let mut closed = false;
        for (_, l) in lines.by_ref() {
            if l.trim() == fence {
                closed = true;
                break;
            }
            let strip = l.len() - l.trim_start().len();
            body.push_str(&l[strip.min(indent)..]);
            body.push('\n');
        }
        if !closed {
            return Err(format!("{page}:{}: unclosed code fence", i + 1));
        }
        let lang = info.first().copied().unwrap_or("");
        let tags = &info[info.len().min(1)..];
        let bg = tags
            .iter()
            .find_map(|t| t.strip_prefix("bg="))
            .map(str::to_owned);
        let kind = if matches!(lang, "sh" | "bash" | "shell" | "console") {
            if tags.contains(&"no-doc-test") {
                continue;
            }
            if !tags.contains(&"doc-test") {
                return Err(format!(
                    "{page}:{}: shell block without `doc-test` or `no-doc-test` in its info string",
                    i + 1
                ));
            }
            if tags.contains(&"server") {
                Kind::Server
            } else if let Some(name) = bg {
                Kind::Background(name)
            } else {
                Kind::Run
            }
        } else if tags.contains(&"doc-output") {
            Kind::Output(bg)
        } else {
            continue;
        };
        blocks.push(Block {
            line: i + 1,
            kind,
            text: body,
        });
    }
    Ok(blocks)
}

/// `...` in `pattern` matches any run of characters; the rest must match exactly.
fn line_matches(pattern: &str, actual: &str) -> bool {
    let parts: Vec<&str> = pattern.split("...").collect();
    if parts.len() == 1 {
        return pattern == actual;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !actual.starts_with(first) || actual.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &actual[first.len()..];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(at) => rest = &rest[at + mid.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// True when the non-blank-edged lines of `expected` appear as a contiguous run in `actual`.
fn output_matches(expected: &str, actual: &str) -> bool {
    let exp: Vec<&str> = expected.lines().map(str::trim_end).collect();
    let start = exp.iter().position(|l| !l.is_empty()).unwrap_or(exp.len());
    let end = exp
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(start, |e| e + 1);
    let exp = &exp[start..end];
    if exp.is_empty() {
        return true;
    }
    let act: Vec<&str> = actual.lines().map(str::trim_end).collect();
    act.windows(exp.len())
        .any(|w| w.iter().zip(exp).all(|(a, e)| line_matches(e, a)))
}

/// A block running in the background (a server or a watch) in its own process group.
struct Background {
    line: usize,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Background {
    fn output(&self) -> String {
        format!(
            "--- stdout\n{}--- stderr\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// SIGINT to the whole group (a reader's Ctrl+C), then wait; it must exit 0.
    fn stop(mut self, page: &str, what: &str) -> Result<(), String> {
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-INT", "--", &format!("-{pgid}")])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return if st.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "{page}:{}: {what} exited with {st} after Ctrl+C\n{}",
                        self.line,
                        self.output()
                    ))
                };
            }
            if Instant::now() >= deadline {
                kill_group(pgid);
                let _ = self.child.wait();
                return Err(format!(
                    "{page}:{}: {what} did not stop within {STOP_TIMEOUT:?} of Ctrl+C\n{}",
                    self.line,
                    self.output()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill_group(self.child.id());
            let _ = self.child.wait();
        }
    }
}

fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
}

/// Copies a pipe into a shared string, line by line.
fn collect(pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let sink = buf.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    buf
}

const SERVER_MARK: &str = "Server listening on ";
const METRICS_MARK: &str = "Metrics server listening on http://";

/// The address after `mark` in the first log line that has it.
fn logged_addr(log: &str, mark: &str) -> Option<String> {
    log.lines().find_map(|l| {
        let rest = &l[l.find(mark)? + mark.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
            .unwrap_or(rest.len());
        Some(rest[..end].to_owned())
    })
}

/// What a page run did, for the test's own checks.
#[derive(Debug, Default)]
struct Report {
    commands: usize,
    servers: usize,
    background: usize,
    outputs_checked: usize,
}

struct PageRun<'a> {
    page: &'a str,
    dir: tempfile::TempDir,
    state: PathBuf,
    server: Option<Background>,
    server_addr: Option<String>,
    metrics_addr: Option<String>,
    background: Vec<(String, Background)>,
    last_stdout: Option<(usize, String)>,
    report: Report,
}

impl<'a> PageRun<'a> {
    fn new(page: &'a str) -> PageRun<'a> {
        let dir = tempdir();
        let root = workspace_root();
        for sub in ["scripts", "config", "deploy", "docs"] {
            std::os::unix::fs::symlink(root.join(sub), dir.path().join(sub)).unwrap();
        }
        let state = dir.path().join(".doc-test-env");
        PageRun {
            page,
            dir,
            state,
            server: None,
            server_addr: None,
            metrics_addr: None,
            background: Vec::new(),
            last_stdout: None,
            report: Report::default(),
        }
    }

    /// The block wrapped: the previous blocks' exports and directory, the runner's
    /// variables, the block, then (for foreground blocks) the environment saved for the next.
    fn script(&self, block: &Block, save_state: bool) -> String {
        let mut s = String::from("set -eo pipefail\n");
        s.push_str(&format!(
            "if [ -f '{0}' ]; then . '{0}'; fi\n",
            self.state.display()
        ));
        if let Some(addr) = &self.server_addr {
            s.push_str(&format!("export RSTMDB_SERVER='{addr}'\n"));
        }
        let mut text = block.text.clone();
        // Every block, not only server blocks: an `rstmdb` run in an ordinary block (one
        // expected to fail at startup) must never take a fixed port either.
        s.push_str("export RSTMDB_BIND=127.0.0.1:0 RSTMDB_METRICS_BIND=127.0.0.1:0\n");
        if block.kind != Kind::Server {
            if let Some(addr) = &self.server_addr {
                text = text.replace("127.0.0.1:7401", addr);
            }
            if let Some(addr) = &self.metrics_addr {
                text = text.replace("127.0.0.1:9090", addr);
            }
        }
        s.push_str(&text);
        if save_state {
            s.push_str(&format!(
                "\n{{ export -p; printf 'cd %q\\n' \"$PWD\"; }} > '{}'\n",
                self.state.display()
            ));
        }
        s
    }

    fn command(&self, script: String) -> Command {
        let bin_dir = |p: PathBuf| p.parent().map(Path::to_path_buf).unwrap();
        let mut path = std::env::join_paths([bin_dir(server_bin()), bin_dir(cli_bin())]).unwrap();
        if let Some(old) = std::env::var_os("PATH") {
            let mut p = path;
            p.push(":");
            p.push(old);
            path = p;
        }
        let mut cmd = Command::new("bash");
        scrub_env(&mut cmd);
        cmd.args(["--noprofile", "--norc", "-c", &script])
            .env("PATH", path)
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd
    }

    fn spawn(&self, block: &Block) -> Result<Background, String> {
        let mut child = self
            .command(self.script(block, false))
            .spawn()
            .map_err(|e| format!("{}:{}: spawn bash: {e}", self.page, block.line))?;
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Ok(Background {
            line: block.line,
            child,
            stdout,
            stderr,
        })
    }

    fn run_block(&mut self, block: &Block) -> Result<(), String> {
        let page = self.page;
        match &block.kind {
            Kind::Run => {
                let mut child = self
                    .command(self.script(block, true))
                    .spawn()
                    .map_err(|e| format!("{page}:{}: spawn bash: {e}", block.line))?;
                let stdout = collect(child.stdout.take().unwrap());
                let stderr = collect(child.stderr.take().unwrap());
                let deadline = Instant::now() + BLOCK_TIMEOUT;
                let status = loop {
                    if let Ok(Some(st)) = child.try_wait() {
                        break Some(st);
                    }
                    if Instant::now() >= deadline {
                        kill_group(child.id());
                        let _ = child.wait();
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                };
                std::thread::sleep(Duration::from_millis(50));
                let out = stdout.lock().unwrap().clone();
                let err = stderr.lock().unwrap().clone();
                self.report.commands += 1;
                match status {
                    Some(st) if st.success() => {
                        self.last_stdout = Some((block.line, out));
                        Ok(())
                    }
                    other => Err(format!(
                        "{page}:{}: block failed ({})\n{}--- stdout\n{out}--- stderr\n{err}{}",
                        block.line,
                        other.map_or("timed out".into(), |s| s.to_string()),
                        block.text,
                        self.server
                            .as_ref()
                            .map(|s| format!("--- server\n{}", s.output()))
                            .unwrap_or_default()
                    )),
                }
            }
            Kind::Server => {
                if let Some(old) = self.server.take() {
                    old.stop(page, "the server")?;
                }
                self.server_addr = None;
                self.metrics_addr = None;
                let mut bg = self.spawn(block)?;
                let deadline = Instant::now() + START_TIMEOUT;
                let addr = loop {
                    if let Some(a) = logged_addr(&bg.stdout.lock().unwrap(), SERVER_MARK) {
                        break a;
                    }
                    let exited = bg.child.try_wait().ok().flatten().is_some();
                    if exited || Instant::now() >= deadline {
                        std::thread::sleep(Duration::from_millis(100));
                        return Err(format!(
                            "{page}:{}: the server did not start\n{}{}",
                            block.line,
                            block.text,
                            bg.output()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                self.server_addr = Some(addr);
                // Logged before the server's own line, when metrics are on.
                self.metrics_addr = logged_addr(&bg.stdout.lock().unwrap(), METRICS_MARK);
                self.server = Some(bg);
                self.report.servers += 1;
                Ok(())
            }
            Kind::Background(name) => {
                let mut bg = self.spawn(block)?;
                let deadline = Instant::now() + START_TIMEOUT;
                loop {
                    let started = !bg.stdout.lock().unwrap().is_empty()
                        || !bg.stderr.lock().unwrap().is_empty();
                    if started {
                        break;
                    }
                    let exited = bg.child.try_wait().ok().flatten().is_some();
                    if exited || Instant::now() >= deadline {
                        return Err(format!(
                            "{page}:{}: background block printed nothing\n{}{}",
                            block.line,
                            block.text,
                            bg.output()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                // A watch prints its `Watching …` line once subscribed; give it a moment to
                // finish the line before the next block writes.
                std::thread::sleep(Duration::from_millis(100));
                self.background.push((name.clone(), bg));
                self.report.background += 1;
                Ok(())
            }
            Kind::StopServer => match self.server.take() {
                Some(s) => {
                    self.server_addr = None;
                    self.metrics_addr = None;
                    s.stop(page, "the server")
                }
                None => Err(format!(
                    "{page}:{}: stop-server with no server running",
                    block.line
                )),
            },
            Kind::Output(None) => {
                let Some((line, out)) = &self.last_stdout else {
                    return Err(format!(
                        "{page}:{}: doc-output with no doc-test block before it",
                        block.line
                    ));
                };
                self.report.outputs_checked += 1;
                if output_matches(&block.text, out) {
                    Ok(())
                } else {
                    Err(format!(
                        "{page}:{}: the block at line {line} printed\n{out}which does not contain\n{}",
                        block.line, block.text
                    ))
                }
            }
            Kind::Output(Some(name)) => {
                let Some((_, bg)) = self.background.iter().find(|(n, _)| n == name) else {
                    return Err(format!(
                        "{page}:{}: no background block named {name}",
                        block.line
                    ));
                };
                self.report.outputs_checked += 1;
                let deadline = Instant::now() + START_TIMEOUT;
                loop {
                    if output_matches(&block.text, &bg.stdout.lock().unwrap()) {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "{page}:{}: background block {name} (line {}) did not print\n{}{}",
                            block.line,
                            bg.line,
                            block.text,
                            bg.output()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Stops the watches, then the server; each must exit 0.
    fn finish(&mut self) -> Result<(), String> {
        for (name, bg) in self.background.drain(..) {
            bg.stop(self.page, &format!("background block {name}"))?;
        }
        if let Some(s) = self.server.take() {
            s.stop(self.page, "the server")?;
        }
        Ok(())
    }
}

/// Runs the tagged blocks of `markdown` in order; the first failure is the error.
fn run_markdown(page: &str, markdown: &str) -> Result<Report, String> {
    let blocks = parse_blocks(page, markdown)?;
    let mut run = PageRun::new(page);
    for b in &blocks {
        run.run_block(b)?;
    }
    run.finish()?;
    Ok(std::mem::take(&mut run.report))
}

/// Fails with a clear message when a tool a page's examples use is missing (`.ci/run`
/// installs them), rather than with a confusing block failure.
fn require_tools(page: &str, tools: &[&str]) {
    for t in tools {
        let found = Command::new("bash")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "{page} runs `{t}`, which is not installed");
    }
}

/// Runs a page of the checkout and returns what it did.
fn run_page(rel: &str) -> Report {
    let text = std::fs::read_to_string(workspace_root().join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"));
    match run_markdown(rel, &text) {
        Ok(r) => {
            eprintln!("{rel}: {r:?}");
            r
        }
        Err(e) => panic!("{e}"),
    }
}

// ---- the pages ----

#[test]
fn readme_quick_start_runs() {
    let r = run_page("README.md");
    assert!(r.commands >= 2, "{r:?}");
    assert_eq!(r.servers, 1, "{r:?}");
    assert!(r.background >= 1 && r.outputs_checked >= 2, "{r:?}");
}

#[test]
fn getting_started_runs() {
    require_tools("docs/getting-started.md", &["jq", "openssl"]);
    let r = run_page("docs/getting-started.md");
    assert!(r.commands >= 8, "{r:?}");
    assert!(r.servers >= 2, "plain and TLS: {r:?}");
    assert!(r.background >= 1 && r.outputs_checked >= 3, "{r:?}");
}

#[test]
fn cli_page_runs() {
    require_tools("docs/cli.md", &["jq"]);
    let r = run_page("docs/cli.md");
    assert!(r.commands >= 3, "{r:?}");
    assert!(r.outputs_checked >= 2, "{r:?}");
}

#[test]
fn protocol_page_runs() {
    require_tools("docs/protocol.md", &["od"]);
    let r = run_page("docs/protocol.md");
    assert!(r.commands >= 2 && r.outputs_checked >= 2, "{r:?}");
}

#[test]
fn operations_page_runs() {
    require_tools("docs/operations.md", &["dd", "curl"]);
    let r = run_page("docs/operations.md");
    assert!(r.servers >= 3 && r.commands >= 5, "{r:?}");
    assert!(r.outputs_checked >= 4, "{r:?}");
}

// ---- the runner itself ----

#[test]
fn a_failing_block_fails_the_page_and_names_its_line() {
    let md =
        "# t\n\n```sh doc-test\ntrue\n```\n\n```sh doc-test\necho before\nfalse\necho after\n```\n";
    let e = run_markdown("t.md", md).unwrap_err();
    assert!(e.contains("t.md:7: block failed"), "{e}");
    assert!(
        e.contains("before") && !e.contains("--- stdout\nbefore\nafter"),
        "{e}"
    );
}

#[test]
fn a_failing_command_inside_a_pipeline_fails_the_block() {
    let md = "```sh doc-test\nfalse | cat\n```\n";
    let e = run_markdown("t.md", md).unwrap_err();
    assert!(e.contains("t.md:1: block failed"), "{e}");
}

#[test]
fn wrong_expected_output_fails_the_page() {
    let md =
        "```sh doc-test\necho hello\necho world\n```\n\n```text doc-output\nhello\nmoon\n```\n";
    let e = run_markdown("t.md", md).unwrap_err();
    assert!(
        e.contains("t.md:6") && e.contains("does not contain"),
        "{e}"
    );
    let md = "```sh doc-test\necho hello\necho world 42\n```\n\n```text doc-output\nhello\nworld ...\n```\n";
    let r = run_markdown("t.md", md).unwrap();
    assert_eq!((r.commands, r.outputs_checked), (1, 1));
}

#[test]
fn an_untagged_shell_block_is_refused() {
    let md = "```sh doc-test\ntrue\n```\n\n```bash\nrm -rf /nothing\n```\n";
    let e = run_markdown("t.md", md).unwrap_err();
    assert!(e.contains("t.md:5") && e.contains("no-doc-test"), "{e}");
    let md = "```sh no-doc-test\nexit 1\n```\n\n```text\nnot run\n```\n";
    let r = run_markdown("t.md", md).unwrap();
    assert_eq!(r.commands, 0);
}

#[test]
fn exports_and_directory_carry_over_between_blocks() {
    let md = "```sh doc-test\nexport GREETING=hi\nmkdir -p sub && cd sub\n```\n\n```sh doc-test\ntest \"$GREETING\" = hi\ntest \"$(basename \"$PWD\")\" = sub\n```\n";
    let r = run_markdown("t.md", md).unwrap();
    assert_eq!(r.commands, 2);
}

#[test]
fn a_background_block_must_print_and_stop_on_ctrl_c() {
    let md = "```sh doc-test bg=w\ntrap 'exit 0' INT\necho ready >&2\nwhile true; do sleep 0.1; done\n```\n";
    let r = run_markdown("t.md", md).unwrap();
    assert_eq!(r.background, 1);
    let md = "```sh doc-test bg=w\nexit 0\n```\n";
    let e = run_markdown("t.md", md).unwrap_err();
    assert!(e.contains("printed nothing"), "{e}");
    // Ignores Ctrl+C and exits 1 when it finally gets it: reported.
    let md =
        "```sh doc-test bg=w\ntrap 'exit 3' INT\necho ready\nwhile true; do sleep 0.1; done\n```\n";
    let e = run_markdown("t.md", md).unwrap_err();
    assert!(
        e.contains("exited with") && e.contains("after Ctrl+C"),
        "{e}"
    );
}

#[test]
fn a_server_block_that_never_listens_fails() {
    let md = "```sh doc-test server\nrstmdb --config does-not-exist.yaml\n```\n";
    let e = run_markdown("t.md", md).unwrap_err();
    assert!(
        e.contains("the server did not start") && e.contains("does-not-exist"),
        "{e}"
    );
}

#[test]
fn stop_server_needs_a_running_server_and_stops_it() {
    let md = "```sh doc-test\ntrue\n```\n\n<!-- doc-test stop-server -->\n";
    let e = run_markdown("t.md", md).unwrap_err();
    assert!(
        e.contains("t.md:5: stop-server with no server running"),
        "{e}"
    );
    // After the stop the data directory is free again: `repair` takes the WAL's lock.
    let md = "```sh doc-test server\nrstmdb\n```\n\n<!-- doc-test stop-server -->\n\n```sh doc-test\nrstmdb repair --data-dir ./data\n```\n\n```text doc-output\nWAL in ./data/wal is clean, nothing to repair (...)\n```\n";
    let r = run_markdown("t.md", md).unwrap();
    assert_eq!((r.servers, r.commands, r.outputs_checked), (1, 1, 1));
}

#[test]
fn output_matching_rules() {
    assert!(line_matches("a...c", "abbbc"));
    assert!(line_matches("...", "anything"));
    assert!(!line_matches("a...c", "abbbd"));
    assert!(!line_matches("ab...ba", "aba"));
    assert!(output_matches("\nx\ny\n\n", "w\nx\ny\nz\n"));
    assert!(!output_matches("x\nz", "x\ny\nz\n"));
    let log = "INFO Metrics server listening on http://127.0.0.1:9/metrics\nINFO Server listening on 127.0.0.1:8 (plain)\n";
    assert_eq!(
        logged_addr(log, SERVER_MARK).as_deref(),
        Some("127.0.0.1:8")
    );
    assert_eq!(
        logged_addr(log, METRICS_MARK).as_deref(),
        Some("127.0.0.1:9")
    );
}
