//! Security surface against the real `rstmdb` binary: roles and machine globs, TLS, mTLS,
//! certificate identities, SIGHUP certificate reload, the audit log (issue 5). Certificates
//! are generated here with rcgen; no key is committed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/pki.rs"]
mod pki;
mod support;

use pki::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use support::*;

fn sha(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Roles and machine globs
// ---------------------------------------------------------------------------------------------

const ADMIN: &str = "admin-token-5f1c";
const WRITER: &str = "writer-token-9a2e";
const READER: &str = "reader-token-77b0";
const ORDERS: &str = "orders-token-c3d4";
const ORDERS_ADMIN: &str = "orders-admin-token-e5f6";

/// A server whose secrets file names four principals.
fn roles_server(extra: Value) -> Server {
    let dir = tempdir();
    let secrets = dir.path().join("secrets");
    write_600(
        &secrets,
        &format!(
            "# name role[,globs]\n{}\n{} ci-writer write\n{} dashboard read\n{} orders-svc write,order*\n{} orders-admin admin,order*\n",
            sha(ADMIN),
            sha(WRITER),
            sha(READER),
            sha(ORDERS),
            sha(ORDERS_ADMIN)
        ),
    );
    let mut cfg = base_config(&dir.path().join("data"));
    merge(
        &mut cfg,
        &json!({"auth": {"required": true, "secrets_file": secrets.to_string_lossy()}}),
    );
    merge(&mut cfg, &extra);
    Server::try_start_in(dir, &to_yaml(&cfg), ConfigVia::Flag, &[])
        .unwrap_or_else(|f| panic!("start: {}\n{}", f.stdout, f.stderr))
}

fn login(s: &Server, token: &str) -> Client {
    let mut c = s.connect();
    c.ok("AUTH", json!({"method": "bearer", "token": token}));
    c
}

fn unauthorized(c: &mut Client, op: &str, params: Value) -> String {
    let e = c.err_code(op, params, "UNAUTHORIZED");
    e["message"].as_str().unwrap_or("").to_string()
}

#[test]
fn roles_allow_and_deny_per_op() {
    let s = roles_server(json!({}));
    let mut admin = login(&s, ADMIN);
    put_order(&mut admin, "order");
    put_order(&mut admin, "payment");
    create(&mut admin, "order", "o-1", json!({}));

    let mut reader = login(&s, READER);
    reader.ok("GET_INSTANCE", json!({"instance_id": "o-1"}));
    reader.ok("LIST_MACHINES", json!({}));
    reader.ok("WAL_STATS", json!({}));
    reader.ok("INFO", json!({}));
    reader.ok("WATCH_ALL", json!({}));
    let m = unauthorized(
        &mut reader,
        "CREATE_INSTANCE",
        json!({"machine": "order", "version": 1}),
    );
    assert!(m.contains("write role") && m.contains("dashboard"), "{m}");
    unauthorized(
        &mut reader,
        "APPLY_EVENT",
        json!({"instance_id": "o-1", "event": "PAY"}),
    );
    unauthorized(
        &mut reader,
        "DELETE_INSTANCE",
        json!({"instance_id": "o-1"}),
    );
    unauthorized(
        &mut reader,
        "SNAPSHOT_INSTANCE",
        json!({"instance_id": "o-1"}),
    );

    let mut writer = login(&s, WRITER);
    writer.ok(
        "CREATE_INSTANCE",
        json!({"machine": "payment", "version": 1, "instance_id": "p-1"}),
    );
    writer.ok("APPLY_EVENT", json!({"instance_id": "o-1", "event": "PAY"}));
    let m = unauthorized(
        &mut writer,
        "PUT_MACHINE",
        json!({"machine": "x", "version": 1, "definition": order_definition()}),
    );
    assert!(m.contains("admin role"), "{m}");
    unauthorized(&mut writer, "COMPACT", json!({}));
    unauthorized(&mut writer, "FLUSH_ALL", json!({}));
    admin.ok("COMPACT", json!({}));
}

#[test]
fn idempotency_records_of_a_deleted_instance_never_replay_on_its_successor() {
    // Issue 18 finding 10: records were keyed by instance id + key only, so after a delete and
    // a re-create under the same id (allowed by default), an earlier life's record replayed.
    let s = roles_server(json!({}));
    let mut admin = login(&s, ADMIN);
    put_order(&mut admin, "order");
    put_order(&mut admin, "payment");
    create(
        &mut admin,
        "payment",
        "shared-id",
        json!({"card": "secret-card-4242"}),
    );
    let pay = json!({"instance_id": "shared-id", "event": "PAY", "idempotency_key": "k-pay"});
    admin.ok("APPLY_EVENT", pay.clone());
    admin.ok(
        "DELETE_INSTANCE",
        json!({"instance_id": "shared-id", "idempotency_key": "k-del"}),
    );

    // A principal limited to order* takes the id over and replays the payment's key.
    let mut svc = login(&s, ORDERS);
    create(&mut svc, "order", "shared-id", json!({}));
    let r = svc.request("APPLY_EVENT", pay);
    assert!(
        !r.to_string().contains("secret-card-4242"),
        "another machine's context leaked through an idempotency key: {r}"
    );
    assert_eq!(
        r["result"]["applied"], true,
        "the event ran on the new life: {r}"
    );
    assert_eq!(r["result"]["ctx"], json!({}), "{r}");
    // A DELETE key of the earlier life must not answer "deleted" without deleting.
    svc.ok(
        "DELETE_INSTANCE",
        json!({"instance_id": "shared-id", "idempotency_key": "k-del"}),
    );
    svc.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "shared-id"}),
        "INSTANCE_NOT_FOUND",
    );
}

