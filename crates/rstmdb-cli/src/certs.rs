//! `gen-certs`: a development PKI for TLS and mTLS in one command.
//!
//! Writes a CA, a server certificate (SANs from `--hosts`, serverAuth) and a client
//! certificate (clientAuth), all X.509 v3 with ECDSA P-256 keys — the reference's script
//! produced v1 client certificates that rustls rejects (operations.md §9). Private keys are
//! PKCS#8 PEM, created with mode 0600.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::json;

use crate::CliError;
use crate::args::GenCertsArgs;
use crate::output::line;

const FILES: [&str; 6] = [
    "ca.pem",
    "ca-key.pem",
    "server.pem",
    "server-key.pem",
    "client.pem",
    "client-key.pem",
];

fn err(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Input(format!("{what}: {e}"))
}

pub fn generate(args: &GenCertsArgs, json_out: bool) -> Result<ExitCode, CliError> {
    let dir = &args.out_dir;
    if !args.force
        && let Some(existing) = FILES.iter().map(|f| dir.join(f)).find(|p| p.exists())
    {
        return Err(CliError::Input(format!(
            "{} already exists (use --force to replace)",
            existing.display()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| err(&format!("cannot create {}", dir.display()), e))?;

    // From yesterday (tolerates clock skew) to `days` from today.
    let today = today();
    let (y, m, d) = civil_from_days(today - 1);
    let not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(today + i64::from(args.days));
    let not_after = rcgen::date_time_ymd(y, m, d);

    let ca_key = KeyPair::generate().map_err(|e| err("key generation", e))?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("rstmdb development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca = ca_params
        .self_signed(&ca_key)
        .map_err(|e| err("CA certificate", e))?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let server_key = KeyPair::generate().map_err(|e| err("key generation", e))?;
    let mut server_params =
        CertificateParams::new(args.hosts.clone()).map_err(|e| err("server names", e))?;
    server_params.distinguished_name = name("rstmdb server");
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.not_before = not_before;
    server_params.not_after = not_after;
    let server = server_params
        .signed_by(&server_key, &issuer)
        .map_err(|e| err("server certificate", e))?;

    let client_key = KeyPair::generate().map_err(|e| err("key generation", e))?;
    let mut client_params = CertificateParams::default();
    client_params.distinguished_name = name("rstmdb client");
    client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client_params.not_before = not_before;
    client_params.not_after = not_after;
    let client = client_params
        .signed_by(&client_key, &issuer)
        .map_err(|e| err("client certificate", e))?;

    write(dir, "ca.pem", &ca.pem(), false)?;
    write(dir, "ca-key.pem", &ca_key.serialize_pem(), true)?;
    write(dir, "server.pem", &server.pem(), false)?;
    write(dir, "server-key.pem", &server_key.serialize_pem(), true)?;
    write(dir, "client.pem", &client.pem(), false)?;
    write(dir, "client-key.pem", &client_key.serialize_pem(), true)?;

    if json_out {
        let paths: serde_json::Map<String, serde_json::Value> = FILES
            .iter()
            .map(|f| (f.to_string(), json!(dir.join(f).display().to_string())))
            .collect();
        line(serde_json::Value::Object(paths).to_string());
    } else {
        line(format!("Wrote a development PKI to {}:", dir.display()));
        line("  ca.pem, ca-key.pem          CA (keep ca-key.pem offline)");
        line(format!(
            "  server.pem, server-key.pem  server certificate for {}",
            args.hosts.join(", ")
        ));
        line("  client.pem, client-key.pem  client certificate (mTLS)");
    }
    Ok(ExitCode::SUCCESS)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Days since 1970-01-01 (UTC).
fn today() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y as i32, m as u8, d as u8)
}

fn write(dir: &Path, file: &str, pem: &str, secret: bool) -> Result<(), CliError> {
    let path = dir.join(file);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = options
        .open(&path)
        .map_err(|e| err(&format!("cannot write {}", path.display()), e))?;
    f.write_all(pem.as_bytes())
        .map_err(|e| err(&format!("cannot write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
