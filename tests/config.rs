//! Server configuration and CLI: startup failures, fsync spellings, the shipped example
//! configs, `--version`/`--help` (operations.md §1, decisions.md "Server, security,
//! operations").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/pki.rs"]
mod pki;
#[path = "support/mod.rs"]
mod support;

use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use support::*;

/// SHA-256 of "secret".
const SECRET_HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

/// The server must refuse `yaml`: exit status 1, and stderr names `key`.
fn assert_refused(yaml: &str, key: &str) {
    match Server::try_start_yaml(yaml) {
        Ok(s) => panic!(
            "server started with a bad config ({key}):\n{yaml}\n{}",
            s.all_logs()
        ),
        Err(f) => {
            let code = f.status.and_then(|s| s.code());
            assert_eq!(
                code,
                Some(1),
                "exit status 1 expected for {key}\nstdout:\n{}\nstderr:\n{}",
                f.stdout,
                f.stderr
            );
            assert!(
                f.stderr.contains(key),
                "stderr must name {key:?}:\n{}\n(stdout:\n{})",
                f.stderr,
                f.stdout
            );
        }
    }
}

fn minimal(extra: &str) -> String {
    format!(
        "network:\n  bind_addr: \"127.0.0.1:0\"\nstorage:\n  data_dir: \"{{tmp}}/data\"\n{extra}"
    )
}

#[test]
fn minimal_config_starts_and_serves() {
    let s = Server::try_start_yaml(&minimal("")).expect("starts");
    let mut c = s.connect();
    c.ping();
}

#[test]
fn config_via_rstmdb_config_env_var() {
    let dir = tempdir();
    let s = Server::try_start_in(dir, &minimal(""), ConfigVia::Env, &[]).expect("starts");
    let mut c = s.connect();
    c.ping();
    assert!(s.data_dir().join("wal").exists() || s.data_dir().exists());
}

#[test]
fn unknown_top_level_key_is_refused() {
    assert_refused(&minimal("bogus_section:\n  x: 1\n"), "bogus_section");
}

#[test]
fn unknown_nested_key_is_refused() {
    let yaml = "network:\n  bind_addr: \"127.0.0.1:0\"\n  bogus_knob: 3\nstorage:\n  data_dir: \"{tmp}/data\"\n";
    assert_refused(yaml, "bogus_knob");
}

#[test]
fn wrongly_typed_value_is_refused() {
    let yaml = "network:\n  bind_addr: \"127.0.0.1:0\"\n  max_connections: -1\nstorage:\n  data_dir: \"{tmp}/data\"\n";
    assert_refused(yaml, "max_connections");
}

#[test]
fn unparsable_bind_addr_is_refused() {
    let yaml = "network:\n  bind_addr: \"not-an-address\"\nstorage:\n  data_dir: \"{tmp}/data\"\n";
    assert_refused(yaml, "bind_addr");
}

#[test]
fn unknown_fsync_policy_is_refused() {
    assert_refused(
        "network:\n  bind_addr: \"127.0.0.1:0\"\nstorage:\n  data_dir: \"{tmp}/data\"\n  fsync_policy: sometimes\n",
        "fsync_policy",
    );
}

#[test]
fn wal_archive_dir_inside_the_wal_directory_is_refused() {
    assert_refused(
        "network:\n  bind_addr: \"127.0.0.1:0\"\nstorage:\n  data_dir: \"{tmp}/data\"\n  wal_archive_dir: \"{tmp}/data/wal\"\n",
        "wal_archive_dir",
    );
}

#[test]
fn wrongly_typed_boolean_is_refused() {
    assert_refused(&minimal("auth:\n  required: [true]\n"), "required");
}

#[test]
fn missing_config_file_is_refused() {
    let dir = tempdir();
    let missing = dir.path().join("nope.yaml");
    let (st, out, err) = run_to_exit(
        &["--config", &missing.to_string_lossy()],
        &[],
        dir.path(),
        Duration::from_secs(20),
    );
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(1),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    assert!(err.contains("nope.yaml"), "stderr names the file:\n{err}");
}

