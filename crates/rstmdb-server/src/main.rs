//! `rstmdb`: the server binary.
//!
//! ```text
//! rstmdb [--config PATH]            serve (defaults: 127.0.0.1:7401, data in ./data)
//! rstmdb repair --data-dir DIR      cut a damaged WAL back to its last good record
//! rstmdb rekey --data-dir DIR [--old-key-file A] [--new-key-file B]
//!                                   re-encrypt the data directory offline (rotation, or
//!                                   plaintext <-> encrypted when a side is omitted)
//! rstmdb restore --from FILE --data-dir DIR [--until-offset N | --until-time T]
//!                [--wal-archive DIR] [--key-file F]   offline restore / point-in-time recovery
//! ```

use clap::{Parser, Subcommand};
use rstmdb_cluster::{ClusterNode, ClusterOptions, Member, PeerSecurity};
use rstmdb_server::audit::AuditLog;
use rstmdb_server::auth::Auth;
use rstmdb_server::config::{ClusterConfig, Config, LogFormat};
use rstmdb_server::server;
use rstmdb_server::shared::Shared;
use rstmdb_server::timefmt::rfc3339_now;
use rstmdb_server::tls;
use rstmdb_storage::Database;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

// See the workspace Cargo.toml: glibc malloc was a measurable share of the server's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "rstmdb",
    version,
    about = "rstmdb: a state-machine database server"
)]
struct Cli {
    /// YAML config file (default: built-in defaults).
    #[arg(long, short = 'c', env = "RSTMDB_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Cluster administration run offline (server stopped).
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Repair a WAL that refuses to open: the damaged segment is copied to
    /// `<data-dir>/wal/damaged/`, the log is cut at the first bad record, later segments are
    /// moved aside. Run it with the server stopped.
    Repair {
        /// The server's data directory (`storage.data_dir`).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Re-encrypt a data directory offline: rotate the key (both key files), encrypt a
    /// plaintext directory (only --new-key-file) or decrypt one (only --old-key-file). Run it
    /// with the server stopped; if interrupted, run the same command again.
    Rekey {
        /// The server's data directory (`storage.data_dir`).
        #[arg(long)]
        data_dir: PathBuf,
        /// The key the data is encrypted with now; omit for a plaintext directory.
        #[arg(long)]
        old_key_file: Option<PathBuf>,
        /// The key to encrypt with; omit to leave the data in plaintext.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
    /// Restore a whole database from a backup file (made by `rstmdb-cli backup`) into a new or
    /// empty data directory, with the server stopped. By default it restores the state at the
    /// backup's end; with --wal-archive it continues through archived WAL segments
    /// (`storage.wal_archive_dir`) to their end, or to --until-offset / --until-time.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// Where to put the database; must not exist or be empty.
        #[arg(long)]
        data_dir: PathBuf,
        /// Stop after the WAL record with this offset (the state exactly at that offset).
        #[arg(long, conflicts_with = "until_time")]
        until_offset: Option<u64>,
        /// Stop before the first WAL record stamped later than this (RFC 3339, e.g.
        /// 2026-01-02T03:04:05Z, or Unix milliseconds).
        #[arg(long)]
        until_time: Option<String>,
        /// Directory of archived WAL segments to replay after the backup's end.
        #[arg(long)]
        wal_archive: Option<PathBuf>,
        /// The data key (`storage.encryption.key_file`) of the server that wrote the
        /// archive, when it ran with encryption at rest. The restored data is plaintext
        /// unless --data-key-file is given.
        #[arg(long, requires = "wal_archive")]
        archive_key_file: Option<PathBuf>,
        /// Key of an encrypted backup: 32 raw bytes or 64 hex characters, mode 600.
        /// Otherwise RSTMDB_BACKUP_KEY (hex) is used.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Segment size of the restored WAL, MiB.
        #[arg(long, default_value_t = 64)]
        wal_segment_size_mb: u64,
        /// Encrypt the restored data directory with this data key (the
        /// `storage.encryption.key_file` of the server that will serve it): restore, then the
        /// same conversion `rstmdb rekey --new-key-file` does.
        #[arg(long)]
        data_key_file: Option<PathBuf>,
    },
}

fn load_key(
    path: Option<&std::path::Path>,
) -> Result<Option<rstmdb_storage::EncryptionKey>, rstmdb_storage::KeyError> {
    path.map(rstmdb_storage::EncryptionKey::from_file)
        .transpose()
}

fn rekey(
    data_dir: &std::path::Path,
    old: Option<&std::path::Path>,
    new: Option<&std::path::Path>,
) -> ExitCode {
    let (old, new) = match (load_key(old), load_key(new)) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("starting the runtime: {e}")),
    };
    match runtime.block_on(rstmdb_storage::rekey(data_dir, old, new)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `restore --data-key-file`: converts the freshly restored (plaintext) directory to one
/// encrypted under `key`, as `rekey --new-key-file` does.
fn encrypt_restored(data_dir: &std::path::Path, key: rstmdb_storage::EncryptionKey) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("starting the runtime: {e}")),
    };
    match runtime.block_on(rstmdb_storage::rekey(data_dir, None, Some(key))) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!(
            "the restore succeeded but encrypting it failed: {e}; {} holds the plaintext \
             restore: run `rstmdb rekey --data-dir {} --new-key-file K` or delete it",
            data_dir.display(),
            data_dir.display()
        )),
    }
}

