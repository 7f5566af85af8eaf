//! Server configuration: YAML file (`--config` or `RSTMDB_CONFIG`), then environment
//! overrides, then validation. Every key is honoured; an unknown key or a bad value is a
//! startup error that names it (decisions.md). The `cluster:` section lives in
//! [`cluster`].

pub mod cluster;

pub use cluster::{ClusterConfig, MemberAddrs, ReadConsistency};

use rstmdb_storage::{FsyncPolicy, StorageConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key {key}: {message}")]
    Invalid { key: String, message: String },
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub network: NetworkConfig,
    pub storage: StorageSection,
    pub compaction: CompactionConfig,
    pub idempotency: IdempotencyConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub metrics: MetricsConfig,
    pub logging: LoggingConfig,
    pub audit: AuditConfig,
    /// Absent: a single node (no raft, no peer listener).
    pub cluster: Option<ClusterConfig>,
}

/// Largest `network.worker_threads`.
pub const MAX_WORKER_THREADS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// `IP:port`; port 0 picks a free port (logged at startup).
    pub bind_addr: String,
    /// A connection with no request for this long is closed (subscribers must PING).
    pub idle_timeout_secs: u64,
    /// Connections beyond this are accepted and closed at once.
    pub max_connections: usize,
    /// Requests of one connection being processed at once; reading pauses beyond it.
    pub max_inflight_per_connection: usize,
    pub max_subscriptions_per_connection: usize,
    /// Events buffered per connection before a slow subscriber is cut off.
    pub subscription_queue_depth: usize,
    pub max_frame_bytes: usize,
    /// With `auth.required`: a connection that has not authenticated within this is closed
    /// (PING does not extend it).
    pub auth_timeout_secs: u64,
    /// With `auth.required`: the largest frame or line accepted before the connection has
    /// authenticated (HELLO and AUTH are small); refused from its header, like an oversized
    /// frame.
    pub max_frame_bytes_before_auth: usize,
    /// With `auth.required`: connections from one address (an IPv6 address's /64) that have
    /// not authenticated yet, at most; more are closed at once.
    pub max_unauthenticated_per_address: usize,
    /// Threads serving connections; 0 = one fewer than the CPUs (at least one), since the
    /// commit pipeline keeps threads of its own busy (see `worker_threads()`).
    pub worker_threads: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            bind_addr: "127.0.0.1:7401".into(),
            idle_timeout_secs: 300,
            max_connections: 1000,
            max_inflight_per_connection: 64,
            max_subscriptions_per_connection: 100,
            subscription_queue_depth: 1024,
            max_frame_bytes: rstmdb_protocol::MAX_FRAME_PAYLOAD_BYTES,
            auth_timeout_secs: 10,
            max_frame_bytes_before_auth: 64 * 1024,
            max_unauthenticated_per_address: 64,
            worker_threads: 0,
        }
    }
}

/// `fsync_policy` in YAML: `every_write`, `never`, `!every_n 100`, `{every_n: 100}`,
/// `!every_ms 10` or `{every_ms: 10}` (decisions.md: both spellings load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicyConfig {
    EveryWrite,
    Never,
    EveryN(u64),
    EveryMs(u64),
}

impl<'de> Deserialize<'de> for FsyncPolicyConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde_yaml::Value;
        let expected = "every_write, never, !every_n N, !every_ms N, {every_n: N} or {every_ms: N}";
        let param = |kind: &str, v: &Value| -> Result<FsyncPolicyConfig, String> {
            let n = v
                .as_u64()
                .ok_or_else(|| format!("{kind} needs a whole number, got {v:?}"))?;
            match kind {
                "every_n" => Ok(FsyncPolicyConfig::EveryN(n)),
                "every_ms" => Ok(FsyncPolicyConfig::EveryMs(n)),
                _ => Err(format!(
                    "unknown fsync policy {kind:?}; expected {expected}"
                )),
            }
        };
        let v = Value::deserialize(d)?;
        let r = match &v {
            Value::String(s) if s == "every_write" => Ok(FsyncPolicyConfig::EveryWrite),
            Value::String(s) if s == "never" => Ok(FsyncPolicyConfig::Never),
            Value::Tagged(t) => param(t.tag.to_string().trim_start_matches('!'), &t.value),
            Value::Mapping(m) if m.len() == 1 => match m.iter().next() {
                Some((Value::String(k), n)) => param(k, n),
                _ => Err(format!("expected {expected}")),
            },
            other => Err(format!("expected {expected}, got {other:?}")),
        };
        r.map_err(serde::de::Error::custom)
    }
}

