//! Starts our real `rstmdb` binary for the reference clients' tests: a temporary data
//! directory, a loopback port picked by the server, optional token and TLS (certificates
//! from our own `rstmdb-cli gen-certs`).
//!
//! The binaries come from `RSTMDB_BIN` / `RSTMDB_CLI_BIN`, else from the main workspace's
//! `target/debug` (`cargo build -p rstmdb-server -p rstmdb-cli` first; `.ci/run` does).

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The token the token tests use, and its SHA-256 for the server's config.
pub const TOKEN: &str = "cross-check-token";

/// The order machine every test uses.
pub fn order_definition() -> serde_json::Value {
    serde_json::json!({
        "states": ["pending", "paid", "shipped", "cancelled"],
        "initial": "pending",
        "transitions": [
            {"from": "pending", "event": "PAY", "to": "paid"},
            {"from": "paid", "event": "SHIP", "to": "shipped", "guard": "ctx.amount > 0"},
            {"from": ["pending", "paid"], "event": "CANCEL", "to": "cancelled"}
        ]
    })
}

fn workspace_binary(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/debug")
        .join(name);
    assert!(
        p.exists(),
        "{} not found: build it first (cargo build -p rstmdb-server -p rstmdb-cli) or set {env}",
        p.display()
    );
    p
}

/// What the server is started with.
#[derive(Default)]
pub struct Options {
    /// `auth.required` with [`TOKEN`]'s hash.
    pub token: bool,
    /// TLS with a dev CA made by `rstmdb-cli gen-certs`.
    pub tls: bool,
}

/// Our server, stopped (SIGKILL) and its directory removed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// `ca.pem` when started with TLS.
    pub ca: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start(opts: Options) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("rstmdb-refclients-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let mut yaml = format!(
            "network:\n  bind_addr: \"127.0.0.1:0\"\nstorage:\n  data_dir: \"{}\"\n  allow_flush_all: true\n",
            d.join("data").display()
        );
        if opts.token {
            let hash: String = Sha256::digest(TOKEN.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            yaml.push_str(&format!(
                "auth:\n  required: true\n  token_hashes: [\"{hash}\"]\n"
            ));
        }
        let mut ca = None;
        if opts.tls {
            let certs = d.join("certs");
            let out = Command::new(workspace_binary("RSTMDB_CLI_BIN", "rstmdb-cli"))
                .args(["gen-certs", "--hosts", "127.0.0.1,localhost", "-o"])
                .arg(&certs)
                .output()
                .expect("run rstmdb-cli gen-certs");
            assert!(out.status.success(), "gen-certs failed: {out:?}");
            yaml.push_str(&format!(
                "tls:\n  enabled: true\n  cert_path: \"{}\"\n  key_path: \"{}\"\n",
                certs.join("server.pem").display(),
                certs.join("server-key.pem").display()
            ));
            ca = Some(certs.join("ca.pem"));
        }
        let config = d.join("config.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let mut child = Command::new(workspace_binary("RSTMDB_BIN", "rstmdb"))
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rstmdb");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("Server listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(addr.trim_end_matches('"').to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the server logs `Server listening on` within 20 s")
            .parse()
            .expect("a socket address in the log line");
        Server {
            child,
            addr,
            ca,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