fn parse_until_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("--until-time {s:?}: expected RFC 3339 or Unix ms ({e})"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("--until-time {s:?} is out of range"))
}

#[allow(clippy::too_many_arguments)]
fn restore_cmd(
    from: &std::path::Path,
    data_dir: &std::path::Path,
    until_offset: Option<u64>,
    until_time: Option<&str>,
    wal_archive: Option<PathBuf>,
    archive_key_file: Option<&std::path::Path>,
    key_file: Option<&std::path::Path>,
    wal_segment_size_mb: u64,
) -> Result<String, String> {
    let wal_archive_key = load_key(archive_key_file).map_err(|e| e.to_string())?;
    use rstmdb_storage::{RestoreOptions, RestoreTarget};
    let target = match (until_offset, until_time) {
        (Some(n), _) => RestoreTarget::Offset(n),
        (None, Some(t)) => RestoreTarget::Time(parse_until_time(t)?),
        (None, None) => RestoreTarget::End,
    };
    let key = rstmdb_backup::Key::load(key_file, std::env::var(rstmdb_backup::KEY_ENV).ok())
        .map_err(|e| e.to_string())?;
    let file = std::fs::File::open(from).map_err(|e| format!("{}: {e}", from.display()))?;
    let reader = rstmdb_backup::Reader::open(std::io::BufReader::new(file), key.as_ref())
        .map_err(|e| format!("{}: {e}", from.display()))?;
    let m = reader.manifest().clone();
    // The restored directory holds every instance: owner-only, as the server makes its own.
    prepare_data_dir(data_dir)?;
    let opts = RestoreOptions {
        data_dir: data_dir.to_path_buf(),
        target,
        wal_archive,
        wal_archive_key,
        wal_segment_size_mb,
    };
    let records = reader.records().map(|r| r.map_err(|e| e.to_string()));
    let r = rstmdb_storage::backup::restore(records, m.base_offset, m.wal_end, &opts)?;
    Ok(format!(
        "Restored {} into {}: {} machine versions, {} instances, {} idempotency records; \
         WAL {}..={} ({} records from the backup, {} from the archive); state at offset {}",
        from.display(),
        data_dir.display(),
        r.machines,
        r.instances,
        r.idempotency_records,
        r.base_offset + 1,
        r.restored_to,
        r.wal_records_from_backup,
        r.wal_records_from_archive,
        r.restored_to
    ))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("Error: {msg}");
    ExitCode::from(1)
}

/// How the peer link is secured: with TLS on, mutual TLS from the `tls:` files (the config
/// check already required `tls.client_ca_path`); with TLS off, plaintext (the config check
/// already required `cluster.insecure_plaintext`).
fn peer_security(config: &Config) -> Result<PeerSecurity, String> {
    if !config.tls.enabled {
        return Ok(PeerSecurity::plaintext());
    }
    tls::load_peer(&config.tls)
        .map(PeerSecurity::tls)
        .map_err(|e| format!("TLS configuration of the peer link: {e}"))
}

