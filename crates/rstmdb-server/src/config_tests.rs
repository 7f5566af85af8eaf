//! Tests of `config.rs`.

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn every_example_config_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let c = Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            c.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "expected the example configs in {}", dir.display());
}

#[test]
fn empty_file_means_defaults() {
    assert_eq!(Config::from_yaml("").unwrap(), Config::default());
}

#[test]
fn unknown_keys_are_named() {
    let e = Config::from_yaml("network:\n  bogus: 1\n").unwrap_err();
    assert!(e.contains("bogus"), "{e}");
    let e = Config::from_yaml("nonsense: true\n").unwrap_err();
    assert!(e.contains("nonsense"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    let e = Config::from_yaml("network:\n  max_connections: -1\n").unwrap_err();
    assert!(e.contains("network.max_connections"), "{e}");
}

#[test]
fn both_fsync_spellings_load() {
    for text in [
        "storage:\n  fsync_policy: !every_n 100\n",
        "storage:\n  fsync_policy: {every_n: 100}\n",
    ] {
        let c = Config::from_yaml(text).unwrap();
        assert_eq!(
            c.storage.fsync_policy,
            FsyncPolicyConfig::EveryN(100),
            "{text}"
        );
    }
    let c = Config::from_yaml("storage:\n  fsync_policy: never\n").unwrap();
    assert_eq!(c.storage.fsync_policy, FsyncPolicyConfig::Never);
    let c = Config::from_yaml("storage:\n  fsync_policy: !every_ms 5\n").unwrap();
    assert_eq!(c.storage.fsync_policy, FsyncPolicyConfig::EveryMs(5));
    for bad in [
        "sometimes",
        "{every_n: x}",
        "!every_year 1",
        "{every_n: 1, every_ms: 2}",
    ] {
        let e = Config::from_yaml(&format!("storage:\n  fsync_policy: {bad}\n")).unwrap_err();
        assert!(e.contains("storage.fsync_policy"), "{bad}: {e}");
    }
}

#[test]
fn env_overrides_and_booleans() {
    let env = |k: &str| match k {
        "RSTMDB_BIND" => Some("127.0.0.1:9999".to_string()),
        "RSTMDB_AUTH_REQUIRED" => Some("yes".to_string()),
        "RSTMDB_AUTH_TOKEN_HASH" => Some("a".repeat(64)),
        "RSTMDB_FSYNC_POLICY" => Some("every_ms:5".to_string()),
        "RSTMDB_ENCRYPTION_KEY_FILE" => Some("/etc/rstmdb/data.key".to_string()),
        _ => None,
    };
    let c = Config::load(None, &env).unwrap();
    assert_eq!(c.network.bind_addr, "127.0.0.1:9999");
    assert!(c.auth.required);
    assert_eq!(c.storage.fsync_policy, FsyncPolicyConfig::EveryMs(5));
    assert_eq!(
        c.storage.encryption.key_file.as_deref(),
        Some(Path::new("/etc/rstmdb/data.key"))
    );
}

#[test]
fn the_encryption_key_file_is_read_and_its_problems_are_named() {
    let c = Config::from_yaml("storage:\n  encryption:\n    key_file: /nonexistent/k\n").unwrap();
    let e = c.storage_config_with_key().unwrap_err().to_string();
    assert!(e.contains("/nonexistent/k"), "{e}");
    let e = Config::from_yaml("storage:\n  encryption:\n    key: x\n").unwrap_err();
    assert!(e.contains("key"), "{e}");
    assert!(
        Config::from_yaml("storage:\n  encryption: {}\n")
            .unwrap()
            .storage_config_with_key()
            .unwrap()
            .encryption
            .is_none()
    );
}

#[test]
fn bad_env_values_are_errors() {
    let env = |k: &str| (k == "RSTMDB_AUTH_REQUIRED").then(|| "maybe".to_string());
    assert!(matches!(
        Config::load(None, &env),
        Err(ConfigError::Env { .. })
    ));
    let env = |k: &str| (k == "RSTMDB_FSYNC_POLICY").then(|| "sometimes".to_string());
    assert!(matches!(
        Config::load(None, &env),
        Err(ConfigError::Env { .. })
    ));
}

#[test]
fn validation_names_the_key() {
    let mut c = Config::default();
    c.network.bind_addr = "localhost".into();
    assert!(
        matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "network.bind_addr")
    );
    let mut c = Config::default();
    c.auth.token_hashes = vec!["xyz".into()];
    assert!(
        matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "auth.token_hashes[0]")
    );
    assert!(Config::load(None, &no_env).is_ok());
}

