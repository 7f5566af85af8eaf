//! The `cluster:` section: a raft voter's identity, peer listener, members and timings
//! (replication.md, Decisions and Draft §4). Absent = a single node, exactly as before.
//!
//! Parsing and start-up checks only; the cluster runtime reads the validated values through
//! the accessors below.

use super::{Config, ConfigError, FsyncPolicyConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// `cluster:`. Required: `cluster_id`, `node_id`, `raft_listen`; the rest have defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// 1–64 characters of `[A-Za-z0-9._-]`, checked on every peer RPC.
    pub cluster_id: String,
    /// This node's raft id, at least 1, never reused.
    pub node_id: u64,
    /// `IP:port` of the peer (raft) listener.
    pub raft_listen: String,
    /// `host:port` clients are told to use for this node; absent: `network.bind_addr`
    /// (see [`ClusterConfig::advertised_client`]).
    #[serde(default)]
    pub advertise_client: Option<String>,
    /// `host:port` peers dial for this node; absent: `raft_listen`
    /// (see [`ClusterConfig::advertised_raft`]).
    #[serde(default)]
    pub advertise_raft: Option<String>,
    /// Node id → addresses; read only by a node whose data directory is empty (bootstrap).
    #[serde(default)]
    pub initial_members: Option<BTreeMap<u64, MemberAddrs>>,
    /// Default consistency of reads.
    #[serde(default)]
    pub read_consistency: ReadConsistency,
    /// A write on a follower is forwarded to the leader.
    #[serde(default = "yes")]
    pub forward_writes: bool,
    /// A write not committed within this is `REPLICATION_TIMEOUT`.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// `[min, max]` of the randomised election timeout.
    #[serde(default = "default_election_timeout_ms")]
    pub election_timeout_ms: [u64; 2],
    /// Leader heartbeat interval.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A raft snapshot is taken once the log since the last one exceeds this many MiB.
    #[serde(default = "default_snapshot_log_mb")]
    pub snapshot_log_mb: u64,
    /// Peers without TLS are refused unless this is true (tests only); no effect with TLS on.
    #[serde(default)]
    pub insecure_plaintext: bool,
}

/// One entry of `cluster.initial_members`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberAddrs {
    /// `host:port` clients use.
    pub client: String,
    /// `host:port` peers dial.
    pub raft: String,
}

/// `cluster.read_consistency`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadConsistency {
    /// Read index: every read sees every write committed before it began.
    #[default]
    Linearizable,
    /// The leader's lease: no round trip, assumes bounded clock-rate drift.
    Lease,
    /// This node's applied state, possibly behind.
    Stale,
}

fn yes() -> bool {
    true
}
/// `cluster.write_timeout_ms` when not set.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 5000;
/// `cluster.election_timeout_ms` when not set.
pub const DEFAULT_ELECTION_TIMEOUT_MS: [u64; 2] = [600, 1200];
/// `cluster.heartbeat_ms` when not set.
pub const DEFAULT_HEARTBEAT_MS: u64 = 150;
/// `cluster.snapshot_log_mb` when not set.
pub const DEFAULT_SNAPSHOT_LOG_MB: u64 = 256;

fn default_write_timeout_ms() -> u64 {
    DEFAULT_WRITE_TIMEOUT_MS
}
fn default_election_timeout_ms() -> [u64; 2] {
    DEFAULT_ELECTION_TIMEOUT_MS
}
fn default_heartbeat_ms() -> u64 {
    DEFAULT_HEARTBEAT_MS
}
fn default_snapshot_log_mb() -> u64 {
    DEFAULT_SNAPSHOT_LOG_MB
}

