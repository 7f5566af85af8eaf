//! Harness for the rstmdb-cli and rstmdb-client integration tests: starts the real `rstmdb`
//! binary on a free loopback port with a temporary data directory (like `support/mod.rs`,
//! which is tied to the server package's `CARGO_BIN_EXE_rstmdb`), and runs `rstmdb-cli` as
//! a process the way an operator would.
//!
//! The server binary is looked up next to the test executable (`target/<profile>/rstmdb`);
//! when it is missing or older than the server's sources (only `cargo test -p rstmdb-cli`
//! was run), it is built first with the same cargo, profile and target directory.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/process.rs"]
mod process;
use process::wait_with_timeout;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long the server may take to print its listening line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a one-shot CLI command may run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait for one line of a running watch.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// The workspace root (two levels above this package's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// `target/<profile>`: the directory holding the test executable's `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// The `rstmdb` server binary, built on first use if needed.
pub fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = profile_dir();
        let bin = dir.join("rstmdb");
        if !bin.exists() || older_than_sources(&bin) {
            build_server(&dir);
        }
        assert!(
            bin.exists(),
            "server binary {} missing after build",
            bin.display()
        );
        bin
    })
    .clone()
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().ok()?.modified().ok()
        };
        if t > newest {
            newest = t;
        }
    }
    newest
}

/// True when a source file of a crate the server is built from is newer than the binary.
fn older_than_sources(bin: &Path) -> bool {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return true;
    };
    let root = workspace_root();
    [
        "rstmdb-server",
        "rstmdb-storage",
        "rstmdb-core",
        "rstmdb-protocol",
    ]
    .iter()
    .filter_map(|c| newest_mtime(&root.join("crates").join(c)))
    .any(|t| t > built)
}

