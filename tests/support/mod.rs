//! Test harness for the workspace integration tests: starts the real `rstmdb` binary on a
//! loopback port with a temporary data directory, and talks RCP to it with a small client
//! written from `shared/spec/protocol.md` §2–§3 (deliberately NOT rstmdb-protocol or
//! rstmdb-client, so that a misreading of the spec cannot hide on both sides).
#![allow(dead_code)]

pub mod process;
pub mod scrape;

use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The server binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_rstmdb");
/// Frame magic, protocol.md §2.1.
pub const MAGIC: [u8; 4] = *b"RCPX";
/// Fixed frame header length, protocol.md §2.1.
pub const HEADER_LEN: usize = 18;
/// `CRC_PRESENT`, protocol.md §2.2.
pub const FLAG_CRC: u16 = 0x0001;
pub const FLAG_COMPRESSED: u16 = 0x0002;
pub const FLAG_STREAM: u16 = 0x0004;
pub const FLAG_END_STREAM: u16 = 0x0008;
/// Largest payload (inclusive), protocol.md §2.1.
pub const MAX_PAYLOAD: u32 = 16 * 1024 * 1024;
/// How long the server may take to print its listening line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Default wait for one server message.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may take to be closed by the server after a fatal input.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The complete config of the brief, with `data_dir` under `tmp` and an ephemeral port.
pub fn base_config(data_dir: &Path) -> Value {
    json!({
        "network": {
            "bind_addr": "127.0.0.1:0",
            "idle_timeout_secs": 300,
            "max_connections": 1000,
            "max_inflight_per_connection": 64,
            "max_subscriptions_per_connection": 100,
            "subscription_queue_depth": 1024,
            "max_frame_bytes": 16777216
        },
        "storage": {
            "data_dir": data_dir.to_string_lossy(),
            "wal_segment_size_mb": 64,
            "fsync_policy": "every_write",
            "max_machine_versions": 0,
            "cache_capacity_mb": 64,
            "wal_retention_mb": 256,
            "max_ctx_bytes": 1048576,
            "max_batch_ops": 100,
            "allow_flush_all": false
        },
        "compaction": {
            "enabled": true,
            "events_threshold": 10000,
            "size_threshold_mb": 100,
            "min_interval_secs": 0
        },
        "idempotency": { "ttl_hours": 24 },
        "auth": { "required": false, "token_hashes": [] },
        "logging": { "format": "text", "level": "info" }
    })
}

/// Deep merge: objects merge key by key, a `null` in `overrides` removes the key, anything
/// else replaces.
pub fn merge(base: &mut Value, overrides: &Value) {
    match (base, overrides) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else if let Some(slot) = b.get_mut(k) {
                    merge(slot, v);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

pub fn to_yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("config serialises to YAML")
}

// ---------------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------------

/// How the config path reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigVia {
    Flag,
    Env,
}

/// Captured stdout/stderr of one server process.
#[derive(Debug, Clone, Default)]
pub struct Logs {
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
}