impl From<FsyncPolicyConfig> for FsyncPolicy {
    fn from(p: FsyncPolicyConfig) -> Self {
        match p {
            FsyncPolicyConfig::EveryWrite => FsyncPolicy::EveryWrite,
            FsyncPolicyConfig::Never => FsyncPolicy::Never,
            FsyncPolicyConfig::EveryN(n) => FsyncPolicy::EveryN(n),
            FsyncPolicyConfig::EveryMs(ms) => FsyncPolicy::EveryMs(ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    pub data_dir: PathBuf,
    pub wal_segment_size_mb: u64,
    pub fsync_policy: FsyncPolicyConfig,
    pub max_machine_versions: u32,
    pub cache_capacity_mb: u64,
    pub instance_cache_mb: u64,
    pub wal_retention_mb: u64,
    pub max_ctx_bytes: usize,
    pub max_batch_ops: usize,
    pub commit_queue_depth: usize,
    pub allow_flush_all: bool,
    /// CREATE_INSTANCE may reuse the id of a deleted instance (0.3.0's key and default).
    pub allow_instance_recreate: bool,
    pub encryption: EncryptionSection,
    /// WAL segments are copied here before a checkpoint deletes them (point-in-time recovery).
    pub wal_archive_dir: Option<PathBuf>,
}

/// `storage.encryption`: encryption at rest (SECURITY.md).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionSection {
    /// 32 raw bytes or 64 hex characters, mode 0600/0400. Absent: the data is plaintext.
    pub key_file: Option<PathBuf>,
}

impl Default for StorageSection {
    fn default() -> Self {
        let d = StorageConfig::new("./data");
        StorageSection {
            data_dir: d.data_dir,
            wal_segment_size_mb: d.wal_segment_size_mb,
            fsync_policy: FsyncPolicyConfig::EveryWrite,
            max_machine_versions: d.max_machine_versions,
            cache_capacity_mb: d.cache_capacity_mb,
            instance_cache_mb: d.instance_cache_mb,
            wal_retention_mb: d.wal_retention_mb,
            max_ctx_bytes: d.max_ctx_bytes,
            max_batch_ops: d.max_batch_ops,
            commit_queue_depth: d.commit_queue_depth,
            allow_flush_all: false,
            allow_instance_recreate: d.allow_instance_recreate,
            encryption: EncryptionSection::default(),
            wal_archive_dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// Automatic checkpoints; off if false or both thresholds are 0.
    pub enabled: bool,
    pub events_threshold: u64,
    pub size_threshold_mb: u64,
    pub min_interval_secs: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            enabled: true,
            events_threshold: 10_000,
            size_threshold_mb: 100,
            min_interval_secs: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    pub ttl_hours: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig { ttl_hours: 24 }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub required: bool,
    /// Lowercase or uppercase SHA-256 hex of accepted tokens.
    pub token_hashes: Vec<String>,
    /// One entry per line: `<hash>` (admin) or `<hash> <name> <role>[,<machine-glob>…]`
    /// (blank lines and `#` comments ignored).
    pub secrets_file: Option<PathBuf>,
    pub allow_insecure_secrets_file: bool,
    /// With mTLS: a verified client certificate whose subject CN is listed in
    /// `cert_identities` authenticates the connection without AUTH.
    pub identity_from_cert: bool,
    /// Certificate CN → `<role>[,<machine-glob>…]`.
    pub cert_identities: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub enabled: bool,
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    pub require_client_cert: bool,
    pub client_ca_path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub bind_addr: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: false,
            bind_addr: "127.0.0.1:9090".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Absent: on exactly when `path` is set (a path alone must not silently audit nothing);
    /// `false` turns the log off even with a path, `true` without one writes to stdout.
    pub enabled: Option<bool>,
    /// A file to append JSON lines to; stdout when absent.
    pub path: Option<PathBuf>,
    /// Records buffered for the writer thread; when it is this far behind (a stalled disk or
    /// pipe), further records are dropped and counted rather than stalling requests.
    pub queue_depth: usize,
}

/// `audit.queue_depth` when not set.
pub const AUDIT_QUEUE_DEPTH: usize = 65_536;

/// Largest `audit.queue_depth`.
pub const MAX_AUDIT_QUEUE_DEPTH: usize = 16 * 1024 * 1024;

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: None,
            path: None,
            queue_depth: AUDIT_QUEUE_DEPTH,
        }
    }
}

impl AuditConfig {
    /// Whether the audit log is on: `enabled` when given, otherwise whether `path` is set.
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(self.path.is_some())
    }
}