#[test]
fn unparsable_yaml_is_refused() {
    match Server::try_start_yaml("network: [unclosed\n") {
        Ok(_) => panic!("started with broken YAML"),
        Err(f) => assert_eq!(f.status.and_then(|s| s.code()), Some(1), "{f:?}"),
    }
}

#[test]
fn auth_required_without_tokens_is_refused() {
    match Server::try_start_yaml(&minimal("auth:\n  required: true\n")) {
        Ok(s) => panic!("started with auth and no tokens\n{}", s.all_logs()),
        Err(f) => assert_eq!(f.status.and_then(|s| s.code()), Some(1), "{f:?}"),
    }
}

#[test]
fn malformed_token_hash_is_refused() {
    assert_refused(
        &minimal("auth:\n  required: true\n  token_hashes: [\"not-a-hash\"]\n"),
        "token_hashes",
    );
}

#[test]
fn fsync_policy_every_n_tag_and_map_spellings_both_load() {
    for spelling in [
        "!every_n 100",
        "{every_n: 100}",
        "!every_ms 50",
        "{every_ms: 50}",
        "never",
        "every_write",
    ] {
        let yaml = format!(
            "network:\n  bind_addr: \"127.0.0.1:0\"\nstorage:\n  data_dir: \"{{tmp}}/data\"\n  fsync_policy: {spelling}\n"
        );
        let s = Server::try_start_yaml(&yaml)
            .unwrap_or_else(|f| panic!("fsync_policy {spelling} refused: {f:?}"));
        let mut c = s.connect();
        put_counter(&mut c, "ctr");
        create(&mut c, "ctr", "x", json!({}));
    }
}

#[test]
fn empty_sections_use_defaults() {
    let s = Server::try_start_yaml(&minimal("compaction: {}\nidempotency: {}\nlogging: {}\n"))
        .expect("starts");
    let mut c = s.connect();
    let info = c.ok("INFO", json!({}));
    assert_eq!(info["max_batch_ops"], 100);
    assert_eq!(info["max_frame_bytes"], 16777216);
}

#[test]
fn json_log_format_still_announces_the_listening_address() {
    let s = Server::try_start_yaml(&minimal("logging:\n  format: json\n  level: info\n"))
        .unwrap_or_else(|f| panic!("{f:?}"));
    let mut c = s.connect();
    c.ping();
    let line = s
        .stdout()
        .lines()
        .find(|l| l.contains("Server listening on"))
        .map(str::to_string)
        .unwrap();
    serde_json::from_str::<serde_json::Value>(&line)
        .unwrap_or_else(|e| panic!("JSON log line expected ({e}): {line}"));
}

#[test]
fn secrets_file_readable_by_others_is_refused() {
    let dir = tempdir();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, format!("{SECRET_HASH}\n")).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let yaml = minimal(&format!(
        "auth:\n  required: true\n  secrets_file: \"{}\"\n",
        secrets.display()
    ));
    match Server::try_start_in(dir, &yaml, ConfigVia::Flag, &[]) {
        Ok(s) => panic!(
            "started with a world-readable secrets file\n{}",
            s.all_logs()
        ),
        Err(f) => assert_eq!(f.status.and_then(|s| s.code()), Some(1), "{f:?}"),
    }
}

#[test]
fn secrets_file_with_mode_0600_is_used() {
    let dir = tempdir();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, format!("# ops token\n{SECRET_HASH}\n")).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let yaml = minimal(&format!(
        "auth:\n  required: true\n  secrets_file: \"{}\"\n",
        secrets.display()
    ));
    let s =
        Server::try_start_in(dir, &yaml, ConfigVia::Flag, &[]).unwrap_or_else(|f| panic!("{f:?}"));
    let mut c = s.connect();
    c.err_code("INFO", json!({}), "UNAUTHORIZED");
    c.ok("AUTH", json!({"method": "bearer", "token": "secret"}));
    c.ok("INFO", json!({}));
}

