//! TLS on the peer link (replication.md §4 "TLS").
//!
//! The server builds the rustls configurations from its `tls:` section and hands them over
//! as a [`PeerTls`]: the acceptor requires a client certificate chaining to the cluster CA
//! (mTLS is mandatory on the peer link), and the dialer presents the node's own certificate
//! and verifies the peer's server certificate against the same CA with the server name taken
//! from the host part of the member's `raft` address (an IP SAN or a DNS SAN must match).
//!
//! [`PeerSecurity`] is the one handle the listener and every dialer share: [`PeerSecurity::
//! replace`] (SIGHUP) swaps the configurations, so new connections use the new material and
//! connections already established keep their session. It also counts the handshakes that
//! failed ([`PeerSecurity::handshake_failures`], for the server's metrics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long a peer may take to complete the TLS handshake on the listener.
const ACCEPT_HANDSHAKE: Duration = Duration::from_secs(10);

/// The peer link's TLS material: the listener's configuration (which must verify client
/// certificates) and the dialer's (which must carry this node's certificate as its client
/// certificate).
#[derive(Debug, Clone)]
pub struct PeerTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

/// Plaintext, or TLS with swappable material; cheap to clone (the clones share the material
/// and the failure counter).
#[derive(Debug, Clone, Default)]
pub struct PeerSecurity {
    tls: Option<Arc<RwLock<PeerTls>>>,
    handshake_failures: Arc<AtomicU64>,
}

/// A plaintext peer link cannot be given TLS material at run time.
#[derive(Debug, thiserror::Error)]
#[error("the peer link runs without TLS; TLS material can only be swapped on a TLS peer link")]
pub struct NotTls;

impl PeerSecurity {
    /// Plaintext peers (`cluster.insecure_plaintext`, tests only).
    pub fn plaintext() -> PeerSecurity {
        PeerSecurity::default()
    }

