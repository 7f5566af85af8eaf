//! Unit tests of `auth`: tokens, secrets files, certificate identities, the AUTH throttle.

use super::*;

#[test]
fn throttle_blocks_a_network_and_keeps_a_slow_lane_open() {
    let t = Throttle::default();
    let a: IpAddr = "127.0.0.1".parse().unwrap();
    let t0 = Instant::now();
    for _ in 0..MAX_AUTH_FAILURES_PER_WINDOW - 1 {
        assert_eq!(t.admit_at(a, t0), Ok(()));
        t.record_failure_at(a, t0);
    }
    assert_eq!(t.admit_at(a, t0), Ok(()));
    t.record_failure_at(a, t0);
    // Throttled: one check now (the slow lane), then refusals until the next slot.
    assert_eq!(t.admit_at(a, t0), Ok(()));
    assert_eq!(t.admit_at(a, t0), Err(AUTH_SLOW_LANE));
    let half = t0 + AUTH_SLOW_LANE / 2;
    assert_eq!(t.admit_at(a, half), Err(AUTH_SLOW_LANE / 2));
    assert_eq!(t.admit_at(a, t0 + AUTH_SLOW_LANE), Ok(()));
    let b: IpAddr = "10.0.0.1".parse().unwrap();
    assert_eq!(t.admit_at(b, t0), Ok(()), "other networks are not affected");
    // A failure in the slow lane extends the throttle; without failures it ends.
    let later = t0 + AUTH_THROTTLE - Duration::from_secs(1);
    t.record_failure_at(a, later);
    assert_eq!(t.admit_at(a, later), Ok(()));
    assert!(t.admit_at(a, later).is_err());
    let past_first = t0 + AUTH_THROTTLE + Duration::from_secs(5);
    assert_eq!(t.admit_at(a, past_first), Ok(()), "slow lane");
    assert!(t.admit_at(a, past_first).is_err(), "still throttled");
    let free = later + AUTH_THROTTLE;
    assert_eq!(t.admit_at(a, free), Ok(()));
    assert_eq!(t.admit_at(a, free), Ok(()));
}

#[test]
fn ipv6_is_throttled_by_its_64_and_mapped_ipv4_as_ipv4() {
    let t = Throttle::default();
    let now = Instant::now();
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    for i in 0..MAX_AUTH_FAILURES_PER_WINDOW {
        // A host rotating through its /64 is still one network.
        t.record_failure_at(ip(&format!("2001:db8:1:2::{:x}", i + 1)), now);
    }
    assert_eq!(t.admit_at(ip("2001:db8:1:2:ffff::9"), now), Ok(()));
    assert!(t.admit_at(ip("2001:db8:1:2:aaaa::1"), now).is_err());
    assert_eq!(t.admit_at(ip("2001:db8:1:3::1"), now), Ok(()));
    assert_eq!(
        throttle_key(ip("::ffff:192.0.2.7")),
        ip("192.0.2.7"),
        "an IPv4-mapped address is its IPv4 address"
    );
    assert_eq!(throttle_key(ip("192.0.2.7")), ip("192.0.2.7"));
}

fn chk(auth: &Auth, token: &str) -> Result<Principal, &'static str> {
    let mut t = token.to_string();
    let r = auth.check(&mut t);
    assert!(t.is_empty(), "the token is wiped after the check");
    r
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn configured_token_is_accepted_in_either_case() {
    let cfg = AuthConfig {
        required: true,
        token_hashes: vec![hash("other"), hash("secret").to_uppercase()],
        ..Default::default()
    };
    let auth = Auth::from_config(&cfg).unwrap();
    let p = chk(&auth, "secret").unwrap();
    assert_eq!((p.name.as_str(), p.role), ("token-hash-2", Role::Admin));
    assert_eq!(chk(&auth, "Secret"), Err("invalid token"));
    assert_eq!(chk(&auth, ""), Err("invalid token"));
}

#[test]
fn without_auth_any_non_empty_token_passes() {
    let auth = Auth::from_config(&AuthConfig::default()).unwrap();
    assert_eq!(chk(&auth, "x").unwrap(), Principal::anonymous());
    assert_eq!(chk(&auth, ""), Err("empty token"));
}

#[test]
fn required_without_tokens_is_refused() {
    let cfg = AuthConfig {
        required: true,
        ..Default::default()
    };
    assert!(matches!(
        Auth::from_config(&cfg),
        Err(AuthSetupError::NoTokens)
    ));
}

