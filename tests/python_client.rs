//! Cross-check with the published Python client: `rstmdb==0.2.1` from PyPI, installed in a
//! venv under `target/py-venv`, runs `tests/python/session.py` against a real server.
//! If the client cannot be installed (no python3, no PyPI) the test FAILS: a silently
//! skipped compatibility check is worse than a red one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/pki.rs"]
mod pki;
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

const CLIENT: &str = "rstmdb==0.2.1";

/// Run to completion with a deadline; returns (success, combined output).
fn run(cmd: &mut Command, timeout: Duration) -> (bool, String) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let (status, out, err) = support::process::wait_with_timeout(child, timeout);
    let text = format!("--- stdout\n{out}\n--- stderr\n{err}");
    match status {
        Some(st) => (st.success(), format!("exit {st}\n{text}")),
        None => (false, format!("timed out after {timeout:?}\n{text}")),
    }
}

fn venv_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp; the venv lives beside it: <target>/py-venv.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("py-venv")
}

/// The venv's python with the client installed. Tests in this file run on parallel threads;
/// the first one creates the venv and installs the client, the others wait for it (two
/// `python3 -m venv` on one directory fail with "File exists").
fn python_with_client() -> PathBuf {
    static READY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    READY.get_or_init(install_client).clone()
}

fn install_client() -> PathBuf {
    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let (ok, out) = run(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            Duration::from_secs(120),
        );
        assert!(
            ok,
            "could not create the Python venv at {} (python3 -m venv): {out}",
            venv.display()
        );
    }
    let (ok, out) = run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                CLIENT,
            ])
            .env("PIP_NO_INPUT", "1"),
        Duration::from_secs(300),
    );
    assert!(
        ok,
        "pip could not install {CLIENT} into {} — is PyPI reachable? This test needs the \
         published client and fails rather than skip.\n{out}",
        venv.display()
    );
    python
}

#[test]
fn published_python_client_session() {
    let python = python_with_client();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/session.py");
    assert!(script.exists(), "{} missing", script.display());
    let s = Server::start();
    let addr = s.addr();
    let (ok, out) = run(
        Command::new(&python)
            .arg(&script)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        Duration::from_secs(120),
    );
    assert!(
        ok,
        "Python client session failed: {out}\n--- server log\n{}",
        s.all_logs()
    );
    assert!(out.contains("python client session: OK"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// Token, TLS and mTLS with the published client (issue 5)
// ---------------------------------------------------------------------------------------------

fn sha_hex(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A CA, a server certificate for 127.0.0.1/localhost and a clientAuth certificate, as PEM
/// files in `pki`'s directory: (ca, server cert, server key, client cert, client key).
fn make_pki(pki: &pki::Pki) -> [PathBuf; 5] {
    let (cert, key, ca) = pki.server_files();
    let client = pki::leaf(&pki.ca, "py-client", true, false);
    let (ccert, ckey) = (pki.path("client.pem"), pki.path("client-key.pem"));
    pki::write_600(&ccert, &client.cert_pem);
    pki::write_600(&ckey, &client.key_pem);
    [ca, cert, key, ccert, ckey]
}

fn run_secure(python: &Path, s: &Server, mode: &str, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/secure.py");
    let addr = s.addr();
    let (ok, out) = run(
        Command::new(python)
            .arg(&script)
            .arg("127.0.0.1")
            .arg(addr.port().to_string())
            .arg(mode)
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        Duration::from_secs(120),
    );
    assert!(
        ok,
        "Python client ({mode}) failed: {out}\n--- server log\n{}",
        s.all_logs()
    );
    assert!(out.contains(&format!("python client {mode}: OK")), "{out}");
}

#[test]
fn published_python_client_with_token_tls_and_mtls() {
    let python = python_with_client();
    let pki = pki::Pki::new();
    let [ca, cert, key, ccert, ckey] = make_pki(&pki);
    let p = |x: &PathBuf| x.to_string_lossy().into_owned();
    let token = "py-secret-token-4242";

    let s = Server::with_config(serde_json::json!({
        "auth": {"required": true, "token_hashes": [sha_hex(token)]}
    }));
    run_secure(&python, &s, "token", &["--token", token]);
    assert!(
        !s.all_logs().contains(token),
        "the token leaked into the log"
    );
    drop(s);

    let s = Server::with_config(serde_json::json!({
        "tls": {"enabled": true, "cert_path": p(&cert), "key_path": p(&key)}
    }));
    run_secure(&python, &s, "tls", &["--ca", &p(&ca)]);
    drop(s);

    let s = Server::with_config(serde_json::json!({
        "tls": {"enabled": true, "cert_path": p(&cert), "key_path": p(&key),
                "require_client_cert": true, "client_ca_path": p(&ca)},
        "auth": {"required": true, "token_hashes": [sha_hex(token)]}
    }));
    run_secure(
        &python,
        &s,
        "mtls",
        &[
            "--token",
            token,
            "--ca",
            &p(&ca),
            "--cert",
            &p(&ccert),
            "--key",
            &p(&ckey),
        ],
    );
}