    pub fn tls(tls: PeerTls) -> PeerSecurity {
        PeerSecurity {
            tls: Some(Arc::new(RwLock::new(tls))),
            handshake_failures: Arc::default(),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Peer TLS handshakes that failed or timed out, on the listener and when dialing out
    /// (shared by every clone).
    pub fn handshake_failures(&self) -> Arc<AtomicU64> {
        self.handshake_failures.clone()
    }

    fn failed_handshake(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Swaps the material: connections made from now on use `tls`; open ones keep theirs.
    pub fn replace(&self, tls: PeerTls) -> Result<(), NotTls> {
        let lock = self.tls.as_ref().ok_or(NotTls)?;
        // A poisoned lock still holds a whole value (it is only ever replaced whole).
        *lock.write().unwrap_or_else(|e| e.into_inner()) = tls;
        Ok(())
    }

    fn current(&self) -> Option<PeerTls> {
        self.tls
            .as_ref()
            .map(|l| l.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// A peer connection, plaintext or TLS.
pub(crate) trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> PeerStream for T {}
pub(crate) type BoxedStream = Box<dyn PeerStream>;

/// The name the peer's server certificate must carry: the host part of its `raft` address
/// (`host:port`, `[v6]:port`); an IP address is matched against IP SANs, a name against DNS
/// SANs.
pub fn server_name(raft_addr: &str) -> Result<ServerName<'static>, String> {
    let host = match raft_addr.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(h, _)| h),
        None => raft_addr.rsplit_once(':').map(|(h, _)| h),
    }
    .filter(|h| !h.is_empty())
    .ok_or_else(|| format!("raft address {raft_addr:?} has no host:port"))?;
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("raft address {raft_addr:?}: {host:?} is not a server name: {e}"))
}

/// Connects to a peer's `raft` address and, on a TLS link, completes the handshake, all
/// within `ttl`.
pub(crate) async fn dial(
    security: &PeerSecurity,
    raft_addr: &str,
    ttl: Duration,
) -> std::io::Result<BoxedStream> {
    let work = async {
        let tcp = TcpStream::connect(raft_addr).await?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = security.current() else {
            return Ok(Box::new(tcp) as BoxedStream);
        };
        let name = server_name(raft_addr).map_err(std::io::Error::other)?;
        match TlsConnector::from(tls.client).connect(name, tcp).await {
            Ok(s) => Ok(Box::new(s) as BoxedStream),
            Err(e) => {
                security.failed_handshake();
                tracing::warn!(peer = %raft_addr, error = %e, "peer TLS handshake failed (dialing out)");
                Err(e)
            }
        }
    };
    tokio::time::timeout(ttl, work)
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

/// Completes the listener's side of a TLS handshake (a no-op on a plaintext link). A peer
/// without a certificate chaining to the cluster CA is refused here, and the refusal logged
/// with its address.
pub(crate) async fn accept(
    security: &PeerSecurity,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
) -> Option<BoxedStream> {
    let _ = tcp.set_nodelay(true);
    let Some(tls) = security.current() else {
        return Some(Box::new(tcp));
    };
    match tokio::time::timeout(ACCEPT_HANDSHAKE, TlsAcceptor::from(tls.server).accept(tcp)).await {
        Ok(Ok(s)) => Some(Box::new(s)),
        Ok(Err(e)) => {
            security.failed_handshake();
            tracing::warn!(%peer, error = %e, "peer TLS handshake failed");
            None
        }
        Err(_) => {
            security.failed_handshake();
            tracing::warn!(%peer, "peer TLS handshake failed: not completed in time");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{self, RootCertStore};

    struct Ca(rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>);

    fn ca(name: &str) -> Ca {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca(cert, rcgen::Issuer::new(p, key))
    }

    /// A node certificate (serverAuth and clientAuth) with an IP SAN 127.0.0.1, and the
    /// peer configurations trusting `trust`.
    fn peer_tls(issuer: &Ca, trust: &Ca) -> PeerTls {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer.1).unwrap();
        let chain = vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()];
        let key = || PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(trust.0.pem().as_bytes()).unwrap())
            .unwrap();
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key())
            .unwrap();
        PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }

    /// Serves one connection on loopback with `listener_side`, dials it with `dialer_side`,
    /// and says whether a byte made the round trip.
    async fn round_trip(listener_side: PeerSecurity, dialer_side: PeerSecurity) -> bool {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (tcp, peer) = l.accept().await.unwrap();
            let mut s = accept(&listener_side, tcp, peer).await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
            s.write_all(&b).await.ok()?;
            s.flush().await.ok()
        });
        let echoed = async {
            let mut s = dial(&dialer_side, &addr, Duration::from_secs(5)).await?;
            s.write_all(b"x").await?;
            s.flush().await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            Ok::<_, std::io::Error>(b == *b"x")
        }
        .await;
        let served = server.await.unwrap().is_some();
        served && echoed.unwrap_or(false)
    }

    #[tokio::test]
    async fn nodes_of_one_ca_talk_and_a_node_of_another_ca_is_refused() {
        let (good, other) = (ca("cluster CA"), ca("other CA"));
        let a = PeerSecurity::tls(peer_tls(&good, &good));
        let b = PeerSecurity::tls(peer_tls(&good, &good));
        assert!(round_trip(a.clone(), b.clone()).await);
        let failures = a.handshake_failures();
        assert_eq!(failures.load(Ordering::Relaxed), 0);
        // Its client certificate is from another CA (it trusts ours, so only mTLS stops it).
        let intruder = PeerSecurity::tls(peer_tls(&other, &good));
        assert!(!round_trip(a.clone(), intruder).await);
        assert_eq!(
            failures.load(Ordering::Relaxed),
            1,
            "the listener counts its refusal"
        );
        // A plaintext dialer gets no answer from a TLS listener.
        assert!(!round_trip(a.clone(), PeerSecurity::plaintext()).await);
        // Material swapped in: the listener now trusts only the other CA.
        a.replace(peer_tls(&other, &other)).unwrap();
        assert!(!round_trip(a.clone(), b).await);
        let renewed = PeerSecurity::tls(peer_tls(&other, &other));
        assert!(round_trip(a, renewed).await);
        assert!(
            PeerSecurity::plaintext()
                .replace(peer_tls(&good, &good))
                .is_err()
        );
    }

    #[test]
    fn the_server_name_is_the_host_of_the_raft_address() {
        let name = |a: &str| server_name(a).map(|n| n.to_str().into_owned());
        assert_eq!(name("127.0.0.1:7412").unwrap(), "127.0.0.1");
        assert_eq!(name("[::1]:7412").unwrap(), "::1");
        assert_eq!(
            name("node-2.db.internal:7412").unwrap(),
            "node-2.db.internal"
        );
        assert!(matches!(
            server_name("127.0.0.1:1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(name("no-port").is_err());
        assert!(name(":7412").is_err());
    }
}
