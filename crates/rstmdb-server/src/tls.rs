//! TLS and mTLS (tokio-rustls, ring provider, TLS 1.2 and 1.3 only).
//!
//! [`load`] reads the certificate chain, the private key (PKCS#8, PKCS#1 or SEC1) and, for
//! mTLS, the client CA bundle, all PEM via rustls-pki-types' `PemObject`, and checks that the
//! key matches the certificate. Every failure names the file and what is wrong with it (the
//! messages follow operations.md §3.3). The server keeps the result behind a lock so that
//! SIGHUP can swap it: handshakes already done keep their session, new ones use the new
//! material.
//!
//! [`load_peer`] builds the cluster peer link's pair from the same files: a listener that
//! requires a client certificate chaining to `client_ca_path` (always, whatever
//! `require_client_cert` says) and a dialer that presents the node's certificate and trusts
//! only that CA.

use crate::config::TlsConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS enabled but cert_path not set")]
    NoCertPath,
    #[error("TLS enabled but key_path not set")]
    NoKeyPath,
    #[error("mTLS enabled but client_ca_path not set")]
    NoClientCaPath,
    #[error(
        "cluster mode with TLS needs tls.client_ca_path: peers authenticate each other with \
         certificates signed by that CA"
    )]
    NoPeerCaPath,
    #[error("cannot open cert file {path:?}: {source}")]
    OpenCert {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid cert file {path:?}: {message}")]
    BadCert { path: PathBuf, message: String },
    #[error("cannot open key file {path:?}: {source}")]
    OpenKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid key file {path:?}: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error(
        "key file {path:?} is accessible by group or others (mode {mode:04o}); it must be 0600 \
         or stricter, or 0640 if owned by root: run `chmod 600 {}`",
        .path.display()
    )]
    InsecureKey { path: PathBuf, mode: u32 },
    #[error("no private key found in {0:?}")]
    NoKey(PathBuf),
    #[error("cannot open client CA file {path:?}: {source}")]
    OpenCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid client CA cert: {0}")]
    BadCa(String),
    #[error("failed to build client verifier: {0}")]
    Verifier(String),
    #[error("invalid server cert/key: {0}")]
    CertKey(String),
}

fn read(path: &Path, open: impl Fn(std::io::Error) -> TlsError) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(open)
}