/// The variables that together create a `cluster:` section when the file has none.
const CREATING_VARS: [&str; 3] = ["RSTMDB_CLUSTER_ID", "RSTMDB_NODE_ID", "RSTMDB_RAFT_LISTEN"];
/// Every variable that overrides a `cluster.*` key.
const CLUSTER_VARS: [&str; 5] = [
    "RSTMDB_CLUSTER_ID",
    "RSTMDB_NODE_ID",
    "RSTMDB_RAFT_LISTEN",
    "RSTMDB_ADVERTISE_CLIENT",
    "RSTMDB_ADVERTISE_RAFT",
];

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Applies the `cluster.*` environment overrides to `slot` (the file's `cluster:` section).
/// With a section, each set variable overrides its key. Without one, `RSTMDB_CLUSTER_ID`,
/// `RSTMDB_NODE_ID` and `RSTMDB_RAFT_LISTEN` together create it (other keys at their
/// defaults, plus the advertise variables); any cluster variable set without all three is an
/// error, never silently ignored.
pub(super) fn apply_env(
    slot: &mut Option<ClusterConfig>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if slot.is_none() {
        let set: Vec<&str> = CLUSTER_VARS
            .into_iter()
            .filter(|v| env(v).is_some())
            .collect();
        let Some(first) = set.first() else {
            return Ok(());
        };
        let missing: Vec<&str> = CREATING_VARS
            .into_iter()
            .filter(|v| env(v).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(ConfigError::Env {
                var: (*first).into(),
                message: format!(
                    "the config file has no cluster: section, and one is made from the \
                     environment only when RSTMDB_CLUSTER_ID, RSTMDB_NODE_ID and \
                     RSTMDB_RAFT_LISTEN are all set (missing: {})",
                    missing.join(", ")
                ),
            });
        }
        *slot = Some(ClusterConfig::new(String::new(), 0, String::new()));
    }
    match slot {
        Some(c) => c.apply_env(env),
        None => Ok(()),
    }
}

impl ClusterConfig {
    /// A section with the required keys and every other key at its default.
    pub fn new(cluster_id: String, node_id: u64, raft_listen: String) -> ClusterConfig {
        ClusterConfig {
            cluster_id,
            node_id,
            raft_listen,
            advertise_client: None,
            advertise_raft: None,
            initial_members: None,
            read_consistency: ReadConsistency::default(),
            forward_writes: true,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            election_timeout_ms: DEFAULT_ELECTION_TIMEOUT_MS,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            snapshot_log_mb: DEFAULT_SNAPSHOT_LOG_MB,
            insecure_plaintext: false,
        }
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = env("RSTMDB_CLUSTER_ID") {
            self.cluster_id = v.trim().to_owned();
        }
        if let Some(v) = env("RSTMDB_NODE_ID") {
            self.node_id = v.trim().parse().map_err(|e| ConfigError::Env {
                var: "RSTMDB_NODE_ID".into(),
                message: format!("{e} (expected a whole number >= 1, got {v:?})"),
            })?;
        }
        if let Some(v) = env("RSTMDB_RAFT_LISTEN") {
            self.raft_listen = v.trim().to_owned();
        }
        if let Some(v) = env("RSTMDB_ADVERTISE_CLIENT") {
            self.advertise_client = Some(v.trim().to_owned());
        }
        if let Some(v) = env("RSTMDB_ADVERTISE_RAFT") {
            self.advertise_raft = Some(v.trim().to_owned());
        }
        Ok(())
    }

    /// The peer listener's address (`cluster.raft_listen`).
    pub fn raft_listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.raft_listen.parse().map_err(|e| {
            invalid(
                "cluster.raft_listen",
                format!("{e} (expected IP:port, got {:?})", self.raft_listen),
            )
        })
    }

    /// The client address this node advertises: `cluster.advertise_client`, or the client
    /// listener's `client_bind` (`network.bind_addr`) when that is a concrete address.
    pub fn advertised_client(&self, client_bind: SocketAddr) -> Result<String, ConfigError> {
        advertised(
            self.advertise_client.as_deref(),
            client_bind,
            "cluster.advertise_client",
            "network.bind_addr",
        )
    }

    /// The raft address this node advertises: `cluster.advertise_raft`, or
    /// `cluster.raft_listen` when that is a concrete address.
    pub fn advertised_raft(&self) -> Result<String, ConfigError> {
        advertised(
            self.advertise_raft.as_deref(),
            self.raft_listen_addr()?,
            "cluster.advertise_raft",
            "cluster.raft_listen",
        )
    }

    /// `cluster.election_timeout_ms` as `(min, max)`.
    pub fn election_timeout(&self) -> (Duration, Duration) {
        let [min, max] = self.election_timeout_ms;
        (Duration::from_millis(min), Duration::from_millis(max))
    }

    /// `cluster.heartbeat_ms`.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// `cluster.write_timeout_ms`.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// `cluster.snapshot_log_mb` in bytes.
    pub fn snapshot_log_bytes(&self) -> u64 {
        self.snapshot_log_mb.saturating_mul(1024 * 1024)
    }

    /// The start-up checks of the section against the rest of `cfg` (whose own keys are
    /// already checked). Each error names its key.
    pub(super) fn validate(&self, cfg: &Config) -> Result<(), ConfigError> {
        let id = &self.cluster_id;
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(
                "cluster.cluster_id",
                format!(
                    "must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-' (got {id:?})"
                ),
            ));
        }
        if self.node_id == 0 {
            return Err(invalid(
                "cluster.node_id",
                "must be at least 1 (raft node ids start at 1)",
            ));
        }
        let [min, max] = self.election_timeout_ms;
        if min == 0 || min >= max {
            return Err(invalid(
                "cluster.election_timeout_ms",
                format!("must be [min, max] with 0 < min < max (got [{min}, {max}])"),
            ));
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms >= min {
            return Err(invalid(
                "cluster.heartbeat_ms",
                format!(
                    "must be between 1 and less than the smallest election timeout ({min} ms, \
                     cluster.election_timeout_ms[0]): a heartbeat must arrive before \
                     followers time out and start an election (got {})",
                    self.heartbeat_ms
                ),
            ));
        }
        if self.write_timeout_ms == 0 {
            return Err(invalid("cluster.write_timeout_ms", "must be at least 1"));
        }
        let raft = self.raft_listen_addr()?;
        let client = cfg.bind_addr()?;
        if same_port(raft, client) {
            return Err(invalid(
                "cluster.raft_listen",
                format!(
                    "must differ from network.bind_addr ({client}): peers need a listener of their own"
                ),
            ));
        }
        if cfg.metrics.enabled {
            let metrics = cfg.metrics_addr()?;
            if same_port(raft, metrics) {
                return Err(invalid(
                    "cluster.raft_listen",
                    format!("must differ from metrics.bind_addr ({metrics})"),
                ));
            }
        }
        if let Some(a) = &self.advertise_client {
            check_host_port("cluster.advertise_client", a)?;
        }
        if let Some(a) = &self.advertise_raft {
            check_host_port("cluster.advertise_raft", a)?;
        }
        let adv_client = self.advertised_client(client)?;
        let adv_raft = self.advertised_raft()?;
        if let Some(members) = &self.initial_members {
            for (id, m) in members {
                if *id == 0 {
                    return Err(invalid(
                        "cluster.initial_members.0",
                        "member ids must be at least 1 (raft node ids start at 1)",
                    ));
                }
                check_host_port(&format!("cluster.initial_members.{id}.client"), &m.client)?;
                check_host_port(&format!("cluster.initial_members.{id}.raft"), &m.raft)?;
            }
            let Some(me) = members.get(&self.node_id) else {
                return Err(invalid(
                    "cluster.initial_members",
                    format!(
                        "must list this node (cluster.node_id {}) when given",
                        self.node_id
                    ),
                ));
            };
            if me.client != adv_client || me.raft != adv_raft {
                return Err(invalid(
                    &format!("cluster.initial_members.{}", self.node_id),
                    format!(
                        "this node's entry must equal the addresses it advertises: \
                         {{client: {:?}, raft: {:?}}} vs cluster.advertise_client {adv_client:?} \
                         and cluster.advertise_raft {adv_raft:?}",
                        me.client, me.raft
                    ),
                ));
            }
        }
        if cfg.storage.fsync_policy != FsyncPolicyConfig::EveryWrite {
            return Err(invalid(
                "storage.fsync_policy",
                "must be every_write in cluster mode: raft counts a write as committed once a \
                 majority has it on disk, and relaxed syncing breaks that durability contract",
            ));
        }
        if !cfg.tls.enabled && !self.insecure_plaintext {
            return Err(invalid(
                "cluster.insecure_plaintext",
                "tls.enabled is false, and cluster peers need TLS: set tls (peers use its \
                 certificates) or, for tests only, cluster.insecure_plaintext: true",
            ));
        }
        if cfg.tls.enabled && cfg.tls.client_ca_path.is_none() {
            return Err(invalid(
                "tls.client_ca_path",
                "must be set in cluster mode with tls.enabled: cluster peers authenticate each \
                 other with mutual TLS, presenting tls.cert_path and accepting only \
                 certificates signed by this CA",
            ));
        }
        Ok(())
    }
}