/// The cluster node's options from the `cluster:` section (already validated by
/// `Config::load`).
fn cluster_options(
    cluster: &ClusterConfig,
    client_bind: std::net::SocketAddr,
) -> Result<ClusterOptions, String> {
    let members = cluster
        .initial_members
        .iter()
        .flatten()
        .map(|(id, m)| {
            (
                *id,
                Member {
                    client: m.client.clone(),
                    raft: m.raft.clone(),
                },
            )
        })
        .collect();
    Ok(ClusterOptions {
        cluster_id: cluster.cluster_id.clone(),
        node_id: cluster.node_id,
        raft_listen: cluster.raft_listen.clone(),
        advertise: Member {
            client: cluster
                .advertised_client(client_bind)
                .map_err(|e| e.to_string())?,
            raft: cluster.advertised_raft().map_err(|e| e.to_string())?,
        },
        initial_members: members,
        election_timeout_ms: (
            cluster.election_timeout_ms[0],
            cluster.election_timeout_ms[1],
        ),
        heartbeat_ms: cluster.heartbeat_ms,
        write_timeout_ms: cluster.write_timeout_ms,
        snapshot_log_bytes: cluster.snapshot_log_bytes(),
    })
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.logging.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(ansi);
    match cfg.logging.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Turn a single node's data directory into a one-voter cluster, keeping every offset.
    /// Needs --config with the `cluster:` section the node will run with (its node_id and
    /// addresses become the membership). Then start the server with that config; add more
    /// nodes with `rstmdb-cli cluster add-node`.
    Init {
        /// The data directory (default: the config's `storage.data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// `rstmdb cluster init`.
fn cluster_init(config_path: Option<&std::path::Path>, data_dir: Option<&PathBuf>) -> ExitCode {
    let env = |k: &str| std::env::var(k).ok();
    let config = match Config::load(config_path, &env) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let Some(cluster) = &config.cluster else {
        return fail(
            "rstmdb cluster init needs --config with a cluster: section (this node's node_id \
             and addresses become the first membership)",
        );
    };
    let mut storage = match config.storage_config_with_key() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if let Some(d) = data_dir {
        storage.data_dir = d.clone();
    }
    let member = match config
        .bind_addr()
        .map_err(|e| e.to_string())
        .and_then(|bind| {
            Ok(Member {
                client: cluster.advertised_client(bind).map_err(|e| e.to_string())?,
                raft: cluster.advertised_raft().map_err(|e| e.to_string())?,
            })
        }) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let dir = storage.data_dir.clone();
    match rstmdb_cluster::init::init_from_single_node(storage, cluster.node_id, member) {
        Ok(r) => {
            println!(
                "{} is now a one-voter cluster (cluster_id {:?}, node {}): offsets 1..={} kept, \
                 membership recorded at {}; start the server with this config",
                dir.display(),
                cluster.cluster_id,
                cluster.node_id,
                r.last_offset,
                r.membership_offset
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("cluster init: {e}")),
    }
}

fn main() -> ExitCode {
    // Before any key, token or data is read (restore and rekey handle keys too).
    let hardening_failed = rstmdb_server::harden::no_core_dumps();
    let cli = Cli::parse();
    if let Some(Cmd::Cluster {
        command: ClusterCmd::Init { data_dir },
    }) = &cli.command
    {
        return cluster_init(cli.config.as_deref(), data_dir.as_ref());
    }
    if let Some(Cmd::Repair { data_dir }) = &cli.command {
        // A mistyped path must not read as "clean, nothing to repair": the operator would
        // believe the log was checked.
        let wal = data_dir.join("wal");
        if !wal.is_dir() {
            return fail(format!(
                "{} is not a directory: is {} the server's storage.data_dir?",
                wal.display(),
                data_dir.display()
            ));
        }
        return match rstmdb_storage::wal::repair(&wal) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    if let Some(Cmd::Rekey {
        data_dir,
        old_key_file,
        new_key_file,
    }) = &cli.command
    {
        return rekey(data_dir, old_key_file.as_deref(), new_key_file.as_deref());
    }
    if let Some(Cmd::Restore {
        from,
        data_dir,
        until_offset,
        until_time,
        wal_archive,
        archive_key_file,
        key_file,
        wal_segment_size_mb,
        data_key_file,
    }) = &cli.command
    {
        // The data key is read first: a bad key file must not leave a plaintext restore behind.
        let data_key = match load_key(data_key_file.as_deref()) {
            Ok(k) => k,
            Err(e) => return fail(e),
        };
        return match restore_cmd(
            from,
            data_dir,
            *until_offset,
            until_time.as_deref(),
            wal_archive.clone(),
            archive_key_file.as_deref(),
            key_file.as_deref(),
            *wal_segment_size_mb,
        ) {
            Ok(msg) => {
                println!("{msg}");
                match data_key {
                    None => ExitCode::SUCCESS,
                    Some(key) => encrypt_restored(data_dir, key),
                }
            }
            Err(e) => fail(e),
        };
    }
    let env = |k: &str| std::env::var(k).ok();
    let config = match Config::load(cli.config.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    init_logging(&config);
    for step in &hardening_failed {
        tracing::warn!("core dumps may not be disabled: {step}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads())
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("starting the runtime: {e}")),
    };
    runtime.block_on(run(config, cli.config))
}

async fn run(config: Config, config_path: Option<PathBuf>) -> ExitCode {
    // Every handler is installed first: a signal that arrives during startup or right after
    // the server says it is listening must never meet the default action (which kills the
    // process); one that comes early is handled once serving starts.
    use tokio::signal::unix::{SignalKind, signal};
    let (term, int, hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return fail(format!("installing signal handlers: {e}"));
        }
    };
    let auth = match Auth::from_config(&config.auth) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let addr = match config.bind_addr() {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let acceptor = if config.tls.enabled {
        match tls::load(&config.tls) {
            Ok(a) => Some(a),
            Err(e) => return fail(format!("TLS configuration: {e}")),
        }
    } else {
        None
    };
    // Before the data directory is touched, as the client listener's material.
    let security = match config.cluster.is_some().then(|| peer_security(&config)) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => return fail(e),
    };
    let audit = if config.audit.is_enabled() {
        match AuditLog::start(config.audit.path.clone(), config.audit.queue_depth) {
            Ok(a) => Some(a),
            Err(e) => return fail(e),
        }
    } else {
        None
    };
    if let Err(e) = prepare_data_dir(&config.storage.data_dir) {
        return fail(e);
    }
    if let Some(p) = &config_path {
        tracing::info!(path = %p.display(), "loaded config");
    }
    tracing::info!(
        bind = %addr,
        data_dir = %config.storage.data_dir.display(),
        fsync_policy = ?config.storage.fsync_policy,
        encryption = config.storage.encryption.key_file.is_some(),
        auth_required = auth.required,
        tokens = auth.token_count(),
        tls = config.tls.enabled,
        mtls = config.tls.enabled && config.tls.require_client_cert,
        audit = config.audit.is_enabled(),
        "starting rstmdb {}",
        env!("CARGO_PKG_VERSION")
    );
    let storage = match config.storage_config_with_key() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // Without a `cluster:` section no raft code runs (replication.md decision 10).
    let (db, node) = match &config.cluster {
        None => match Database::open(storage) {
            Ok(db) => (db, None),
            Err(e) => return fail(format!("opening the database: {e}")),
        },
        Some(cluster) => {
            let opts = match cluster_options(cluster, addr) {
                Ok(o) => o,
                Err(e) => return fail(e),
            };
            let security = security.unwrap_or_default();
            tracing::info!(
                cluster_id = %opts.cluster_id,
                node_id = opts.node_id,
                raft_listen = %opts.raft_listen,
                peer_tls = security.is_tls(),
                "starting as a cluster node"
            );
            match ClusterNode::start(storage, opts, security).await {
                Ok(node) => (node.database().clone(), Some(Arc::new(node))),
                Err(e) => return fail(format!("starting the cluster node: {e}")),
            }
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => return fail(format!("binding {addr}: {e}")),
    };
    let local = server::local_addr(&listener).unwrap_or(addr);
    let metrics_listener = if config.metrics.enabled {
        let maddr = match config.metrics_addr() {
            Ok(a) => a,
            Err(e) => return fail(e),
        };
        match tokio::net::TcpListener::bind(maddr).await {
            Ok(l) => Some(l),
            Err(e) => return fail(format!("binding metrics.bind_addr {maddr}: {e}")),
        }
    } else {
        None
    };
    let mode = if acceptor.is_some() { "TLS" } else { "plain" };
    let mut shared = Shared::new(db.clone(), config, auth, acceptor, audit);
    if let Some(node) = &node {
        shared = shared.with_cluster(node.clone());
    }
    let shared = Arc::new(shared);
    if let Some(node) = &node {
        node.set_forward_handler(Arc::new(rstmdb_server::forward::LeaderExecutor {
            shared: Arc::downgrade(&shared),
        }));
    }
    if let Some(l) = metrics_listener {
        let at = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!("Metrics server listening on http://{at}/metrics");
        tokio::spawn(rstmdb_server::metrics_http::serve(
            l,
            shared.metrics.clone(),
            shared.db.clone(),
            shared.cluster.clone(),
        ));
    }
    tokio::spawn(reload_on_sighup(shared.clone(), config_path.clone(), hup));
    tracing::info!("Server listening on {local} ({mode})");
    let stopping = {
        let shared = shared.clone();
        async move {
            shutdown_signal(term, int).await;
            shared.metrics.set_not_ready();
        }
    };
    server::serve(listener, shared.clone(), stopping).await;
    if let Some(a) = &shared.audit {
        a.sync();
    }
    let closed = match node {
        Some(node) => {
            drop(db);
            node.shutdown().await.map_err(|e| e.to_string())
        }
        None => db.close().await.map_err(|e| e.to_string()),
    };
    match closed {
        Ok(()) => {
            tracing::info!("server stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("closing the database: {e}")),
    }
}

/// SIGHUP: re-read the config file, the secrets file and (with TLS on) the certificate, key
/// and client CA, for the client listener and (in cluster mode) the peer link; swap them in
/// only if all of it loads. Existing connections keep their session; the next AUTH and the
/// next handshake, client or peer, use the new material. A reload that fails
/// keeps the old material and logs why. The audit log file is reopened (log rotation).
/// Settings other than these take effect at the next restart.
async fn reload_on_sighup(
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    mut hup: tokio::signal::unix::Signal,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while hup.recv().await.is_some() {
        if let Some(a) = &shared.audit {
            a.reopen();
        }
        let env = |k: &str| std::env::var(k).ok();
        let tls_on = shared.config.tls.enabled;
        let peer_tls_on = shared.cluster.as_ref().is_some_and(|n| n.peer_tls());
        let reloaded = Config::load(config_path.as_deref(), &env)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                let auth = Auth::from_config(&c.auth).map_err(|e| e.to_string())?;
                let acceptor = if tls_on {
                    if !c.tls.enabled {
                        return Err(
                            "tls.enabled cannot be turned off by a reload; restart instead".into(),
                        );
                    }
                    Some(tls::load(&c.tls).map_err(|e| format!("TLS: {e}"))?)
                } else {
                    None
                };
                let peer = if peer_tls_on {
                    Some(tls::load_peer(&c.tls).map_err(|e| format!("peer link TLS: {e}"))?)
                } else {
                    None
                };
                Ok((auth, acceptor, peer))
            });
        match reloaded {
            Ok((auth, acceptor, peer)) => {
                let tokens = auth.token_count();
                shared.set_auth(auth);
                if let Some(a) = acceptor {
                    shared.set_tls(a);
                }
                if let (Some(p), Some(node)) = (peer, &shared.cluster)
                    && let Err(e) = node.set_peer_tls(p)
                {
                    tracing::error!(error = %e, "peer link TLS not swapped");
                }
                let n = shared.metrics.reloads_ok.fetch_add(1, Relaxed) + 1;
                tracing::info!(
                    result = "ok",
                    tokens,
                    tls = tls_on,
                    peer_tls = peer_tls_on,
                    reloads_ok = n,
                    "reloaded authentication and TLS material on SIGHUP"
                );
                if let Some(a) = &shared.audit {
                    a.connection_event(rfc3339_now(), "signal:SIGHUP".into(), "RELOAD", None);
                }
            }
            Err(e) => {
                let n = shared.metrics.reloads_failed.fetch_add(1, Relaxed) + 1;
                tracing::error!(result = "failed", error = %e, reloads_failed = n, "SIGHUP reload failed; keeping the previous material");
                if let Some(a) = &shared.audit {
                    let at = "signal:SIGHUP".into();
                    a.connection_event(rfc3339_now(), at, "RELOAD", Some("RELOAD_FAILED"));
                }
            }
        }
    }
}

/// Creates the data directory 0700 if it does not exist; warns when an existing one is open
/// to group or others (the operator may have reasons, e.g. a backup group).
fn prepare_data_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::metadata(dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(path = %dir.display(), mode = format!("{mode:o}"), "the data directory is accessible to group or others; chmod 700 it");
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("creating the data directory {}: {e}", dir.display())),
        Err(e) => Err(format!("reading the data directory {}: {e}", dir.display())),
    }
}

/// SIGTERM or SIGINT.
async fn shutdown_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
        _ = int.recv() => tracing::info!("received SIGINT, shutting down"),
    }
}