#[test]
fn world_readable_secrets_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("secrets");
    std::fs::write(&p, format!("{}\n", hash("t"))).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = AuthConfig {
        required: true,
        secrets_file: Some(p.clone()),
        ..Default::default()
    };
    assert!(matches!(
        Auth::from_config(&cfg),
        Err(AuthSetupError::Insecure { .. })
    ));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(chk(&Auth::from_config(&cfg).unwrap(), "t").is_ok());
    std::fs::write(&p, "not-a-hash\n").unwrap();
    cfg.allow_insecure_secrets_file = true;
    assert!(matches!(
        Auth::from_config(&cfg),
        Err(AuthSetupError::BadLine { line: 1, .. })
    ));
}

#[test]
fn secrets_file_lines_carry_name_role_and_globs() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("secrets");
    std::fs::write(
        &p,
        format!(
            "# comment\n{}\n{} reporter read\n{} orders-svc write,order*,invoice\n",
            hash("root"),
            hash("ro"),
            hash("svc")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = AuthConfig {
        required: true,
        secrets_file: Some(p.clone()),
        ..Default::default()
    };
    let auth = Auth::from_config(&cfg).unwrap();
    assert_eq!(auth.token_count(), 3);
    let root = chk(&auth, "root").unwrap();
    assert_eq!(root.role, Role::Admin);
    // A bare hash is named by its place in the file, never by any part of the hash.
    assert_eq!(root.name, "secrets-line-2");
    assert!(!root.name.contains(&hash("root")[..4]), "{}", root.name);
    assert!(!root.restricted());
    let ro = chk(&auth, "ro").unwrap();
    assert_eq!((ro.name.as_str(), ro.role), ("reporter", Role::Read));
    let svc = chk(&auth, "svc").unwrap();
    assert_eq!((svc.name.as_str(), svc.role), ("orders-svc", Role::Write));
    assert!(svc.allows_machine("order"));
    assert!(svc.allows_machine("orders-v2"));
    assert!(svc.allows_machine("invoice"));
    assert!(!svc.allows_machine("invoices"));
    assert!(!svc.allows_machine("payment"));
    for bad in [
        "x reporter",
        "HASH n superuser",
        "HASH n read,",
        "HASH a b c",
    ] {
        std::fs::write(&p, bad.replace("HASH", &hash("t"))).unwrap();
        let e = Auth::from_config(&cfg).unwrap_err();
        assert!(
            matches!(e, AuthSetupError::BadLine { line: 1, .. }),
            "{bad}: {e}"
        );
    }
}

#[test]
fn constant_time_search_finds_the_first_match_anywhere() {
    let h = |b: u8| [b; 32];
    let list = [h(1), h(2), h(3), h(2)];
    assert_eq!(ct_find(list.iter(), &h(1)), Some(0));
    assert_eq!(ct_find(list.iter(), &h(2)), Some(1));
    assert_eq!(ct_find(list.iter(), &h(3)), Some(2));
    assert_eq!(ct_find(list.iter(), &h(9)), None);
    // Differs only in the last byte: still no match (every byte is compared).
    let mut near = h(3);
    near[31] = 4;
    assert_eq!(ct_find(list.iter(), &near), None);
    assert_eq!(ct_find([].iter(), &h(1)), None);
}

#[test]
fn globs() {
    assert!(glob_match("*", ""));
    assert!(glob_match("order*", "order"));
    assert!(glob_match("o?der", "order"));
    assert!(glob_match("*-v?", "order-v2"));
    assert!(!glob_match("*-v?", "order-v22"));
    assert!(glob_match("a*b*c", "aXXbYYbc"));
    assert!(!glob_match("a*b*c", "aXXbYYb"));
    assert!(!glob_match("order", "orders"));
    // A pathological pattern stays fast (no exponential backtracking).
    let long = "a".repeat(10_000);
    assert!(!glob_match("*a*a*a*a*a*a*a*b", &long));
}

#[test]
fn cert_identities_need_identity_from_cert() {
    let mut cfg = AuthConfig {
        required: true,
        cert_identities: [("svc-a".to_string(), "write,order*".to_string())].into(),
        ..Default::default()
    };
    let auth = Auth::from_config(&cfg).unwrap();
    assert_eq!(auth.principal_for_cert("svc-a"), None);
    cfg.identity_from_cert = true;
    let auth = Auth::from_config(&cfg).unwrap();
    let p = auth.principal_for_cert("svc-a").unwrap();
    assert_eq!((p.name.as_str(), p.role), ("svc-a", Role::Write));
    assert_eq!(auth.principal_for_cert("svc-b"), None);
    cfg.cert_identities = [("x".to_string(), "root".to_string())].into();
    assert!(matches!(
        Auth::from_config(&cfg),
        Err(AuthSetupError::BadCertIdentity { .. })
    ));
    cfg.cert_identities = [("dns:".to_string(), "read".to_string())].into();
    assert!(matches!(
        Auth::from_config(&cfg),
        Err(AuthSetupError::BadCertIdentity { .. })
    ));
}

#[test]
fn certificates_match_by_cn_dns_or_uri_and_exactly_one_entry() {
    use crate::tls::PeerIdentity;
    let cfg = AuthConfig {
        identity_from_cert: true,
        cert_identities: [
            ("svc-a".to_string(), "write,order*".to_string()),
            ("dns:Orders.Internal".to_string(), "read".to_string()),
            (
                "uri:spiffe://prod/sa/billing".to_string(),
                "admin".to_string(),
            ),
        ]
        .into(),
        ..Default::default()
    };
    let auth = Auth::from_config(&cfg).unwrap();
    let id = |cn: Option<&str>, dns: &[&str], uris: &[&str]| PeerIdentity {
        cn: cn.map(str::to_owned),
        dns: dns.iter().map(|s| s.to_string()).collect(),
        uris: uris.iter().map(|s| s.to_string()).collect(),
    };
    let CertMatch::Principal(p) = auth.cert_match(&id(Some("svc-a"), &[], &[])) else {
        panic!("svc-a by CN")
    };
    assert_eq!((p.name.as_str(), p.role), ("svc-a", Role::Write));
    let CertMatch::Principal(p) = auth.cert_match(&id(None, &["orders.internal"], &[])) else {
        panic!("DNS SANs compare without case")
    };
    assert_eq!(
        (p.name.as_str(), p.role),
        ("dns:orders.internal", Role::Read)
    );
    let CertMatch::Principal(p) =
        auth.cert_match(&id(Some("x"), &[], &["spiffe://prod/sa/billing"]))
    else {
        panic!("URI SAN")
    };
    assert_eq!(p.role, Role::Admin);
    assert_eq!(
        auth.cert_match(&id(Some("svc-b"), &["other.internal"], &[])),
        CertMatch::Unlisted
    );
    // A URI compares exactly; a CN is not a DNS name.
    assert_eq!(
        auth.cert_match(&id(
            Some("orders.internal"),
            &[],
            &["spiffe://prod/sa/BILLING"]
        )),
        CertMatch::Unlisted
    );
    assert!(matches!(
        auth.cert_match(&id(Some("svc-a"), &["orders.internal"], &[])),
        CertMatch::Ambiguous(names) if names.len() == 2
    ));
    let off = Auth::from_config(&AuthConfig::default()).unwrap();
    assert_eq!(off.cert_match(&id(Some("svc-a"), &[], &[])), CertMatch::Off);
}

#[test]
fn unauthenticated_connections_are_counted_per_network_until_dropped() {
    let counts = std::sync::Arc::new(PreAuthCount::default());
    let a: IpAddr = "2001:db8::1".parse().unwrap();
    let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
    let s1 = PreAuthCount::enter(&counts, a, 2).unwrap();
    let s2 = PreAuthCount::enter(&counts, same_64, 2).unwrap();
    assert!(
        PreAuthCount::enter(&counts, a, 2).is_none(),
        "the /64 is full"
    );
    assert!(PreAuthCount::enter(&counts, "10.0.0.1".parse().unwrap(), 2).is_some());
    drop(s1);
    assert_eq!(counts.count(a), 1);
    let s3 = PreAuthCount::enter(&counts, a, 2).unwrap();
    drop((s2, s3));
    assert_eq!(counts.count(a), 0);
    assert!(
        counts.by_addr.lock().unwrap().is_empty(),
        "no entry left behind"
    );
}

#[test]
fn a_token_removed_by_a_reload_no_longer_names_a_principal() {
    let cfg = |hashes: Vec<String>| AuthConfig {
        required: true,
        token_hashes: hashes,
        ..Default::default()
    };
    let before = Auth::from_config(&cfg(vec![hash("keep"), hash("drop")])).unwrap();
    let mut t = "drop".to_string();
    let (_, dropped) = before.check_token(&mut t).unwrap();
    let mut t = "keep".to_string();
    let (_, kept) = before.check_token(&mut t).unwrap();
    let (dropped, kept) = (dropped.unwrap(), kept.unwrap());
    assert_eq!(format!("{dropped:?}"), "TokenId(..)", "never printed");
    let after = Auth::from_config(&cfg(vec![hash("keep")])).unwrap();
    assert_eq!(after.principal_for_token(&dropped), None);
    assert_eq!(
        after.principal_for_token(&kept).map(|p| p.name),
        Some("token-hash-1".to_string())
    );
}