#[test]
fn a_machine_restricted_principal_cannot_checkpoint_or_compact() {
    // Issue 18 finding 3: SNAPSHOT_INSTANCE ran a global checkpoint (trimming the WAL others
    // read) before it even looked the instance up; COMPACT was open to restricted admins.
    let s = roles_server(json!({"compaction": {"enabled": false}}));
    let mut admin = login(&s, ADMIN);
    put_order(&mut admin, "order");
    create(&mut admin, "order", "o-1", json!({}));
    let checkpoint = |c: &mut Client| c.ok("WAL_STATS", json!({}))["checkpoint_offset"].clone();
    let before = checkpoint(&mut admin);

    let mut svc = login(&s, ORDERS);
    let r = svc.ok("SNAPSHOT_INSTANCE", json!({"instance_id": "o-1"}));
    assert_eq!(r["snapshot_id"], format!("snap-{}", r["wal_offset"]), "{r}");
    svc.err_code(
        "SNAPSHOT_INSTANCE",
        json!({"instance_id": "ghost"}),
        "INSTANCE_NOT_FOUND",
    );
    assert_eq!(
        checkpoint(&mut admin),
        before,
        "a snapshot took a checkpoint"
    );

    let mut orders_admin = login(&s, ORDERS_ADMIN);
    let m = unauthorized(&mut orders_admin, "COMPACT", json!({}));
    assert!(m.contains("COMPACT"), "{m}");
    assert_eq!(checkpoint(&mut admin), before);
    admin.ok("COMPACT", json!({}));
    assert_ne!(
        checkpoint(&mut admin),
        before,
        "an unrestricted admin compacts"
    );
}

