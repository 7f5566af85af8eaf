//! What every session shares: the engine, the configuration, the reloadable auth and TLS
//! material, the audit log, the metrics and the backup spools. It sits below every module
//! that uses it and imports none of them (only the leaf modules whose types it holds), so
//! the crate's modules form a DAG.

use crate::audit::AuditLog;
use crate::auth::{Auth, PreAuthCount, Throttle};
use crate::backup::Backups;
use crate::config::Config;
use crate::metrics::Metrics;
use rstmdb_storage::Database;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

/// What every session shares.
#[derive(Debug)]
pub struct Shared {
    pub db: Database,
    pub config: Config,
    /// Replaced on SIGHUP; sessions read it per AUTH, so existing ones keep their state and
    /// the next AUTH uses the new material.
    auth: std::sync::RwLock<Arc<Auth>>,
    pub auth_throttle: Throttle,
    /// Every open connection (SESSIONS, END_SESSION).
    pub sessions: Arc<crate::registry::Registry>,
    /// Connections per network that have not authenticated yet.
    pub preauth: Arc<PreAuthCount>,
    /// Bumped by every credentials reload (`set_auth`).
    pub auth_epoch: watch::Sender<u64>,
    /// Bumped by FLUSH_ALL: every subscription ends.
    pub flush_epoch: Arc<watch::Sender<u64>>,
    /// `Some` when TLS is on; replaced on SIGHUP, read once per handshake.
    tls: std::sync::RwLock<Option<Arc<ServerConfig>>>,
    pub audit: Option<AuditLog>,
    /// Connections and subscriptions are always counted; requests only when
    /// `metrics.enabled` (the endpoint is on).
    pub metrics: Arc<Metrics>,
    /// Spooled online backups (BACKUP_BEGIN … BACKUP_END).
    pub backups: Backups,
    /// The raft node when this server is a cluster member (`cluster:` configured); `db` is
    /// then its replicated database.
    pub cluster: Option<Arc<rstmdb_cluster::ClusterNode>>,
}

impl Shared {
    pub fn new(
        db: Database,
        config: Config,
        auth: Auth,
        tls: Option<Arc<ServerConfig>>,
        audit: Option<AuditLog>,
    ) -> Shared {
        let (flush_epoch, _) = watch::channel(0u64);
        let (auth_epoch, _) = watch::channel(0u64);
        let db_dir = db.config().data_dir.clone();
        let mut metrics = Metrics::default();
        if let Some(a) = &audit {
            metrics.audit_dropped = a.dropped_counter();
        }
        Shared {
            db,
            config,
            auth: std::sync::RwLock::new(Arc::new(auth)),
            auth_throttle: Throttle::default(),
            preauth: Arc::default(),
            sessions: Arc::default(),
            flush_epoch: Arc::new(flush_epoch),
            auth_epoch,
            tls: std::sync::RwLock::new(tls),
            audit,
            metrics: Arc::new(metrics),
            backups: Backups::new(&db_dir),
            cluster: None,
        }
    }

    /// This server is the cluster member `node` (whose database is `db`). Call it before the
    /// metrics are shared: they take over the node's peer handshake counter.
    pub fn with_cluster(mut self, node: Arc<rstmdb_cluster::ClusterNode>) -> Shared {
        match Arc::get_mut(&mut self.metrics) {
            Some(m) => m.peer_tls_handshake_failures = node.peer_handshake_failures(),
            None => tracing::warn!(
                "metrics already shared: rstmdb_peer_tls_handshake_failures_total stays 0"
            ),
        }
        self.cluster = Some(node);
        self
    }

    pub fn tls(&self) -> Option<TlsAcceptor> {
        let cfg = match self.tls.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        cfg.map(TlsAcceptor::from)
    }

    pub fn set_tls(&self, cfg: Arc<ServerConfig>) {
        match self.tls.write() {
            Ok(mut t) => *t = Some(cfg),
            Err(poisoned) => *poisoned.into_inner() = Some(cfg),
        }
    }

    pub fn auth(&self) -> Arc<Auth> {
        match self.auth.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Installs reloaded credentials and tells every session, so that one whose token is
    /// gone ends and one whose token's grant changed takes the new grant.
    pub fn set_auth(&self, auth: Auth) {
        match self.auth.write() {
            Ok(mut a) => *a = Arc::new(auth),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(auth),
        }
        self.auth_epoch.send_modify(|e| *e += 1);
    }
}
