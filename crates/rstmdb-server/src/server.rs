//! The listener: accepts connections up to `max_connections`, runs one session task per
//! connection, and stops them all on shutdown.

use crate::auth::{Auth, Throttle};
use crate::config::Config;
use crate::session;
use rstmdb_storage::Database;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

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
}

impl Shared {
    pub fn new(db: Database, config: Config, auth: Auth) -> Shared {
        let (flush_epoch, _) = watch::channel(0u64);
        Shared {
            db,
            config,
            auth: std::sync::RwLock::new(Arc::new(auth)),
            auth_throttle: Throttle::default(),
            flush_epoch,
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
                    session::run(stream, peer, shared, stop).await;
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

pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