fn build_server(profile_dir: &Path) {
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(p) => p.to_owned(),
        None => "dev".to_owned(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building the rstmdb server binary for the CLI tests ({profile})");
    let status = Command::new(cargo)
        .args([
            "build",
            "-p",
            "rstmdb-server",
            "--bin",
            "rstmdb",
            "--profile",
            &profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace_root())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build of the server failed");
}

/// The CLI binary under test (only the rstmdb-cli package's tests have it).
pub fn cli_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_rstmdb-cli") {
        Some(p) => PathBuf::from(p),
        None => profile_dir().join("rstmdb-cli"),
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rstmdb-cli-it-")
        .tempdir()
        .expect("temp dir")
}

/// Deep merge: objects key by key, anything else replaces.
pub fn merge(base: &mut Value, overrides: &Value) {
    match (base, overrides) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// A running `rstmdb` with its own directory (config, data, and scratch files for tests).
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    config_path: PathBuf,
    logs: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
}

impl Server {
    /// Defaults: plain TCP on an ephemeral loopback port, no auth.
    pub fn start() -> Server {
        Server::with_config(json!({}))
    }

    /// Defaults with `overrides` merged in (`{tmp}` in strings = the server's directory).
    pub fn with_config(overrides: Value) -> Server {
        let dir = tempdir();
        let mut config = json!({
            "network": {"bind_addr": "127.0.0.1:0"},
            "storage": {"data_dir": dir.path().join("data").to_string_lossy()},
        });
        merge(&mut config, &overrides);
        let text = serde_yaml::to_string(&config)
            .expect("config YAML")
            .replace("{tmp}", &dir.path().to_string_lossy());
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, text).expect("write config");
        let logs = Arc::new(Mutex::new(String::new()));
        let (child, addr) = spawn(&config_path, dir.path(), &logs);
        Server {
            child: Some(child),
            addr,
            config_path,
            logs,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `-s` value for the CLI.
    pub fn server_arg(&self) -> String {
        self.addr.to_string()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same config and data, on the same port (so clients that
    /// reconnect to the old address find it).
    pub fn restart_same_port(&mut self) {
        assert!(self.child.is_none(), "server still running");
        let text = std::fs::read_to_string(&self.config_path).expect("config");
        let text = text.replace("127.0.0.1:0", &self.addr.to_string());
        std::fs::write(&self.config_path, text).expect("write config");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            // The port may still be in TIME_WAIT-free limbo for a moment after the kill.
            match try_spawn(&self.config_path, self.dir.path(), &self.logs) {
                Ok((child, addr)) => {
                    self.child = Some(child);
                    self.addr = addr;
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restart failed, retrying: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("server did not restart: {e}"),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(config: &Path, dir: &Path, logs: &Arc<Mutex<String>>) -> (Child, SocketAddr) {
    try_spawn(config, dir, logs).unwrap_or_else(|e| panic!("server did not start: {e}"))
}

fn try_spawn(
    config: &Path,
    dir: &Path,
    logs: &Arc<Mutex<String>>,
) -> Result<(Child, SocketAddr), String> {
    let mut cmd = Command::new(server_bin());
    scrub_env(&mut cmd);
    let mut child = cmd
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn rstmdb: {e}"))?;
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("stderr")) as Box<dyn Read + Send>,
    ] {
        let tx = tx.clone();
        let logs = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = parse_listening(&line) {
                    let _ = tx.send(addr);
                }
                if let Ok(mut l) = logs.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
    }
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(addr) = rx.recv_timeout(Duration::from_millis(25)) {
            return Ok((child, addr));
        }
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            return Err(format!(
                "exited with {status}\n{}",
                logs.lock().map(|l| l.clone()).unwrap_or_default()
            ));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("no listening line in time".into());
        }
    }
}

/// `Server listening on <addr>` → addr.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    const MARK: &str = "Server listening on ";
    let rest = &line[line.find(MARK)? + MARK.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Removes everything from the environment that changes rstmdb or rstmdb-cli behaviour.
pub fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("RSTMDB_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1");
}

/// What a finished CLI process left behind.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts exit 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts exit `code` and returns stderr.
    pub fn fails_with(&self, code: i32) -> &str {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        &self.stderr
    }

    /// stdout as one JSON document (asserts success).
    pub fn json(&self) -> Value {
        let out = self.ok();
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{out}"))
    }
}

/// A `rstmdb-cli` command with a clean environment and `HOME` in a scratch directory.
pub fn cli_command(home: &Path) -> Command {
    let mut cmd = Command::new(cli_bin());
    scrub_env(&mut cmd);
    cmd.env("HOME", home);
    cmd.current_dir(home);
    cmd
}

/// Runs the CLI to completion with `args`, extra `env` and `stdin` text.
pub fn run_cli(home: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut cmd = cli_command(home);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn rstmdb-cli");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let out = wait_with_timeout(child, CLI_TIMEOUT);
    Run {
        code: out.0.and_then(|s| s.code()),
        stdout: out.1,
        stderr: out.2,
    }
}

/// A CLI bound to one server and a scratch `HOME`.
#[derive(Debug)]
pub struct Cli {
    pub server: String,
    pub home: tempfile::TempDir,
}

impl Cli {
    pub fn new(server: &Server) -> Cli {
        Cli {
            server: server.server_arg(),
            home: tempdir(),
        }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// `rstmdb-cli -s <server> <args…>`.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["-s", self.server.as_str()];
        all.extend_from_slice(args);
        run_cli(self.home.path(), &all, &[], None)
    }

    /// Same with extra environment variables.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut all = vec!["-s", self.server.as_str()];
        all.extend_from_slice(args);
        run_cli(self.home.path(), &all, env, None)
    }

    /// The REPL (no subcommand) fed `input` on stdin.
    pub fn repl(&self, input: &str) -> Run {
        run_cli(
            self.home.path(),
            &["-s", self.server.as_str()],
            &[],
            Some(input),
        )
    }

    /// A long-running command (watch) whose output is read line by line.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut cmd = cli_command(self.home.path());
        cmd.arg("-s")
            .arg(&self.server)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Running::start(cmd)
    }

    /// Writes a file in the scratch directory and returns its path.
    pub fn file(&self, name: &str, content: &str) -> String {
        let p = self.home.path().join(name);
        std::fs::write(&p, content).expect("write file");
        p.to_string_lossy().into_owned()
    }
}

/// A CLI process still running, with its stdout and stderr lines arriving on channels.
#[derive(Debug)]
pub struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    pub fn start(mut cmd: Command) -> Running {
        let mut child = cmd.spawn().expect("spawn rstmdb-cli");
        let lines = |r: Box<dyn Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().expect("stdout")));
        let stderr = lines(Box::new(child.stderr.take().expect("stderr")));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, or panic after `LINE_TIMEOUT`.
    pub fn next_line(&self) -> String {
        self.stdout
            .recv_timeout(LINE_TIMEOUT)
            .unwrap_or_else(|e| panic!("no stdout line within {LINE_TIMEOUT:?}: {e}"))
    }

    /// The next stdout line within `timeout`, if any.
    pub fn try_line(&self, timeout: Duration) -> Option<String> {
        self.stdout.recv_timeout(timeout).ok()
    }

    /// Waits for a stderr line containing `needle`; returns the lines seen up to it.
    pub fn wait_stderr(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + LINE_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    seen.push(l);
                    if hit {
                        return seen;
                    }
                }
                Err(_) => panic!("no stderr line with {needle:?}; saw {seen:?}"),
            }
        }
    }

    /// Remaining stderr lines (after the process exited).
    pub fn rest_of_stderr(&self) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(500)) {
            v.push(l);
        }
        v
    }

    /// Sends a signal with kill(1) (`INT`, `TERM`).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill(1)");
        assert!(st.success());
    }

    /// Waits for the exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The order machine of the README.
pub const ORDER: &str = r#"{
  "states": ["pending", "paid", "shipped", "cancelled"],
  "initial": "pending",
  "transitions": [
    {"from": "pending", "event": "PAY", "to": "paid"},
    {"from": "paid", "event": "SHIP", "to": "shipped", "guard": "ctx.amount > 0"},
    {"from": ["pending", "paid"], "event": "CANCEL", "to": "cancelled"}
  ]
}"#;