#[test]
fn audit_path_alone_enables_the_audit_log_and_enabled_false_wins() {
    let load = |yaml: &str, env: &dyn Fn(&str) -> Option<String>| {
        let c = Config::from_yaml(yaml).unwrap();
        let mut c = c;
        c.apply_env(env).unwrap();
        c.validate().unwrap();
        c.audit.is_enabled()
    };
    assert!(!load("", &no_env));
    assert!(load("audit:\n  path: /tmp/a.log\n", &no_env));
    assert!(!load(
        "audit:\n  enabled: false\n  path: /tmp/a.log\n",
        &no_env
    ));
    assert!(load("audit:\n  enabled: true\n", &no_env));
    let path_env = |k: &str| (k == "RSTMDB_AUDIT_PATH").then(|| "/tmp/a.log".to_string());
    assert!(load("", &path_env));
    let off_env = |k: &str| (k == "RSTMDB_AUDIT_ENABLED").then(|| "false".to_string());
    assert!(!load("audit:\n  path: /tmp/a.log\n", &off_env));
}

#[test]
fn audit_queue_depth_is_bounded() {
    for bad in ["0", "16777217"] {
        let c = Config::from_yaml(&format!("audit:\n  queue_depth: {bad}\n")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("audit.queue_depth"), "{e}");
    }
    let c = Config::from_yaml("audit:\n  queue_depth: 1\n").unwrap();
    c.validate().unwrap();
}

// ---- cluster: ----

/// The smallest valid `cluster:` section (TLS is off in these tests, hence
/// `insecure_plaintext`).
const CLUSTER: &str = "cluster:\n  cluster_id: prod-eu-1\n  node_id: 1\n  raft_listen: \"127.0.0.1:7411\"\n  insecure_plaintext: true\n";

/// Parses `top` + `CLUSTER` + `cluster_extra` (lines indented under `cluster:`; a key given
/// there replaces `CLUSTER`'s), validates.
fn cluster_config(top: &str, cluster_extra: &str) -> Result<Config, ConfigError> {
    let key = |l: &str| {
        l.strip_prefix("  ")
            .filter(|r| !r.starts_with(' '))
            .and_then(|r| r.split(':').next())
            .map(str::to_owned)
    };
    let replaced: Vec<String> = cluster_extra.lines().filter_map(key).collect();
    let base: String = CLUSTER
        .lines()
        .filter(|l| key(l).is_none_or(|k| !replaced.contains(&k)))
        .map(|l| format!("{l}\n"))
        .collect();
    let yaml = format!("{top}{base}{cluster_extra}");
    let c = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    c.validate()?;
    Ok(c)
}

/// The validation error of that config: its key and message.
fn cluster_invalid(top: &str, cluster_extra: &str) -> (String, String) {
    match cluster_config(top, cluster_extra) {
        Err(ConfigError::Invalid { key, message }) => (key, message),
        other => panic!("expected a validation error for\n{top}{cluster_extra}\ngot {other:?}"),
    }
}

fn assert_cluster_invalid(top: &str, cluster_extra: &str, key: &str, words: &str) {
    let (k, m) = cluster_invalid(top, cluster_extra);
    assert_eq!(k, key, "{top}{cluster_extra}: {m}");
    assert!(m.contains(words), "{key}: {m:?} should say {words:?}");
}

