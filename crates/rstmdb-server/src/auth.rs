//! Token authentication: tokens are hashed with SHA-256 and compared in constant time
//! against the configured hashes; the token itself is never stored or logged.

use crate::config::AuthConfig;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroize;

/// Failed AUTHs from one client network within [`AUTH_FAILURE_WINDOW`] before it is throttled.
pub const MAX_AUTH_FAILURES_PER_WINDOW: u32 = 10;
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a throttled network stays throttled after its last failed AUTH.
pub const AUTH_THROTTLE: Duration = Duration::from_secs(30);
/// While throttled, one AUTH per this interval from the network is still checked (the slow
/// lane): a client sharing the address with an attacker (NAT, a shared /64) gets in with a
/// correct token after at most this long, and the attacker gets one guess per interval.
pub const AUTH_SLOW_LANE: Duration = Duration::from_secs(1);
/// Networks tracked at most; beyond it expired entries are dropped (and, if none are, the
/// oldest), so an attacker cycling addresses cannot grow memory without bound.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Per-network AUTH failure counting (decisions.md: repeated failures are throttled).
///
/// Keyed by [`throttle_key`]: an IPv4 address, or the /64 an IPv6 address belongs to (one
/// host usually holds a whole /64 and can rotate through it). A success never clears the
/// count: otherwise a holder of any valid token could interleave successes with guesses at
/// another token and never be throttled.
#[derive(Debug, Default)]
pub struct Throttle {
    by_addr: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
    /// The slow lane's next free slot while blocked.
    next_check: Instant,
}

/// The unit the AUTH throttle counts: IPv4 addresses as they are (an IPv4-mapped IPv6 address
/// counts as its IPv4 address), IPv6 addresses by their /64 prefix.
pub fn throttle_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

impl Throttle {
    /// May an AUTH from `addr` be checked now? `Err(retry_after)` while its network is
    /// throttled and this interval's slow-lane check is taken.
    pub fn admit(&self, addr: IpAddr) -> Result<(), Duration> {
        self.admit_at(addr, Instant::now())
    }

    fn admit_at(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let Ok(mut map) = self.by_addr.lock() else {
            return Ok(());
        };
        let Some(f) = map.get_mut(&throttle_key(addr)) else {
            return Ok(());
        };
        match f.blocked_until {
            Some(until) if until > now => {
                if f.next_check <= now {
                    f.next_check = now + AUTH_SLOW_LANE;
                    Ok(())
                } else {
                    Err(f.next_check - now)
                }
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, addr: IpAddr) {
        self.record_failure_at(addr, Instant::now());
    }

    fn record_failure_at(&self, addr: IpAddr, now: Instant) {
        let Ok(mut map) = self.by_addr.lock() else {
            return;
        };
        let key = throttle_key(addr);
        if map.len() >= MAX_TRACKED_ADDRESSES && !map.contains_key(&key) {
            map.retain(|_, f| {
                now.duration_since(f.window_start) < AUTH_FAILURE_WINDOW
                    || f.blocked_until.is_some_and(|u| u > now)
            });
            if map.len() >= MAX_TRACKED_ADDRESSES
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, f)| f.window_start)
                    .map(|(a, _)| *a)
            {
                map.remove(&oldest);
            }
        }
        let f = map.entry(key).or_insert(Failures {
            count: 0,
            window_start: now,
            blocked_until: None,
            next_check: now,
        });
        if f.blocked_until.is_some_and(|u| u > now) {
            // A failure in the slow lane keeps the network throttled.
            f.blocked_until = Some(now + AUTH_THROTTLE);
            return;
        }
        if now.duration_since(f.window_start) >= AUTH_FAILURE_WINDOW {
            f.count = 0;
            f.window_start = now;
        }
        f.count += 1;
        if f.count >= MAX_AUTH_FAILURES_PER_WINDOW {
            f.blocked_until = Some(now + AUTH_THROTTLE);
            f.next_check = now;
            f.count = 0;
            f.window_start = now;
        }
    }
}

/// Connections per network ([`throttle_key`]) that have not authenticated yet, so that one
/// address cannot hold many connection slots without a credential
/// (`network.max_unauthenticated_per_address`).
#[derive(Debug, Default)]
pub struct PreAuthCount {
    by_addr: Mutex<HashMap<IpAddr, usize>>,
}

