//! rstmdb-cli over TLS and mTLS (operations.md §3.5), with certificates from
//! `rstmdb-cli gen-certs` (X.509 v3: CA, server with localhost/127.0.0.1 SANs, clientAuth
//! client).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "cli_support/mod.rs"]
mod cli_support;

use cli_support::*;
use serde_json::json;

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempdir();
        let out = dir.path().join("certs");
        let r = run_cli(
            dir.path(),
            &["gen-certs", "--out-dir", out.to_str().unwrap()],
            &[],
            None,
        );
        assert!(r.ok().contains("Wrote a development PKI"), "{}", r.stdout);
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir
            .path()
            .join("certs")
            .join(name)
            .to_string_lossy()
            .into_owned()
    }
}

fn tls_server(pki: &Pki, mtls: bool) -> Server {
    let mut tls = json!({
        "enabled": true,
        "cert_path": pki.path("server.pem"),
        "key_path": pki.path("server-key.pem"),
    });
    if mtls {
        tls["require_client_cert"] = json!(true);
        tls["client_ca_path"] = json!(pki.path("ca.pem"));
    }
    Server::with_config(json!({ "tls": tls }))
}

#[test]
fn gen_certs_writes_six_files_and_refuses_to_overwrite() {
    let pki = Pki::new();
    for f in [
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
        "client.pem",
        "client-key.pem",
    ] {
        let text = std::fs::read_to_string(pki.path(f)).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{f}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.path("server-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
    }
    let again = run_cli(
        pki.dir.path(),
        &["gen-certs", "--out-dir", &pki.path("")],
        &[],
        None,
    );
    assert!(again.fails_with(1).contains("already exists"));
    run_cli(
        pki.dir.path(),
        &["gen-certs", "--out-dir", &pki.path(""), "--force"],
        &[],
        None,
    )
    .ok();
}

#[test]
fn tls_with_a_ca_bundle() {
    let pki = Pki::new();
    let s = tls_server(&pki, false);
    let c = Cli::new(&s);
    let ca = pki.path("ca.pem");
    assert_eq!(c.run(&["--ca-cert", &ca, "ping"]).ok(), "PONG\n");
    assert_eq!(c.run(&["--tls", "--ca-cert", &ca, "ping"]).ok(), "PONG\n");
    assert_eq!(
        c.run_env(&["ping"], &[("RSTMDB_CA_CERT", &ca)]).ok(),
        "PONG\n"
    );
    // Host names in --server: the certificate names localhost too.
    let by_name = run_cli(
        c.home(),
        &[
            "-s",
            &format!("localhost:{}", s.addr().port()),
            "--ca-cert",
            &ca,
            "ping",
        ],
        &[],
        None,
    );
    assert_eq!(by_name.ok(), "PONG\n");
    assert_eq!(
        c.run(&["--ca-cert", &ca, "--server-name", "localhost", "ping"])
            .ok(),
        "PONG\n"
    );
}

#[test]
fn tls_failures_exit_1() {
    let pki = Pki::new();
    let s = tls_server(&pki, false);
    let c = Cli::new(&s);
    // The built-in roots do not know the development CA.
    let unknown = c.run(&["--tls", "ping"]);
    assert!(
        unknown.fails_with(1).starts_with("Connection failed: "),
        "{}",
        unknown.stderr
    );
    assert!(
        unknown.stderr.contains("UnknownIssuer"),
        "{}",
        unknown.stderr
    );
    c.run_env(&["ping"], &[("RSTMDB_TLS", "true")])
        .fails_with(1);
    // A name the certificate does not carry.
    let ca = pki.path("ca.pem");
    c.run(&["--ca-cert", &ca, "--server-name", "db.example.com", "ping"])
        .fails_with(1);
    // Plain TCP against a TLS port.
    c.run(&["ping"]).fails_with(1);
    let missing = c.run(&["--ca-cert", "/nonexistent/ca.pem", "ping"]);
    assert!(
        missing.fails_with(1).contains("/nonexistent/ca.pem"),
        "{}",
        missing.stderr
    );
}

#[test]
fn insecure_skips_verification() {
    let pki = Pki::new();
    let s = tls_server(&pki, false);
    let c = Cli::new(&s);
    let r = c.run(&["-k", "ping"]);
    assert_eq!(r.ok(), "PONG\n");
    assert!(
        r.stderr.contains("insecure TLS"),
        "warns about --insecure: {}",
        r.stderr
    );
    assert_eq!(c.run(&["--insecure", "ping"]).ok(), "PONG\n");
}

#[test]
fn mutual_tls() {
    let pki = Pki::new();
    let s = tls_server(&pki, true);
    let c = Cli::new(&s);
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("client.pem"), pki.path("client-key.pem"));
    let ok = c.run(&[
        "--ca-cert",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "ping",
    ]);
    assert_eq!(ok.ok(), "PONG\n");
    assert_eq!(
        c.run_env(
            &["ping"],
            &[
                ("RSTMDB_CA_CERT", &ca),
                ("RSTMDB_CLIENT_CERT", &cert),
                ("RSTMDB_CLIENT_KEY", &key)
            ]
        )
        .ok(),
        "PONG\n"
    );
    // Without a client certificate the server refuses the session.
    c.run(&["--ca-cert", &ca, "ping"]).fails_with(1);
    // A server certificate is not a client certificate (no clientAuth usage).
    c.run(&[
        "--ca-cert",
        &ca,
        "--client-cert",
        &pki.path("server.pem"),
        "--client-key",
        &pki.path("server-key.pem"),
        "ping",
    ])
    .fails_with(1);
    // Certificate and key come in pairs.
    let half = c.run(&["--ca-cert", &ca, "--client-cert", &cert, "ping"]);
    assert_eq!(
        half.fails_with(1),
        "Error: --client-cert and --client-key must be used together\n"
    );
    // --client-key alone does not turn TLS on (reference behaviour): plain TCP fails here.
    c.run(&["--client-key", &key, "ping"]).fails_with(1);
}

#[test]
fn watch_over_mtls() {
    let pki = Pki::new();
    let s = tls_server(&pki, true);
    let c = Cli::new(&s);
    let tls: Vec<String> = vec![
        "--ca-cert".into(),
        pki.path("ca.pem"),
        "--client-cert".into(),
        pki.path("client.pem"),
        "--client-key".into(),
        pki.path("client-key.pem"),
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v = tls.clone();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&str]| {
        let args = with(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        c.run(&refs)
    };
    run(&["put-machine", "-n", "order", "-v", "1", ORDER]).ok();
    run(&["create-instance", "-m", "order", "-V", "1", "-i", "o1"]).ok();
    let args = with(&["watch-all"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let w = c.spawn(&refs);
    w.wait_stderr("Press Ctrl+C");
    run(&["apply-event", "-i", "o1", "-e", "PAY"]).ok();
    let e: serde_json::Value = serde_json::from_str(&w.next_line()).unwrap();
    assert_eq!(e["to_state"], "paid");
}