/// The private key's file must not be open to others, nor writable or readable by the group,
/// except that a root-owned key may be group-readable (0640, the usual `ssl-cert` group setup):
/// the rule PostgreSQL applies to its `ssl_key_file`. A symlink is judged by its target.
#[cfg(unix)]
fn check_key_permissions(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| TlsError::OpenKey {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    let allowed = if meta.uid() == 0 { 0o040 } else { 0 };
    if mode & 0o077 & !allowed != 0 {
        return Err(TlsError::InsecureKey {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_key_permissions(_: &Path) -> Result<(), TlsError> {
    Ok(())
}

fn certs(
    path: &Path,
    bytes: &[u8],
    bad: impl Fn(String) -> TlsError,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{e} in {}", path.display())))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

type CertKey = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The certificate chain and private key of `cfg`, checked for a usable key file.
fn cert_and_key(cfg: &TlsConfig) -> Result<CertKey, TlsError> {
    let cert_path = cfg.cert_path.as_deref().ok_or(TlsError::NoCertPath)?;
    let key_path = cfg.key_path.as_deref().ok_or(TlsError::NoKeyPath)?;
    let cert_bytes = read(cert_path, |source| TlsError::OpenCert {
        path: cert_path.to_path_buf(),
        source,
    })?;
    let chain = certs(cert_path, &cert_bytes, |message| TlsError::BadCert {
        path: cert_path.to_path_buf(),
        message,
    })?;
    if chain.is_empty() {
        return Err(TlsError::BadCert {
            path: cert_path.to_path_buf(),
            message: "no CERTIFICATE block found".into(),
        });
    }

    check_key_permissions(key_path)?;
    let key_bytes = read(key_path, |source| TlsError::OpenKey {
        path: key_path.to_path_buf(),
        source,
    })?;
    match PrivateKeyDer::from_pem_slice(&key_bytes) {
        Ok(k) => Ok((chain, k)),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            Err(TlsError::NoKey(key_path.to_path_buf()))
        }
        Err(e) => Err(TlsError::BadKey {
            path: key_path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// The CA bundle at `ca_path` as trust roots.
fn roots(ca_path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let ca_bytes = read(ca_path, |source| TlsError::OpenCa {
        path: ca_path.to_path_buf(),
        source,
    })?;
    let cas = certs(ca_path, &ca_bytes, TlsError::BadCa)?;
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca).map_err(|e| TlsError::BadCa(e.to_string()))?;
    }
    Ok(Arc::new(roots))
}

fn client_verifier(
    roots: Arc<RootCertStore>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))
}

/// Builds the server configuration from `cfg` (which must have `enabled: true`).
pub fn load(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = cert_and_key(cfg)?;
    let ca_path = if cfg.require_client_cert {
        Some(
            cfg.client_ca_path
                .as_deref()
                .ok_or(TlsError::NoClientCaPath)?,
        )
    } else {
        None
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::CertKey(e.to_string()))?;
    let builder = match ca_path {
        None => builder.with_no_client_auth(),
        Some(ca_path) => builder.with_client_cert_verifier(client_verifier(roots(ca_path)?)?),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::CertKey(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The cluster peer link's TLS from `cfg` (which must have `enabled: true`): the listener
/// requires a client certificate chaining to `client_ca_path`; the dialer presents this
/// node's certificate and verifies the peer's against the same CA (the name it checks is the
/// host of the peer's `raft` address, see `rstmdb_cluster::peer_tls`). The node certificate
/// therefore needs both the serverAuth and the clientAuth extended key usage (or none).
pub fn load_peer(cfg: &TlsConfig) -> Result<rstmdb_cluster::PeerTls, TlsError> {
    let (chain, key) = cert_and_key(cfg)?;
    let ca_path = cfg
        .client_ca_path
        .as_deref()
        .ok_or(TlsError::NoPeerCaPath)?;
    let roots = roots(ca_path)?;
    let versions: &[&rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::CertKey(e.to_string()))?
        .with_client_cert_verifier(client_verifier(roots.clone())?)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| TlsError::CertKey(e.to_string()))?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::CertKey(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::CertKey(e.to_string()))?;
    Ok(rstmdb_cluster::PeerTls {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// The names a verified client certificate (the leaf) carries: its subject CN and its DNS and
/// URI subject alternative names (a SPIFFE ID is a URI SAN). `auth.cert_identities` matches
/// on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub cn: Option<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
}

/// Names read from one certificate at most; a certificate with more is read up to this many.
pub const MAX_PEER_NAMES: usize = 64;

/// The identity of the first (leaf) certificate the client presented, if any.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<PeerIdentity> {
    use x509_parser::extensions::GeneralName;
    let leaf = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let mut id = PeerIdentity {
        cn,
        ..PeerIdentity::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in san.value.general_names.iter().take(MAX_PEER_NAMES) {
            match name {
                GeneralName::DNSName(d) => id.dns.push((*d).to_owned()),
                GeneralName::URI(u) => id.uris.push((*u).to_owned()),
                _ => {}
            }
        }
    }
    Some(id)
}

/// The subject CN of the first (leaf) certificate the client presented, if any.
pub fn peer_common_name(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    peer_identity(certs)?.cn
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        chmod(&p, 0o600);
        p
    }

    fn chmod(p: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    struct Pair {
        cert: String,
        key: String,
    }

    fn self_signed(cn: &str) -> Pair {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn cfg(cert: Option<PathBuf>, key: Option<PathBuf>) -> TlsConfig {
        TlsConfig {
            enabled: true,
            cert_path: cert,
            key_path: key,
            ..Default::default()
        }
    }

    #[test]
    fn loads_a_good_pair_and_reports_each_kind_of_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = self_signed("a");
        let b = self_signed("b");
        let cert = write(d, "cert.pem", &a.cert);
        let key = write(d, "key.pem", &a.key);
        assert!(load(&cfg(Some(cert.clone()), Some(key.clone()))).is_ok());

        let e = |c: TlsConfig| load(&c).unwrap_err().to_string();
        assert_eq!(
            e(cfg(None, Some(key.clone()))),
            "TLS enabled but cert_path not set"
        );
        assert_eq!(
            e(cfg(Some(cert.clone()), None)),
            "TLS enabled but key_path not set"
        );
        let mut m = cfg(Some(cert.clone()), Some(key.clone()));
        m.require_client_cert = true;
        assert_eq!(e(m.clone()), "mTLS enabled but client_ca_path not set");

        let missing = d.join("missing.pem");
        assert!(
            e(cfg(Some(missing.clone()), Some(key.clone()))).starts_with("cannot open cert file")
        );
        assert!(
            e(cfg(Some(cert.clone()), Some(missing.clone()))).starts_with("cannot open key file")
        );
        let garbage = write(d, "garbage.pem", "hello\n");
        assert!(e(cfg(Some(garbage.clone()), Some(key.clone()))).contains("no CERTIFICATE"));
        // A certificate where the key should be: no key in it.
        assert!(e(cfg(Some(cert.clone()), Some(cert.clone()))).starts_with("no private key found"));
        let other_key = write(d, "other-key.pem", &b.key);
        let msg = e(cfg(Some(cert.clone()), Some(other_key)));
        assert!(msg.starts_with("invalid server cert/key"), "{msg}");

        m.client_ca_path = Some(garbage);
        let msg = e(m.clone());
        assert!(msg.contains("no root trust anchors"), "{msg}");
        m.client_ca_path = Some(cert.clone());
        assert!(load(&m).is_ok());
    }

    #[test]
    fn the_peer_link_pair_needs_the_client_ca_and_loads_from_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = self_signed("node-1");
        let cert = write(d, "cert.pem", &a.cert);
        let key = write(d, "key.pem", &a.key);
        let mut c = cfg(Some(cert.clone()), Some(key));
        let msg = load_peer(&c).unwrap_err().to_string();
        assert!(msg.contains("tls.client_ca_path"), "{msg}");
        assert!(msg.contains("peers authenticate each other"), "{msg}");
        // mTLS on the peer link whatever require_client_cert says (false here).
        c.client_ca_path = Some(cert);
        let peer = load_peer(&c).unwrap();
        assert!(peer.client.client_auth_cert_resolver.has_certs());
        let missing = d.join("missing.pem");
        c.client_ca_path = Some(missing);
        let msg = load_peer(&c).unwrap_err().to_string();
        assert!(msg.starts_with("cannot open client CA file"), "{msg}");
    }

    #[test]
    fn a_key_file_open_to_others_is_refused() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let a = self_signed("a");
        let cert = write(dir.path(), "cert.pem", &a.cert);
        let key = write(dir.path(), "key.pem", &a.key);
        for mode in [0o600, 0o400] {
            chmod(&key, mode);
            assert!(load(&cfg(Some(cert.clone()), Some(key.clone()))).is_ok());
        }
        for mode in [0o644, 0o604, 0o660, 0o620, 0o666] {
            chmod(&key, mode);
            let msg = load(&cfg(Some(cert.clone()), Some(key.clone())))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("accessible by group or others"),
                "{mode:o}: {msg}"
            );
            assert!(msg.contains("chmod 600"), "{msg}");
        }
        // Group-readable is accepted only for a root-owned key (the ssl-cert group setup).
        chmod(&key, 0o640);
        let owned_by_root = std::fs::metadata(&key).unwrap().uid() == 0;
        assert_eq!(
            load(&cfg(Some(cert.clone()), Some(key.clone()))).is_ok(),
            owned_by_root
        );
        // The cert itself may be world-readable.
        chmod(&key, 0o600);
        chmod(&cert, 0o644);
        assert!(load(&cfg(Some(cert), Some(key))).is_ok());
    }

    #[test]
    fn common_name_of_a_certificate() {
        let a = self_signed("svc-orders");
        let der = CertificateDer::from_pem_slice(a.cert.as_bytes()).unwrap();
        assert_eq!(
            peer_common_name(Some(&[der])).as_deref(),
            Some("svc-orders")
        );
        assert_eq!(peer_common_name(None), None);
    }

    #[test]
    fn dns_and_uri_names_of_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec![
            "orders.internal".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://prod/ns/shop/sa/orders".try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap();
        let id = peer_identity(Some(&[der])).unwrap();
        assert_eq!(id.dns, ["orders.internal"]);
        assert_eq!(id.uris, ["spiffe://prod/ns/shop/sa/orders"]);
        assert_eq!(peer_identity(None), None);
    }
}
