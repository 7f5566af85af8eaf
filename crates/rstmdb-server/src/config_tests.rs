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
