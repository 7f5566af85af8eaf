//! The command line: global options, subcommands and their flags (operations.md §6.1–§6.2,
//! plus the additions of decisions.md).
//!
//! Global options belong before the subcommand, as in the reference (`ping -s …` is a usage
//! error); only `--json` is accepted anywhere.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Command-line client for rstmdb.
#[derive(Debug, Parser)]
#[command(name = "rstmdb-cli", version, about, long_about = None)]
pub struct Cli {
    /// Server address, HOST:PORT (an IP address or a host name).
    #[arg(
        short = 's',
        long,
        env = "RSTMDB_SERVER",
        default_value = "127.0.0.1:7401",
        value_parser = parse_server
    )]
    pub server: String,

    /// Bearer token, sent as AUTH right after connecting.
    #[arg(short = 't', long, env = "RSTMDB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Connect with TLS.
    #[arg(long, env = "RSTMDB_TLS")]
    pub tls: bool,

    /// PEM bundle of CAs the server certificate must chain to (enables TLS).
    #[arg(long, env = "RSTMDB_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// PEM client certificate for mutual TLS (enables TLS; needs --client-key).
    #[arg(long, env = "RSTMDB_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(long, env = "RSTMDB_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,

    /// TLS without verifying the server certificate (development only; enables TLS).
    #[arg(short = 'k', long)]
    pub insecure: bool,

    /// Name the server certificate must carry (default: the host of --server).
    #[arg(long)]
    pub server_name: Option<String>,

    /// Wire mode asked for in HELLO (responses are read in either mode).
    #[arg(long, value_enum, default_value_t = WireModeArg::BinaryJson)]
    pub wire_mode: WireModeArg,

    /// Print results as JSON (one document; one line per event for watches).
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Option<Cmd>,
}

/// `--wire-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WireModeArg {
    /// Binary RCPX frames (the default).
    #[value(name = "binary_json")]
    BinaryJson,
    /// JSON lines.
    #[value(name = "jsonl")]
    Jsonl,
}

/// `HOST:PORT`, with a bracketed IPv6 host or a name allowed.
fn parse_server(s: &str) -> Result<String, String> {
    let bad = || format!("invalid server address `{s}`: expected HOST:PORT");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "invalid server address `{s}`: put an IPv6 address in brackets, [::1]:7401"
        ));
    }
    Ok(s.to_owned())
}