#[test]
fn no_cluster_section_means_a_single_node() {
    assert_eq!(Config::default().cluster, None);
    assert_eq!(Config::from_yaml("network: {}\n").unwrap().cluster, None);
    assert_eq!(Config::load(None, &no_env).unwrap().cluster, None);
}

#[test]
fn cluster_defaults() {
    let c = cluster_config("", "").unwrap();
    let k = c.cluster.unwrap();
    assert_eq!(k.cluster_id, "prod-eu-1");
    assert_eq!(k.node_id, 1);
    assert_eq!(k.raft_listen, "127.0.0.1:7411");
    assert_eq!(k.advertise_client, None);
    assert_eq!(k.advertise_raft, None);
    assert_eq!(k.initial_members, None);
    assert_eq!(k.read_consistency, ReadConsistency::Linearizable);
    assert!(k.forward_writes);
    assert_eq!(k.write_timeout_ms, 5000);
    assert_eq!(k.election_timeout_ms, [600, 1200]);
    assert_eq!(k.heartbeat_ms, 150);
    assert_eq!(k.snapshot_log_mb, 256);
    let mut expected = ClusterConfig::new("prod-eu-1".into(), 1, "127.0.0.1:7411".into());
    expected.insecure_plaintext = true;
    assert_eq!(k, expected);
    // insecure_plaintext defaults to false.
    let c = Config::from_yaml(
        "cluster: {cluster_id: a, node_id: 1, raft_listen: \"127.0.0.1:7411\"}\n",
    )
    .unwrap();
    assert!(!c.cluster.unwrap().insecure_plaintext);
}

#[test]
fn cluster_accessors_and_advertised_addresses() {
    let k = cluster_config("", "").unwrap().cluster.unwrap();
    assert_eq!(
        k.election_timeout(),
        (Duration::from_millis(600), Duration::from_millis(1200))
    );
    assert_eq!(k.heartbeat(), Duration::from_millis(150));
    assert_eq!(k.write_timeout(), Duration::from_millis(5000));
    assert_eq!(k.snapshot_log_bytes(), 256 * 1024 * 1024);
    assert_eq!(k.raft_listen_addr().unwrap().to_string(), "127.0.0.1:7411");
    // Without advertise_*: the client bind address and raft_listen.
    let bind: SocketAddr = "127.0.0.1:7401".parse().unwrap();
    assert_eq!(k.advertised_client(bind).unwrap(), "127.0.0.1:7401");
    assert_eq!(k.advertised_raft().unwrap(), "127.0.0.1:7411");
    let k = cluster_config(
        "",
        "  advertise_client: \"h1:7401\"\n  advertise_raft: \"h1:7411\"\n",
    )
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(k.advertised_client(bind).unwrap(), "h1:7401");
    assert_eq!(k.advertised_raft().unwrap(), "h1:7411");
}