#[test]
fn an_admin_lists_the_open_connections_and_ends_one() {
    // Issue 18: operators need to see who is connected and to end a connection.
    let s = roles_server(json!({}));
    let mut admin = login(&s, ADMIN);
    let mut svc = login(&s, ORDERS);
    let mut stranger = s.connect();
    stranger.ok("PING", json!({}));
    let list = admin.ok("SESSIONS", json!({}));
    let sessions = list["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 3, "{list}");
    let by_principal = |name: Value| {
        sessions
            .iter()
            .find(|x| x["principal"] == name)
            .unwrap_or_else(|| panic!("no session of {name} in {list}"))
            .clone()
    };
    let svc_session = by_principal(json!("orders-svc"));
    by_principal(Value::Null); // not authenticated yet
    by_principal(json!("secrets-line-2")); // the bare admin hash
    assert!(
        svc_session["client_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(
        svc_session["since"].as_str().unwrap().ends_with('Z'),
        "{svc_session}"
    );
    assert_eq!(svc_session["tls"], false);

    // Only an unrestricted admin may look or end.
    unauthorized(&mut login(&s, READER), "SESSIONS", json!({}));
    let m = unauthorized(&mut login(&s, ORDERS_ADMIN), "SESSIONS", json!({}));
    assert!(m.contains("SESSIONS"), "{m}");
    unauthorized(&mut svc, "END_SESSION", json!({"session_id": 1}));
    // The same for the cluster ops (checked before the server finds it has no cluster).
    for (op, params) in [
        ("CLUSTER_STATUS", json!({})),
        ("CLUSTER_REMOVE_NODE", json!({"node_id": 2})),
        (
            "CLUSTER_ADD_NODE",
            json!({"node_id": 2, "client": "127.0.0.1:1", "raft": "127.0.0.1:2"}),
        ),
    ] {
        unauthorized(&mut login(&s, READER), op, params.clone());
        let m = unauthorized(&mut login(&s, ORDERS_ADMIN), op, params);
        assert!(m.contains("CLUSTER_*"), "{m}");
    }

    let id = svc_session["session_id"].clone();
    let r = admin.ok("END_SESSION", json!({"session_id": id}));
    assert_eq!(r["ended"], true, "{r}");
    assert!(
        svc.try_request("PING", json!({}), Duration::from_secs(5))
            .is_err(),
        "an ended session still answered"
    );
    admin.err_code("END_SESSION", json!({"session_id": id}), "NOT_FOUND");
    let after = admin.ok("SESSIONS", json!({}));
    assert!(
        after["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["session_id"] != id),
        "{after}"
    );
    stranger.ok("PING", json!({}));
}

#[test]
fn machine_globs_limit_what_a_token_touches() {
    let s = roles_server(json!({}));
    let mut admin = login(&s, ADMIN);
    put_order(&mut admin, "order");
    put_order(&mut admin, "orders-eu");
    put_order(&mut admin, "payment");
    create(&mut admin, "payment", "p-1", json!({}));

    let mut svc = login(&s, ORDERS);
    svc.ok(
        "CREATE_INSTANCE",
        json!({"machine": "orders-eu", "version": 1, "instance_id": "o-1"}),
    );
    svc.ok("APPLY_EVENT", json!({"instance_id": "o-1", "event": "PAY"}));
    let m = unauthorized(
        &mut svc,
        "CREATE_INSTANCE",
        json!({"machine": "payment", "version": 1}),
    );
    assert!(m.contains("payment") && m.contains("order*"), "{m}");
    // Instance ops are checked against the instance's machine.
    unauthorized(&mut svc, "GET_INSTANCE", json!({"instance_id": "p-1"}));
    unauthorized(
        &mut svc,
        "APPLY_EVENT",
        json!({"instance_id": "p-1", "event": "PAY"}),
    );
    unauthorized(&mut svc, "WATCH_INSTANCE", json!({"instance_id": "p-1"}));
    let m = unauthorized(
        &mut svc,
        "BATCH",
        json!({"mode": "best_effort", "ops": [
            {"op": "GET_INSTANCE", "params": {"instance_id": "o-1"}},
            {"op": "GET_INSTANCE", "params": {"instance_id": "p-1"}}
        ]}),
    );
    assert!(m.contains("payment"), "{m}");
    // Ops that span every machine need an unrestricted token.
    unauthorized(&mut svc, "WAL_READ", json!({"from_offset": 1}));
    unauthorized(&mut svc, "LIST_INSTANCES", json!({}));
    svc.ok("LIST_INSTANCES", json!({"machine": "order"}));
    let listed = svc.ok("LIST_MACHINES", json!({}));
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["machine"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{listed}");
    assert!(names.iter().all(|n| n.starts_with("order")), "{listed}");

    // WATCH_ALL delivers only events of allowed machines.
    let sub = svc.ok("WATCH_ALL", json!({}));
    assert!(sub["subscription_id"].is_string());
    apply(&mut admin, "p-1", "PAY", json!({}));
    create(&mut admin, "order", "o-2", json!({}));
    apply(&mut admin, "o-2", "PAY", json!({}));
    let ev = svc.next_event(READ_TIMEOUT);
    assert_eq!(ev["instance_id"], "o-2", "{ev}");
    assert!(
        svc.try_next_event(Duration::from_millis(300)).is_none(),
        "no event of payment may arrive"
    );
}

#[test]
fn watches_need_authentication() {
    let s = roles_server(json!({}));
    let mut c = s.connect();
    c.err_code("WATCH_ALL", json!({}), "UNAUTHORIZED");
    c.err_code(
        "WATCH_INSTANCE",
        json!({"instance_id": "x"}),
        "UNAUTHORIZED",
    );
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

fn tls_server(pki: &Pki, mtls: bool, extra: Value) -> Server {
    let (cert, key, ca) = pki.server_files();
    let mut tls = json!({
        "enabled": true,
        "cert_path": cert.to_string_lossy(),
        "key_path": key.to_string_lossy(),
    });
    if mtls {
        tls["require_client_cert"] = json!(true);
        tls["client_ca_path"] = json!(ca.to_string_lossy());
    }
    let mut o = json!({ "tls": tls });
    merge(&mut o, &extra);
    Server::with_config(o)
}

#[test]
fn tls_handshake_and_session() {
    let pki = Pki::new();
    let s = tls_server(&pki, false, json!({}));
    assert!(s.stdout().contains("(TLS)"), "{}", s.stdout());
    let cfg = client_config(&pki.ca.cert.pem(), None);
    let mut c = Client::try_connect_tls(s.addr(), cfg.clone(), "localhost").unwrap();
    c.ok("HELLO", json!({"protocol_version": 1}));
    put_order(&mut c, "order");
    create(&mut c, "order", "o-1", json!({"n": 1}));
    let got = c.ok("GET_INSTANCE", json!({"instance_id": "o-1"}));
    assert_eq!(got["ctx"]["n"], 1);
    // The IP SAN works too.
    Client::try_connect_tls(s.addr(), cfg, "127.0.0.1").unwrap();
}

#[test]
fn plaintext_client_against_tls_port_is_closed_and_server_keeps_serving() {
    let pki = Pki::new();
    let s = tls_server(&pki, false, json!({}));
    // The server answers a plaintext frame with a TLS alert record (content type 0x15) at
    // most, never an RCP message, and closes the connection.
    let mut plain = std::net::TcpStream::connect(s.addr()).unwrap();
    plain.set_read_timeout(Some(CLOSE_TIMEOUT)).unwrap();
    let req = serde_json::to_vec(&request_json("p1", "PING", None)).unwrap();
    std::io::Write::write_all(&mut plain, &frame(&req)).unwrap();
    let mut got = Vec::new();
    let read = std::io::Read::read_to_end(&mut plain, &mut got);
    assert!(read.is_ok(), "the server closes the connection: {read:?}");
    assert!(
        got.is_empty() || got[0] == 0x15,
        "only a TLS alert may come back: {got:?}"
    );
    // A client trusting another CA is refused; the server still serves good clients.
    let other = new_ca("someone else");
    let bad = client_config(&other.cert.pem(), None);
    assert!(Client::try_connect_tls(s.addr(), bad, "localhost").is_err());
    let good = client_config(&pki.ca.cert.pem(), None);
    let mut c = Client::try_connect_tls(s.addr(), good, "localhost").unwrap();
    c.ping();
    let logs = s.stdout();
    assert!(logs.contains("TLS handshake failed"), "{logs}");
}

#[test]
fn mtls_requires_a_valid_client_certificate() {
    let pki = Pki::new();
    let s = tls_server(&pki, true, json!({}));
    let ca = pki.ca.cert.pem();
    // No certificate.
    assert!(Client::try_connect_tls(s.addr(), client_config(&ca, None), "localhost").is_err());
    // Signed by another CA.
    let stranger = new_ca("stranger");
    let wrong = leaf(&stranger, "svc", true, false);
    assert!(
        Client::try_connect_tls(s.addr(), client_config(&ca, Some(&wrong)), "localhost").is_err()
    );
    // Expired.
    let old = leaf(&pki.ca, "svc", true, true);
    assert!(
        Client::try_connect_tls(s.addr(), client_config(&ca, Some(&old)), "localhost").is_err()
    );
    // Good.
    let good = leaf(&pki.ca, "svc", true, false);
    let mut c =
        Client::try_connect_tls(s.addr(), client_config(&ca, Some(&good)), "localhost").unwrap();
    c.ok("HELLO", json!({"protocol_version": 1}));
    c.ok("LIST_MACHINES", json!({}));
}

#[test]
fn certificate_cn_is_an_identity_with_a_role() {
    let pki = Pki::new();
    let s = tls_server(
        &pki,
        true,
        json!({"auth": {
            "required": true,
            "token_hashes": [sha(ADMIN)],
            "identity_from_cert": true,
            "cert_identities": {"reporting": "read", "orders-svc": "write,order*", "ops": "admin"}
        }}),
    );
    let ca = pki.ca.cert.pem();
    // A certificate no entry lists is refused, whatever token it would bring (issue 18
    // finding 2: it used to fall back to AUTH, or to the anonymous admin without auth).
    let stranger = Client::try_connect_tls(
        s.addr(),
        client_config(&ca, Some(&leaf(&pki.ca, "stranger", true, false))),
        "localhost",
    );
    if let Ok(mut c) = stranger {
        assert!(
            c.try_request(
                "AUTH",
                json!({"method": "bearer", "token": ADMIN}),
                Duration::from_secs(5)
            )
            .is_err(),
            "an unlisted certificate got an answer"
        );
    }
    let mut admin = Client::try_connect_tls(
        s.addr(),
        client_config(&ca, Some(&leaf(&pki.ca, "ops", true, false))),
        "localhost",
    )
    .unwrap();
    put_order(&mut admin, "order");
    put_order(&mut admin, "payment");

    let mut reporting = Client::try_connect_tls(
        s.addr(),
        client_config(&ca, Some(&leaf(&pki.ca, "reporting", true, false))),
        "localhost",
    )
    .unwrap();
    reporting.ok("LIST_MACHINES", json!({}));
    unauthorized(
        &mut reporting,
        "CREATE_INSTANCE",
        json!({"machine": "order", "version": 1}),
    );

    let mut svc = Client::try_connect_tls(
        s.addr(),
        client_config(&ca, Some(&leaf(&pki.ca, "orders-svc", true, false))),
        "localhost",
    )
    .unwrap();
    svc.ok("CREATE_INSTANCE", json!({"machine": "order", "version": 1}));
    unauthorized(
        &mut svc,
        "CREATE_INSTANCE",
        json!({"machine": "payment", "version": 1}),
    );
    // The certificate's identity wins: a valid admin token does not widen it.
    let e = svc.err_code(
        "AUTH",
        json!({"method": "bearer", "token": ADMIN}),
        "AUTH_FAILED",
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("client certificate"),
        "{e}"
    );
    unauthorized(
        &mut svc,
        "CREATE_INSTANCE",
        json!({"machine": "payment", "version": 1}),
    );
}

#[test]
fn without_required_auth_a_restricted_certificate_cannot_become_the_anonymous_admin() {
    // Issue 18 finding 2: with auth.required false, a listed, restricted certificate sent AUTH
    // with any token and became the unrestricted anonymous admin; an unlisted one was the
    // anonymous admin from the start.
    let pki = Pki::new();
    let s = tls_server(
        &pki,
        true,
        json!({"auth": {
            "required": false,
            "identity_from_cert": true,
            "cert_identities": {"orders-svc": "write,order*", "ops": "admin"}
        }}),
    );
    let ca = pki.ca.cert.pem();
    let mut admin = Client::try_connect_tls(
        s.addr(),
        client_config(&ca, Some(&leaf(&pki.ca, "ops", true, false))),
        "localhost",
    )
    .unwrap();
    put_order(&mut admin, "payment");
    let mut svc = Client::try_connect_tls(
        s.addr(),
        client_config(&ca, Some(&leaf(&pki.ca, "orders-svc", true, false))),
        "localhost",
    )
    .unwrap();
    svc.err_code(
        "AUTH",
        json!({"method": "bearer", "token": "anything"}),
        "AUTH_FAILED",
    );
    unauthorized(
        &mut svc,
        "CREATE_INSTANCE",
        json!({"machine": "payment", "version": 1}),
    );
    if let Ok(mut c) = Client::try_connect_tls(
        s.addr(),
        client_config(&ca, Some(&leaf(&pki.ca, "stranger", true, false))),
        "localhost",
    ) {
        assert!(
            c.try_request("PUT_MACHINE", json!({}), Duration::from_secs(5))
                .is_err(),
            "an unlisted certificate got an answer"
        );
    }
}

#[test]
fn identity_from_cert_without_mtls_is_a_startup_error() {
    let f = Server::try_with_config(json!({"auth": {"identity_from_cert": true}})).unwrap_err();
    assert!(f.stderr.contains("auth.identity_from_cert"), "{}", f.stderr);
}

#[test]
fn the_server_process_cannot_dump_core() {
    let s = Server::start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap_or_else(|| panic!("no core limit line in {limits}"));
    let fields: Vec<&str> = core.split_whitespace().collect();
    // "Max core file size  <soft>  <hard>  bytes"
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
    assert!(
        !s.all_logs().contains("core dumps may not be disabled"),
        "{}",
        s.all_logs()
    );
}

#[test]
fn bad_tls_files_are_startup_errors_naming_the_file() {
    let pki = Pki::new();
    let (cert, key, _) = pki.server_files();
    let missing = pki.path("nope.pem");
    let other_key = pki.path("other-key.pem");
    write_600(&other_key, &leaf(&pki.ca, "x", false, false).key_pem);
    let open_key = pki.path("open-key.pem");
    std::fs::copy(&key, &open_key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let cases = [
        (
            json!({"enabled": true, "cert_path": cert.to_string_lossy(), "key_path": open_key.to_string_lossy()}),
            "accessible by group or others".to_string(),
        ),
        (
            json!({"enabled": true, "key_path": key.to_string_lossy()}),
            "cert_path not set".to_string(),
        ),
        (
            json!({"enabled": true, "cert_path": missing.to_string_lossy(), "key_path": key.to_string_lossy()}),
            "cannot open cert file".to_string(),
        ),
        (
            json!({"enabled": true, "cert_path": cert.to_string_lossy(), "key_path": cert.to_string_lossy()}),
            "no private key found".to_string(),
        ),
        (
            json!({"enabled": true, "cert_path": cert.to_string_lossy(), "key_path": other_key.to_string_lossy()}),
            "invalid server cert/key".to_string(),
        ),
        (
            json!({"enabled": true, "cert_path": cert.to_string_lossy(), "key_path": key.to_string_lossy(), "require_client_cert": true}),
            "client_ca_path not set".to_string(),
        ),
    ];
    for (tls, want) in cases {
        let f = Server::try_with_config(json!({ "tls": tls })).unwrap_err();
        assert_eq!(f.status.and_then(|s| s.code()), Some(1), "{tls}");
        assert!(
            f.stderr.contains(&want),
            "{tls}: want {want:?} in {}",
            f.stderr
        );
    }
}

#[test]
fn sighup_swaps_the_certificate_and_a_broken_one_keeps_the_old() {
    let pki = Pki::new();
    let s = tls_server(&pki, false, json!({}));
    let old_ca = pki.ca.cert.pem();
    let mut old_conn =
        Client::try_connect_tls(s.addr(), client_config(&old_ca, None), "localhost").unwrap();
    old_conn.ping();

    // A broken certificate: the reload fails, the old material stays.
    std::fs::write(pki.path("server.pem"), "not a certificate\n").unwrap();
    s.signal("HUP");
    let failed = wait_for(Duration::from_secs(10), || {
        s.stdout().contains("SIGHUP reload failed").then_some(())
    });
    assert!(failed.is_some(), "{}", s.stdout());
    Client::try_connect_tls(s.addr(), client_config(&old_ca, None), "localhost")
        .expect("still serving the old certificate");

    // A certificate from a new CA: new handshakes see it, the old connection keeps working.
    let new_ca = new_ca("rotated CA");
    let l = leaf(&new_ca, "rstmdb-server", false, false);
    write_600(&pki.path("server.pem"), &l.cert_pem);
    write_600(&pki.path("server-key.pem"), &l.key_pem);
    s.signal("HUP");
    let ok = wait_for(Duration::from_secs(10), || {
        s.stdout()
            .contains("reloaded authentication and TLS material")
            .then_some(())
    });
    assert!(ok.is_some(), "{}", s.stdout());
    let new_pem = new_ca.cert.pem();
    let mut fresh =
        Client::try_connect_tls(s.addr(), client_config(&new_pem, None), "localhost").unwrap();
    fresh.ping();
    assert!(
        Client::try_connect_tls(s.addr(), client_config(&old_ca, None), "localhost").is_err(),
        "new handshakes use the new certificate"
    );
    old_conn.ping();
    old_conn.ok("LIST_MACHINES", json!({}));
}

#[test]
fn sigterm_with_tls_drains_and_exits_zero() {
    let pki = Pki::new();
    let mut s = tls_server(&pki, false, json!({}));
    let mut c = Client::try_connect_tls(
        s.addr(),
        client_config(&pki.ca.cert.pem(), None),
        "localhost",
    )
    .unwrap();
    put_order(&mut c, "order");
    create(&mut c, "order", "o-1", json!({}));
    let status = s.terminate();
    assert_eq!(status.code(), Some(0), "{}", s.all_logs());
    s.restart();
    let mut c = s.connect_tls_for_test(&pki.ca.cert.pem());
    c.ok("GET_INSTANCE", json!({"instance_id": "o-1"}));
}

trait TlsConnect {
    fn connect_tls_for_test(&self, ca: &str) -> Client;
}

impl TlsConnect for Server {
    fn connect_tls_for_test(&self, ca: &str) -> Client {
        Client::try_connect_tls(self.addr(), client_config(ca, None), "localhost").unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------------------------

#[test]
fn audit_log_has_one_json_line_per_request_and_no_secret() {
    let dir = tempdir();
    let audit = dir.path().join("audit.log");
    let s = roles_server(json!({"audit": {"enabled": true, "path": audit.to_string_lossy()}}));
    let mut c = s.connect();
    c.err_code(
        "AUTH",
        json!({"method": "bearer", "token": "wrong-token-0000"}),
        "AUTH_FAILED",
    );
    c.ok("AUTH", json!({"method": "bearer", "token": ORDERS}));
    let mut admin = login(&s, ADMIN);
    put_order(&mut admin, "order");
    c.ok(
        "CREATE_INSTANCE",
        json!({"machine": "order", "version": 1, "instance_id": "o-1"}),
    );
    c.ok("APPLY_EVENT", json!({"instance_id": "o-1", "event": "PAY"}));
    c.err_code(
        "CREATE_INSTANCE",
        json!({"machine": "payment", "version": 1}),
        "UNAUTHORIZED",
    );
    c.send_frame(b"{not json");
    let lines = wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&audit).ok()?;
        (text.lines().count() >= 8).then_some(text)
    })
    .unwrap_or_else(|| std::fs::read_to_string(&audit).unwrap_or_default());
    let records: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for r in &records {
        for key in [
            "timestamp",
            "client_addr",
            "identity",
            "op",
            "instance_id",
            "machine",
            "event",
            "status",
            "error_code",
            "duration_ms",
        ] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
    }
    let find = |op: &str, status: &str| {
        records
            .iter()
            .find(|r| r["op"] == op && r["status"] == status)
            .unwrap_or_else(|| panic!("no {op}/{status} in {records:#?}"))
    };
    let failed = find("AUTH", "error");
    assert_eq!(failed["error_code"], "AUTH_FAILED");
    assert!(failed["identity"].is_null());
    let applied = find("APPLY_EVENT", "ok");
    assert_eq!(applied["identity"], "orders-svc");
    assert_eq!(applied["instance_id"], "o-1");
    assert_eq!(applied["event"], "PAY");
    assert_eq!(
        applied["machine"], "order",
        "instance ops name their machine"
    );
    let refused = find("CREATE_INSTANCE", "error");
    assert_eq!(refused["error_code"], "UNAUTHORIZED");
    assert_eq!(refused["machine"], "payment");
    assert!(
        records
            .iter()
            .any(|r| r["op"].is_null() && r["status"] == "error"),
        "an undecodable request is audited too"
    );
    // No token (nor its hash) in the audit log or the server's output.
    let everything = format!("{lines}{}", s.all_logs());
    for secret in [ADMIN, ORDERS, "wrong-token-0000"] {
        assert!(!everything.contains(secret), "{secret} leaked");
        assert!(
            !everything.contains(&sha(secret)),
            "hash of {secret} leaked"
        );
    }
}

#[test]
fn dev_cert_script_makes_certificates_rustls_accepts_for_mtls() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/gen-dev-certs.sh");
    let dir = tempdir();
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(dir.path())
        .arg("svc-script")
        .output()
        .expect("run gen-dev-certs.sh");
    assert!(
        out.status.success(),
        "gen-dev-certs.sh failed (is openssl installed? .ci/run installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let s = Server::with_config(json!({
        "tls": {"enabled": true, "cert_path": f("server.pem"), "key_path": f("server-key.pem"),
                "require_client_cert": true, "client_ca_path": f("ca.pem")},
        "auth": {"required": true, "identity_from_cert": true,
                 "cert_identities": {"svc-script": "admin"}}
    }));
    let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
    let client = Leaf {
        cert_pem: read("client.pem"),
        key_pem: read("client-key.pem"),
    };
    let mut c = Client::try_connect_tls(
        s.addr(),
        client_config(&read("ca.pem"), Some(&client)),
        "127.0.0.1",
    )
    .unwrap();
    // Authenticated by its certificate's CN: no AUTH needed.
    put_order(&mut c, "order");
}

#[test]
fn a_new_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start();
    let mode = std::fs::metadata(s.data_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "data dir mode {mode:o}");
}

// ---------------------------------------------------------------------------------------------
// Audit log completeness (issue 18 finding 5)
// ---------------------------------------------------------------------------------------------

/// The audit file's records, parsed (a line that is not JSON fails the test).
fn audit_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits until `pred` holds for the audit file's records, then returns them.
fn audit_until(path: &Path, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    wait_for(Duration::from_secs(15), || {
        let r = audit_records(path);
        pred(&r).then_some(r)
    })
    .unwrap_or_else(|| audit_records(path))
}

#[test]
fn audit_path_alone_turns_the_audit_log_on_and_enabled_false_turns_it_off() {
    let dir = tempdir();
    let audit = dir.path().join("audit.log");
    let s = Server::with_config(json!({"audit": {"path": audit.to_string_lossy()}}));
    let mut c = s.connect();
    c.ping();
    let records = audit_until(&audit, |r| r.iter().any(|x| x["op"] == "PING"));
    assert!(
        records.iter().any(|x| x["op"] == "PING"),
        "audit.path without audit.enabled must audit: {records:?}\n{}",
        s.all_logs()
    );

    let off = dir.path().join("off.log");
    let s2 =
        Server::with_config(json!({"audit": {"enabled": false, "path": off.to_string_lossy()}}));
    let mut c2 = s2.connect();
    c2.ping();
    // The file is opened at startup when the log is on: its absence proves it is off.
    assert!(!off.exists(), "audit.enabled: false must turn the log off");
}

#[test]
fn a_stalled_audit_sink_never_stalls_requests_and_drops_are_counted() {
    let dir = tempdir();
    let fifo = dir.path().join("audit.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // A reader that opens the pipe and never reads: once the pipe buffer (64 KiB) and the
    // queue are full, the audit writer is stuck for good.
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&fifo).unwrap();
            let _ = hold_rx.recv();
            drop(f);
        })
    };
    let s = Server::with_config(json!({
        "audit": {"path": fifo.to_string_lossy(), "queue_depth": 16},
        "metrics": {"enabled": true, "bind_addr": "127.0.0.1:0"}
    }));
    let mut c = s.connect();
    let started = std::time::Instant::now();
    // ~200 bytes a record: 3000 records are several pipe buffers' worth.
    for _ in 0..3000 {
        c.ping();
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "requests were held up by the audit sink"
    );
    let body = support::scrape::get(support::scrape::metrics_addr(&s), "/metrics").2;
    let dropped = support::scrape::sample(&body, "rstmdb_audit_dropped_total");
    assert!(dropped > 0.0, "drops are counted: {body}");
    assert!(
        s.stdout().contains("audit records dropped"),
        "drops are logged: {}",
        s.stdout()
    );
    let _ = hold_tx.send(());
    reader.join().unwrap();
}