impl Logs {
    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The server did not come up: its exit status (None = still running at the deadline, then
/// killed) and everything it printed.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug)]
struct Running {
    child: Child,
    addr: SocketAddr,
    logs: Logs,
    readers: Vec<JoinHandle<()>>,
}

/// A running (or stopped) `rstmdb` with its own temporary directory holding the config file
/// and the data directory. Dropping it kills the process and removes the directory.
#[derive(Debug)]
pub struct Server {
    running: Option<Running>,
    addr: SocketAddr,
    config_path: PathBuf,
    via: ConfigVia,
    extra_env: Vec<(String, String)>,
    /// All runs' logs, oldest first (restarts append).
    history: Vec<Logs>,
    dir: tempfile::TempDir,
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rstmdb-it-")
        .tempdir()
        .expect("temp dir")
}

impl Server {
    /// Defaults of the brief.
    pub fn start() -> Server {
        Server::with_config(json!({}))
    }

    /// The brief's config with `overrides` deep-merged into it.
    pub fn with_config(overrides: Value) -> Server {
        match Server::try_with_config(overrides) {
            Ok(s) => s,
            Err(f) => panic!(
                "server did not start: status {:?}\n--- stdout\n{}\n--- stderr\n{}",
                f.status, f.stdout, f.stderr
            ),
        }
    }

    pub fn try_with_config(overrides: Value) -> Result<Server, StartFailure> {
        let dir = tempdir();
        let mut cfg = base_config(&dir.path().join("data"));
        merge(&mut cfg, &overrides);
        Server::try_start_in(dir, &to_yaml(&cfg), ConfigVia::Flag, &[])
    }

    /// Start with a verbatim YAML text. `{tmp}` in the text is replaced by the temporary
    /// directory (so `data_dir: "{tmp}/data"` works).
    pub fn try_start_yaml(yaml: &str) -> Result<Server, StartFailure> {
        Server::try_start_in(tempdir(), yaml, ConfigVia::Flag, &[])
    }

    pub fn try_start_in(
        dir: tempfile::TempDir,
        yaml: &str,
        via: ConfigVia,
        extra_env: &[(&str, &str)],
    ) -> Result<Server, StartFailure> {
        let text = yaml.replace("{tmp}", &dir.path().to_string_lossy());
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, text).expect("write config");
        let extra_env: Vec<(String, String)> = extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let running = spawn(&config_path, dir.path(), via, &extra_env)?;
        let addr = running.addr;
        let logs = running.logs.clone();
        Ok(Server {
            running: Some(running),
            addr,
            config_path,
            via,
            extra_env,
            history: vec![logs],
            dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn pid(&self) -> u32 {
        self.running.as_ref().expect("server is running").child.id()
    }

    /// stdout of the current (or last) run.
    pub fn stdout(&self) -> String {
        self.history.last().map(Logs::stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        self.history.last().map(Logs::stderr).unwrap_or_default()
    }

    /// Everything every run printed, for failure messages.
    pub fn all_logs(&self) -> String {
        let mut s = String::new();
        for (i, l) in self.history.iter().enumerate() {
            s.push_str(&format!(
                "--- run {i} stdout\n{}\n--- run {i} stderr\n{}\n",
                l.stdout(),
                l.stderr()
            ));
        }
        s
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// SIGKILL (crash) and reap.
    pub fn kill_9(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
            join_readers(&mut r.readers);
        }
    }

    /// Send a signal by name (`TERM`, `INT`, `HUP`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let pid = self.pid();
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill(1)");
        assert!(st.success(), "kill -{sig} {pid} failed");
    }

    /// Wait up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let r = self.running.as_mut()?;
        loop {
            if let Ok(Some(st)) = r.child.try_wait() {
                let mut r = self.running.take().expect("running");
                join_readers(&mut r.readers);
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait (20 s) and return the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.stop_with("TERM")
    }

    /// SIGINT, wait (20 s) and return the exit status.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.stop_with("INT")
    }

    fn stop_with(&mut self, sig: &str) -> ExitStatus {
        self.signal(sig);
        match self.wait_exit(Duration::from_secs(20)) {
            Some(st) => st,
            None => {
                self.kill_9();
                panic!(
                    "server did not exit within 20 s of SIG{sig}\n{}",
                    self.all_logs()
                );
            }
        }
    }

    /// Start again on the same config file and data directory (the previous process must
    /// have exited: call `terminate` or `kill_9` first).
    pub fn restart(&mut self) {
        if let Err(f) = self.try_restart() {
            panic!(
                "server did not restart: status {:?}\n{}\n--- stdout\n{}\n--- stderr\n{}",
                f.status,
                self.all_logs(),
                f.stdout,
                f.stderr
            );
        }
    }

    pub fn try_restart(&mut self) -> Result<(), StartFailure> {
        assert!(self.running.is_none(), "restart: server still running");
        let running = spawn(
            &self.config_path,
            self.dir.path(),
            self.via,
            &self.extra_env,
        )?;
        self.addr = running.addr;
        self.history.push(running.logs.clone());
        self.running = Some(running);
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        match self.running.as_mut() {
            Some(r) => matches!(r.child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

fn join_readers(readers: &mut Vec<JoinHandle<()>>) {
    for h in readers.drain(..) {
        let _ = h.join();
    }
}

/// `Server listening on <addr>` → addr.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    const MARK: &str = "Server listening on ";
    let at = line.find(MARK)? + MARK.len();
    let rest = &line[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Run a command with the test's environment scrubbed of anything that could change the
/// server's behaviour (`RSTMDB_*`, `RUST_LOG`).
pub fn server_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("RSTMDB_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

fn spawn(
    config_path: &Path,
    cwd: &Path,
    via: ConfigVia,
    extra_env: &[(String, String)],
) -> Result<Running, StartFailure> {
    let mut cmd = server_command();
    match via {
        ConfigVia::Flag => {
            cmd.arg("--config").arg(config_path);
        }
        ConfigVia::Env => {
            cmd.env("RSTMDB_CONFIG", config_path);
        }
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn rstmdb");
    let logs = Logs::default();
    let (tx, rx) = mpsc::channel::<SocketAddr>();

    let out = child.stdout.take().expect("stdout");
    let out_log = logs.stdout.clone();
    let h_out = std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut line = Vec::new();
        let mut sent = false;
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).to_string();
                    if let Ok(mut l) = out_log.lock() {
                        l.push_str(&text);
                    }
                    if !sent && let Some(a) = parse_listening(&text) {
                        sent = true;
                        let _ = tx.send(a);
                    }
                }
            }
        }
    });
    let err = child.stderr.take().expect("stderr");
    let err_log = logs.stderr.clone();
    let h_err = std::thread::spawn(move || {
        let mut r = BufReader::new(err);
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Ok(mut l) = err_log.lock() {
                        l.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            }
        }
    });
    let mut readers = vec![h_out, h_err];

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        match rx.recv_timeout(Duration::from_millis(25)) {
            Ok(addr) => {
                return Ok(Running {
                    child,
                    addr,
                    logs,
                    readers,
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Ok(Some(status)) = child.try_wait() {
                    join_readers(&mut readers);
                    return Err(StartFailure {
                        status: Some(status),
                        stdout: logs.stdout(),
                        stderr: logs.stderr(),
                    });
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    join_readers(&mut readers);
                    return Err(StartFailure {
                        status: None,
                        stdout: logs.stdout(),
                        stderr: logs.stderr(),
                    });
                }
            }
        }
    }
}

/// Run the binary with arguments to completion (for `--version`, `--help`, config errors).
/// Returns (status, stdout, stderr); kills it after `timeout`.
pub fn run_to_exit(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &Path,
    timeout: Duration,
) -> (Option<ExitStatus>, String, String) {
    let mut cmd = server_command();
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn rstmdb");
    process::wait_with_timeout(child, timeout)
}

// ---------------------------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------------------------

/// CRC-32C (Castagnoli) of the payload, protocol.md §2.3.
pub fn crc(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

/// A frame whose every header field can be set, for malformed-input tests.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub magic: [u8; 4],
    pub version: u16,
    pub flags: u16,
    pub ext: Vec<u8>,
    pub payload: Vec<u8>,
    /// Declared payload length (default: the real one).
    pub payload_len: Option<u32>,
    /// CRC field (default: the payload's CRC-32C when `CRC_PRESENT`, else 0).
    pub crc: Option<u32>,
}

impl RawFrame {
    pub fn new(payload: impl Into<Vec<u8>>) -> RawFrame {
        RawFrame {
            magic: MAGIC,
            version: 1,
            flags: FLAG_CRC,
            ext: Vec::new(),
            payload: payload.into(),
            payload_len: None,
            crc: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let plen = self
            .payload_len
            .unwrap_or(u32::try_from(self.payload.len()).expect("payload fits u32"));
        let c = self.crc.unwrap_or(if self.flags & FLAG_CRC != 0 {
            crc(&self.payload)
        } else {
            0
        });
        let mut out = Vec::with_capacity(HEADER_LEN + self.ext.len() + self.payload.len());
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(
            &u16::try_from(self.ext.len())
                .expect("ext fits u16")
                .to_be_bytes(),
        );
        out.extend_from_slice(&plen.to_be_bytes());
        out.extend_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&self.ext);
        out.extend_from_slice(&self.payload);
        out
    }
}

/// A well-formed frame with `CRC_PRESENT`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    RawFrame::new(payload).encode()
}

/// A request envelope (`params: None` leaves the key out).
pub fn request_json(id: &str, op: &str, params: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), json!("request"));
    m.insert("id".into(), json!(id));
    m.insert("op".into(), json!(op));
    if let Some(p) = params {
        m.insert("params".into(), p);
    }
    Value::Object(m)
}

/// How a server message arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    Frame {
        version: u16,
        flags: u16,
        header_len: u16,
    },
    Line,
}