#[test]
fn cluster_full_example_section_loads() {
    let yaml = "cluster:
  cluster_id: \"prod-eu-1\"
  node_id: 1
  raft_listen: \"127.0.0.1:7411\"
  advertise_client: \"127.0.0.1:7401\"
  advertise_raft: \"127.0.0.1:7411\"
  initial_members:
    1: {client: \"127.0.0.1:7401\", raft: \"127.0.0.1:7411\"}
    2: {client: \"127.0.0.1:7402\", raft: \"127.0.0.1:7412\"}
    3: {client: \"127.0.0.1:7403\", raft: \"127.0.0.1:7413\"}
  read_consistency: lease
  forward_writes: false
  write_timeout_ms: 2000
  election_timeout_ms: [300, 600]
  heartbeat_ms: 50
  snapshot_log_mb: 64
  insecure_plaintext: true
";
    let c = Config::from_yaml(yaml).unwrap();
    c.validate().unwrap();
    let k = c.cluster.unwrap();
    let members = k.initial_members.unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!(
        members[&2],
        MemberAddrs {
            client: "127.0.0.1:7402".into(),
            raft: "127.0.0.1:7412".into()
        }
    );
    assert_eq!(k.read_consistency, ReadConsistency::Lease);
    assert!(!k.forward_writes);
    assert_eq!(k.write_timeout_ms, 2000);
    assert_eq!(k.election_timeout_ms, [300, 600]);
    assert_eq!(k.heartbeat_ms, 50);
    assert_eq!(k.snapshot_log_mb, 64);
    let c = Config::from_yaml(&format!("{CLUSTER}  read_consistency: stale\n")).unwrap();
    assert_eq!(c.cluster.unwrap().read_consistency, ReadConsistency::Stale);
}

#[test]
fn cluster_parse_errors_name_the_key() {
    for (yaml, words) in [
        (
            "cluster: {node_id: 1, raft_listen: \"127.0.0.1:7411\"}\n",
            "cluster_id",
        ),
        (
            "cluster: {cluster_id: a, raft_listen: \"127.0.0.1:7411\"}\n",
            "node_id",
        ),
        ("cluster: {cluster_id: a, node_id: 1}\n", "raft_listen"),
        (&format!("{CLUSTER}  bogus: 1\n"), "bogus"),
        (
            &format!("{CLUSTER}  advertise: {{client: \"h:1\"}}\n"),
            "advertise",
        ),
        (
            &format!("{CLUSTER}  read_consistency: eventual\n"),
            "cluster.read_consistency",
        ),
        (
            &format!("{CLUSTER}  election_timeout_ms: [600]\n"),
            "cluster.election_timeout_ms",
        ),
        (
            &format!("{CLUSTER}  election_timeout_ms: [1, 2, 3]\n"),
            "cluster.election_timeout_ms",
        ),
        (
            "cluster: {cluster_id: a, node_id: -1, raft_listen: \"127.0.0.1:7411\"}\n",
            "cluster.node_id",
        ),
        (
            &format!("{CLUSTER}  initial_members:\n    1: {{client: \"h:1\"}}\n"),
            "raft",
        ),
        (
            &format!(
                "{CLUSTER}  initial_members:\n    1: {{client: \"h:1\", raft: \"h:2\", x: 1}}\n"
            ),
            "x",
        ),
    ] {
        let e = Config::from_yaml(yaml).unwrap_err();
        assert!(e.contains(words), "{yaml}: {e}");
        assert!(e.contains("cluster"), "{yaml}: {e}");
    }
}

#[test]
fn cluster_id_and_node_id_are_checked() {
    for bad in ["\"\"", "\"a b\"", "\"a/b\"", &"x".repeat(65)] {
        assert_cluster_invalid(
            "",
            &format!("  cluster_id: {bad}\n"),
            "cluster.cluster_id",
            "1 to 64 characters",
        );
    }
    let ok = format!("  cluster_id: \"A.z_0-{}\"\n", "9".repeat(58));
    cluster_config("", &ok).unwrap();
    assert_cluster_invalid("", "  node_id: 0\n", "cluster.node_id", "at least 1");
}

#[test]
fn cluster_timings_are_checked() {
    for bad in ["[0, 10]", "[800, 600]", "[600, 600]"] {
        assert_cluster_invalid(
            "",
            &format!("  election_timeout_ms: {bad}\n"),
            "cluster.election_timeout_ms",
            "0 < min < max",
        );
    }
    for bad in ["600", "700", "0"] {
        assert_cluster_invalid(
            "",
            &format!("  heartbeat_ms: {bad}\n"),
            "cluster.heartbeat_ms",
            "a heartbeat must arrive before followers time out",
        );
    }
    cluster_config("", "  heartbeat_ms: 599\n").unwrap();
    assert_cluster_invalid(
        "",
        "  write_timeout_ms: 0\n",
        "cluster.write_timeout_ms",
        "at least 1",
    );
}

#[test]
fn raft_listen_needs_its_own_address() {
    assert_cluster_invalid(
        "",
        "  raft_listen: \"localhost:7411\"\n",
        "cluster.raft_listen",
        "IP:port",
    );
    for same in ["127.0.0.1:7401", "0.0.0.0:7401"] {
        assert_cluster_invalid(
            "",
            &format!("  raft_listen: \"{same}\"\n"),
            "cluster.raft_listen",
            "network.bind_addr",
        );
    }
    let metrics = "metrics:\n  enabled: true\n  bind_addr: \"127.0.0.1:7411\"\n";
    assert_cluster_invalid(metrics, "", "cluster.raft_listen", "metrics.bind_addr");
    // A metrics address that is not served does not collide.
    cluster_config("metrics:\n  bind_addr: \"127.0.0.1:7411\"\n", "").unwrap();
    // Another port on a wildcard address is fine.
    cluster_config(
        "",
        "  raft_listen: \"0.0.0.0:7411\"\n  advertise_raft: \"h1:7411\"\n",
    )
    .unwrap();
}

#[test]
fn wildcard_listeners_need_an_advertised_address() {
    let wildcard_bind = "network:\n  bind_addr: \"0.0.0.0:7401\"\n";
    assert_cluster_invalid(wildcard_bind, "", "cluster.advertise_client", "wildcard");
    cluster_config(wildcard_bind, "  advertise_client: \"h1:7401\"\n").unwrap();
    let port0 = "network:\n  bind_addr: \"127.0.0.1:0\"\n";
    assert_cluster_invalid(port0, "", "cluster.advertise_client", "port 0");
    assert_cluster_invalid(
        "",
        "  raft_listen: \"[::]:7411\"\n",
        "cluster.advertise_raft",
        "wildcard",
    );
    cluster_config(
        "",
        "  raft_listen: \"[::]:7411\"\n  advertise_raft: \"[::1]:7411\"\n",
    )
    .unwrap();
}

#[test]
fn advertised_addresses_must_be_host_port() {
    for bad in [
        "h1",
        "h1:0",
        "h1:x",
        ":7401",
        "::1:7401",
        "0.0.0.0:7401",
        "[::]:7401",
        "a b:1",
        "[::1:7401",
    ] {
        for key in ["advertise_client", "advertise_raft"] {
            assert_cluster_invalid(
                "",
                &format!("  {key}: \"{bad}\"\n"),
                &format!("cluster.{key}"),
                "host:port",
            );
        }
    }
    for ok in [
        "h1.example.com:7401",
        "10.0.0.1:65535",
        "[::1]:7401",
        "node_2:1",
    ] {
        cluster_config("", &format!("  advertise_client: \"{ok}\"\n")).unwrap();
    }
}

#[test]
fn initial_members_are_checked() {
    let members = |entries: &str| format!("  initial_members:\n{entries}");
    let me = "    1: {client: \"127.0.0.1:7401\", raft: \"127.0.0.1:7411\"}\n";
    let two = "    2: {client: \"127.0.0.1:7402\", raft: \"127.0.0.1:7412\"}\n";
    cluster_config("", &members(&format!("{me}{two}"))).unwrap();
    assert_cluster_invalid(
        "",
        &members(two),
        "cluster.initial_members",
        "must list this node (cluster.node_id 1)",
    );
    assert_cluster_invalid(
        "",
        "  initial_members: {}\n",
        "cluster.initial_members",
        "must list this node",
    );
    assert_cluster_invalid(
        "",
        &members(&format!("{me}    0: {{client: \"h:1\", raft: \"h:2\"}}\n")),
        "cluster.initial_members.0",
        "at least 1",
    );
    assert_cluster_invalid(
        "",
        &members(&format!(
            "{me}    2: {{client: \"127.0.0.1:7402\", raft: \"nope\"}}\n"
        )),
        "cluster.initial_members.2.raft",
        "host:port",
    );
    assert_cluster_invalid(
        "",
        &members(&format!(
            "{me}    2: {{client: \"127.0.0.1:0\", raft: \"h:1\"}}\n"
        )),
        "cluster.initial_members.2.client",
        "host:port",
    );
    // This node's entry must be what it advertises.
    assert_cluster_invalid(
        "",
        &members("    1: {client: \"127.0.0.1:7401\", raft: \"127.0.0.1:7499\"}\n"),
        "cluster.initial_members.1",
        "cluster.advertise_raft",
    );
    assert_cluster_invalid(
        "",
        &format!("  advertise_client: \"h1:7401\"\n{}", members(me)),
        "cluster.initial_members.1",
        "cluster.advertise_client \"h1:7401\"",
    );
}

#[test]
fn cluster_mode_needs_every_write_fsync() {
    for policy in ["never", "!every_n 10", "{every_ms: 5}"] {
        assert_cluster_invalid(
            &format!("storage:\n  fsync_policy: {policy}\n"),
            "",
            "storage.fsync_policy",
            "durability contract",
        );
    }
    cluster_config("storage:\n  fsync_policy: every_write\n", "").unwrap();
    // Without a cluster, relaxed syncing stays allowed.
    Config::from_yaml("storage:\n  fsync_policy: never\n")
        .unwrap()
        .validate()
        .unwrap();
}

#[test]
fn cluster_peers_need_tls_or_the_test_only_plaintext_switch() {
    let plain = "cluster: {cluster_id: a, node_id: 1, raft_listen: \"127.0.0.1:7411\"}\n";
    let c = Config::from_yaml(plain).unwrap();
    match c.validate() {
        Err(ConfigError::Invalid { key, message }) => {
            assert_eq!(key, "cluster.insecure_plaintext");
            assert!(message.contains("peers need TLS"), "{message}");
            assert!(message.contains("tests only"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // TLS on: the peers' mutual TLS needs the client CA.
    let tls = "tls:\n  enabled: true\n  cert_path: c.pem\n  key_path: k.pem\n";
    match Config::from_yaml(&format!("{tls}{plain}"))
        .unwrap()
        .validate()
    {
        Err(ConfigError::Invalid { key, message }) => {
            assert_eq!(key, "tls.client_ca_path");
            assert!(message.contains("mutual TLS"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    Config::from_yaml(&format!("{tls}  client_ca_path: ca.pem\n{plain}"))
        .unwrap()
        .validate()
        .unwrap();
}

fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k: &str| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn cluster_env_overrides_the_file_section() {
    let env = env_of(&[
        ("RSTMDB_CLUSTER_ID", "from-env"),
        ("RSTMDB_NODE_ID", "2"),
        ("RSTMDB_RAFT_LISTEN", "127.0.0.1:7412"),
        ("RSTMDB_ADVERTISE_CLIENT", "h2:7402"),
        ("RSTMDB_ADVERTISE_RAFT", "h2:7412"),
    ]);
    let mut c = Config::from_yaml(CLUSTER).unwrap();
    c.apply_env(&env).unwrap();
    c.validate().unwrap();
    let k = c.cluster.unwrap();
    assert_eq!(k.cluster_id, "from-env");
    assert_eq!(k.node_id, 2);
    assert_eq!(k.raft_listen, "127.0.0.1:7412");
    assert_eq!(k.advertise_client.as_deref(), Some("h2:7402"));
    assert_eq!(k.advertise_raft.as_deref(), Some("h2:7412"));
    assert!(
        k.insecure_plaintext,
        "keys without a variable keep the file's value"
    );
    // One variable alone overrides just its key.
    let mut c = Config::from_yaml(CLUSTER).unwrap();
    c.apply_env(&env_of(&[("RSTMDB_NODE_ID", "3")])).unwrap();
    let k = c.cluster.unwrap();
    assert_eq!((k.node_id, k.cluster_id.as_str()), (3, "prod-eu-1"));
}

#[test]
fn cluster_env_creates_the_section_only_with_id_node_and_listener() {
    let env = env_of(&[
        ("RSTMDB_CLUSTER_ID", "c1"),
        ("RSTMDB_NODE_ID", "1"),
        ("RSTMDB_RAFT_LISTEN", "127.0.0.1:7411"),
        ("RSTMDB_ADVERTISE_CLIENT", "h1:7401"),
        ("RSTMDB_TLS_ENABLED", "true"),
        ("RSTMDB_TLS_CLIENT_CA", "ca.pem"),
    ]);
    let c = Config::load(None, &env).unwrap();
    let mut expected = ClusterConfig::new("c1".into(), 1, "127.0.0.1:7411".into());
    expected.advertise_client = Some("h1:7401".into());
    assert_eq!(c.cluster, Some(expected));
    // Partial sets are errors naming the variable, never ignored.
    for (vars, missing) in [
        (
            &[("RSTMDB_CLUSTER_ID", "c1")][..],
            "RSTMDB_NODE_ID, RSTMDB_RAFT_LISTEN",
        ),
        (
            &[("RSTMDB_CLUSTER_ID", "c1"), ("RSTMDB_NODE_ID", "1")][..],
            "missing: RSTMDB_RAFT_LISTEN",
        ),
        (&[("RSTMDB_ADVERTISE_RAFT", "h:1")][..], "RSTMDB_CLUSTER_ID"),
    ] {
        let env = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        match Config::load(None, &env) {
            Err(ConfigError::Env { var, message }) => {
                assert_eq!(var, vars[0].0);
                assert!(message.contains(missing), "{message}");
                assert!(message.contains("no cluster: section"), "{message}");
            }
            other => panic!("{vars:?}: {other:?}"),
        }
    }
}

#[test]
fn cluster_env_values_are_checked() {
    let mut c = Config::from_yaml(CLUSTER).unwrap();
    match c.apply_env(&env_of(&[("RSTMDB_NODE_ID", "one")])) {
        Err(ConfigError::Env { var, .. }) => assert_eq!(var, "RSTMDB_NODE_ID"),
        other => panic!("{other:?}"),
    }
    // Values from the environment go through the same validation as the file's.
    let env = env_of(&[
        ("RSTMDB_CLUSTER_ID", "c1"),
        ("RSTMDB_NODE_ID", "0"),
        ("RSTMDB_RAFT_LISTEN", "127.0.0.1:7411"),
        ("RSTMDB_TLS_ENABLED", "true"),
    ]);
    assert!(matches!(
        Config::load(None, &env),
        Err(ConfigError::Invalid { key, .. }) if key == "cluster.node_id"
    ));
    // Created from the environment with TLS off: the plaintext switch is file-only.
    let env = env_of(&[
        ("RSTMDB_CLUSTER_ID", "c1"),
        ("RSTMDB_NODE_ID", "1"),
        ("RSTMDB_RAFT_LISTEN", "127.0.0.1:7411"),
    ]);
    assert!(matches!(
        Config::load(None, &env),
        Err(ConfigError::Invalid { key, .. }) if key == "cluster.insecure_plaintext"
    ));
    // With TLS on, peers authenticate each other against the client CA: it must be set.
    let tls = &[
        ("RSTMDB_CLUSTER_ID", "c1"),
        ("RSTMDB_NODE_ID", "1"),
        ("RSTMDB_RAFT_LISTEN", "127.0.0.1:7411"),
        ("RSTMDB_TLS_ENABLED", "true"),
    ];
    match Config::load(None, &env_of(tls)) {
        Err(ConfigError::Invalid { key, message }) => {
            assert_eq!(key, "tls.client_ca_path");
            assert!(
                message.contains("peers authenticate each other"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let with_ca = &[
        ("RSTMDB_CLUSTER_ID", "c1"),
        ("RSTMDB_NODE_ID", "1"),
        ("RSTMDB_RAFT_LISTEN", "127.0.0.1:7411"),
        ("RSTMDB_TLS_ENABLED", "true"),
        ("RSTMDB_TLS_CLIENT_CA", "/etc/rstmdb/ca.pem"),
    ];
    let c = Config::load(None, &env_of(with_ca)).unwrap();
    assert!(c.cluster.is_some() && c.tls.enabled);
}