#[test]
fn version_flag_prints_the_version() {
    let dir = tempdir();
    let (st, out, err) = run_to_exit(&["--version"], &[], dir.path(), Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{out}{err}");
    assert!(out.starts_with("rstmdb "), "{out:?}");
    let v = out.trim().trim_start_matches("rstmdb ").trim();
    assert!(
        v.split('.').count() >= 3 && v.split('.').all(|p| !p.is_empty()),
        "semver: {v:?}"
    );
}

#[test]
fn help_flag_prints_usage() {
    let dir = tempdir();
    let (st, out, err) = run_to_exit(&["--help"], &[], dir.path(), Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{out}{err}");
    assert!(out.contains("--config"), "{out}");
    assert!(out.to_lowercase().contains("usage"), "{out}");
}

/// Every example config under config/ starts (bind address, data dir and secrets file
/// redirected into a temp dir), serves requests and shuts down cleanly.
#[test]
fn every_example_config_file_loads() {
    let cfg_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut files: Vec<_> = match std::fs::read_dir(&cfg_dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    if files.is_empty() {
        eprintln!("no config/*.yaml yet: nothing to load");
        return;
    }
    for path in files {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut doc: serde_yaml::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
        let dir = tempdir();
        let root = doc
            .as_mapping_mut()
            .unwrap_or_else(|| panic!("{name}: top level must be a mapping"));
        let section = |root: &mut serde_yaml::Mapping, k: &str| -> serde_yaml::Mapping {
            root.get(k)
                .and_then(|v| v.as_mapping())
                .cloned()
                .unwrap_or_default()
        };
        let mut network = section(root, "network");
        network.insert("bind_addr".into(), "127.0.0.1:0".into());
        root.insert("network".into(), network.into());
        let mut storage = section(root, "storage");
        storage.insert(
            "data_dir".into(),
            dir.path().join("data").to_string_lossy().to_string().into(),
        );
        root.insert("storage".into(), storage.into());
        let mut auth = section(root, "auth");
        let auth_required = auth.get("required").and_then(|v| v.as_bool()) == Some(true);
        // With certificate identities, only a listed certificate gets in (and AUTH is refused
        // on it): connect as the example's admin certificate.
        let admin_cert = if auth.get("identity_from_cert").and_then(|v| v.as_bool()) == Some(true) {
            auth.get("cert_identities")
                .and_then(|v| v.as_mapping())
                .and_then(|m| {
                    m.iter()
                        .find(|(_, grant)| grant.as_str() == Some("admin"))
                        .and_then(|(cn, _)| cn.as_str().map(str::to_owned))
                })
        } else {
            None
        };
        if auth.contains_key("secrets_file") {
            let secrets = dir.path().join("secrets");
            std::fs::write(&secrets, format!("{SECRET_HASH}\n")).unwrap();
            std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
            auth.insert(
                "secrets_file".into(),
                secrets.to_string_lossy().to_string().into(),
            );
            root.insert("auth".into(), auth.into());
        } else if auth_required {
            let mut hashes = auth
                .get("token_hashes")
                .and_then(|v| v.as_sequence())
                .cloned()
                .unwrap_or_default();
            hashes.push(SECRET_HASH.into());
            auth.insert("token_hashes".into(), hashes.into());
            root.insert("auth".into(), auth.into());
        }
        // TLS: certificates made for this run replace the example's paths.
        let mut tls = section(root, "tls");
        let tls_on = tls.get("enabled").and_then(|v| v.as_bool()) == Some(true);
        let mtls = tls.get("require_client_cert").and_then(|v| v.as_bool()) == Some(true);
        let pki = pki::Pki::new();
        if tls_on {
            let (cert, key, ca) = pki.server_files();
            let p = |x: &Path| x.to_string_lossy().to_string();
            tls.insert("cert_path".into(), p(&cert).into());
            tls.insert("key_path".into(), p(&key).into());
            if mtls {
                tls.insert("client_ca_path".into(), p(&ca).into());
            }
            root.insert("tls".into(), tls.into());
        }
        let mut audit = section(root, "audit");
        if audit.contains_key("path") {
            audit.insert(
                "path".into(),
                dir.path()
                    .join("audit.log")
                    .to_string_lossy()
                    .to_string()
                    .into(),
            );
            root.insert("audit".into(), audit.into());
        }
        let mut metrics = section(root, "metrics");
        if metrics.contains_key("bind_addr") {
            metrics.insert("bind_addr".into(), "127.0.0.1:0".into());
            root.insert("metrics".into(), metrics.into());
        }
        let is_cluster = root.contains_key("cluster");
        if is_cluster {
            // A cluster example runs as one member waiting for its peers: on free ports, its
            // own entry in `initial_members` moved with them.
            let (client, raft) = (free_local_addr(), free_local_addr());
            let mut network = section(root, "network");
            network.insert("bind_addr".into(), client.clone().into());
            root.insert("network".into(), network.into());
            let mut cluster = section(root, "cluster");
            let node_id = cluster["node_id"].as_u64().unwrap();
            cluster.insert("raft_listen".into(), raft.clone().into());
            cluster.insert("advertise_client".into(), client.clone().into());
            cluster.insert("advertise_raft".into(), raft.clone().into());
            if let Some(serde_yaml::Value::Mapping(m)) = cluster.get_mut("initial_members") {
                m.insert(
                    serde_yaml::Value::Number(node_id.into()),
                    serde_yaml::to_value(serde_json::json!({"client": client, "raft": raft}))
                        .unwrap(),
                );
            }
            root.insert("cluster".into(), cluster.into());
        }
        let yaml = serde_yaml::to_string(&doc).unwrap();
        let mut s = Server::try_start_in(dir, &yaml, ConfigVia::Flag, &[]).unwrap_or_else(|f| {
            panic!(
                "{name} does not start: {:?}\n--- effective file\n{yaml}\n--- stdout\n{}\n--- stderr\n{}",
                f.status, f.stdout, f.stderr
            )
        });
        let mut c = if tls_on {
            // The example's admin certificate, or one whose CN no example maps to an identity
            // (AUTH still needed).
            let cn = admin_cert.as_deref().unwrap_or("config-test");
            let leaf = pki::leaf(&pki.ca, cn, true, false);
            let cfg = pki::client_config(&pki.ca.cert.pem(), mtls.then_some(&leaf));
            Client::try_connect_tls(s.addr(), cfg, "localhost").unwrap()
        } else {
            s.connect()
        };
        c.ping();
        if admin_cert.is_some() {
            println!("{name}: connected as the admin certificate {admin_cert:?}");
        } else if auth_required {
            c.err_code("INFO", json!({}), "UNAUTHORIZED");
            c.ok("AUTH", json!({"method": "bearer", "token": "secret"}));
        }
        let info = c.ok("INFO", json!({}));
        assert_eq!(info["server_name"], "rstmdb", "{name}");
        if is_cluster {
            // Alone, a member of a three-node set has no leader: a write (forwarded by
            // default) is not written.
            let r = c.request(
                "PUT_MACHINE",
                json!({"machine": "ctr", "version": 1, "definition": counter_definition()}),
            );
            assert_eq!(r["error"]["code"], "REPLICATION_TIMEOUT", "{name}: {r}");
            assert_eq!(r["error"]["details"]["reason"], "no_leader", "{name}: {r}");
            assert_eq!(r["error"]["details"]["committed"], false, "{name}: {r}");
        } else {
            put_counter(&mut c, "ctr");
            create(&mut c, "ctr", "x", json!({}));
        }
        drop(c);
        let st = s.terminate();
        assert!(
            st.success(),
            "{name}: SIGTERM exit {st:?}\n{}",
            s.all_logs()
        );
        eprintln!("{name}: loaded, served, stopped");
    }
}

#[test]
fn env_booleans_accept_yes() {
    // decisions.md: env booleans accept 1/0, true/false, yes/no, on/off.
    let dir = tempdir();
    let s = Server::try_start_in(
        dir,
        &minimal(""),
        ConfigVia::Flag,
        &[
            ("RSTMDB_AUTH_REQUIRED", "yes"),
            ("RSTMDB_AUTH_TOKEN_HASH", SECRET_HASH),
        ],
    )
    .unwrap_or_else(|f| panic!("{f:?}"));
    let mut c = s.connect();
    c.err_code("INFO", json!({}), "UNAUTHORIZED");
    c.ok("AUTH", json!({"method": "bearer", "token": "secret"}));
    c.ok("INFO", json!({}));
}

#[test]
fn env_overrides_the_file() {
    // operations.md §1.4 precedence env > file: RSTMDB_DATA moves the data directory.
    let dir = tempdir();
    let other = dir.path().join("elsewhere");
    let other_s = other.to_string_lossy().to_string();
    let s = Server::try_start_in(
        dir,
        &minimal(""),
        ConfigVia::Flag,
        &[("RSTMDB_DATA", other_s.as_str())],
    )
    .unwrap_or_else(|f| panic!("{f:?}"));
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    assert!(other.join("wal").is_dir(), "WAL under RSTMDB_DATA");
    assert!(
        !s.data_dir().join("wal").exists(),
        "file's data_dir not used"
    );
}

#[test]
fn bad_env_boolean_is_refused_naming_the_variable() {
    // docs/configuration.md: anything else is a startup error naming the variable.
    let dir = tempdir();
    match Server::try_start_in(
        dir,
        &minimal(""),
        ConfigVia::Flag,
        &[("RSTMDB_AUTH_REQUIRED", "maybe")],
    ) {
        Ok(s) => panic!("started with RSTMDB_AUTH_REQUIRED=maybe\n{}", s.all_logs()),
        Err(f) => {
            assert_eq!(f.status.and_then(|s| s.code()), Some(1), "{f:?}");
            assert!(f.stderr.contains("RSTMDB_AUTH_REQUIRED"), "{f:?}");
        }
    }
}

#[test]
fn sighup_reloads_token_hashes_from_the_secrets_file() {
    // decisions.md: SIGHUP reloads the token hashes; new AUTHs use the new material, and
    // connections whose token is still configured keep their session. Issue 18: a session
    // whose token the reload removed ends.
    let dir = tempdir();
    let secrets = dir.path().join("secrets");
    let stays = sha256_hex(b"stays");
    std::fs::write(&secrets, format!("{SECRET_HASH}\n{stays} reporter read\n")).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let yaml = minimal(&format!(
        "auth:\n  required: true\n  secrets_file: \"{}\"\n",
        secrets.display()
    ));
    let mut s =
        Server::try_start_in(dir, &yaml, ConfigVia::Flag, &[]).unwrap_or_else(|f| panic!("{f:?}"));
    let mut old = s.connect();
    old.ok("AUTH", json!({"method": "bearer", "token": "secret"}));
    let mut kept = s.connect();
    kept.ok("AUTH", json!({"method": "bearer", "token": "stays"}));
    // Replace the secret by sha256("rotated"); "stays" now writes.
    let rotated = sha256_hex(b"rotated");
    std::fs::write(&secrets, format!("{rotated}\n{stays} reporter write\n")).unwrap();
    s.signal("HUP");
    std::thread::sleep(Duration::from_millis(200));
    if let Some(st) = s.wait_exit(Duration::from_millis(1)) {
        panic!(
            "SIGHUP must reload, not stop the server: it exited with {st:?}\n{}",
            s.all_logs()
        );
    }
    let reloaded = wait_for(Duration::from_secs(5), || {
        let mut c = s.connect();
        let r = c.request("AUTH", json!({"method": "bearer", "token": "rotated"}));
        (r["status"] == "ok").then_some(())
    });
    assert!(
        s.is_running(),
        "SIGHUP must not stop the server\n{}",
        s.all_logs()
    );
    assert!(
        reloaded.is_some(),
        "new token accepted after SIGHUP\n{}",
        s.all_logs()
    );
    let mut c = s.connect();
    c.err_code(
        "AUTH",
        json!({"method": "bearer", "token": "secret"}),
        "AUTH_FAILED",
    );
    // The session of the removed token is over; the other keeps its session, under the
    // token's new grant.
    assert!(
        old.try_request("INFO", json!({}), Duration::from_secs(5))
            .is_err(),
        "a session of a removed token still answered"
    );
    kept.ok("INFO", json!({}));
    let e = kept.err_code(
        "PUT_MACHINE",
        json!({"machine": "x", "version": 1, "definition": {"states": ["a"], "initial": "a", "transitions": []}}),
        "UNAUTHORIZED",
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("reporter has write"),
        "the new grant applies to the open session: {e}"
    );
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(data))
}

/// Threads of the server process named like tokio's runtime workers.
fn runtime_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter(|t| {
            let comm = std::fs::read_to_string(t.as_ref().unwrap().path().join("comm")).unwrap();
            comm.trim() == "tokio-rt-worker"
        })
        .count()
}

#[test]
fn worker_threads_sets_the_connection_threads() {
    let with = |n: &str| {
        format!(
            "network:\n  bind_addr: \"127.0.0.1:0\"\n  worker_threads: {n}\nstorage:\n  data_dir: \"{{tmp}}/data\"\n"
        )
    };
    let s = Server::try_start_yaml(&with("3")).expect("starts");
    s.connect().ping();
    assert_eq!(runtime_workers(s.pid()), 3);

    // 0 (the default): one fewer than the CPUs, at least one.
    let s = Server::try_start_yaml(&with("0")).expect("starts");
    s.connect().ping();
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(runtime_workers(s.pid()), cpus.saturating_sub(1).max(1));

    assert_refused(&with("5000"), "network.worker_threads");
}

/// A loopback address on a port that was free a moment ago.
fn free_local_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", l.local_addr().unwrap().port())
}