/// One server message.
#[derive(Debug, Clone)]
pub struct Message {
    pub wire: Wire,
    pub value: Value,
}

impl Message {
    pub fn is_frame(&self) -> bool {
        matches!(self.wire, Wire::Frame { .. })
    }
    pub fn is_line(&self) -> bool {
        self.wire == Wire::Line
    }
    pub fn kind(&self) -> &str {
        self.value["type"].as_str().unwrap_or("")
    }
}

#[derive(Debug)]
pub enum ReadError {
    /// Nothing complete arrived in time.
    Timeout,
    /// Orderly EOF (`pending` = bytes of an incomplete message left in the buffer).
    Closed { pending: usize },
    /// Reset or another socket error: the connection is gone too.
    Reset(io::Error),
    /// Bytes that are neither a valid frame nor a JSON line.
    Garbage(String),
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A client's byte stream: plain TCP or TLS over TCP.
#[derive(Debug)]
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// A blocking RCP client for tests. Requests go out as CRC'd binary frames unless a `_line`
/// method is used; incoming frames and JSON lines are both understood (auto-detected).
#[derive(Debug)]
pub struct Client {
    stream: Conn,
    buf: Vec<u8>,
    next_id: u64,
    /// Events that arrived while waiting for a response, oldest first.
    pub events: VecDeque<Value>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        Client {
            stream: Conn::Plain(stream),
            buf: Vec::new(),
            next_id: 0,
            events: VecDeque::new(),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// A TLS connection; the handshake completes (or fails) before this returns.
    pub fn try_connect_tls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<Client> {
        let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        let _ = sock.set_nodelay(true);
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(io::Error::other)?;
        let mut conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        // TLS 1.3: the server checks the client certificate after the client's handshake
        // ends, so a refusal arrives as an alert on the first read. A PING round trip makes
        // every refusal show up here.
        let mut c = Client {
            stream: Conn::Tls(Box::new(rustls::StreamOwned::new(conn, sock))),
            buf: Vec::new(),
            next_id: 0,
            events: VecDeque::new(),
        };
        let id = c.fresh_id();
        let req = request_json(&id, "PING", None);
        c.try_send_raw(&frame(&serde_json::to_vec(&req).map_err(io::Error::other)?))?;
        match c.try_read_message(Duration::from_secs(10)) {
            Ok(_) => Ok(c),
            Err(ReadError::Reset(e)) => Err(e),
            Err(other) => Err(io::Error::other(format!("{other:?}"))),
        }
    }

    pub fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("t{}", self.next_id)
    }