impl Config {
    /// Loads `path` (if any), applies environment overrides from `env`, validates.
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = match path {
            Some(p) => Self::from_file(p)?,
            None => Config::default(),
        };
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            }
        })
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse().map_err(|e: T::Err| ConfigError::Env {
                var: var.into(),
                message: format!("{e} (got {v:?})"),
            })
        }
        fn boolean(var: &str, v: &str) -> Result<bool, ConfigError> {
            match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::Env {
                    var: var.into(),
                    message: format!("expected 1/0, true/false, yes/no or on/off, got {v:?}"),
                }),
            }
        }
        if let Some(v) = env("RSTMDB_BIND") {
            self.network.bind_addr = v;
        }
        if let Some(v) = env("RSTMDB_IDLE_TIMEOUT") {
            self.network.idle_timeout_secs = parse("RSTMDB_IDLE_TIMEOUT", &v)?;
        }
        if let Some(v) = env("RSTMDB_MAX_CONNECTIONS") {
            self.network.max_connections = parse("RSTMDB_MAX_CONNECTIONS", &v)?;
        }
        if let Some(v) = env("RSTMDB_WORKER_THREADS") {
            self.network.worker_threads = parse("RSTMDB_WORKER_THREADS", &v)?;
        }
        if let Some(v) = env("RSTMDB_DATA") {
            self.storage.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("RSTMDB_WAL_SEGMENT_SIZE_MB") {
            self.storage.wal_segment_size_mb = parse("RSTMDB_WAL_SEGMENT_SIZE_MB", &v)?;
        }
        if let Some(v) = env("RSTMDB_FSYNC_POLICY") {
            self.storage.fsync_policy = parse_fsync_env(&v)?;
        }
        if let Some(v) = env("RSTMDB_ALLOW_FLUSH_ALL") {
            self.storage.allow_flush_all = boolean("RSTMDB_ALLOW_FLUSH_ALL", &v)?;
        }
        if let Some(v) = env("RSTMDB_ALLOW_INSTANCE_RECREATE") {
            self.storage.allow_instance_recreate = boolean("RSTMDB_ALLOW_INSTANCE_RECREATE", &v)?;
        }
        if let Some(v) = env("RSTMDB_ENCRYPTION_KEY_FILE") {
            self.storage.encryption.key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env("RSTMDB_MAX_MACHINE_VERSIONS") {
            self.storage.max_machine_versions = parse("RSTMDB_MAX_MACHINE_VERSIONS", &v)?;
        }
        if let Some(v) = env("RSTMDB_COMPACT_ENABLED") {
            self.compaction.enabled = boolean("RSTMDB_COMPACT_ENABLED", &v)?;
        }
        if let Some(v) = env("RSTMDB_COMPACT_EVENTS") {
            self.compaction.events_threshold = parse("RSTMDB_COMPACT_EVENTS", &v)?;
        }
        if let Some(v) = env("RSTMDB_COMPACT_SIZE_MB") {
            self.compaction.size_threshold_mb = parse("RSTMDB_COMPACT_SIZE_MB", &v)?;
        }
        if let Some(v) = env("RSTMDB_COMPACT_INTERVAL") {
            self.compaction.min_interval_secs = parse("RSTMDB_COMPACT_INTERVAL", &v)?;
        }
        if let Some(v) = env("RSTMDB_AUTH_REQUIRED") {
            self.auth.required = boolean("RSTMDB_AUTH_REQUIRED", &v)?;
        }
        if let Some(v) = env("RSTMDB_AUTH_TOKEN_HASH")
            && !v.trim().is_empty()
        {
            self.auth.token_hashes.push(v.trim().to_owned());
        }
        if let Some(v) = env("RSTMDB_AUTH_SECRETS_FILE") {
            self.auth.secrets_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env("RSTMDB_TLS_ENABLED") {
            self.tls.enabled = boolean("RSTMDB_TLS_ENABLED", &v)?;
        }
        if let Some(v) = env("RSTMDB_TLS_CERT") {
            self.tls.cert_path = Some(PathBuf::from(v));
        }
        if let Some(v) = env("RSTMDB_TLS_KEY") {
            self.tls.key_path = Some(PathBuf::from(v));
        }
        if let Some(v) = env("RSTMDB_TLS_REQUIRE_CLIENT_CERT") {
            self.tls.require_client_cert = boolean("RSTMDB_TLS_REQUIRE_CLIENT_CERT", &v)?;
        }
        if let Some(v) = env("RSTMDB_TLS_CLIENT_CA") {
            self.tls.client_ca_path = Some(PathBuf::from(v));
        }
        if let Some(v) = env("RSTMDB_AUDIT_ENABLED") {
            self.audit.enabled = Some(boolean("RSTMDB_AUDIT_ENABLED", &v)?);
        }
        if let Some(v) = env("RSTMDB_AUDIT_PATH") {
            self.audit.path = Some(PathBuf::from(v));
        }
        if let Some(v) = env("RSTMDB_METRICS_ENABLED") {
            self.metrics.enabled = boolean("RSTMDB_METRICS_ENABLED", &v)?;
        }
        if let Some(v) = env("RSTMDB_METRICS_BIND") {
            self.metrics.bind_addr = v;
        }
        if let Some(v) = env("RSTMDB_LOG_FORMAT") {
            self.logging.format = match v.trim().to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ConfigError::Env {
                        var: "RSTMDB_LOG_FORMAT".into(),
                        message: format!("expected text or json, got {v:?}"),
                    });
                }
            };
        }
        cluster::apply_env(&mut self.cluster, env)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        self.bind_addr()?;
        let n = &self.network;
        if n.max_connections == 0 {
            return Err(invalid(
                "network.max_connections",
                "must be at least 1".into(),
            ));
        }
        if n.max_inflight_per_connection == 0 {
            return Err(invalid(
                "network.max_inflight_per_connection",
                "must be at least 1".into(),
            ));
        }
        if n.subscription_queue_depth == 0 {
            return Err(invalid(
                "network.subscription_queue_depth",
                "must be at least 1".into(),
            ));
        }
        if n.worker_threads > MAX_WORKER_THREADS {
            return Err(invalid(
                "network.worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (0 = automatic)"),
            ));
        }
        if n.idle_timeout_secs == 0 {
            return Err(invalid(
                "network.idle_timeout_secs",
                "must be at least 1".into(),
            ));
        }
        if n.max_frame_bytes == 0 || n.max_frame_bytes > rstmdb_protocol::MAX_FRAME_PAYLOAD_BYTES {
            return Err(invalid(
                "network.max_frame_bytes",
                format!(
                    "must be between 1 and {}",
                    rstmdb_protocol::MAX_FRAME_PAYLOAD_BYTES
                ),
            ));
        }
        if n.auth_timeout_secs == 0 {
            return Err(invalid(
                "network.auth_timeout_secs",
                "must be at least 1".into(),
            ));
        }
        if n.max_frame_bytes_before_auth < 1024 {
            return Err(invalid(
                "network.max_frame_bytes_before_auth",
                "must be at least 1024 (an AUTH with a long token must fit)".into(),
            ));
        }
        if n.max_unauthenticated_per_address == 0 {
            return Err(invalid(
                "network.max_unauthenticated_per_address",
                "must be at least 1".into(),
            ));
        }
        if self.audit.queue_depth == 0 || self.audit.queue_depth > MAX_AUDIT_QUEUE_DEPTH {
            // The channel's slots are allocated up front.
            return Err(invalid(
                "audit.queue_depth",
                format!("must be between 1 and {MAX_AUDIT_QUEUE_DEPTH}"),
            ));
        }
        let s = &self.storage;
        if s.wal_segment_size_mb == 0 || s.wal_segment_size_mb > 4096 {
            return Err(invalid(
                "storage.wal_segment_size_mb",
                "must be between 1 and 4096".into(),
            ));
        }
        if s.max_batch_ops == 0 || s.max_batch_ops > 10_000 {
            return Err(invalid(
                "storage.max_batch_ops",
                "must be between 1 and 10000".into(),
            ));
        }
        if s.max_ctx_bytes == 0 {
            return Err(invalid(
                "storage.max_ctx_bytes",
                "must be at least 1".into(),
            ));
        }
        if s.encryption
            .key_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid(
                "storage.encryption.key_file",
                "must be a path (omit the key for no encryption)".into(),
            ));
        }
        if let Some(a) = &s.wal_archive_dir {
            if a.as_os_str().is_empty() {
                return Err(invalid(
                    "storage.wal_archive_dir",
                    "must not be empty (leave the key out to turn archiving off)".into(),
                ));
            }
            // Segments copied into the live WAL directory (or the data directory itself)
            // would be taken for log segments.
            let wal = s.data_dir.join("wal");
            if a == &wal || a == &s.data_dir || a.starts_with(&wal) {
                return Err(invalid(
                    "storage.wal_archive_dir",
                    format!(
                        "must be outside the data directory's WAL ({})",
                        wal.display()
                    ),
                ));
            }
        }
        if s.commit_queue_depth == 0 {
            return Err(invalid(
                "storage.commit_queue_depth",
                "must be at least 1".into(),
            ));
        }
        if let FsyncPolicyConfig::EveryN(0) | FsyncPolicyConfig::EveryMs(0) = s.fsync_policy {
            return Err(invalid(
                "storage.fsync_policy",
                "every_n and every_ms need a value of at least 1".into(),
            ));
        }
        if self.idempotency.ttl_hours == 0 {
            return Err(invalid(
                "idempotency.ttl_hours",
                "must be at least 1".into(),
            ));
        }
        for (i, h) in self.auth.token_hashes.iter().enumerate() {
            if !is_sha256_hex(h) {
                return Err(invalid(
                    &format!("auth.token_hashes[{i}]"),
                    "must be 64 hex digits (a SHA-256 of the token)".into(),
                ));
            }
        }
        if self.auth.identity_from_cert && !(self.tls.enabled && self.tls.require_client_cert) {
            return Err(invalid(
                "auth.identity_from_cert",
                "needs tls.enabled and tls.require_client_cert (the identity comes from a verified client certificate)".into(),
            ));
        }
        self.metrics_addr()?;
        match &self.cluster {
            Some(c) => c.validate(self),
            None => Ok(()),
        }
    }

    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.network
            .bind_addr
            .parse()
            .map_err(|e| ConfigError::Invalid {
                key: "network.bind_addr".into(),
                message: format!("{e} (expected IP:port, got {:?})", self.network.bind_addr),
            })
    }

    /// Threads of the connection runtime: `network.worker_threads`, or for 0 one fewer than
    /// the CPUs, at least one. The log and apply stages are threads of their own that run
    /// under write load: measured on 2 cores, one connection thread instead of two cut the
    /// server's CPU per GET from 10.7–13 µs to 8.6–8.7 µs (64 connections) and raised
    /// throughput, because the two no longer woke and stole from each other across a core the
    /// storage threads and the clients also need.
    pub fn worker_threads(&self) -> usize {
        match self.network.worker_threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1),
            n => n,
        }
    }

    pub fn metrics_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.metrics
            .bind_addr
            .parse()
            .map_err(|e| ConfigError::Invalid {
                key: "metrics.bind_addr".into(),
                message: format!("{e} (expected IP:port, got {:?})", self.metrics.bind_addr),
            })
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.network.idle_timeout_secs)
    }

    /// The storage configuration with the encryption key read from
    /// `storage.encryption.key_file` (if set): what the server opens the database with.
    pub fn storage_config_with_key(&self) -> Result<StorageConfig, rstmdb_storage::KeyError> {
        let mut c = self.storage_config();
        c.encryption = match &self.storage.encryption.key_file {
            Some(path) => Some(rstmdb_storage::EncryptionKey::from_file(path)?),
            None => None,
        };
        Ok(c)
    }

    /// The storage configuration without the encryption key (which needs a file read: see
    /// [`Config::storage_config_with_key`]).
    pub fn storage_config(&self) -> StorageConfig {
        let mut c = StorageConfig::new(&self.storage.data_dir);
        let s = &self.storage;
        c.wal_segment_size_mb = s.wal_segment_size_mb;
        c.fsync_policy = s.fsync_policy.into();
        c.cache_capacity_mb = s.cache_capacity_mb;
        c.instance_cache_mb = s.instance_cache_mb;
        c.wal_retention_mb = s.wal_retention_mb;
        c.max_machine_versions = s.max_machine_versions;
        c.max_ctx_bytes = s.max_ctx_bytes;
        c.max_batch_ops = s.max_batch_ops;
        c.commit_queue_depth = s.commit_queue_depth;
        c.allow_flush_all = s.allow_flush_all;
        c.allow_instance_recreate = s.allow_instance_recreate;
        c.wal_archive_dir = s.wal_archive_dir.clone();
        c.idempotency_ttl = Duration::from_secs(self.idempotency.ttl_hours.saturating_mul(3600));
        let compaction_on = self.compaction.enabled;
        c.checkpoint_events_threshold = if compaction_on {
            self.compaction.events_threshold
        } else {
            0
        };
        c.checkpoint_size_threshold_mb = if compaction_on {
            self.compaction.size_threshold_mb
        } else {
            0
        };
        c.checkpoint_min_interval = Duration::from_secs(self.compaction.min_interval_secs);
        c.subscriber_queue_depth = self.network.subscription_queue_depth.max(1024);
        c
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `RSTMDB_FSYNC_POLICY`: `every_write`, `never`, `every_n:N`, `every_ms:N`.
fn parse_fsync_env(v: &str) -> Result<FsyncPolicyConfig, ConfigError> {
    let err = || ConfigError::Env {
        var: "RSTMDB_FSYNC_POLICY".into(),
        message: format!("expected every_write, never, every_n:N or every_ms:N, got {v:?}"),
    };
    let lower = v.trim().to_ascii_lowercase();
    match lower.as_str() {
        "every_write" | "everywrite" => return Ok(FsyncPolicyConfig::EveryWrite),
        "never" => return Ok(FsyncPolicyConfig::Never),
        _ => {}
    }
    let (kind, n) = lower.split_once(':').ok_or_else(err)?;
    let n: u64 = n.trim().parse().map_err(|_| err())?;
    match kind {
        "every_n" => Ok(FsyncPolicyConfig::EveryN(n)),
        "every_ms" => Ok(FsyncPolicyConfig::EveryMs(n)),
        _ => Err(err()),
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
