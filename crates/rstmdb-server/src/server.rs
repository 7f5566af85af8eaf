//! The listener: accepts connections up to `max_connections`, runs one session task per
//! connection, and stops them all on shutdown.

use crate::audit::AuditLog;
use crate::auth::{Auth, Throttle};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::session::{self, ConnInfo};
use crate::tls;
use rstmdb_storage::Database;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
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
    /// Bumped by FLUSH_ALL: every subscription ends.
    pub flush_epoch: watch::Sender<u64>,
    /// `Some` when TLS is on; replaced on SIGHUP, read once per handshake.
    tls: std::sync::RwLock<Option<Arc<ServerConfig>>>,
    pub audit: Option<AuditLog>,
    /// Connections and subscriptions are always counted; requests only when
    /// `metrics.enabled` (the endpoint is on).
    pub metrics: Arc<Metrics>,
    /// Spooled online backups (BACKUP_BEGIN … BACKUP_END).
    pub backups: crate::backup::Backups,
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
        let db_dir = db.config().data_dir.clone();
        Shared {
            db,
            config,
            auth: std::sync::RwLock::new(Arc::new(auth)),
            auth_throttle: Throttle::default(),
            flush_epoch,
            tls: std::sync::RwLock::new(tls),
            audit,
            metrics: Arc::new(Metrics::default()),
            backups: crate::backup::Backups::new(&db_dir),
        }
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

    pub fn set_auth(&self, auth: Auth) {
        match self.auth.write() {
            Ok(mut a) => *a = Arc::new(auth),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(auth),
        }
    }
}

/// How long shutdown waits for sessions to finish their in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `shutdown` resolves, then stops accepting, lets sessions answer what they
/// have read, and returns.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limit = Arc::new(Semaphore::new(shared.config.network.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, max = shared.config.network.max_connections, "connection limit reached, rejecting");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let stop = stop_rx.clone();
                sessions.spawn(async move {
                    connection(stream, peer, shared, stop).await;
                    drop(permit);
                });
            }
            // Reap finished sessions so the set does not grow.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    tracing::info!("shutting down: no new connections, draining sessions");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("sessions did not drain in time; closing them");
        sessions.shutdown().await;
    }
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One accepted connection: TLS handshake if TLS is on, then the session.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let metrics = shared.metrics.clone();
    let _active = metrics.connection();
    let Some(acceptor) = shared.tls() else {
        tracing::debug!(%peer, "client connected");
        let (rd, wr) = stream.into_split();
        let info = ConnInfo {
            peer,
            tls: false,
            cert_cn: None,
        };
        session::run(rd, wr, info, shared, stop).await;
        return;
    };
    let tls_stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared
                .metrics
                .tls_handshake_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            shared
                .metrics
                .tls_handshake_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let cert_cn = tls::peer_common_name(tls_stream.get_ref().1.peer_certificates());
    tracing::debug!(%peer, client_cn = cert_cn.as_deref(), "client connected (TLS)");
    let (rd, wr) = tokio::io::split(tls_stream);
    let info = ConnInfo {
        peer,
        tls: true,
        cert_cn,
    };
    session::run(rd, wr, info, shared, stop).await;
}

pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