    // ----- sending

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to server");
    }

    /// Like `send_raw` but tolerates the server having closed already.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// A payload in a frame with `CRC_PRESENT`.
    pub fn send_frame(&mut self, payload: &[u8]) {
        self.send_raw(&frame(payload));
    }

    /// A payload in a frame without `CRC_PRESENT` (crc field 0).
    pub fn send_frame_no_crc(&mut self, payload: &[u8]) {
        let mut f = RawFrame::new(payload);
        f.flags = 0;
        self.send_raw(&f.encode());
    }

    pub fn send_raw_frame(&mut self, f: &RawFrame) {
        self.send_raw(&f.encode());
    }

    pub fn send_json_frame(&mut self, v: &Value) {
        self.send_frame(v.to_string().as_bytes());
    }

    /// One JSON line (compact JSON + `\n`).
    pub fn send_json_line(&mut self, v: &Value) {
        let mut s = v.to_string();
        s.push('\n');
        self.send_raw(s.as_bytes());
    }

    /// Send a request frame with an explicit id; `params: None` omits the key.
    pub fn send_request(&mut self, id: &str, op: &str, params: Option<Value>) {
        self.send_json_frame(&request_json(id, op, params));
    }

    pub fn send_request_line(&mut self, id: &str, op: &str, params: Option<Value>) {
        self.send_json_line(&request_json(id, op, params));
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.tcp().shutdown(Shutdown::Write);
    }