/// The subcommands. None given = `repl`.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Interactive shell (the default).
    Repl,
    /// Check that the server answers.
    Ping,
    /// Server name, version and limits.
    Info,
    /// Store a machine definition version.
    PutMachine(PutMachineArgs),
    /// Show a stored machine definition.
    GetMachine(MachineRef),
    /// List machines with their latest version.
    ListMachines,
    /// Create an instance of a machine version.
    CreateInstance(CreateInstanceArgs),
    /// Show an instance.
    GetInstance {
        /// Instance id.
        id: String,
    },
    /// List instances (filters and paging).
    ListInstances(ListInstancesArgs),
    /// Fire an event on an instance.
    ApplyEvent(ApplyEventArgs),
    /// Delete an instance.
    DeleteInstance {
        /// Instance id.
        id: String,
        /// A retried delete with the same key returns the original result.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Snapshot one instance.
    SnapshotInstance {
        /// Instance id.
        id: String,
    },
    /// Several instance operations in one request, from a JSON file.
    Batch(BatchArgs),
    /// Read WAL records.
    WalRead {
        /// First offset (inclusive).
        #[arg(short = 'f', long = "from", default_value_t = 0)]
        from: u64,
        /// Most records to return.
        #[arg(short = 'l', long)]
        limit: Option<u64>,
    },
    /// WAL counters.
    WalStats,
    /// Snapshot instances and drop WAL segments no longer needed.
    Compact {
        /// Also re-snapshot instances changed since their last snapshot.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Show the node's replication role and, on a primary or replica, its progress.
    ReplicationStatus,
    /// List the server's open connections: id, principal, address, since (admin).
    Sessions,
    /// Close one open connection by its id from `sessions` (admin).
    EndSession {
        /// The session id.
        id: u64,
    },
    /// Cluster membership: status, add a node, remove a node (admin; changes go to the leader).
    #[command(subcommand)]
    Cluster(ClusterAction),
    /// Remove every machine and instance (the server must allow it). Asks for confirmation
    /// when stdin is a terminal; piped or scripted runs are not asked.
    FlushAll {
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Print the SHA-256 of a token, for the server's token list (offline).
    HashToken {
        /// The token.
        token: String,
    },
    /// Stream one instance's transitions (Ctrl+C to stop).
    WatchInstance(WatchInstanceArgs),
    /// Stream every transition matching the filters (Ctrl+C to stop).
    WatchAll(WatchAllArgs),
    /// End a subscription (of this new connection: it never owns another's).
    Unwatch {
        /// Subscription id.
        subscription_id: String,
    },
    /// Render a machine as a state diagram (guards as edge labels).
    ExportDiagram(ExportDiagramArgs),
    /// Print a shell completion script.
    Completions {
        /// Shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write a development CA, a server certificate and a client certificate (PEM).
    GenCerts(GenCertsArgs),
    /// Take a consistent online backup into a file (`backup --out FILE`), or check one
    /// (`backup verify FILE`). Admin role.
    Backup(BackupArgs),
    /// Put one instance from a backup back into the running server (nothing else changes).
    RestoreInstance(RestoreInstanceArgs),
    /// Put one machine (every version of its definition, and its instances) from a backup
    /// back into the running server.
    RestoreMachine(RestoreMachineArgs),
}

/// Where an encrypted backup's key comes from: never the command line itself.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// File holding the AES-256 key: 32 raw bytes or 64 hex characters; must not be readable
    /// by group or others. Without it, RSTMDB_BACKUP_KEY (64 hex characters) is used.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub action: Option<BackupAction>,
    /// The backup file to write (written under a temporary name, renamed when complete).
    #[arg(short = 'o', long)]
    pub out: Option<PathBuf>,
    /// Encrypt with AES-256-GCM (key from --key-file or RSTMDB_BACKUP_KEY).
    #[arg(long)]
    pub encrypt: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// The cluster as the node sees it: role, term, leader, indexes, members and their lag.
    Status,
    /// Add a node (started with a `cluster:` section and no initial_members) to the cluster.
    AddNode {
        /// Its node id: never used before in this cluster.
        #[arg(long)]
        id: u64,
        /// host:port clients use to reach it.
        #[arg(long)]
        client: String,
        /// host:port peers dial (its raft listener).
        #[arg(long)]
        raft: String,
        /// Keep it a learner (replicated to, never votes).
        #[arg(long)]
        learner: bool,
        /// How long each step (add, catch up, promote) may take (server default 60000).
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Remove a member from the cluster.
    RemoveNode {
        /// Its node id.
        #[arg(long)]
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupAction {
    /// Check a backup file end to end (offline): header, every chunk, body hash, records.
    Verify {
        /// The backup file.
        file: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
}

#[derive(Debug, Args)]
pub struct RestoreInstanceArgs {
    /// The backup file.
    #[arg(long)]
    pub from: PathBuf,
    /// The instance id in the backup.
    #[arg(long)]
    pub instance: String,
    /// Restore it under this id instead.
    #[arg(long = "as")]
    pub as_id: Option<String>,
    /// Replace a live instance with the same id (otherwise the restore is refused).
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Debug, Args)]
pub struct RestoreMachineArgs {
    /// The backup file.
    #[arg(long)]
    pub from: PathBuf,
    /// Machine name.
    #[arg(long)]
    pub machine: String,
    /// Replace live instances with the same ids (otherwise those are skipped and reported).
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// `-n NAME -v VERSION`.
#[derive(Debug, Args)]
pub struct MachineRef {
    /// Machine name.
    #[arg(short = 'n', long)]
    pub name: String,
    /// Machine version.
    #[arg(short = 'v', long)]
    pub version: u32,
}

#[derive(Debug, Args)]
pub struct PutMachineArgs {
    /// Machine name.
    #[arg(short = 'n', long)]
    pub name: String,
    /// Machine version.
    #[arg(short = 'v', long)]
    pub version: u32,
    /// The definition: JSON text, or @PATH to read it from a file.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub definition: Option<String>,
    /// Read the definition from this file.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CreateInstanceArgs {
    /// Machine name.
    #[arg(short = 'm', long)]
    pub machine: String,
    /// Machine version.
    #[arg(short = 'V', long)]
    pub version: u32,
    /// Instance id (the server generates one when absent).
    #[arg(short = 'i', long)]
    pub id: Option<String>,
    /// Initial context: JSON object, or @PATH.
    #[arg(short = 'c', long)]
    pub ctx: Option<String>,
    /// A retried create with the same key returns the original result.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListInstancesArgs {
    /// Only instances of this machine.
    #[arg(short = 'm', long)]
    pub machine: Option<String>,
    /// Only instances in this state.
    #[arg(long)]
    pub state: Option<String>,
    /// Page size.
    #[arg(short = 'l', long)]
    pub limit: Option<u32>,
    /// Instances skipped.
    #[arg(long)]
    pub offset: Option<u32>,
    /// Only ids after this one (cursor paging).
    #[arg(long)]
    pub after: Option<String>,
    /// Include deleted instances.
    #[arg(long)]
    pub include_deleted: bool,
}

#[derive(Debug, Args)]
pub struct ApplyEventArgs {
    /// Instance id.
    #[arg(short = 'i', long)]
    pub instance: String,
    /// Event name.
    #[arg(short = 'e', long)]
    pub event: String,
    /// Payload merged into the context: JSON object, or @PATH.
    #[arg(short = 'p', long)]
    pub payload: Option<String>,
    /// Fail with CONFLICT unless the instance is in this state.
    #[arg(long)]
    pub expected_state: Option<String>,
    /// Fail with CONFLICT unless the instance's last WAL offset is this.
    #[arg(long)]
    pub expected_wal_offset: Option<u64>,
    /// Stored as the instance's last_event_id.
    #[arg(long)]
    pub event_id: Option<String>,
    /// A retried apply with the same key returns the original result.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// JSON file: {"mode": "atomic"|"best_effort", "ops": [{"op": …, "params": {…}}, …]} or
    /// just the ops array.
    #[arg(short = 'f', long)]
    pub file: PathBuf,
    /// Overrides the file's mode.
    #[arg(long, value_enum)]
    pub mode: Option<BatchModeArg>,
}

/// `--mode` of `batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BatchModeArg {
    /// All or nothing.
    #[value(name = "atomic")]
    Atomic,
    /// Each op on its own.
    #[value(name = "best_effort")]
    BestEffort,
}

#[derive(Debug, Args)]
pub struct WatchInstanceArgs {
    /// Instance id.
    pub id: String,
    /// Leave the context out of events.
    #[arg(long)]
    pub no_ctx: bool,
    /// Replay events from this WAL offset (inclusive) before live ones.
    #[arg(long)]
    pub from_offset: Option<u64>,
    /// Reconnect when the connection is lost and resume after the last event seen.
    #[arg(long)]
    pub reconnect: bool,
}

#[derive(Debug, Args)]
pub struct WatchAllArgs {
    /// Only these machines (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',')]
    pub machines: Vec<String>,
    /// Only transitions from these states (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',')]
    pub from_states: Vec<String>,
    /// Only transitions to these states (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',')]
    pub to_states: Vec<String>,
    /// Only these events (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',')]
    pub events: Vec<String>,
    /// Leave the context out of events.
    #[arg(long)]
    pub no_ctx: bool,
    /// Replay events from this WAL offset (inclusive) before live ones.
    #[arg(long)]
    pub from_offset: Option<u64>,
    /// Reconnect when the connection is lost and resume after the last event seen.
    #[arg(long)]
    pub reconnect: bool,
}

#[derive(Debug, Args)]
pub struct ExportDiagramArgs {
    /// Machine name.
    #[arg(short = 'n', long)]
    pub name: String,
    /// Machine version.
    #[arg(short = 'v', long)]
    pub version: u32,
    /// Diagram language.
    #[arg(long, value_enum, default_value_t = DiagramFormat::Mermaid)]
    pub format: DiagramFormat,
}

/// `export-diagram --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiagramFormat {
    /// Mermaid `stateDiagram-v2`.
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

#[derive(Debug, Args)]
pub struct GenCertsArgs {
    /// Directory to write the PEM files to (created if missing).
    #[arg(short = 'o', long, default_value = "certs")]
    pub out_dir: PathBuf,
    /// Names and IP addresses the server certificate is valid for.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
    pub hosts: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn server_addresses() {
        assert!(parse_server("127.0.0.1:7401").is_ok());
        assert!(parse_server("localhost:7401").is_ok());
        assert!(parse_server("[::1]:7401").is_ok());
        assert!(parse_server("localhost").is_err());
        assert!(parse_server(":7401").is_err());
        assert!(parse_server("h:99999").is_err());
        assert!(parse_server("::1:7401").is_err());
    }
}