#[test]
fn audit_lines_on_stdout_never_share_a_line_with_log_lines() {
    // Trace logging: a log line per request from the runtime threads while the audit thread
    // writes to the same stdout.
    let s = Server::with_config(json!({
        "audit": {"enabled": true},
        "logging": {"level": "trace"}
    }));
    // Bursts of pipelined requests from several connections: many audit records queue up
    // at once, while every request logs a line of its own. Every tenth names an (unknown)
    // instance id of 9000 bytes: its audit line is longer than a typical 8 KiB write buffer,
    // which would write it in more than one piece.
    let long_id = "x".repeat(9000);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let mut c = s.connect();
            let long_id = long_id.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let ids: Vec<String> = (0..100).map(|_| c.fresh_id()).collect();
                    let mut bytes = Vec::new();
                    for (n, id) in ids.iter().enumerate() {
                        let req = if n % 10 == 0 {
                            request_json(id, "GET_INSTANCE", Some(json!({"instance_id": long_id})))
                        } else {
                            request_json(id, "PING", None)
                        };
                        bytes.extend(frame(&serde_json::to_vec(&req).unwrap()));
                    }
                    c.send_raw(&bytes);
                    for id in &ids {
                        c.read_response(id);
                    }
                }
            })
        })
        .collect();
    for t in clients {
        t.join().unwrap();
    }
    let audited = wait_for(Duration::from_secs(15), || {
        let out = s.stdout();
        (out.matches("\"duration_ms\"").count() >= 8000).then_some(out)
    })
    .unwrap_or_else(|| s.stdout());
    let mut whole = 0;
    for line in audited.lines() {
        if line.contains("\"duration_ms\"") || line.contains("{\"timestamp\"") {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("an audit line shares its line ({e}): {line}"));
            assert!(v["op"].is_string() || v["op"].is_null());
            whole += 1;
        }
    }
    assert!(whole >= 8000, "{whole} audit lines");
}