    // ----- receiving

    fn fill(&mut self, deadline: Instant) -> Result<(), ReadError> {
        let now = Instant::now();
        if now >= deadline {
            return Err(ReadError::Timeout);
        }
        let wait = (deadline - now).max(Duration::from_millis(1));
        self.stream
            .tcp()
            .set_read_timeout(Some(wait))
            .map_err(ReadError::Reset)?;
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(0) => Err(ReadError::Closed {
                pending: self.buf.len(),
            }),
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ReadError::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(ReadError::Reset(e)),
        }
    }

    /// Try to cut one complete message off the front of the buffer.
    fn parse_buffered(&mut self) -> Result<Option<Message>, ReadError> {
        let Some(&first) = self.buf.first() else {
            return Ok(None);
        };
        match first {
            b'R' => {
                if self.buf.len() < HEADER_LEN {
                    return Ok(None);
                }
                let h = &self.buf[..HEADER_LEN];
                if h[..4] != MAGIC {
                    return Err(ReadError::Garbage(format!("bad magic {:?}", &h[..4])));
                }
                let version = u16::from_be_bytes([h[4], h[5]]);
                let flags = u16::from_be_bytes([h[6], h[7]]);
                let header_len = u16::from_be_bytes([h[8], h[9]]);
                let plen = u32::from_be_bytes([h[10], h[11], h[12], h[13]]) as usize;
                let c = u32::from_be_bytes([h[14], h[15], h[16], h[17]]);
                let total = HEADER_LEN + header_len as usize + plen;
                if self.buf.len() < total {
                    return Ok(None);
                }
                let payload = self.buf[HEADER_LEN + header_len as usize..total].to_vec();
                self.buf.drain(..total);
                if flags & FLAG_CRC != 0 && crc(&payload) != c {
                    return Err(ReadError::Garbage(format!(
                        "server frame CRC mismatch: header {c:08x}, payload {:08x}",
                        crc(&payload)
                    )));
                }
                let value: Value = serde_json::from_slice(&payload).map_err(|e| {
                    ReadError::Garbage(format!(
                        "server frame payload is not JSON ({e}): {}",
                        String::from_utf8_lossy(&payload)
                    ))
                })?;
                Ok(Some(Message {
                    wire: Wire::Frame {
                        version,
                        flags,
                        header_len,
                    },
                    value,
                }))
            }
            b'{' => {
                let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                    return Ok(None);
                };
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let value: Value = serde_json::from_slice(&line[..nl]).map_err(|e| {
                    ReadError::Garbage(format!(
                        "server JSON line is not JSON ({e}): {}",
                        String::from_utf8_lossy(&line)
                    ))
                })?;
                Ok(Some(Message {
                    wire: Wire::Line,
                    value,
                }))
            }
            other => Err(ReadError::Garbage(format!(
                "server sent a message starting with byte {other:#04x}: {:?}",
                String::from_utf8_lossy(&self.buf[..self.buf.len().min(64)])
            ))),
        }
    }

    /// The next server message (frame or JSON line), or why there is none.
    pub fn try_read_message(&mut self, timeout: Duration) -> Result<Message, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.parse_buffered()? {
                return Ok(m);
            }
            self.fill(deadline)?;
        }
    }

    /// The next server message; panics on timeout/close. Frames are checked against what
    /// every server frame must look like (protocol.md §2.2: version 1, flags 0x0001,
    /// header_len 0, CRC filled in).
    pub fn read_message(&mut self, timeout: Duration) -> Message {
        match self.try_read_message(timeout) {
            Ok(m) => {
                if let Wire::Frame {
                    version,
                    flags,
                    header_len,
                } = m.wire
                {
                    assert_eq!(version, 1, "server frame version: {}", m.value);
                    assert_eq!(flags, FLAG_CRC, "server frame flags: {}", m.value);
                    assert_eq!(header_len, 0, "server frame header_len: {}", m.value);
                }
                m
            }
            Err(e) => panic!("no server message within {timeout:?}: {e:?}"),
        }
    }

    /// Read until the response with `id`; events met on the way are queued in `events`.
    /// Any other response first is a failure (responses come back in request order).
    pub fn read_response(&mut self, id: &str) -> Value {
        loop {
            let m = self.read_message(READ_TIMEOUT);
            match m.kind() {
                "event" => self.events.push_back(m.value),
                "response" => {
                    assert_eq!(
                        m.value["id"],
                        json!(id),
                        "expected the response to {id} next, got {}",
                        m.value
                    );
                    return m.value;
                }
                other => panic!("unexpected message type {other:?}: {}", m.value),
            }
        }
    }

    /// Send `op` with `params` as a frame and return the whole response envelope.
    pub fn request(&mut self, op: &str, params: Value) -> Value {
        let id = self.fresh_id();
        self.send_request(&id, op, Some(params));
        self.read_response(&id)
    }

    /// Same, sending the request as a JSON line.
    pub fn request_line(&mut self, op: &str, params: Value) -> Value {
        let id = self.fresh_id();
        self.send_request_line(&id, op, Some(params));
        self.read_response(&id)
    }

    /// `request`, asserting `status: ok`; returns `result`.
    pub fn ok(&mut self, op: &str, params: Value) -> Value {
        let r = self.request(op, params.clone());
        assert_eq!(r["status"], "ok", "{op} {params} should succeed, got {r}");
        r["result"].clone()
    }

    /// `request`, asserting `status: error`; returns `error`.
    pub fn err(&mut self, op: &str, params: Value) -> Value {
        let r = self.request(op, params.clone());
        assert_eq!(r["status"], "error", "{op} {params} should fail, got {r}");
        r["error"].clone()
    }

    /// `request`, asserting an error with `code`; returns `error`.
    pub fn err_code(&mut self, op: &str, params: Value, code: &str) -> Value {
        let e = self.err(op, params.clone());
        assert_eq!(e["code"], code, "{op} {params}: wrong error {e}");
        e
    }

    /// The next event (queued or read); a response instead is a failure.
    pub fn next_event(&mut self, timeout: Duration) -> Value {
        match self.try_next_event(timeout) {
            Some(e) => e,
            None => panic!("no event within {timeout:?}"),
        }
    }

    /// The next event, or None after `timeout` of silence.
    pub fn try_next_event(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        match self.try_read_message(timeout) {
            Ok(m) => {
                assert_eq!(m.kind(), "event", "expected an event, got {}", m.value);
                Some(m.value)
            }
            Err(ReadError::Timeout) => None,
            Err(e) => panic!("connection failed while waiting for an event: {e:?}"),
        }
    }

    /// Expect the server to close the connection within `timeout`; returns whatever
    /// complete messages it sent first. Panics if the connection is still open.
    pub fn expect_closed(&mut self, timeout: Duration) -> Vec<Message> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_read_message(left) {
                Ok(m) => got.push(m),
                Err(ReadError::Closed { .. }) | Err(ReadError::Reset(_)) => return got,
                Err(ReadError::Timeout) => panic!(
                    "connection still open after {timeout:?}; received before: {:?}",
                    got.iter().map(|m| m.value.to_string()).collect::<Vec<_>>()
                ),
                Err(ReadError::Garbage(g)) => panic!("garbage from server before close: {g}"),
            }
        }
    }

    /// True if the connection is still usable: a PING gets its pong.
    pub fn ping(&mut self) {
        let r = self.ok("PING", json!({}));
        assert_eq!(r["pong"], true, "PING result {r}");
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// The order machine of protocol.md §7, plus a multi-source CANCEL.
pub fn order_definition() -> Value {
    json!({
        "states": ["pending", "paid", "shipped", "cancelled"],
        "initial": "pending",
        "transitions": [
            {"from": "pending", "event": "PAY", "to": "paid"},
            {"from": "paid", "event": "SHIP", "to": "shipped", "guard": "ctx.amount > 0"},
            {"from": ["pending", "paid"], "event": "CANCEL", "to": "cancelled"}
        ]
    })
}

/// One state with a self-transition: every `inc` is a new WAL record and a watch event.
pub fn counter_definition() -> Value {
    json!({
        "states": ["on"],
        "initial": "on",
        "transitions": [{"from": "on", "event": "inc", "to": "on"}]
    })
}

pub fn put_machine(c: &mut Client, name: &str, version: u64, def: Value) -> Value {
    c.ok(
        "PUT_MACHINE",
        json!({"machine": name, "version": version, "definition": def}),
    )
}

pub fn put_order(c: &mut Client, name: &str) -> Value {
    put_machine(c, name, 1, order_definition())
}

pub fn put_counter(c: &mut Client, name: &str) -> Value {
    put_machine(c, name, 1, counter_definition())
}

pub fn create(c: &mut Client, machine: &str, id: &str, ctx: Value) -> Value {
    c.ok(
        "CREATE_INSTANCE",
        json!({"instance_id": id, "machine": machine, "version": 1, "initial_ctx": ctx}),
    )
}

pub fn apply(c: &mut Client, id: &str, event: &str, payload: Value) -> Value {
    c.ok(
        "APPLY_EVENT",
        json!({"instance_id": id, "event": event, "payload": payload}),
    )
}

pub fn u64_of(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a u64, got {v}"))
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+00:00)`, RFC 3339 in UTC.
pub fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let shape = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !shape {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &r[n..];
    }
    matches!(rest, "Z" | "z" | "+00:00")
}

/// A 64-character lowercase hex string (SHA-256).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Poll `f` every 20 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Seconds since the Unix epoch of an RFC 3339 UTC timestamp (fraction ignored).
pub fn rfc3339_to_unix(s: &str) -> Option<i64> {
    if !is_rfc3339_utc(s) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Fallible client calls, for tests where the server may die mid-request (crash loops)
// ---------------------------------------------------------------------------------------------

impl Client {
    /// `connect` that reports failure instead of panicking.
    pub fn try_connect(addr: SocketAddr, timeout: Duration) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        let _ = stream.set_nodelay(true);
        Ok(Client {
            stream: Conn::Plain(stream),
            buf: Vec::new(),
            next_id: 0,
            events: VecDeque::new(),
        })
    }

    /// Send `op` as a frame and wait up to `timeout` for its response envelope; events met on
    /// the way are queued. Any failure (write error, close, timeout, garbage) is returned, so
    /// the caller can treat the request as in doubt.
    pub fn try_request(
        &mut self,
        op: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, ReadError> {
        let id = self.fresh_id();
        let bytes = frame(request_json(&id, op, Some(params)).to_string().as_bytes());
        self.try_send_raw(&bytes).map_err(ReadError::Reset)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.try_read_message(left)?;
            match m.kind() {
                "event" => self.events.push_back(m.value),
                "response" if m.value["id"] == json!(id) => return Ok(m.value),
                _ => {
                    return Err(ReadError::Garbage(format!(
                        "expected the response to {id}, got {}",
                        m.value
                    )));
                }
            }
        }
    }
}