/// One unauthenticated connection, counted until it authenticates or closes (drop).
#[derive(Debug)]
pub struct PreAuthSlot {
    counts: std::sync::Arc<PreAuthCount>,
    key: IpAddr,
}

impl PreAuthCount {
    /// A slot for a new connection from `addr`, or `None` when its network already holds
    /// `limit` unauthenticated connections.
    pub fn enter(
        counts: &std::sync::Arc<PreAuthCount>,
        addr: IpAddr,
        limit: usize,
    ) -> Option<PreAuthSlot> {
        let key = throttle_key(addr);
        let mut map = counts.by_addr.lock().ok()?;
        let n = map.entry(key).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(PreAuthSlot {
            counts: counts.clone(),
            key,
        })
    }

    /// Unauthenticated connections from `addr`'s network now.
    pub fn count(&self, addr: IpAddr) -> usize {
        self.by_addr
            .lock()
            .ok()
            .and_then(|m| m.get(&throttle_key(addr)).copied())
            .unwrap_or(0)
    }
}

impl Drop for PreAuthSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.counts.by_addr.lock()
            && let Some(n) = map.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// What a principal may do. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// GET/LIST, WATCH, WAL_READ, WAL_STATS, INFO.
    Read,
    /// + CREATE_INSTANCE, APPLY_EVENT, DELETE_INSTANCE, BATCH, SNAPSHOT_INSTANCE.
    Write,
    /// + PUT_MACHINE, COMPACT, FLUSH_ALL.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Who a connection is, once authenticated: a token's name (or a certificate's CN), its role
/// and the machines it may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// For logs and the audit trail; never the token.
    pub name: String,
    pub role: Role,
    /// Empty: every machine. Otherwise a machine must match one glob (`*` any run, `?` one
    /// character).
    pub machines: Vec<String>,
}

impl Principal {
    /// Everyone, when `auth.required` is off.
    pub fn anonymous() -> Principal {
        Principal {
            name: "anonymous".into(),
            role: Role::Admin,
            machines: Vec::new(),
        }
    }

    pub fn restricted(&self) -> bool {
        !self.machines.is_empty()
    }

    pub fn allows_machine(&self, machine: &str) -> bool {
        self.machines.is_empty() || self.machines.iter().any(|g| glob_match(g, machine))
    }
}

/// `*` matches any run of characters (also none), `?` exactly one; everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with one backtrack point: linear in practice, never exponential.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[derive(Debug, Clone)]
struct Entry {
    hash: [u8; 32],
    principal: Principal,
}

/// The configured credentials: token hashes with their principals, and the certificate
/// identities accepted with mTLS.
#[derive(Debug, Clone)]
pub struct Auth {
    pub required: bool,
    entries: Vec<Entry>,
    /// Certificate name → principal (`auth.identity_from_cert`).
    cert_identities: Vec<(CertName, Principal)>,
    pub identity_from_cert: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("reading auth.secrets_file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("auth.secrets_file {path} line {line}: {message}")]
    BadLine {
        path: std::path::PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "auth.secrets_file {path} is readable by group or others; chmod 600 it or set auth.allow_insecure_secrets_file: true"
    )]
    Insecure { path: std::path::PathBuf },
    #[error("auth.required is true but no token hashes (or certificate identities) are configured")]
    NoTokens,
    #[error("auth.cert_identities.{cn}: {message}")]
    BadCertIdentity { cn: String, message: String },
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The index of the first hash equal to `digest`. Every hash is compared in full with
/// `subtle` (no early exit on a differing byte, none on a match), and the index is picked
/// with constant-time selects, so timing reveals neither whether nor where it matched.
fn ct_find<'a>(hashes: impl Iterator<Item = &'a [u8; 32]>, digest: &[u8; 32]) -> Option<usize> {
    let mut matched = subtle::Choice::from(0u8);
    let mut index = 0u64;
    for (i, h) in hashes.enumerate() {
        let eq = h.ct_eq(digest);
        index = u64::conditional_select(&index, &(i as u64), eq & !matched);
        matched |= eq;
    }
    bool::from(matched).then_some(index as usize)
}

