//! Token authentication: tokens are hashed with SHA-256 and compared in constant time
//! against the configured hashes; the token itself is never stored or logged.

use crate::config::AuthConfig;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Failed AUTHs from one address within [`AUTH_FAILURE_WINDOW`] before it is throttled.
pub const MAX_AUTH_FAILURES_PER_WINDOW: u32 = 10;
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a throttled address gets `RATE_LIMITED` for every AUTH.
pub const AUTH_THROTTLE: Duration = Duration::from_secs(30);
/// Addresses tracked at most; beyond it expired entries are dropped (and, if none are, the
/// oldest), so an attacker cycling addresses cannot grow memory without bound.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Per-address AUTH failure counting (decisions.md: repeated failures are throttled).
#[derive(Debug, Default)]
pub struct Throttle {
    by_addr: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
}

impl Throttle {
    /// `Some(remaining)` while `addr` is throttled.
    pub fn blocked(&self, addr: IpAddr) -> Option<Duration> {
        let map = self.by_addr.lock().ok()?;
        let until = map.get(&addr)?.blocked_until?;
        until.checked_duration_since(Instant::now())
    }

    pub fn record_failure(&self, addr: IpAddr) {
        let Ok(mut map) = self.by_addr.lock() else {
            return;
        };
        let now = Instant::now();
        if map.len() >= MAX_TRACKED_ADDRESSES && !map.contains_key(&addr) {
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
        let f = map.entry(addr).or_insert(Failures {
            count: 0,
            window_start: now,
            blocked_until: None,
        });
        if now.duration_since(f.window_start) >= AUTH_FAILURE_WINDOW {
            f.count = 0;
            f.window_start = now;
        }
        f.count += 1;
        if f.count >= MAX_AUTH_FAILURES_PER_WINDOW {
            f.blocked_until = Some(now + AUTH_THROTTLE);
            f.count = 0;
            f.window_start = now;
        }
    }

    pub fn record_success(&self, addr: IpAddr) {
        if let Ok(mut map) = self.by_addr.lock() {
            map.remove(&addr);
        }
    }
}

#[derive(Debug, Clone)]
pub struct Auth {
    pub required: bool,
    hashes: Vec<[u8; 32]>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("reading auth.secrets_file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("auth.secrets_file {path} line {line}: expected a SHA-256 hex hash")]
    BadLine {
        path: std::path::PathBuf,
        line: usize,
    },
    #[error(
        "auth.secrets_file {path} is readable by group or others; chmod 600 it or set auth.allow_insecure_secrets_file: true"
    )]
    Insecure { path: std::path::PathBuf },
    #[error("auth.required is true but no token hashes are configured")]
    NoTokens,
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

impl Auth {
    pub fn from_config(cfg: &AuthConfig) -> Result<Auth, AuthSetupError> {
        let mut hashes: Vec<[u8; 32]> = cfg
            .token_hashes
            .iter()
            .filter_map(|h| decode_hex32(h))
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
                // `<hash> [name role…]`: the hash is the first field.
                let first = line.split_whitespace().next().unwrap_or("");
                let h = decode_hex32(first).ok_or(AuthSetupError::BadLine {
                    path: path.clone(),
                    line: n + 1,
                })?;
                hashes.push(h);
            }
        }
        if cfg.required && hashes.is_empty() {
            return Err(AuthSetupError::NoTokens);
        }
        Ok(Auth {
            required: cfg.required,
            hashes,
        })
    }

    /// Checks a bearer token. When auth is not required any non-empty token is accepted
    /// (as the reference does).
    pub fn check(&self, token: &str) -> Result<(), &'static str> {
        if !self.required {
            return if token.is_empty() {
                Err("empty token")
            } else {
                Ok(())
            };
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare against every hash, without stopping early, in constant time.
        let mut matched = subtle::Choice::from(0u8);
        for h in &self.hashes {
            matched |= h.ct_eq(&digest);
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err("invalid token")
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
mod tests {
    use super::*;

    #[test]
    fn throttle_blocks_after_repeated_failures_and_success_clears_it() {
        let t = Throttle::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..MAX_AUTH_FAILURES_PER_WINDOW - 1 {
            t.record_failure(a);
        }
        assert!(t.blocked(a).is_none());
        t.record_failure(a);
        assert!(t.blocked(a).is_some());
        let b: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(t.blocked(b).is_none(), "other addresses are not affected");
        t.record_success(a);
        assert!(t.blocked(a).is_none());
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
            token_hashes: vec![hash("secret").to_uppercase()],
            ..Default::default()
        };
        let auth = Auth::from_config(&cfg).unwrap();
        assert!(auth.check("secret").is_ok());
        assert_eq!(auth.check("Secret"), Err("invalid token"));
        assert_eq!(auth.check(""), Err("invalid token"));
    }

    #[test]
    fn without_auth_any_non_empty_token_passes() {
        let auth = Auth::from_config(&AuthConfig::default()).unwrap();
        assert!(auth.check("x").is_ok());
        assert_eq!(auth.check(""), Err("empty token"));
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
        assert!(Auth::from_config(&cfg).unwrap().check("t").is_ok());
        std::fs::write(&p, "not-a-hash\n").unwrap();
        cfg.allow_insecure_secrets_file = true;
        assert!(matches!(
            Auth::from_config(&cfg),
            Err(AuthSetupError::BadLine { line: 1, .. })
        ));
    }
}