/// Two listeners collide when their ports are equal (and not 0) and the addresses are equal
/// or either is a wildcard.
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn advertised(
    explicit: Option<&str>,
    listen: SocketAddr,
    key: &str,
    listen_key: &str,
) -> Result<String, ConfigError> {
    match explicit {
        Some(a) => Ok(a.to_owned()),
        None if listen.ip().is_unspecified() || listen.port() == 0 => Err(invalid(
            key,
            format!(
                "must be set when {listen_key} ({listen}) is a wildcard address or port 0: \
                 other nodes and clients need a host:port they can dial"
            ),
        )),
        None => Ok(listen.to_string()),
    }
}

/// `host:port` another node or a client can dial: a DNS name, an IPv4 address or a
/// bracketed IPv6 address, not a wildcard, and a port from 1 to 65535.
fn check_host_port(key: &str, v: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| invalid(key, format!("{why} (expected host:port, got {v:?})"));
    let (host, port) = v.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad("the port must be 1 to 65535")),
    }
    let ip = if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(|| bad("unclosed '['"))?;
        Some(
            inner
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address inside [ ]"))?
                .into(),
        )
    } else if host.is_empty() {
        return Err(bad("no host"));
    } else if host.contains(':') {
        return Err(bad("an IPv6 address needs brackets, as [::1]:7401"));
    } else if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
    {
        return Err(bad("not a host name or IP address"));
    } else {
        host.parse::<std::net::IpAddr>().ok()
    };
    if ip.is_some_and(|ip: std::net::IpAddr| ip.is_unspecified()) {
        return Err(bad("a wildcard address cannot be dialled"));
    }
    Ok(())
}