/// `<role>[,<machine-glob>…]`, as in a secrets-file line or `auth.cert_identities`.
fn parse_grant(name: &str, grant: &str) -> Result<Principal, String> {
    let mut parts = grant.split(',');
    let role_s = parts.next().unwrap_or("").trim();
    let role = Role::parse(role_s)
        .ok_or_else(|| format!("unknown role {role_s:?}; expected read, write or admin"))?;
    let mut machines = Vec::new();
    for g in parts {
        let g = g.trim();
        if g.is_empty() {
            return Err("empty machine glob".into());
        }
        machines.push(g.to_owned());
    }
    Ok(Principal {
        name: name.to_owned(),
        role,
        machines,
    })
}

/// The name of a bare hash's principal in the audit log: where it is configured, never any
/// part of the hash. A hash prefix would let whoever reads the audit log test guessed tokens
/// offline (the hash is unsalted), so a low-entropy token would leak through its label.
fn admin_for(label: String) -> Principal {
    Principal {
        name: label,
        role: Role::Admin,
        machines: Vec::new(),
    }
}

impl Auth {
    pub fn from_config(cfg: &AuthConfig) -> Result<Auth, AuthSetupError> {
        let mut entries: Vec<Entry> = cfg
            .token_hashes
            .iter()
            .enumerate()
            .filter_map(|(i, h)| Some((i, decode_hex32(h)?)))
            .map(|(i, hash)| Entry {
                principal: admin_for(format!("token-hash-{}", i + 1)),
                hash,
            })
            .collect();
        if let Some(path) = &cfg.secrets_file {
            check_permissions(path, cfg.allow_insecure_secrets_file)?;
            let text = std::fs::read_to_string(path).map_err(|source| AuthSetupError::Read {
                path: path.clone(),
                source,
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let bad = |message: String| AuthSetupError::BadLine {
                    path: path.clone(),
                    line: n + 1,
                    message,
                };
                let fields: Vec<&str> = line.split_whitespace().collect();
                let hash = fields
                    .first()
                    .and_then(|f| decode_hex32(f))
                    .ok_or_else(|| bad("expected a SHA-256 hex hash first".into()))?;
                let principal = match fields.as_slice() {
                    [_] => admin_for(format!("secrets-line-{}", n + 1)),
                    [_, name, grant] => parse_grant(name, grant).map_err(bad)?,
                    _ => {
                        return Err(bad(
                            "expected `<hash>` or `<hash> <name> <role>[,<machine-glob>...]`"
                                .into(),
                        ));
                    }
                };
                entries.push(Entry { hash, principal });
            }
        }
        let mut cert_identities = Vec::new();
        for (key, grant) in &cfg.cert_identities {
            let bad = |message: String| AuthSetupError::BadCertIdentity {
                cn: key.clone(),
                message,
            };
            let name = CertName::parse(key).map_err(bad)?;
            let p = parse_grant(&name.principal_name(), grant).map_err(bad)?;
            cert_identities.push((name, p));
        }
        if cfg.required && entries.is_empty() && cert_identities.is_empty() {
            return Err(AuthSetupError::NoTokens);
        }
        Ok(Auth {
            required: cfg.required,
            entries,
            cert_identities,
            identity_from_cert: cfg.identity_from_cert,
        })
    }

    /// Number of configured token hashes (for the startup log).
    pub fn token_count(&self) -> usize {
        self.entries.len()
    }

    /// Checks a bearer token and wipes it. When auth is not required any non-empty token is
    /// accepted (as the reference does) and the principal is anonymous.
    pub fn check(&self, token: &mut String) -> Result<Principal, &'static str> {
        self.check_token(token).map(|(p, _)| p)
    }

