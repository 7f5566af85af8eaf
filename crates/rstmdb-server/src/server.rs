//! The listener: accepts connections up to `max_connections`, runs one session task per
//! connection, and stops them all on shutdown.

use crate::session::{self, ConnInfo};
use crate::shared::Shared;
use crate::tls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

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
                    audit_event(&shared, peer, "CONNECTION_REFUSED", "CONNECTION_LIMIT");
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
            cert: None,
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
            audit_event(&shared, peer, "TLS_HANDSHAKE", "TLS_HANDSHAKE_FAILED");
            return;
        }
        Err(_) => {
            shared
                .metrics
                .tls_handshake_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%peer, "TLS handshake timed out");
            audit_event(&shared, peer, "TLS_HANDSHAKE", "TLS_HANDSHAKE_TIMEOUT");
            return;
        }
    };
    let cert = tls::peer_identity(tls_stream.get_ref().1.peer_certificates());
    tracing::debug!(%peer, client_cn = cert.as_ref().and_then(|c| c.cn.as_deref()), "client connected (TLS)");
    let (rd, wr) = tokio::io::split(tls_stream);
    let info = ConnInfo {
        peer,
        tls: true,
        cert,
    };
    session::run(rd, wr, info, shared, stop).await;
}

/// An audit record for a connection that never became a session (issue 18 finding 5).
fn audit_event(shared: &Shared, peer: SocketAddr, op: &'static str, code: &'static str) {
    if let Some(a) = &shared.audit {
        a.connection_event(session::rfc3339_now(), peer.to_string(), op, Some(code));
    }
}

pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
