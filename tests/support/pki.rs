//! Certificates for TLS tests, made at run time with rcgen (no key is committed): a CA,
//! server and clientAuth leaves, and rustls client configs trusting a given CA.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn write_600(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub struct Ca {
    pub cert: rcgen::Certificate,
    pub issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

pub fn new_ca(name: &str) -> Ca {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca {
        cert,
        issuer: rcgen::Issuer::new(p, key),
    }
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn leaf(ca: &Ca, cn: &str, client: bool, expired: bool) -> Leaf {
    let eku = if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    };
    leaf_with(ca, cn, vec![eku], expired)
}

/// A cluster node's certificate: serverAuth (its client and peer listeners) and clientAuth
/// (it dials its peers with it), SANs localhost and 127.0.0.1.
pub fn node_leaf(ca: &Ca, cn: &str) -> Leaf {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    leaf_with(ca, cn, vec![ServerAuth, ClientAuth], false)
}

fn leaf_with(ca: &Ca, cn: &str, ekus: Vec<rcgen::ExtendedKeyUsagePurpose>, expired: bool) -> Leaf {
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.extended_key_usages = ekus;
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: new_ca("rstmdb test CA"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the server certificate/key and the CA; returns (cert, key, ca) paths.
    pub fn server_files(&self) -> (PathBuf, PathBuf, PathBuf) {
        let l = leaf(&self.ca, "rstmdb-server", false, false);
        write_600(&self.path("server.pem"), &l.cert_pem);
        write_600(&self.path("server-key.pem"), &l.key_pem);
        write_600(&self.path("ca.pem"), &self.ca.cert.pem());
        (
            self.path("server.pem"),
            self.path("server-key.pem"),
            self.path("ca.pem"),
        )
    }
}

pub fn roots(ca_pem: &str) -> rustls::RootCertStore {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut r = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        r.add(c.unwrap()).unwrap();
    }
    r
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn client_config(ca_pem: &str, client: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca_pem));
    Arc::new(match client {
        None => b.with_no_client_auth(),
        Some(l) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(l.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    })
}