    /// [`Auth::check`], also naming the configured token that matched (`None` when auth is
    /// not required), so that a session can ask after a reload whether it is still there.
    pub fn check_token(
        &self,
        token: &mut String,
    ) -> Result<(Principal, Option<TokenId>), &'static str> {
        let mut digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let empty = token.is_empty();
        token.zeroize();
        if !self.required {
            digest.zeroize();
            return if empty {
                Err("empty token")
            } else {
                Ok((Principal::anonymous(), None))
            };
        }
        let found = ct_find(self.entries.iter().map(|e| &e.hash), &digest);
        digest.zeroize();
        found
            .and_then(|i| self.entries.get(i))
            .map(|e| (e.principal.clone(), Some(TokenId(e.hash))))
            .ok_or("invalid token")
    }

    /// The principal `token` now stands for, or `None` when it is no longer configured (after a
    /// reload removed or rotated it).
    pub fn principal_for_token(&self, token: &TokenId) -> Option<Principal> {
        if !self.required {
            return None;
        }
        ct_find(self.entries.iter().map(|e| &e.hash), &token.0)
            .and_then(|i| self.entries.get(i))
            .map(|e| e.principal.clone())
    }

    /// The principal of a verified client certificate's CN, when `identity_from_cert` is on
    /// and the CN is listed in `auth.cert_identities`.
    pub fn principal_for_cert(&self, cn: &str) -> Option<Principal> {
        let id = crate::tls::PeerIdentity {
            cn: Some(cn.to_owned()),
            ..Default::default()
        };
        match self.cert_match(&id) {
            CertMatch::Principal(p) => Some(p),
            _ => None,
        }
    }

    /// What a verified client certificate is, under `auth.identity_from_cert`: the principal of
    /// the one `auth.cert_identities` entry its names match (CN, DNS or URI SAN).
    pub fn cert_match(&self, id: &crate::tls::PeerIdentity) -> CertMatch {
        if !self.identity_from_cert || self.cert_identities.is_empty() {
            return CertMatch::Off;
        }
        let found: Vec<&(CertName, Principal)> = self
            .cert_identities
            .iter()
            .filter(|(name, _)| name.matches(id))
            .collect();
        match found.as_slice() {
            [] => CertMatch::Unlisted,
            [(_, p)] => CertMatch::Principal(p.clone()),
            many => CertMatch::Ambiguous(many.iter().map(|(n, _)| n.principal_name()).collect()),
        }
    }
}

/// Which configured token a session authenticated with: its SHA-256, kept so that a reload
/// can tell whether the token is still configured. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenId([u8; 32]);

impl std::fmt::Debug for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenId(..)")
    }
}

/// How a client certificate identifies a connection (see [`Auth::cert_match`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertMatch {
    /// Certificate identities are not configured: the certificate only proved the chain.
    Off,
    Principal(Principal),
    /// None of its names is listed: the connection is refused.
    Unlisted,
    /// More than one entry matches (listed by name): refused rather than guessed.
    Ambiguous(Vec<String>),
}

/// A key of `auth.cert_identities`: `dns:<name>` (a DNS SAN, compared without regard to
/// case), `uri:<uri>` (a URI SAN, e.g. a SPIFFE ID, compared exactly), `cn:<name>` or a bare
/// name (the subject CN, compared exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertName {
    Cn(String),
    Dns(String),
    Uri(String),
}

impl CertName {
    pub fn parse(key: &str) -> Result<CertName, String> {
        let (name, value) = if let Some(v) = key.strip_prefix("dns:") {
            (CertName::Dns(v.to_ascii_lowercase()), v)
        } else if let Some(v) = key.strip_prefix("uri:") {
            (CertName::Uri(v.to_owned()), v)
        } else if let Some(v) = key.strip_prefix("cn:") {
            (CertName::Cn(v.to_owned()), v)
        } else {
            (CertName::Cn(key.to_owned()), key)
        };
        if value.is_empty() {
            return Err("empty certificate name".into());
        }
        Ok(name)
    }

    fn matches(&self, id: &crate::tls::PeerIdentity) -> bool {
        match self {
            CertName::Cn(cn) => id.cn.as_deref() == Some(cn.as_str()),
            CertName::Dns(d) => id.dns.iter().any(|x| x.eq_ignore_ascii_case(d)),
            CertName::Uri(u) => id.uris.iter().any(|x| x == u),
        }
    }

    /// The principal's name in the audit log: the CN as it is, SANs with their kind.
    pub fn principal_name(&self) -> String {
        match self {
            CertName::Cn(cn) => cn.clone(),
            CertName::Dns(d) => format!("dns:{d}"),
            CertName::Uri(u) => format!("uri:{u}"),
        }
    }
}

#[cfg(unix)]
fn check_permissions(path: &std::path::Path, allow_insecure: bool) -> Result<(), AuthSetupError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| AuthSetupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 && !allow_insecure {
        return Err(AuthSetupError::Insecure {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &std::path::Path, _: bool) -> Result<(), AuthSetupError> {
    Ok(())
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