#[test]
fn every_write_in_the_wal_has_an_audit_line_after_an_abrupt_close() {
    let dir = tempdir();
    let audit = dir.path().join("audit.log");
    let s =
        Server::with_config(json!({"audit": {"enabled": true, "path": audit.to_string_lossy()}}));
    let mut admin = s.connect();
    put_order(&mut admin, "order");
    // Rounds of pipelined creates on a connection closed right after sending them: the
    // server reads them, starts their commits, and its writes of the answers fail.
    let mut sent = 0;
    for round in 0..10 {
        let mut c = s.connect();
        let mut bytes = Vec::new();
        for n in 0..200 {
            let req = request_json(
                &format!("r{round}-{n}"),
                "CREATE_INSTANCE",
                Some(json!({"machine": "order", "version": 1,
                            "instance_id": format!("w{round}-{n}")})),
            );
            bytes.extend(frame(&serde_json::to_vec(&req).unwrap()));
        }
        c.send_raw(&bytes);
        drop(c);
        sent += 200;
    }
    // What reached the WAL, read on a new connection once the server has settled.
    std::thread::sleep(Duration::from_millis(500));
    let mut c = s.connect();
    let mut in_wal = std::collections::BTreeSet::new();
    let mut from = 0u64;
    loop {
        let r = c.ok("WAL_READ", json!({"from_offset": from, "limit": 1000}));
        let recs = r["records"].as_array().unwrap().clone();
        if recs.is_empty() {
            break;
        }
        for rec in &recs {
            if rec["entry"]["type"] == "create_instance"
                && let Some(id) = rec["entry"]["instance_id"].as_str()
            {
                in_wal.insert(id.to_owned());
            }
        }
        from = r["next_offset"].as_u64().unwrap();
    }
    assert!(!in_wal.is_empty(), "some of {sent} creates committed");
    let audited_ids = |r: &[Value]| -> std::collections::BTreeSet<String> {
        r.iter()
            .filter(|x| x["op"] == "CREATE_INSTANCE")
            .filter_map(|x| x["instance_id"].as_str().map(str::to_owned))
            .collect()
    };
    let records = audit_until(&audit, |r| in_wal.is_subset(&audited_ids(r)));
    let have = audited_ids(&records);
    let missing: Vec<_> = in_wal.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "{} of {} committed creates have no audit line: {:?}",
        missing.len(),
        in_wal.len(),
        &missing[..missing.len().min(10)]
    );
    for r in &records {
        let st = r["status"].as_str().unwrap_or("");
        assert!(["ok", "error", "abandoned"].contains(&st), "status {r}");
    }
}

