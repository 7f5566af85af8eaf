//! TLS settings and how they become a rustls `ClientConfig` (operations.md §3.5).
//!
//! The crypto provider is named explicitly (ring) instead of relying on rustls' process-wide
//! default: if another crate in the same build enables a second provider, the implicit
//! default becomes ambiguous and rustls would refuse to build a config at run time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::error::{Error, Result};

/// How to secure a connection. Any TLS option given means the connection uses TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM bundle of trust anchors; replaces the built-in Mozilla roots (webpki-roots).
    pub ca_cert: Option<PathBuf>,
    /// PEM certificate chain presented to a server that requires client certificates.
    pub client_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate. For development only: anyone on the path can read
    /// and change the traffic.
    pub insecure: bool,
    /// The name the server certificate must carry; defaults to the host of the address
    /// (an IP address then needs an IP SAN).
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// Verify the server against the CA bundle at `path`.
    pub fn with_ca(path: impl Into<PathBuf>) -> Self {
        Self {
            ca_cert: Some(path.into()),
            ..Self::default()
        }
    }

    /// Present a client certificate (mTLS).
    pub fn client_auth(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// Builds the rustls configuration: loads and checks every file now, so a bad path or
    /// PEM is reported before any network traffic.
    pub fn client_config(&self) -> Result<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::TlsConfig(e.to_string()))?;

        let builder = if self.insecure {
            tracing::warn!("Using insecure TLS (certificate verification disabled)");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { algorithms }))
        } else {
            builder.with_root_certificates(self.root_store()?)
        };

        match (&self.client_cert, &self.client_key) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(cert), Some(key)) => {
                let chain = load_certs(cert, "client certificate")?;
                let key = load_key(key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::TlsConfig(format!("invalid client cert/key: {e}")))
            }
            _ => Err(Error::TlsConfig(
                "client certificate and client key must be given together".into(),
            )),
        }
    }

    fn root_store(&self) -> Result<RootCertStore> {
        let Some(path) = &self.ca_cert else {
            return Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            });
        };
        let mut roots = RootCertStore::empty();
        for cert in load_certs(path, "CA certificate")? {
            roots
                .add(cert)
                .map_err(|e| Error::TlsConfig(format!("invalid CA certificate {path:?}: {e}")))?;
        }
        Ok(roots)
    }

    /// The name checked against the server certificate (and sent as SNI when it is a DNS
    /// name): `server_name` if set, else `host`.
    pub fn server_name_for(&self, host: &str) -> Result<ServerName<'static>> {
        let name = self.server_name.as_deref().unwrap_or(host);
        // `[::1]` is how an IPv6 host appears in an address; the certificate names `::1`.
        let name = name.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(name.to_owned())
            .map_err(|e| Error::TlsConfig(format!("invalid server name {name:?}: {e}")))
    }
}

/// Every `CERTIFICATE` block of a PEM file, in order; other blocks are skipped.
fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::TlsConfig(format!("cannot read {what} file {path:?}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::TlsConfig(format!("invalid {what} file {path:?}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::TlsConfig(format!(
            "no certificate found in {what} file {path:?}"
        )));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::TlsConfig(format!("cannot read client key file {path:?}: {e}")))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            Error::TlsConfig(format!("no private key found in {path:?}"))
        }
        e => Error::TlsConfig(format!("invalid client key file {path:?}: {e}")),
    })
}

/// `--insecure`: any certificate is accepted, but the handshake signatures are still
/// checked, so the session at least belongs to whoever holds the presented key.
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = ca_params.self_signed(&ca_key).unwrap();
            let client_key = rcgen::KeyPair::generate().unwrap();
            let mut client_params =
                rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap();
            client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
            let client = client_params.signed_by(&client_key, &issuer).unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
            std::fs::write(
                dir.path().join("client-key.pem"),
                client_key.serialize_pem(),
            )
            .unwrap();
            std::fs::write(dir.path().join("garbage.pem"), "not a pem file\n").unwrap();
            Pki { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    fn tls_err(opts: &TlsOptions) -> String {
        match opts.client_config() {
            Err(Error::TlsConfig(m)) => m,
            Err(e) => panic!("expected a TLS config error, got {e:?}"),
            Ok(_) => panic!("expected a TLS config error, got a config"),
        }
    }

    #[test]
    fn default_roots_build_without_files() {
        TlsOptions::default().client_config().unwrap();
    }

    #[test]
    fn ca_bundle_and_client_pair_build() {
        let pki = Pki::new();
        let opts = TlsOptions::with_ca(pki.path("ca.pem"))
            .client_auth(pki.path("client.pem"), pki.path("client-key.pem"));
        opts.client_config().unwrap();
    }

    #[test]
    fn missing_ca_file_names_the_path() {
        let m = tls_err(&TlsOptions::with_ca("/nonexistent/ca.pem"));
        assert!(
            m.contains("cannot read CA certificate file") && m.contains("/nonexistent/ca.pem"),
            "{m}"
        );
    }

    #[test]
    fn ca_file_without_certificates_is_refused() {
        let pki = Pki::new();
        let m = tls_err(&TlsOptions::with_ca(pki.path("garbage.pem")));
        assert!(m.contains("no certificate found"), "{m}");
    }

    #[test]
    fn key_file_without_a_key_is_refused() {
        let pki = Pki::new();
        let opts = TlsOptions::with_ca(pki.path("ca.pem"))
            .client_auth(pki.path("client.pem"), pki.path("client.pem"));
        let m = tls_err(&opts);
        assert!(m.contains("no private key found"), "{m}");
    }

    #[test]
    fn mismatched_cert_and_key_are_refused() {
        let pki = Pki::new();
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(pki.path("other-key.pem"), other.serialize_pem()).unwrap();
        let opts = TlsOptions::with_ca(pki.path("ca.pem"))
            .client_auth(pki.path("client.pem"), pki.path("other-key.pem"));
        let m = tls_err(&opts);
        assert!(m.contains("invalid client cert/key"), "{m}");
    }

    #[test]
    fn cert_without_key_is_refused() {
        let pki = Pki::new();
        let opts = TlsOptions {
            client_cert: Some(pki.path("client.pem")),
            ..TlsOptions::default()
        };
        assert!(tls_err(&opts).contains("must be given together"));
    }

    #[test]
    fn insecure_mode_builds_without_a_ca() {
        let opts = TlsOptions {
            insecure: true,
            ..TlsOptions::default()
        };
        opts.client_config().unwrap();
    }

    #[test]
    fn server_name_defaults_to_the_host_and_accepts_ips() {
        let opts = TlsOptions::default();
        assert!(matches!(
            opts.server_name_for("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            opts.server_name_for("[::1]").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            opts.server_name_for("db.example.com").unwrap(),
            ServerName::DnsName(_)
        ));
        let named = TlsOptions {
            server_name: Some("localhost".into()),
            ..TlsOptions::default()
        };
        assert!(matches!(
            named.server_name_for("127.0.0.1").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(opts.server_name_for("bad name!").is_err());
    }
}