/// A valid cluster section for a server on `127.0.0.1:0` (hence an explicit
/// `advertise_client`), TLS off.
const CLUSTER_SECTION: &str = "cluster:
  cluster_id: \"trial-1\"
  node_id: 1
  raft_listen: \"127.0.0.1:7411\"
  advertise_client: \"127.0.0.1:7401\"
  insecure_plaintext: true
";

#[test]
fn a_one_member_cluster_elects_itself_and_takes_writes() {
    let (client, raft) = (free_local_addr(), free_local_addr());
    let yaml = format!(
        "network:\n  bind_addr: \"{client}\"\nstorage:\n  data_dir: \"{{tmp}}/data\"\n\
         cluster:\n  cluster_id: \"trial-1\"\n  node_id: 1\n  raft_listen: \"{raft}\"\n\
         \x20 initial_members:\n    1: {{client: \"{client}\", raft: \"{raft}\"}}\n\
         \x20 insecure_plaintext: true\n"
    );
    let s = Server::try_start_yaml(&yaml).unwrap_or_else(|f| panic!("did not start: {f:?}"));
    assert!(
        s.stdout().contains("starting as a cluster node"),
        "{}",
        s.all_logs()
    );
    let mut c = s.connect();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = c.request(
            "PUT_MACHINE",
            json!({"machine": "m", "version": 1, "definition": counter_definition()}),
        );
        if r["status"] == "ok" {
            break;
        }
        // Before it elects itself: no leader (or its own term's record not applied yet).
        assert!(
            ["REPLICATION_TIMEOUT", "WAL_IO_ERROR"]
                .contains(&r["error"]["code"].as_str().unwrap_or_default()),
            "{r}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "never became leader: {r}\n{}",
            s.all_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = c.ok(
        "CREATE_INSTANCE",
        json!({"instance_id": "a", "machine": "m", "version": 1}),
    );
    assert!(
        r["wal_offset"].as_u64().unwrap() > 1,
        "after raft's own records: {r}"
    );
}

#[test]
fn an_invalid_cluster_section_is_refused_naming_the_key() {
    let with = |extra: &str| minimal(&format!("{CLUSTER_SECTION}{extra}"));
    assert_refused(&with("  heartbeat_ms: 900\n"), "cluster.heartbeat_ms");
    assert_refused(&with("  node_id_typo: 1\n"), "node_id_typo");
    let no_plaintext = CLUSTER_SECTION.replace("  insecure_plaintext: true\n", "");
    assert_refused(&minimal(&no_plaintext), "cluster.insecure_plaintext");
    assert_refused(
        &format!(
            "network:\n  bind_addr: \"127.0.0.1:0\"\nstorage:\n  data_dir: \"{{tmp}}/data\"\n  fsync_policy: never\n{CLUSTER_SECTION}"
        ),
        "storage.fsync_policy",
    );
}

#[test]
fn a_cluster_whose_peer_ca_cannot_be_read_is_refused_before_the_data_directory_is_made() {
    let pki = pki::Pki::new();
    let (cert, key, _) = pki.server_files();
    let missing = pki.path("no-such-ca.pem");
    // Outside the server's temporary directory, which is gone once the start fails.
    let data = pki.path("data");
    let yaml = minimal(&format!(
        "tls:\n  enabled: true\n  cert_path: \"{}\"\n  key_path: \"{}\"\n  \
         client_ca_path: \"{}\"\n{}",
        cert.display(),
        key.display(),
        missing.display(),
        CLUSTER_SECTION.replace("  insecure_plaintext: true\n", "")
    ))
    .replace("{tmp}/data", &data.to_string_lossy());
    let f = Server::try_start_yaml(&yaml)
        .map(|s| s.all_logs())
        .expect_err("started without a readable peer CA");
    assert_eq!(f.status.and_then(|s| s.code()), Some(1), "{f:?}");
    assert!(f.stderr.contains("peer link"), "{f:?}");
    assert!(f.stderr.contains("no-such-ca.pem"), "{f:?}");
    assert!(!data.exists(), "the data directory was created");
}

#[test]
fn cluster_environment_variables_create_or_refuse_a_section() {
    // All three of id, node and listener make a section (then refused: TLS is on, and the
    // peers' mutual TLS needs a client CA that is not set); one alone is an error naming it.
    let f = Server::try_start_in(
        tempdir(),
        &minimal(""),
        ConfigVia::Flag,
        &[
            ("RSTMDB_CLUSTER_ID", "env-1"),
            ("RSTMDB_NODE_ID", "1"),
            ("RSTMDB_RAFT_LISTEN", "127.0.0.1:7411"),
            ("RSTMDB_ADVERTISE_CLIENT", "127.0.0.1:7401"),
            ("RSTMDB_TLS_ENABLED", "true"),
        ],
    )
    .map(|s| s.all_logs())
    .expect_err("started in cluster mode");
    assert_eq!(f.status.and_then(|s| s.code()), Some(1), "{f:?}");
    assert!(f.stderr.contains("tls.client_ca_path"), "{f:?}");
    assert!(f.stderr.contains("peers authenticate each other"), "{f:?}");
    let f = Server::try_start_in(
        tempdir(),
        &minimal(""),
        ConfigVia::Flag,
        &[("RSTMDB_NODE_ID", "1")],
    )
    .map(|s| s.all_logs())
    .expect_err("started with half a cluster");
    assert_eq!(f.status.and_then(|s| s.code()), Some(1), "{f:?}");
    assert!(f.stderr.contains("RSTMDB_NODE_ID"), "{f:?}");
    assert!(
        f.stderr
            .contains("missing: RSTMDB_CLUSTER_ID, RSTMDB_RAFT_LISTEN"),
        "{f:?}"
    );
}