#[test]
fn audit_lines_of_batch_restore_and_backup_ops_name_what_they_touched() {
    let dir = tempdir();
    let audit = dir.path().join("audit.log");
    let s =
        Server::with_config(json!({"audit": {"enabled": true, "path": audit.to_string_lossy()}}));
    let mut c = s.connect();
    put_order(&mut c, "order");
    put_counter(&mut c, "ctr");
    create(&mut c, "order", "b-1", json!({}));
    c.ok(
        "BATCH",
        json!({"mode": "best_effort", "ops": [
            {"op": "APPLY_EVENT", "params": {"instance_id": "b-1", "event": "PAY"}},
            {"op": "CREATE_INSTANCE", "params": {"machine": "ctr", "version": 1, "instance_id": "b-2"}},
            {"op": "CREATE_INSTANCE", "params": {"machine": "order", "version": 1}}
        ]}),
    );
    let exported = json!({"id": "r", "machine": "ctr", "version": 1, "state": "on",
        "ctx": {"n": 1}, "last_wal_offset": 5, "created_at": 1, "updated_at": 2});
    c.ok(
        "RESTORE_INSTANCE",
        json!({"instance_id": "r", "instance": exported, "as_id": "r-copy"}),
    );
    let b = c.ok("BACKUP_BEGIN", json!({}));
    let backup_id = b["backup_id"].as_str().unwrap().to_owned();
    c.ok(
        "BACKUP_READ",
        json!({"backup_id": backup_id, "offset": 0, "max_bytes": 16}),
    );
    c.ok("BACKUP_END", json!({"backup_id": backup_id}));
    let records = audit_until(&audit, |r| r.iter().any(|x| x["op"] == "BACKUP_END"));
    let find = |op: &str| {
        records
            .iter()
            .find(|r| r["op"] == op)
            .unwrap_or_else(|| panic!("no {op} in {records:#?}"))
    };
    let batch = find("BATCH");
    let ids: Vec<&str> = batch["instance_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("BATCH names its instances: {batch}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(ids.contains(&"b-1") && ids.contains(&"b-2"), "{batch}");
    assert_eq!(ids.len(), 3, "the generated id is named too: {batch}");
    assert_eq!(batch["machines"], json!(["ctr", "order"]), "{batch}");
    let restore = find("RESTORE_INSTANCE");
    assert_eq!(restore["instance_id"], "r-copy", "{restore}");
    assert_eq!(restore["instance_ids"], json!(["r", "r-copy"]), "{restore}");
    assert_eq!(restore["machine"], "ctr", "{restore}");
    for op in ["BACKUP_BEGIN", "BACKUP_READ", "BACKUP_END"] {
        let r = find(op);
        assert_eq!(r["backup_id"], backup_id.as_str(), "{r}");
    }
}

#[test]
fn tls_failures_connection_refusals_and_reloads_are_audited_with_the_peer() {
    let pki = Pki::new();
    let dir = tempdir();
    let audit = dir.path().join("audit.log");
    let s = tls_server(
        &pki,
        false,
        json!({"audit": {"enabled": true, "path": audit.to_string_lossy()},
               "network": {"max_connections": 1}}),
    );
    // A plaintext client on the TLS port: the handshake fails.
    let mut plain = std::net::TcpStream::connect(s.addr()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let plain_addr = plain.local_addr().unwrap().to_string();
    std::io::Write::write_all(&mut plain, b"not a TLS client hello\n").unwrap();
    let _ = std::io::Read::read_to_end(&mut plain, &mut Vec::new());
    drop(plain);
    let tls_failed = audit_until(&audit, |r| r.iter().any(|x| x["op"] == "TLS_HANDSHAKE"));
    let r = tls_failed
        .iter()
        .find(|x| x["op"] == "TLS_HANDSHAKE")
        .unwrap_or_else(|| panic!("no TLS_HANDSHAKE in {tls_failed:?}"));
    assert_eq!(r["status"], "error");
    assert_eq!(r["error_code"], "TLS_HANDSHAKE_FAILED");
    assert_eq!(r["client_addr"], plain_addr.as_str());

    // One connection is the limit: a second is refused.
    let mut first = s.connect_tls_for_test(&pki.ca.cert.pem());
    first.ping();
    let second = std::net::TcpStream::connect(s.addr()).unwrap();
    let second_addr = second.local_addr().unwrap().to_string();
    let refused = audit_until(&audit, |r| {
        r.iter().any(|x| x["op"] == "CONNECTION_REFUSED")
    });
    let r = refused
        .iter()
        .find(|x| x["op"] == "CONNECTION_REFUSED")
        .unwrap_or_else(|| panic!("no CONNECTION_REFUSED in {refused:?}"));
    assert_eq!(r["error_code"], "CONNECTION_LIMIT");
    assert_eq!(r["client_addr"], second_addr.as_str());
    drop(second);

    // A reload that works, then one that fails.
    s.signal("HUP");
    audit_until(&audit, |r| r.iter().any(|x| x["op"] == "RELOAD"));
    std::fs::write(pki.path("server.pem"), "not a certificate\n").unwrap();
    s.signal("HUP");
    let reloads = audit_until(&audit, |r| {
        r.iter().filter(|x| x["op"] == "RELOAD").count() >= 2
    });
    let statuses: Vec<&Value> = reloads
        .iter()
        .filter(|x| x["op"] == "RELOAD")
        .map(|x| &x["status"])
        .collect();
    assert_eq!(statuses, [&json!("ok"), &json!("error")], "{reloads:?}");
    first.ping();
}
